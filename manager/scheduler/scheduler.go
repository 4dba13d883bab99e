// Package scheduler places pending tasks on nodes. It runs on the leader
// only (a leader loop): it reads the nodes and tasks once, follows the
// store's changes, decides placements in memory in batches and commits
// them in large transactions. See docs/design/services.md for the task
// lifecycle it takes part in: it moves tasks from PENDING (no node, or a
// global task's node) to ASSIGNED, or leaves them PENDING with a
// pending_reason.
package scheduler

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/shoal-cluster/shoal/internal/clock"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/protobuf/proto"
)

// Tuning.
const (
	// defaultTick is how long pending tasks are collected before a pass.
	defaultTick = 20 * time.Millisecond
	// defaultRetryDelay is how long after resources freed up or nodes
	// changed the tasks that could not be placed are tried again.
	defaultRetryDelay = 100 * time.Millisecond
	// defaultMaxBatch is the most tasks one pass decides; a full queue
	// starts a pass at once.
	defaultMaxBatch = 5000
	// defaultMaxChunk is the most tasks one transaction writes.
	defaultMaxChunk = 1000
	// chunkBytes bounds the estimated size of one transaction, well under
	// raftstore.BatchEntrySize.
	chunkBytes = raftstore.BatchEntrySize * 3 / 4
	// drainMax is how many queued events are applied before looking at the
	// batch again.
	drainMax = 4096
)

// Scheduler assigns pending tasks to nodes. Create it with New and run it
// as a leader loop with Run.
type Scheduler struct {
	store raftstore.StateStore
	clock clock.Clock
	log   *slog.Logger

	tick       time.Duration
	retryDelay time.Duration
	maxBatch   int
	maxChunk   int

	// onPass, if set (tests), is called after every pass.
	onPass func(passStats)
	// onWait, if set (tests), is called whenever the loop is about to wait
	// for changes or its timer, with the number of queued tasks and the
	// delay its timer was armed with (0: not armed).
	onWait func(queued int, timer time.Duration)
}

// passStats describes one scheduling pass.
type passStats struct {
	tasks, placed, writes int
	err                   error
}

// New returns a scheduler working on store; clk times its batching.
func New(store raftstore.StateStore, clk clock.Clock, log *slog.Logger) *Scheduler {
	if log == nil {
		log = slog.Default()
	}
	return &Scheduler{
		store:      store,
		clock:      clk,
		log:        log.With("component", "scheduler"),
		tick:       defaultTick,
		retryDelay: defaultRetryDelay,
		maxBatch:   defaultMaxBatch,
		maxChunk:   defaultMaxChunk,
	}
}

var errWatchEnded = errors.New("store subscription ended")

// Run schedules until ctx is done. It builds its view from the store and
// follows the store's changes; when the subscription ends (the scheduler
// fell behind, a snapshot replaced the state) or a write fails, it builds
// the view again from the store.
func (s *Scheduler) Run(ctx context.Context) {
	s.log.Info("scheduler started")
	defer s.log.Info("scheduler stopped")
	const minBackoff, maxBackoff = 100 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	for {
		started := s.clock.Now()
		err := s.runView(ctx)
		if ctx.Err() != nil {
			return
		}
		if s.clock.Now().Sub(started) > 30*time.Second {
			backoff = minBackoff
		}
		if errors.Is(err, raftstore.ErrWatchOverflow) || errors.Is(err, raftstore.ErrWatchReset) {
			s.log.Info("rebuilding the scheduler's view from the store", "reason", err)
			continue
		}
		s.log.Warn("scheduler interrupted; rebuilding its view from the store", "err", err, "retry_in", backoff)
		t := s.clock.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// pendingTask is a task waiting for a node; seq orders the tasks by when
// they became pending, so retries keep that order.
type pendingTask struct {
	task *pb.Task
	seq  uint64
}

// view is the scheduler's state between two rebuilds: the cluster model,
// the pending tasks, which of them are queued for the next pass and which
// could not be placed.
type view struct {
	c        *cluster
	pending  map[string]*pendingTask
	queue    []string
	head     int
	queued   map[string]bool
	unplaced map[string]struct{}
	// assigned holds the tasks this view assigned (to the node given)
	// until an event shows the outcome: events that still show such a task
	// pending predate the assignment and must not undo it.
	assigned map[string]string
	// retry is set when a node changed or resources were freed: the
	// unplaced tasks are queued again at the next pass.
	retry bool
	seq   uint64
	kbuf  [2][]byte
}

func newView() *view {
	return &view{
		c:        newCluster(),
		pending:  map[string]*pendingTask{},
		queued:   map[string]bool{},
		unplaced: map[string]struct{}{},
		assigned: map[string]string{},
	}
}

func (v *view) enqueue(id string) {
	if !v.queued[id] {
		v.queued[id] = true
		v.queue = append(v.queue, id)
	}
}

func (v *view) queueLen() int { return len(v.queued) }

// take removes up to max queued pending tasks from the queue, oldest first.
func (v *view) take(max int) []*pb.Task {
	var out []*pb.Task
	for v.head < len(v.queue) && len(out) < max {
		id := v.queue[v.head]
		v.queue[v.head] = ""
		v.head++
		if !v.queued[id] {
			continue // removed meanwhile, or a stale copy
		}
		delete(v.queued, id)
		if p := v.pending[id]; p != nil {
			out = append(out, p.task)
		}
	}
	switch {
	case v.head == len(v.queue):
		v.queue, v.head = v.queue[:0], 0
	case v.head > 1024 && v.head > len(v.queue)/2:
		n := copy(v.queue, v.queue[v.head:])
		v.queue, v.head = v.queue[:n], 0
	}
	return out
}

// requeueUnplaced queues every task that could not be placed, in the
// order they became pending.
func (v *view) requeueUnplaced() {
	v.retry = false
	if len(v.unplaced) == 0 {
		return
	}
	ps := make([]*pendingTask, 0, len(v.unplaced))
	for id := range v.unplaced {
		if p := v.pending[id]; p != nil {
			ps = append(ps, p)
		}
	}
	clear(v.unplaced)
	slices.SortFunc(ps, func(a, b *pendingTask) int { return cmp.Compare(a.seq, b.seq) })
	for _, p := range ps {
		v.enqueue(p.task.GetId())
	}
}

func (v *view) removePending(id string) {
	delete(v.pending, id)
	delete(v.queued, id)
	delete(v.unplaced, id)
}

// sameInputs reports whether a change to a pending task leaves everything
// placement depends on as it was (the scheduler's own pending_reason
// writes, say): such a change does not queue the task again.
func (v *view) sameInputs(a, b *pb.Task) bool {
	if a.GetNodeId() != b.GetNodeId() {
		return false
	}
	v.kbuf[0] = groupKey(v.kbuf[0], a)
	v.kbuf[1] = groupKey(v.kbuf[1], b)
	return string(v.kbuf[0]) == string(v.kbuf[1])
}

// putTask records a created or updated task.
func (v *view) putTask(t *pb.Task) {
	id := t.GetId()
	if node, ok := v.assigned[id]; ok {
		if isPending(t) && (t.GetNodeId() == "" || t.GetNodeId() == node) {
			return
		}
		delete(v.assigned, id)
	}
	if v.c.setUsage(id, usageOf(t)) {
		v.retry = true
	}
	if !isPending(t) {
		v.removePending(id)
		return
	}
	if p := v.pending[id]; p != nil {
		same := v.sameInputs(p.task, t)
		p.task = t
		if !same {
			delete(v.unplaced, id)
			v.enqueue(id)
		}
		return
	}
	v.seq++
	v.pending[id] = &pendingTask{task: t, seq: v.seq}
	v.enqueue(id)
}

// apply applies one committed change.
func (v *view) apply(ev raftstore.Event) {
	switch o := ev.Object.(type) {
	case *pb.Node:
		if ev.Kind == raftstore.EventDelete {
			v.c.removeNode(o.GetId())
			v.retry = true // the pending reasons count it
			return
		}
		if v.c.putNode(o) {
			v.retry = true
		}
	case *pb.Task:
		if ev.Kind == raftstore.EventDelete {
			if v.c.setUsage(o.GetId(), nil) {
				v.retry = true
			}
			v.removePending(o.GetId())
			delete(v.assigned, o.GetId())
			return
		}
		v.putTask(o)
	}
}

// delay is how long to wait before the next pass, and whether one is due
// at all.
func (s *Scheduler) delay(v *view) (time.Duration, bool) {
	switch {
	case v.queueLen() > 0:
		return s.tick, true
	case v.retry && len(v.unplaced) > 0:
		return s.retryDelay, true
	}
	return 0, false
}

func relevant(ev raftstore.Event) bool {
	return ev.Table == raftstore.KindNode || ev.Table == raftstore.KindTask
}

// runView builds a view and schedules on it until ctx is done (nil) or the
// view must be rebuilt (the error says why).
func (s *Scheduler) runView(ctx context.Context) error {
	v := newView()
	sub := s.store.ViewAndWatch(func(tx *raftstore.Tx) {
		for _, n := range tx.Nodes().List() {
			v.c.putNode(n)
		}
		for _, t := range tx.Tasks().List() {
			v.putTask(t)
		}
	}, relevant)
	defer sub.Close()
	v.retry = false
	s.log.Debug("scheduler view built", "nodes", len(v.c.nodes), "active_tasks", len(v.c.usage), "pending", len(v.pending))

	cm := s.startCommitters(ctx)
	defer cm.stop()

	// drain applies the events already queued, without waiting.
	drain := func() error {
		for i := 0; i < drainMax; i++ {
			select {
			case ev, ok := <-sub.C():
				if !ok {
					return watchEnded(sub)
				}
				v.apply(ev)
			default:
				return nil
			}
		}
		return nil
	}

	timer := s.clock.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var (
		armed      bool
		armedDelay time.Duration
		due        = v.queueLen() > 0
	)
	for {
		if ctx.Err() != nil {
			return nil
		}
		if due || v.queueLen() >= s.maxBatch {
			if armed {
				timer.Stop()
				armed = false
			}
			if err := s.pass(ctx, v, cm); err != nil {
				return err
			}
			if err := drain(); err != nil {
				return err
			}
			// A pass takes at most maxBatch tasks: go on with the rest.
			due = v.queueLen() > 0
			continue
		}
		if d, ok := s.delay(v); ok && (!armed || d < armedDelay) {
			timer.Reset(d)
			armed, armedDelay = true, d
		}
		if s.onWait != nil {
			wait := time.Duration(0)
			if armed {
				wait = armedDelay
			}
			s.onWait(v.queueLen(), wait)
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-cm.failed:
			return err
		case ev, ok := <-sub.C():
			if !ok {
				return watchEnded(sub)
			}
			v.apply(ev)
			if err := drain(); err != nil {
				return err
			}
		case <-timer.C():
			armed, due = false, true
		}
	}
}

func watchEnded(sub *raftstore.Subscription) error {
	if err := sub.Err(); err != nil {
		return err
	}
	return errWatchEnded
}

// pass decides placements for the queued tasks and hands the writes to
// the committers.
func (s *Scheduler) pass(ctx context.Context, v *view, cm *committers) error {
	start := s.clock.Now()
	if v.retry {
		v.requeueUnplaced()
	}
	batch := v.take(s.maxBatch)
	if len(batch) == 0 {
		return nil
	}
	decisions := v.c.schedule(batch)
	decided := s.clock.Now().Sub(start)
	writes := decisions[:0]
	placed := 0
	for _, d := range decisions {
		id := d.task.GetId()
		if d.node != "" {
			delete(v.pending, id)
			delete(v.unplaced, id)
			v.assigned[id] = d.node
			placed++
			writes = append(writes, d)
			continue
		}
		v.unplaced[id] = struct{}{}
		if d.reason != d.task.GetPendingReason() {
			writes = append(writes, d)
		}
	}
	err := s.commit(ctx, cm, writes)
	if s.onPass != nil {
		s.onPass(passStats{tasks: len(batch), placed: placed, writes: len(writes), err: err})
	}
	s.log.Debug("scheduling pass", "tasks", len(batch), "placed", placed, "unplaced", len(batch)-placed,
		"writes", len(writes), "decide", decided, "total", s.clock.Now().Sub(start), "err", err)
	return err
}

// commit splits decisions into transactions of at most maxChunk tasks and
// about chunkBytes, and queues them for the committers. It blocks while
// the committers are busy, so a pass never runs far ahead of the store.
func (s *Scheduler) commit(ctx context.Context, cm *committers, ds []decision) error {
	for len(ds) > 0 {
		n, size := 0, 0
		for n < len(ds) && n < s.maxChunk {
			sz := proto.Size(ds[n].task) + len(ds[n].node) + len(ds[n].reason) + 64
			if n > 0 && size+sz > chunkBytes {
				break
			}
			size += sz
			n++
		}
		select {
		case cm.queue <- ds[:n:n]:
		case err := <-cm.failed:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
		ds = ds[n:]
	}
	return nil
}

// committers write decided chunks concurrently: Raft commits (and syncs)
// the transactions of several writers together, and the next pass is
// decided while earlier ones are being committed. Chunks are independent:
// each task is read again in its transaction.
type committers struct {
	queue  chan []decision
	failed chan error // receives the first failure
	wg     sync.WaitGroup
}

// committerCount is how many transactions may be in flight at once.
const committerCount = 2

func (s *Scheduler) startCommitters(ctx context.Context) *committers {
	cm := &committers{queue: make(chan []decision, committerCount), failed: make(chan error, 1)}
	for range committerCount {
		cm.wg.Add(1)
		go func() {
			defer cm.wg.Done()
			for ds := range cm.queue {
				if err := s.commitChunk(ctx, ds); err != nil {
					select {
					case cm.failed <- err:
					default:
					}
					// Drop the rest: the view is rebuilt from the store.
					for range cm.queue {
					}
					return
				}
			}
		}()
	}
	return cm
}

// stop waits for the queued chunks to be written (or to fail).
func (cm *committers) stop() {
	close(cm.queue)
	cm.wg.Wait()
}

// commitChunk writes one transaction. Each task is read again: a task that
// is no longer pending, or that was given another node meanwhile, is left
// alone (the event of that change corrects the model).
func (s *Scheduler) commitChunk(ctx context.Context, ds []decision) error {
	_, err := s.store.Update(ctx, func(tx *raftstore.Tx) error {
		now := s.clock.Now().UnixNano()
		tasks := tx.Tasks()
		for _, d := range ds {
			cur, ok := tasks.Get(d.task.GetId())
			if !ok || !isPending(cur) {
				continue
			}
			if d.node != "" {
				if cur.GetNodeId() != "" && cur.GetNodeId() != d.node {
					continue
				}
				cur.NodeId = d.node
				cur.Status = &pb.TaskStatus{State: pb.TaskState_TASK_STATE_ASSIGNED, Message: "assigned", Timestamp: now}
				cur.PendingReason = ""
			} else {
				if cur.GetPendingReason() == d.reason {
					continue
				}
				cur.PendingReason = d.reason
			}
			if err := tasks.Update(cur); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, raftstore.ErrTooLarge) && len(ds) > 1 {
		h := len(ds) / 2
		if err := s.commitChunk(ctx, ds[:h]); err != nil {
			return err
		}
		return s.commitChunk(ctx, ds[h:])
	}
	if err != nil {
		return fmt.Errorf("commit %d scheduling decisions: %w", len(ds), err)
	}
	return nil
}
