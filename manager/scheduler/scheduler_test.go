package scheduler

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/clock"
	"github.com/shoal-cluster/shoal/internal/storetest"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"go.uber.org/goleak"
)

// TestMain fails the package when goroutines outlive the tests: the
// scheduler, its subscription and the stores must all stop.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const waitTimeout = 20 * time.Second

// testLogger sends Warn and above (or SCHEDULER_TEST_LOG=debug|info) to
// t.Log, and nothing once the test is over.
func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	switch os.Getenv("SCHEDULER_TEST_LOG") {
	case "debug":
		level = slog.LevelDebug
	case "info":
		level = slog.LevelInfo
	}
	w := &tlogWriter{t: t}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type tlogWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *tlogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *tlogWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// harness is a memory store with a scheduler running on it, on a fake
// clock. Unless the test moves the clock itself (newManualHarness), every
// timer the scheduler arms fires at once, as if it had waited.
type harness struct {
	t      *testing.T
	st     *raftstore.MemoryStore
	clock  *clock.Fake
	manual bool
	passes chan passStats
	waits  chan waitStats
}

// waitStats is what the scheduler reports when it is about to wait.
type waitStats struct {
	queued int
	timer  time.Duration
}

// newHarness opens a store and starts a scheduler on it (tune, if set,
// adjusts it first).
func newHarness(t *testing.T, tune func(*Scheduler)) *harness {
	t.Helper()
	h := newStoreHarness(t)
	h.start(tune)
	return h
}

// newManualHarness is newHarness for a test that moves the clock itself.
func newManualHarness(t *testing.T, tune func(*Scheduler)) *harness {
	t.Helper()
	h := newStoreHarness(t)
	h.manual = true
	h.start(tune)
	// Once it waits, the scheduler has read the (empty) store and follows
	// its changes: what the test creates next arrives as changes.
	h.waitState("its view built", func(waitStats) bool { return true })
	return h
}

// newStoreHarness opens a memory store; Cleanup closes it.
func newStoreHarness(t *testing.T) *harness {
	t.Helper()
	clk := clock.NewFake(epoch)
	return &harness{t: t, st: storetest.Memory(t, clk.Now), clock: clk,
		passes: make(chan passStats, 4096), waits: make(chan waitStats, 4096)}
}

// start runs a scheduler until Cleanup, which waits for it to stop.
func (h *harness) start(tune func(*Scheduler)) {
	t := h.t
	s := New(h.st, h.clock, testLogger(t))
	s.onPass = func(p passStats) {
		select {
		case h.passes <- p:
		default:
		}
	}
	s.onWait = func(queued int, timer time.Duration) {
		select {
		case h.waits <- waitStats{queued: queued, timer: timer}:
		default:
		}
	}
	if tune != nil {
		tune(s)
	}
	if !h.manual {
		h.autoAdvance()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(waitTimeout):
			t.Errorf("scheduler did not stop after its context was cancelled")
		}
	})
}

// autoAdvance fires every timer as soon as it is armed, until Cleanup.
func (h *harness) autoAdvance() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for h.clock.WaitForTimer(ctx, -1) == nil {
			if d, ok := h.clock.Next(); ok {
				h.clock.Advance(d)
			}
		}
	}()
	h.t.Cleanup(func() { cancel(); <-done })
}

// waitState waits until the scheduler, about to wait, reports a state
// that cond accepts; reports from before the call may count, so drain
// h.waits before the change awaited.
func (h *harness) waitState(what string, cond func(waitStats) bool) {
	h.t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		select {
		case w := <-h.waits:
			if cond(w) {
				return
			}
		case <-deadline.C:
			h.t.Fatalf("the scheduler never waited with %s", what)
		}
	}
}

// settle takes the pass the scheduler reports next, then waits until it
// waits again with nothing queued, so that what the test does next
// arrives while it waits (and not during the pass, whose follow-up would
// take it at once). A pass is reported after its writes are queued, so a
// test that already sees them in the store may still get the report later.
func (h *harness) settle() passStats {
	h.t.Helper()
	p := h.nextPass()
	h.waitState("nothing queued after the pass", func(w waitStats) bool { return w.queued == 0 })
	return p
}

// nextPass returns the next pass the scheduler reports.
func (h *harness) nextPass() passStats {
	h.t.Helper()
	select {
	case p := <-h.passes:
		return p
	case <-time.After(waitTimeout):
		h.t.Fatal("no scheduling pass")
	}
	panic("unreachable")
}

func (h *harness) update(fn func(tx *raftstore.Tx) error) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := h.st.Update(ctx, fn); err != nil {
		h.t.Fatalf("update: %v", err)
	}
}

func (h *harness) createNodes(nodes ...*pb.Node) {
	h.t.Helper()
	h.update(func(tx *raftstore.Tx) error {
		for _, n := range nodes {
			if err := tx.Nodes().Create(n); err != nil {
				return err
			}
		}
		return nil
	})
}

func (h *harness) createTasks(tasks ...*pb.Task) {
	h.t.Helper()
	h.update(func(tx *raftstore.Tx) error {
		for _, t := range tasks {
			if err := tx.Tasks().Create(t); err != nil {
				return err
			}
		}
		return nil
	})
}

// changeNode applies fn to a stored node.
func (h *harness) changeNode(id string, fn func(*pb.Node)) {
	h.t.Helper()
	h.update(func(tx *raftstore.Tx) error {
		n, ok := tx.Nodes().Get(id)
		if !ok {
			return fmt.Errorf("node %s: %w", id, raftstore.ErrNotFound)
		}
		fn(n)
		return tx.Nodes().Update(n)
	})
}

// changeTask applies fn to a stored task.
func (h *harness) changeTask(id string, fn func(*pb.Task)) {
	h.t.Helper()
	h.update(func(tx *raftstore.Tx) error {
		t, ok := tx.Tasks().Get(id)
		if !ok {
			return fmt.Errorf("task %s: %w", id, raftstore.ErrNotFound)
		}
		fn(t)
		return tx.Tasks().Update(t)
	})
}

func (h *harness) task(id string) *pb.Task {
	var t *pb.Task
	h.st.View(func(tx *raftstore.Tx) { t, _ = tx.Tasks().Get(id) })
	return t
}

// waitFor waits until cond holds on the store, checking after every change.
func (h *harness) waitFor(what string, cond func(tx *raftstore.Tx) bool) {
	h.t.Helper()
	var ok bool
	sub := h.st.ViewAndWatch(func(tx *raftstore.Tx) { ok = cond(tx) }, nil)
	defer sub.Close()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for !ok {
		select {
		case _, open := <-sub.C():
			if !open {
				h.t.Fatalf("waiting for %s: watch ended: %v", what, sub.Err())
			}
		drain:
			for {
				select {
				case _, open := <-sub.C():
					if !open {
						break drain
					}
				default:
					break drain
				}
			}
			h.st.View(func(tx *raftstore.Tx) { ok = cond(tx) })
		case <-deadline.C:
			h.st.View(func(tx *raftstore.Tx) {
				for _, t := range tx.Tasks().List() {
					h.t.Logf("task %s: node=%q state=%v desired=%v reason=%q", t.GetId(), t.GetNodeId(),
						t.GetStatus().GetState(), t.GetDesiredState(), t.GetPendingReason())
				}
			})
			h.t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
	}
}

func taskAssigned(tx *raftstore.Tx, id string) bool {
	t, ok := tx.Tasks().Get(id)
	return ok && t.GetStatus().GetState() == pb.TaskState_TASK_STATE_ASSIGNED
}

// waitAssigned waits for the task to be ASSIGNED and returns it.
func (h *harness) waitAssigned(id string) *pb.Task {
	h.t.Helper()
	h.waitFor("task "+id+" assigned", func(tx *raftstore.Tx) bool { return taskAssigned(tx, id) })
	return h.task(id)
}

// waitReason waits for a pending task's reason and returns the task.
func (h *harness) waitReason(id, reason string) *pb.Task {
	h.t.Helper()
	h.waitFor(fmt.Sprintf("task %s pending with reason %q", id, reason), func(tx *raftstore.Tx) bool {
		t, ok := tx.Tasks().Get(id)
		return ok && t.GetStatus().GetState() == pb.TaskState_TASK_STATE_PENDING && t.GetPendingReason() == reason
	})
	return h.task(id)
}

func TestSchedulerAssignsAndSpreads(t *testing.T) {
	h := newHarness(t, nil)
	h.createNodes(mkNode("a"), mkNode("b"), mkNode("c"))
	ts := tasks("web", 6)
	h.createTasks(ts...)
	per := map[string]int{}
	for _, task := range ts {
		got := h.waitAssigned(task.GetId())
		if got.GetStatus().GetMessage() != "assigned" || got.GetStatus().GetTimestamp() == 0 || got.GetPendingReason() != "" {
			t.Fatalf("assigned task: status %v, pending_reason %q", got.GetStatus(), got.GetPendingReason())
		}
		per[got.GetNodeId()]++
	}
	if want := map[string]int{"a": 2, "b": 2, "c": 2}; !equalCounts(per, want) {
		t.Fatalf("placement %v, want %v", per, want)
	}
}

func TestSchedulerPendingUntilResourcesFree(t *testing.T) {
	h := newHarness(t, nil)
	h.createNodes(mkNode("n1", withResources(1*cpu, 1*gib)))
	first := mkTask("first", "web", reserve(0, 768*mib))
	h.createTasks(first)
	h.waitAssigned("first")

	h.createTasks(mkTask("second", "web", reserve(0, 768*mib)))
	h.waitReason("second", "no suitable node (insufficient memory on 1 node)")

	// The first task ends: its memory goes to the second.
	h.changeTask("first", func(t *pb.Task) { t.Status = &pb.TaskStatus{State: pb.TaskState_TASK_STATE_COMPLETE} })
	if got := h.waitAssigned("second"); got.GetNodeId() != "n1" || got.GetPendingReason() != "" {
		t.Fatalf("second task: node %q, reason %q", got.GetNodeId(), got.GetPendingReason())
	}

	// A task whose desired state drops to SHUTDOWN frees its reservation too.
	h.createTasks(mkTask("third", "web", reserve(0, 768*mib)))
	h.waitReason("third", "no suitable node (insufficient memory on 1 node)")
	h.changeTask("second", func(t *pb.Task) { t.DesiredState = pb.TaskState_TASK_STATE_SHUTDOWN })
	h.waitAssigned("third")
}

func TestSchedulerReactsToNodeChanges(t *testing.T) {
	h := newHarness(t, nil)
	h.createNodes(
		mkNode("down", withState(pb.NodeState_NODE_STATE_DOWN)),
		mkNode("drained", withAvailability(pb.NodeAvailability_NODE_AVAILABILITY_DRAIN)),
		mkNode("paused", withAvailability(pb.NodeAvailability_NODE_AVAILABILITY_PAUSE)),
		mkNode("manager", withRole(pb.NodeRole_NODE_ROLE_MANAGER), withRuntimes()),
	)
	h.createTasks(mkTask("t1", "web"), mkTask("t2", "db", constraints("node.labels.tier==db")))
	h.waitReason("t1", "no suitable node (1 node not ready; 2 nodes not active; no agent on 1 node)")

	h.changeNode("down", func(n *pb.Node) { n.Status.State = pb.NodeState_NODE_STATE_READY })
	if got := h.waitAssigned("t1"); got.GetNodeId() != "down" {
		t.Fatalf("t1 on %q, want the node that came up", got.GetNodeId())
	}
	h.waitReason("t2", "no suitable node (2 nodes not active; no agent on 1 node; scheduling constraints not satisfied on 1 node)")

	// A label change makes a node eligible.
	h.changeNode("drained", func(n *pb.Node) {
		n.Spec.Availability = pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE
		withLabel("tier", "db")(n)
	})
	if got := h.waitAssigned("t2"); got.GetNodeId() != "drained" {
		t.Fatalf("t2 on %q, want drained", got.GetNodeId())
	}

	// A new node takes new work; nodes that are not usable get none.
	h.createNodes(mkNode("new"))
	h.createTasks(tasks("api", 3)...)
	for _, id := range []string{"api-1", "api-2", "api-3"} {
		if n := h.waitAssigned(id).GetNodeId(); n != "down" && n != "drained" && n != "new" {
			t.Fatalf("%s placed on %q", id, n)
		}
	}
}

func TestSchedulerGlobalTasks(t *testing.T) {
	h := newHarness(t, nil)
	h.createNodes(mkNode("a"), mkNode("b", withAvailability(pb.NodeAvailability_NODE_AVAILABILITY_PAUSE)))
	h.createTasks(
		mkTask("on-a", "mon", onNode("a")),
		mkTask("on-b", "mon", onNode("b")),
	)
	if got := h.waitAssigned("on-a"); got.GetNodeId() != "a" {
		t.Fatalf("global task on %q, want a", got.GetNodeId())
	}
	h.waitReason("on-b", "no suitable node (1 node not active)")
	h.changeNode("b", func(n *pb.Node) { n.Spec.Availability = pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE })
	if got := h.waitAssigned("on-b"); got.GetNodeId() != "b" {
		t.Fatalf("global task on %q, want b", got.GetNodeId())
	}
}

func TestSchedulerLeavesOtherTasksAlone(t *testing.T) {
	h := newHarness(t, nil)
	h.createNodes(mkNode("a"))
	stopping := mkTask("stopping", "web", func(t *pb.Task) { t.DesiredState = pb.TaskState_TASK_STATE_SHUTDOWN })
	running := mkTask("running", "web", running("a"))
	h.createTasks(stopping, running)
	before := map[string]uint64{"stopping": h.task("stopping").GetMeta().GetVersion(), "running": h.task("running").GetMeta().GetVersion()}
	// Tasks are handled in order: once "last" is assigned, the others were seen.
	h.createTasks(mkTask("last", "web"))
	h.waitAssigned("last")
	for id, v := range before {
		if got := h.task(id).GetMeta().GetVersion(); got != v {
			t.Fatalf("task %s was written (version %d -> %d)", id, v, got)
		}
	}
	if got := h.task("stopping"); got.GetNodeId() != "" || got.GetStatus().GetState() != pb.TaskState_TASK_STATE_PENDING {
		t.Fatalf("a task desired SHUTDOWN was scheduled: node %q state %v", got.GetNodeId(), got.GetStatus().GetState())
	}
}

func TestSchedulerWritesReasonOnlyWhenItChanges(t *testing.T) {
	h := newHarness(t, nil)
	h.createNodes(mkNode("n1", withResources(1*cpu, 1*gib)))
	h.createTasks(mkTask("first", "web", reserve(0, 768*mib)))
	h.waitAssigned("first")
	h.createTasks(mkTask("second", "web", reserve(0, 768*mib)))
	before := h.waitReason("second", "no suitable node (insufficient memory on 1 node)")

	// A node change that leaves the reason as it was: the task is tried
	// again, and not written.
	h.changeNode("n1", withLabel("touched", "yes"))
	deadline := time.After(waitTimeout)
	for retried := false; !retried; {
		select {
		case p := <-h.passes:
			retried = p.tasks == 1 && p.placed == 0 && p.writes == 0 && p.err == nil
		case <-deadline:
			t.Fatalf("no retry pass after the node changed")
		}
	}
	if after := h.task("second"); after.GetMeta().GetVersion() != before.GetMeta().GetVersion() {
		t.Fatalf("pending reason rewritten unchanged: version %d -> %d (reason %q)",
			before.GetMeta().GetVersion(), after.GetMeta().GetVersion(), after.GetPendingReason())
	}

	// A change of the reason is written.
	h.createNodes(mkNode("n2", withState(pb.NodeState_NODE_STATE_DOWN)))
	h.waitReason("second", "no suitable node (1 node not ready; insufficient memory on 1 node)")
}

func TestSchedulerManyTasksInChunks(t *testing.T) {
	h := newHarness(t, func(s *Scheduler) { s.maxChunk = 150; s.maxBatch = 1000 })
	var nodes []*pb.Node
	for i := 0; i < 40; i++ {
		nodes = append(nodes, mkNode(fmt.Sprintf("n%02d", i)))
	}
	h.createNodes(nodes...)
	const n = 2400
	ts := tasks("web", n)
	for i := 0; i < n; i += 400 {
		h.createTasks(ts[i : i+400]...)
	}
	per := map[string]int{}
	h.waitFor("all tasks assigned", func(tx *raftstore.Tx) bool {
		clear(per)
		for _, t := range tx.Tasks().List() {
			if t.GetStatus().GetState() != pb.TaskState_TASK_STATE_ASSIGNED {
				return false
			}
			per[t.GetNodeId()]++
		}
		return true
	})
	for _, nd := range nodes {
		if per[nd.GetId()] != n/40 {
			t.Fatalf("placement %v, want %d per node", per, n/40)
		}
	}
}

func TestSchedulerStartsWithExistingState(t *testing.T) {
	// Tasks pending before the scheduler starts, and tasks already running,
	// are read from the store when it starts.
	h := newStoreHarness(t)
	h.createNodes(mkNode("a"), mkNode("b"))
	h.createTasks(mkTask("r1", "web", running("a")), mkTask("r2", "web", running("a")))
	h.createTasks(tasks("web", 2)...)
	h.start(nil)
	for _, id := range []string{"web-1", "web-2"} {
		if got := h.waitAssigned(id); got.GetNodeId() != "b" {
			t.Fatalf("%s on %q, want b (a already runs two tasks of the service)", id, got.GetNodeId())
		}
	}
}

func TestSchedulerStopsPromptly(t *testing.T) {
	h := newStoreHarness(t)
	var nodes []*pb.Node
	for i := 0; i < 20; i++ {
		nodes = append(nodes, mkNode(fmt.Sprintf("n%02d", i)))
	}
	h.createNodes(nodes...)
	h.createTasks(tasks("web", 2000)...)
	firstAssigned := h.st.Watch(func(ev raftstore.Event) bool {
		t, ok := ev.Object.(*pb.Task)
		return ok && t.GetStatus().GetState() == pb.TaskState_TASK_STATE_ASSIGNED
	})
	defer firstAssigned.Close()

	// Small transactions: the scheduler is mid-pass when it is cancelled.
	s := New(h.st, h.clock, testLogger(t))
	s.maxChunk = 20
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	select {
	case <-firstAssigned.C():
	case <-time.After(waitTimeout):
		t.Fatalf("no task assigned")
	}
	cancel()
	stopped := time.Now()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatalf("scheduler did not stop")
	}
	if d := time.Since(stopped); d > 2*time.Second {
		t.Fatalf("scheduler took %v to stop", d)
	}
}

// Tasks that become pending while the tick runs are decided together, in
// one pass, once the tick has passed, and not a nanosecond sooner.
func TestSchedulerBatchesWithinTick(t *testing.T) {
	h := newManualHarness(t, nil)
	h.createNodes(mkNode("a"), mkNode("b"), mkNode("c"))
	ts := tasks("web", 9)
	for i := 0; i < len(ts); i += 3 {
		h.createTasks(ts[i : i+3]...)
	}
	h.waitState("nine tasks queued and its tick armed", func(w waitStats) bool { return w.queued == 9 && w.timer == defaultTick })
	// The tick was armed for the first of them and the clock has not moved.
	if d, ok := h.clock.Next(); !ok || d != defaultTick {
		t.Fatalf("next timer in %v (%v), want the tick, %v", d, ok, defaultTick)
	}
	h.clock.Advance(defaultTick - time.Nanosecond)
	if len(h.passes) != 0 {
		t.Fatalf("a pass before the tick: %+v", <-h.passes)
	}
	h.clock.Advance(time.Nanosecond)
	if p := h.nextPass(); p.tasks != 9 || p.placed != 9 || p.err != nil {
		t.Fatalf("pass %+v, want the nine tasks in one", p)
	}
	per := map[string]int{}
	for _, task := range ts {
		per[h.waitAssigned(task.GetId()).GetNodeId()]++
	}
	if want := map[string]int{"a": 3, "b": 3, "c": 3}; !equalCounts(per, want) {
		t.Fatalf("placement %v, want %v", per, want)
	}
}

// A full batch does not wait for the tick; a partial one does.
func TestSchedulerFullBatchStartsAtOnce(t *testing.T) {
	h := newManualHarness(t, func(s *Scheduler) { s.maxBatch = 10 })
	h.createNodes(mkNode("a"))
	h.createTasks(tasks("web", 10)...)
	if p := h.settle(); p.tasks != 10 || p.placed != 10 {
		t.Fatalf("pass %+v, want the ten tasks at once", p)
	}
	if !h.clock.Now().Equal(epoch) {
		t.Fatal("the clock moved")
	}
	h.createTasks(tasks("api", 4)...)
	h.waitState("four tasks queued and its tick armed", func(w waitStats) bool { return w.queued == 4 && w.timer == defaultTick })
	if len(h.passes) != 0 {
		t.Fatalf("a pass of a partial batch before the tick: %+v", <-h.passes)
	}
	h.clock.Advance(defaultTick)
	if p := h.nextPass(); p.tasks != 4 || p.placed != 4 {
		t.Fatalf("pass %+v, want the four tasks once the tick passed", p)
	}
}

// Resources freed up: the tasks that could not be placed are tried again
// after the retry delay.
func TestSchedulerRetriesAfterRetryDelay(t *testing.T) {
	h := newManualHarness(t, nil)
	h.createNodes(mkNode("n1", withResources(1*cpu, 1*gib)))
	h.createTasks(mkTask("first", "web", reserve(0, 768*mib)))
	h.waitState("a task queued", func(w waitStats) bool { return w.queued == 1 && w.timer == defaultTick })
	h.clock.Advance(defaultTick)
	if p := h.settle(); p.placed != 1 {
		t.Fatalf("pass %+v, want the first task placed", p)
	}
	h.waitAssigned("first")
	h.createTasks(mkTask("second", "web", reserve(0, 768*mib)))
	h.waitState("a task queued", func(w waitStats) bool { return w.queued == 1 && w.timer == defaultTick })
	h.clock.Advance(defaultTick)
	if p := h.settle(); p.tasks != 1 || p.placed != 0 {
		t.Fatalf("pass %+v, want the second task left unplaced", p)
	}
	h.waitReason("second", "no suitable node (insufficient memory on 1 node)")

	h.changeTask("first", func(t *pb.Task) { t.Status = &pb.TaskStatus{State: pb.TaskState_TASK_STATE_COMPLETE} })
	h.waitState("its retry delay armed", func(w waitStats) bool { return w.queued == 0 && w.timer == defaultRetryDelay })
	if len(h.passes) != 0 {
		t.Fatalf("a pass before the retry delay: %+v", <-h.passes)
	}
	h.clock.Advance(defaultRetryDelay - time.Nanosecond)
	if len(h.passes) != 0 {
		t.Fatalf("a pass before the retry delay: %+v", <-h.passes)
	}
	h.clock.Advance(time.Nanosecond)
	if p := h.nextPass(); p.tasks != 1 || p.placed != 1 {
		t.Fatalf("pass %+v, want the unplaced task retried and placed", p)
	}
	if got := h.waitAssigned("second"); got.GetNodeId() != "n1" {
		t.Fatalf("second task on %q", got.GetNodeId())
	}
}
