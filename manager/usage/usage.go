// Package usage keeps, on the leader, the latest CPU and memory sample of
// every running task, as workers send them with their heartbeats. It is
// memory only (a sample a second per task would flood Raft): a new leader
// starts empty and has fresh figures after each worker's first heartbeat
// to it.
package usage

import (
	"sync"
	"time"

	"github.com/shoal-cluster/shoal/internal/clock"
	pb "github.com/shoal-cluster/shoal/proto"
)

// Sample is a task's latest use and when the leader received it.
type Sample struct {
	NodeID string
	Usage  *pb.TaskUsage
	// At is when the sample arrived, on the leader's clock (the worker's
	// own SampledAt is on the worker's clock).
	At time.Time
}

// Table is the leader's samples. It is safe for concurrent use.
type Table struct {
	clock clock.Clock
	mu    sync.Mutex
	tasks map[string]Sample   // by task ID
	nodes map[string][]string // task IDs by node ID
}

// New returns an empty table.
func New(c clock.Clock) *Table {
	return &Table{clock: c, tasks: map[string]Sample{}, nodes: map[string][]string{}}
}

// Record replaces a node's samples with the ones of its latest heartbeat:
// tasks it no longer reports are forgotten.
func (t *Table) Record(nodeID string, samples []*pb.TaskUsage) {
	now := t.clock.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range t.nodes[nodeID] {
		delete(t.tasks, id)
	}
	ids := make([]string, 0, len(samples))
	for _, u := range samples {
		if u.GetTaskId() == "" {
			continue
		}
		t.tasks[u.GetTaskId()] = Sample{NodeID: nodeID, Usage: u, At: now}
		ids = append(ids, u.GetTaskId())
	}
	if len(ids) == 0 {
		delete(t.nodes, nodeID)
		return
	}
	t.nodes[nodeID] = ids
}

// ForgetNode drops a node's samples (it went Down: its tasks must not read
// as idle, nor as busy).
func (t *Table) ForgetNode(nodeID string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range t.nodes[nodeID] {
		delete(t.tasks, id)
	}
	delete(t.nodes, nodeID)
}

// Reset forgets everything (a new term: figures from an earlier one are
// stale).
func (t *Table) Reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.tasks = map[string]Sample{}
	t.nodes = map[string][]string{}
}

// Get returns a task's latest sample.
func (t *Table) Get(taskID string) (Sample, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.tasks[taskID]
	return s, ok
}

// Snapshot returns every task's latest sample, by task ID.
func (t *Table) Snapshot() map[string]Sample {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]Sample, len(t.tasks))
	for id, s := range t.tasks {
		out[id] = s
	}
	return out
}

// Now is the table's clock.
func (t *Table) Now() time.Time { return t.clock.Now() }
