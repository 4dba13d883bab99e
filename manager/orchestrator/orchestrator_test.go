package orchestrator

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
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

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The tests run the orchestrator on a memory store with a fake clock. Most
// drive its reconcile passes directly (reconcile, as the loop does for the
// services a change touched) and move the clock by hand (advance); the
// TestRun* tests run the loop itself and wait on the store's events.

var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// harness is an orchestrator over a memory store, with a fake clock.
type harness struct {
	t     *testing.T
	clock *clock.Fake
	store *raftstore.MemoryStore
	orch  *Orchestrator
	// passes receives the loop's passes (runLoop).
	passes chan pass
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	clk := clock.NewFake(epoch)
	s := storetest.Memory(t, clk.Now)
	o := New(s, clk, slog.New(&failOnWarn{t: t}))
	t.Cleanup(o.stopTimers)
	h := &harness{t: t, clock: clk, store: s, orch: o}
	// Node a exists for the tests that place tasks on it: a task on an
	// unknown node is replaced whatever the restart policy says.
	addNode(h, "a", pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE, pb.NodeState_NODE_STATE_READY)
	return h
}

// failOnWarn fails the test on a log record at Warn or above: a reconcile
// pass that fails only logs.
type failOnWarn struct {
	t     *testing.T
	attrs []slog.Attr
}

func (h *failOnWarn) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h *failOnWarn) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	for _, a := range h.attrs {
		fmt.Fprintf(&b, " %s", a)
	}
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s", a); return true })
	h.t.Errorf("orchestrator logged %s: %s%s", r.Level, r.Message, b.String())
	return nil
}
func (h *failOnWarn) WithAttrs(as []slog.Attr) slog.Handler {
	return &failOnWarn{t: h.t, attrs: append(h.attrs[:len(h.attrs):len(h.attrs)], as...)}
}
func (h *failOnWarn) WithGroup(string) slog.Handler { return h }

func (h *harness) update(fn func(tx *raftstore.Tx) error) {
	h.t.Helper()
	if _, err := h.store.Update(context.Background(), fn); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) index() uint64 {
	var idx uint64
	h.store.View(func(tx *raftstore.Tx) { idx = tx.Index() })
	return idx
}

// reconcile runs reconcile passes over every service, as the loop does
// for the services a change touched, until a pass changes nothing.
func (h *harness) reconcile() {
	h.t.Helper()
	for range 10 {
		before := h.index()
		h.orch.ReconcileAll(context.Background())
		if h.index() == before {
			return
		}
	}
	h.t.Fatalf("reconcile passes still change the store after 10 passes; tasks:\n%s", describe(h.allTasks()))
}

// advance moves the clock by d and returns the services whose delayed
// restarts woke up meanwhile, as the loop would receive them.
func (h *harness) advance(d time.Duration) []string {
	h.clock.Advance(d)
	var woken []string
	for {
		select {
		case id := <-h.orch.wake:
			woken = append(woken, id)
		default:
			return woken
		}
	}
}

func (h *harness) tasks(svc string) []*pb.Task {
	var out []*pb.Task
	h.store.View(func(tx *raftstore.Tx) { out = tx.Tasks().Find(raftstore.IndexService, svc) })
	return out
}

func (h *harness) allTasks() []*pb.Task {
	var out []*pb.Task
	h.store.View(func(tx *raftstore.Tx) { out = tx.Tasks().List() })
	return out
}

// expect checks cond on the service's tasks.
func (h *harness) expect(svc, what string, cond func([]*pb.Task) bool) []*pb.Task {
	h.t.Helper()
	ts := h.tasks(svc)
	if !cond(ts) {
		h.t.Fatalf("want %s; tasks:\n%s", what, describe(ts))
	}
	return ts
}

func describe(ts []*pb.Task) string {
	s := ""
	for _, t := range ts {
		s += fmt.Sprintf("  %s slot %d node %q desired %s observed %s\n", t.GetServiceId(), t.GetSlot(), t.GetNodeId(), t.GetDesiredState(), t.GetStatus().GetState())
	}
	return s
}

func service(id string, replicas uint64, restart *pb.RestartPolicy) *pb.Service {
	return &pb.Service{Id: id, SpecVersion: 1, Spec: &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: id},
		Task:        &pb.TaskSpec{Runtime: "process", Container: &pb.ContainerSpec{Image: "/bin/true"}, Restart: restart},
		Mode:        &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: replicas}},
	}}
}

func (h *harness) scale(svc string, replicas uint64) {
	h.update(func(tx *raftstore.Tx) error {
		s, _ := tx.Services().Get(svc)
		s.Spec.GetReplicated().Replicas = replicas
		return tx.Services().Update(s)
	})
}

// activeSlots lists the slots with a task that should run.
func activeSlots(ts []*pb.Task) []uint64 {
	var out []uint64
	for _, t := range ts {
		if t.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING {
			out = append(out, t.GetSlot())
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func equalSlots(a []uint64, b ...uint64) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

// runnable reports whether a task waits to be started: desired RUNNING,
// not yet placed.
func runnable(ts []*pb.Task) bool {
	for _, tk := range ts {
		if tk.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING && tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_PENDING {
			return true
		}
	}
	return false
}

// waitingRestarts returns the tasks waiting for their restart delay (desired READY).
func waitingRestarts(ts []*pb.Task) []*pb.Task {
	var out []*pb.Task
	for _, tk := range ts {
		if tk.GetDesiredState() == pb.TaskState_TASK_STATE_READY {
			out = append(out, tk)
		}
	}
	return out
}

// place plays the scheduler and a worker: assigns pending runnable tasks
// to a node and marks them running.
func (h *harness) place(svc, node string) {
	h.update(func(tx *raftstore.Tx) error {
		for _, t := range tx.Tasks().Find(raftstore.IndexService, svc) {
			if t.GetStatus().GetState() == pb.TaskState_TASK_STATE_PENDING && t.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING {
				if t.NodeId == "" {
					t.NodeId = node
				}
				t.Status = &pb.TaskStatus{State: pb.TaskState_TASK_STATE_RUNNING, Timestamp: h.clock.Now().UnixNano()}
				if err := tx.Tasks().Update(t); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func (h *harness) setState(taskID string, state pb.TaskState) {
	h.update(func(tx *raftstore.Tx) error {
		t, _ := tx.Tasks().Get(taskID)
		t.Status = &pb.TaskStatus{State: state, Timestamp: h.clock.Now().UnixNano(), Err: "test"}
		return tx.Tasks().Update(t)
	})
}

// failRunning fails the service's tasks that should run; nodeLost marks
// them failed because their node went Down, as the dispatcher does.
func (h *harness) failRunning(svc string, nodeLost bool) {
	h.update(func(tx *raftstore.Tx) error {
		for _, tk := range tx.Tasks().Find(raftstore.IndexService, svc) {
			if tk.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING {
				tk.Status = &pb.TaskStatus{State: pb.TaskState_TASK_STATE_FAILED, Timestamp: h.clock.Now().UnixNano(), Err: "test"}
				if nodeLost {
					tk.Status.Message, tk.Status.NodeLost = "node down", true
				}
				if err := tx.Tasks().Update(tk); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func addNode(h *harness, id string, availability pb.NodeAvailability, state pb.NodeState) {
	h.update(func(tx *raftstore.Tx) error {
		n := &pb.Node{Id: id, Role: pb.NodeRole_NODE_ROLE_WORKER,
			Spec:        &pb.NodeSpec{Availability: availability, DesiredRole: pb.NodeRole_NODE_ROLE_WORKER},
			Description: &pb.NodeDescription{Hostname: id, Runtimes: []string{"process"}},
			Status:      &pb.NodeStatus{State: state}}
		if old, ok := tx.Nodes().Get(id); ok {
			n.Meta = old.Meta
			return tx.Nodes().Update(n)
		}
		return tx.Nodes().Create(n)
	})
}

func TestReplicatedScaleUpAndDown(t *testing.T) {
	h := newHarness(t)
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(service("web", 3, nil)) })
	h.reconcile()
	h.expect("web", "slots 1..3", func(ts []*pb.Task) bool { return equalSlots(activeSlots(ts), 1, 2, 3) })
	for _, tk := range h.tasks("web") {
		if tk.GetStatus().GetState() != pb.TaskState_TASK_STATE_PENDING || tk.GetSpecVersion() != 1 || tk.GetServiceName() != "web" {
			t.Fatalf("new task: %+v", tk)
		}
	}
	h.scale("web", 5)
	h.reconcile()
	h.expect("web", "slots 1..5", func(ts []*pb.Task) bool { return equalSlots(activeSlots(ts), 1, 2, 3, 4, 5) })
	h.scale("web", 2)
	h.reconcile()
	// Unplaced tasks of removed slots are deleted outright.
	h.expect("web", "two tasks left", func(ts []*pb.Task) bool { return len(ts) == 2 && len(activeSlots(ts)) == 2 })
}

func TestScaleDownPrefersCrowdedNodes(t *testing.T) {
	h := newHarness(t)
	addNode(h, "b", pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE, pb.NodeState_NODE_STATE_READY)
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(service("api", 3, nil)) })
	h.reconcile()
	h.expect("api", "three tasks", func(ts []*pb.Task) bool { return len(activeSlots(ts)) == 3 })
	// Slots 1 and 2 on node a, slot 3 on node b.
	h.update(func(tx *raftstore.Tx) error {
		for _, tk := range tx.Tasks().Find(raftstore.IndexService, "api") {
			tk.NodeId = map[uint64]string{1: "a", 2: "a", 3: "b"}[tk.GetSlot()]
			tk.Status = &pb.TaskStatus{State: pb.TaskState_TASK_STATE_RUNNING}
			if err := tx.Tasks().Update(tk); err != nil {
				return err
			}
		}
		s, _ := tx.Services().Get("api")
		s.Spec.GetReplicated().Replicas = 2
		return tx.Services().Update(s)
	})
	h.reconcile()
	ts := h.expect("api", "one slot removed", func(ts []*pb.Task) bool { return len(activeSlots(ts)) == 2 })
	if !equalSlots(activeSlots(ts), 1, 3) {
		t.Fatalf("scale down should remove the highest slot on the crowded node (2), kept %v", activeSlots(ts))
	}
}

func TestRestartPolicy(t *testing.T) {
	cases := []struct {
		name     string
		policy   *pb.RestartPolicy
		end      pb.TaskState
		restarts bool
	}{
		{"any restarts a failure", &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY}, pb.TaskState_TASK_STATE_FAILED, true},
		{"any restarts a completion", &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY}, pb.TaskState_TASK_STATE_COMPLETE, true},
		{"on-failure restarts a failure", &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ON_FAILURE}, pb.TaskState_TASK_STATE_FAILED, true},
		{"on-failure leaves a completion", &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ON_FAILURE}, pb.TaskState_TASK_STATE_COMPLETE, false},
		{"none leaves a failure", &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_NONE}, pb.TaskState_TASK_STATE_FAILED, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(service("s", 1, tc.policy)) })
			h.reconcile()
			h.expect("s", "a task", func(ts []*pb.Task) bool { return len(ts) == 1 })
			h.place("s", "a")
			first := h.tasks("s")[0]
			h.setState(first.GetId(), tc.end)
			h.reconcile()
			if tc.restarts {
				ts := h.expect("s", "a replacement", func(ts []*pb.Task) bool { return len(ts) == 2 && len(activeSlots(ts)) == 1 })
				for _, tk := range ts {
					if tk.GetId() == first.GetId() && tk.GetDesiredState() != pb.TaskState_TASK_STATE_SHUTDOWN {
						t.Fatalf("ended task not shut down: %v", tk.GetDesiredState())
					}
					if tk.GetId() != first.GetId() && tk.GetSlot() != first.GetSlot() {
						t.Fatalf("replacement in slot %d, want %d", tk.GetSlot(), first.GetSlot())
					}
				}
				return
			}
			h.expect("s", "the task shut down, not replaced", func(ts []*pb.Task) bool {
				return len(ts) == 1 && ts[0].GetDesiredState() == pb.TaskState_TASK_STATE_SHUTDOWN
			})
		})
	}
}

// A restart waits for its delay to the nanosecond, wakes the loop when it
// is due, and the restart policy's attempts run out.
func TestRestartMaxAttemptsAndDelay(t *testing.T) {
	h := newHarness(t)
	const delay = 300 * time.Millisecond
	policy := &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY, MaxAttempts: 2, Delay: int64(delay)}
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(service("flaky", 1, policy)) })
	h.reconcile()
	for attempt := 1; attempt <= 3; attempt++ {
		if attempt > 1 {
			// The replacement waits (desired READY) until the delay has passed.
			h.expect("flaky", "a delayed restart", func(ts []*pb.Task) bool { return len(waitingRestarts(ts)) == 1 && !runnable(ts) })
			if woken := h.advance(delay - time.Nanosecond); len(woken) != 0 {
				t.Fatalf("restart %d woke %v before its delay", attempt, woken)
			}
			h.reconcile()
			h.expect("flaky", "the restart still waiting just before its delay", func(ts []*pb.Task) bool { return len(waitingRestarts(ts)) == 1 && !runnable(ts) })
			if woken := h.advance(time.Nanosecond); fmt.Sprint(woken) != "[flaky]" {
				t.Fatalf("restart %d woke %v when due, want [flaky]", attempt, woken)
			}
			h.reconcile()
		}
		h.expect("flaky", "a runnable task", runnable)
		h.place("flaky", "a")
		h.failRunning("flaky", false)
		h.reconcile()
	}
	// Three failures, two restarts allowed: no fourth task, ever.
	h.expect("flaky", "the third failure shut down", func(ts []*pb.Task) bool { return len(activeSlots(ts)) == 0 && len(ts) == 3 })
	if d, ok := h.clock.Next(); ok {
		t.Fatalf("a timer is armed (due in %v) with no restart left", d)
	}
	h.advance(time.Hour)
	h.reconcile()
	if ts := h.tasks("flaky"); len(ts) != 3 {
		t.Fatalf("max attempts exceeded:\n%s", describe(ts))
	}
}

// Failures outside the restart window are no attempts.
func TestRestartWindow(t *testing.T) {
	h := newHarness(t)
	policy := &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY, MaxAttempts: 1, Window: int64(time.Minute)}
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(service("s", 1, policy)) })
	h.reconcile()
	for i := range 3 {
		h.expect("s", fmt.Sprintf("a runnable task after %d failures a minute apart", i), runnable)
		h.place("s", "a")
		h.advance(time.Minute + time.Second)
		h.failRunning("s", false)
		h.reconcile()
	}
	// Two failures within the window: the second is the attempt too many.
	h.expect("s", "a runnable task", runnable)
	h.place("s", "a")
	h.failRunning("s", false)
	h.reconcile()
	h.expect("s", "no replacement for the second failure within the window", func(ts []*pb.Task) bool { return len(activeSlots(ts)) == 0 })
}

// A task failed because its node went Down did not fail by itself: it is
// replaced at once, without the restart delay, and is not counted as an
// attempt; a task that fails by itself still waits for the delay.
func TestNodeLostTaskReplacedAtOnce(t *testing.T) {
	h := newHarness(t)
	policy := &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY, MaxAttempts: 1, Delay: int64(time.Hour)}
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(service("web", 1, policy)) })
	h.reconcile()
	// The clock never moves: "at once" is at the same instant.
	for lost := 1; lost <= 3; lost++ {
		h.expect("web", fmt.Sprintf("a runnable task after %d lost nodes", lost-1), runnable)
		h.place("web", "a")
		h.failRunning("web", true)
		h.reconcile()
		if d, ok := h.clock.Next(); ok {
			t.Fatalf("a restart delay (%v) was armed for a task lost with its node", d)
		}
	}
	h.expect("web", "a runnable task after 3 lost nodes", runnable)
	h.place("web", "a")
	h.failRunning("web", false)
	h.reconcile()
	// A real failure: its replacement waits for the hour's delay.
	ts := h.expect("web", "a delayed replacement", func(ts []*pb.Task) bool { return len(waitingRestarts(ts)) == 1 })
	if runnable(ts) {
		t.Fatalf("a task that failed by itself was replaced without its restart delay:\n%s", describe(ts))
	}
	if d, ok := h.clock.Next(); !ok || d != time.Hour {
		t.Fatalf("next timer in %v (%v), want the hour's restart delay", d, ok)
	}
}

func TestTasksMoveOffDrainedAndRemovedNodes(t *testing.T) {
	h := newHarness(t)
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(service("web", 2, nil)) })
	h.reconcile()
	h.expect("web", "two tasks", func(ts []*pb.Task) bool { return len(activeSlots(ts)) == 2 })
	h.place("web", "a")
	addNode(h, "a", pb.NodeAvailability_NODE_AVAILABILITY_DRAIN, pb.NodeState_NODE_STATE_READY)
	h.reconcile()
	h.expect("web", "replacements off the drained node", func(ts []*pb.Task) bool {
		fresh := 0
		for _, tk := range ts {
			if tk.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING && tk.GetNodeId() == "" {
				fresh++
			}
			if tk.GetNodeId() == "a" && tk.GetDesiredState() != pb.TaskState_TASK_STATE_SHUTDOWN {
				return false
			}
		}
		return fresh == 2
	})
	// Paused: tasks stay. The replacements start once the drained node's
	// worker stopped the old tasks and the default restart delay passed;
	// then they run on b.
	addNode(h, "b", pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE, pb.NodeState_NODE_STATE_READY)
	for _, tk := range h.tasks("web") {
		if tk.GetNodeId() == "a" {
			h.setState(tk.GetId(), pb.TaskState_TASK_STATE_SHUTDOWN)
		}
	}
	h.advance(DefaultRestartDelay)
	h.reconcile()
	h.place("web", "b")
	h.expect("web", "two tasks running on b", func(ts []*pb.Task) bool {
		onB := 0
		for _, tk := range ts {
			if tk.GetNodeId() == "b" && tk.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING {
				onB++
			}
		}
		return onB == 2
	})
	before := h.index()
	addNode(h, "b", pb.NodeAvailability_NODE_AVAILABILITY_PAUSE, pb.NodeState_NODE_STATE_READY)
	h.reconcile()
	h.advance(time.Hour) // nor later
	h.reconcile()
	if h.index() != before+1 {
		t.Fatalf("the orchestrator wrote after a node was paused")
	}
	for _, tk := range h.tasks("web") {
		if tk.GetNodeId() == "b" && tk.GetDesiredState() != pb.TaskState_TASK_STATE_RUNNING {
			t.Fatalf("a paused node lost its task")
		}
	}
	// Removed node: its tasks are failed and replaced.
	h.update(func(tx *raftstore.Tx) error { return tx.Nodes().Delete("b") })
	h.reconcile()
	h.expect("web", "replacements for the removed node", func(ts []*pb.Task) bool {
		unplaced := 0
		for _, tk := range ts {
			if tk.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING && tk.GetNodeId() == "" {
				unplaced++
			}
			if tk.GetNodeId() == "b" && (tk.GetDesiredState() != pb.TaskState_TASK_STATE_SHUTDOWN || tk.GetStatus().GetMessage() != "node removed") {
				return false
			}
		}
		return unplaced == 2
	})
}

func TestGlobalServiceFollowsNodes(t *testing.T) {
	h := newHarness(t)
	addNode(h, "b", pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE, pb.NodeState_NODE_STATE_READY)
	svc := service("agent", 0, nil)
	svc.Spec.Mode = &pb.ServiceSpec_Global{Global: &pb.GlobalService{}}
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(svc) })
	h.reconcile()
	h.expect("agent", "a task on a and b", func(ts []*pb.Task) bool { return nodesOf(ts) == "[a b]" })
	addNode(h, "c", pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE, pb.NodeState_NODE_STATE_READY)
	h.reconcile()
	h.expect("agent", "a task on the node that joined", func(ts []*pb.Task) bool { return nodesOf(ts) == "[a b c]" })
	addNode(h, "a", pb.NodeAvailability_NODE_AVAILABILITY_DRAIN, pb.NodeState_NODE_STATE_READY)
	h.reconcile()
	h.expect("agent", "none on the drained node", func(ts []*pb.Task) bool { return nodesOf(ts) == "[b c]" })
}

// nodesOf lists the nodes of the tasks that should run.
func nodesOf(ts []*pb.Task) string {
	var ns []string
	for _, tk := range ts {
		if tk.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING {
			ns = append(ns, tk.GetNodeId())
		}
	}
	sort.Strings(ns)
	return fmt.Sprint(ns)
}

func TestHistoryIsBoundedAndRemovedServiceWindsDown(t *testing.T) {
	h := newHarness(t)
	h.update(func(tx *raftstore.Tx) error {
		return tx.Services().Create(service("s", 1, &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY}))
	})
	h.reconcile()
	for range 8 {
		h.expect("s", "a runnable task", func(ts []*pb.Task) bool { return len(activeSlots(ts)) == 1 })
		h.place("s", "a")
		h.advance(time.Second) // the history is kept newest first
		h.failRunning("s", false)
		h.reconcile()
	}
	h.expect("s", "history trimmed to 5 plus the live task", func(ts []*pb.Task) bool { return len(ts) <= DefaultHistoryLimit+1 })
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Delete("s") })
	h.reconcile()
	h.expect("s", "every remaining task told to go", func(ts []*pb.Task) bool {
		for _, tk := range ts {
			if tk.GetDesiredState() != pb.TaskState_TASK_STATE_REMOVE {
				return false
			}
		}
		return true
	})
	for _, tk := range h.tasks("s") {
		h.setState(tk.GetId(), pb.TaskState_TASK_STATE_SHUTDOWN)
	}
	h.reconcile()
	h.expect("s", "all deleted", func(ts []*pb.Task) bool { return len(ts) == 0 })
}

// ---------------------------------------------------------------- the loop

// pass is one reconcile of the loop, as onPass reports it.
type pass struct {
	services []string
	wrote    bool
	// index is the store's index once the pass was done.
	index uint64
}

// runLoop starts the orchestrator's loop on h's store until the test ends;
// its passes arrive on h.passes.
func (h *harness) runLoop() {
	h.passes = make(chan pass, 1024)
	h.orch.onPass = func(services []string, wrote bool) {
		h.passes <- pass{services: services, wrote: wrote, index: h.index()}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); h.orch.Run(ctx) }()
	h.t.Cleanup(func() { cancel(); wg.Wait() })
}

// runUntil waits until cond holds on the store, checking after every
// change, while the loop runs: each gather window the loop opens is ended
// by moving the clock past it, as time would.
func (h *harness) runUntil(what string, cond func(ts []*pb.Task) bool) {
	h.t.Helper()
	var ok bool
	sub := h.store.ViewAndWatch(func(tx *raftstore.Tx) { ok = cond(tx.Tasks().List()) }, nil)
	defer sub.Close()
	h.gatherUntil(what, func() bool { return ok }, func(_ raftstore.Event, open bool) {
		if !open {
			h.t.Fatalf("waiting for %s: watch ended: %v", what, sub.Err())
		}
		h.store.View(func(tx *raftstore.Tx) { ok = cond(tx.Tasks().List()) })
	}, sub.C(), nil)
}

// runUntilIdle lets the loop run until a pass that started at index (or
// later) wrote nothing: the loop then waits for a change or a timer.
func (h *harness) runUntilIdle(index uint64) {
	h.t.Helper()
	idle := false
	h.gatherUntil("an idle pass", func() bool { return idle }, nil, nil, func(p pass) {
		idle = !p.wrote && p.index >= index
	})
}

// gatherUntil moves the clock past every gather window the loop opens and
// hands events and passes to the callbacks until done reports true.
func (h *harness) gatherUntil(what string, done func() bool, onEvent func(raftstore.Event, bool), events <-chan raftstore.Event, onPass func(pass)) {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gathering := make(chan struct{}, 1)
	waitGather := func() {
		go func() {
			if h.clock.WaitForTimer(ctx, gatherWindow) == nil {
				gathering <- struct{}{}
			}
		}()
	}
	waitGather()
	var passes chan pass
	if onPass != nil {
		passes = h.passes
	}
	failure := time.NewTimer(30 * time.Second) // fails the test; never decides it
	defer failure.Stop()
	for !done() {
		select {
		case ev, open := <-events:
			onEvent(ev, open)
		case p := <-passes:
			onPass(p)
		case <-gathering:
			h.clock.Advance(gatherWindow)
			waitGather()
		case <-failure.C:
			h.t.Fatalf("%s did not happen; tasks:\n%s", what, describe(h.allTasks()))
		}
	}
}

// The loop reconciles what changes touch: a new service, a failed task, a
// node that joins (for global services), a deleted service.
func TestRunReconcilesChanges(t *testing.T) {
	h := newHarness(t)
	h.runLoop()
	h.update(func(tx *raftstore.Tx) error {
		if err := tx.Services().Create(service("web", 2, &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY})); err != nil {
			return err
		}
		svc := service("agent", 0, nil)
		svc.Spec.Mode = &pb.ServiceSpec_Global{Global: &pb.GlobalService{}}
		return tx.Services().Create(svc)
	})
	h.runUntil("two web tasks and an agent on a", func(ts []*pb.Task) bool {
		return equalSlots(activeSlots(byService(ts, "web")), 1, 2) && nodesOf(byService(ts, "agent")) == "[a]"
	})
	h.place("web", "a")
	h.failRunning("web", false)
	h.runUntil("both web slots replaced", func(ts []*pb.Task) bool {
		web := byService(ts, "web")
		return len(web) == 4 && equalSlots(activeSlots(web), 1, 2) && runnable(web)
	})
	addNode(h, "b", pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE, pb.NodeState_NODE_STATE_READY)
	h.runUntil("an agent on the node that joined", func(ts []*pb.Task) bool { return nodesOf(byService(ts, "agent")) == "[a b]" })
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Delete("web") })
	h.runUntil("the deleted service's unplaced tasks deleted, its ended ones too", func(ts []*pb.Task) bool { return len(byService(ts, "web")) == 0 })
}

// A delayed restart wakes the loop when it is due, with nothing else
// changing in the store.
func TestRunWakesDelayedRestart(t *testing.T) {
	h := newHarness(t)
	const delay = 5 * time.Second // below the safety period: only the wake-up can promote it
	h.update(func(tx *raftstore.Tx) error {
		return tx.Services().Create(service("web", 1, &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY, Delay: int64(delay)}))
	})
	h.runLoop()
	h.runUntil("a task", runnable)
	h.place("web", "a")
	h.failRunning("web", false)
	h.runUntil("a delayed restart", func(ts []*pb.Task) bool { return len(waitingRestarts(ts)) == 1 })
	restart := waitingRestarts(h.tasks("web"))[0]
	created := time.Unix(0, restart.GetMeta().GetCreatedAt())
	// Once the loop reconciled after its own writes, it waits: nothing but
	// the restart's timer can make it reconcile before the safety period.
	h.runUntilIdle(h.index())
	for len(h.passes) > 0 {
		<-h.passes
	}
	h.clock.Advance(created.Add(delay).Sub(h.clock.Now()) - time.Millisecond)
	if len(h.passes) > 0 {
		t.Fatalf("the loop reconciled before the restart was due: %+v", <-h.passes)
	}
	h.clock.Advance(time.Millisecond)
	h.runUntil("the restart promoted once due", runnable)
	if p := <-h.passes; fmt.Sprint(p.services) != "[web]" || !p.wrote {
		t.Fatalf("the pass after the restart was due: %+v, want one of [web] that wrote", p)
	}
	var promoted *pb.Task
	h.store.View(func(tx *raftstore.Tx) { promoted, _ = tx.Tasks().Get(restart.GetId()) })
	if d := time.Unix(0, promoted.GetMeta().GetUpdatedAt()).Sub(created); d < delay || d >= safetyPeriod {
		t.Fatalf("promoted %v after it was created: want the %v delay, before any safety pass", d, delay)
	}
}

func byService(ts []*pb.Task, svc string) []*pb.Task {
	var out []*pb.Task
	for _, t := range ts {
		if t.GetServiceId() == svc {
			out = append(out, t)
		}
	}
	return out
}
