package orchestrator

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/storetest"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// harness runs an orchestrator over a store.
type harness struct {
	t     *testing.T
	store *raftstore.Store
}

func start(t *testing.T) *harness {
	t.Helper()
	s := storetest.OpenLeader(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { New(s, slog.New(slog.DiscardHandler)).Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	h := &harness{t: t, store: s}
	// Node a exists for the tests that place tasks on it: a task on an
	// unknown node is replaced whatever the restart policy says.
	addNode(h, "a", pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE, pb.NodeState_NODE_STATE_READY)
	return h
}

func (h *harness) update(fn func(tx *raftstore.Tx) error) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := h.store.Update(ctx, fn); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) tasks(svc string) []*pb.Task {
	var out []*pb.Task
	h.store.View(func(tx *raftstore.Tx) { out = tx.Tasks().Find(raftstore.IndexService, svc) })
	return out
}

// eventually polls until cond holds on the service's tasks.
func (h *harness) eventually(svc, what string, cond func([]*pb.Task) bool) []*pb.Task {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ts := h.tasks(svc)
		if cond(ts) {
			return ts
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s; tasks:\n%s", what, describe(ts))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func describe(ts []*pb.Task) string {
	s := ""
	for _, t := range ts {
		s += fmt.Sprintf("  slot %d node %q desired %s observed %s\n", t.GetSlot(), t.GetNodeId(), t.GetDesiredState(), t.GetStatus().GetState())
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

// place plays the scheduler and a worker: assigns pending runnable tasks
// to a node and marks them running.
func (h *harness) place(svc, node string) {
	h.update(func(tx *raftstore.Tx) error {
		for _, t := range tx.Tasks().Find(raftstore.IndexService, svc) {
			if t.GetStatus().GetState() == pb.TaskState_TASK_STATE_PENDING && t.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING {
				if t.NodeId == "" {
					t.NodeId = node
				}
				t.Status = &pb.TaskStatus{State: pb.TaskState_TASK_STATE_RUNNING, Timestamp: time.Now().UnixNano()}
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
		t.Status = &pb.TaskStatus{State: state, Timestamp: time.Now().UnixNano(), Err: "test"}
		return tx.Tasks().Update(t)
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
	h := start(t)
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(service("web", 3, nil)) })
	h.eventually("web", "slots 1..3", func(ts []*pb.Task) bool { return equalSlots(activeSlots(ts), 1, 2, 3) })
	for _, tk := range h.tasks("web") {
		if tk.GetStatus().GetState() != pb.TaskState_TASK_STATE_PENDING || tk.GetSpecVersion() != 1 || tk.GetServiceName() != "web" {
			t.Fatalf("new task: %+v", tk)
		}
	}
	h.update(func(tx *raftstore.Tx) error {
		s, _ := tx.Services().Get("web")
		s.Spec.GetReplicated().Replicas = 5
		return tx.Services().Update(s)
	})
	h.eventually("web", "slots 1..5", func(ts []*pb.Task) bool { return equalSlots(activeSlots(ts), 1, 2, 3, 4, 5) })
	h.update(func(tx *raftstore.Tx) error {
		s, _ := tx.Services().Get("web")
		s.Spec.GetReplicated().Replicas = 2
		return tx.Services().Update(s)
	})
	// Unplaced tasks of removed slots are deleted outright.
	h.eventually("web", "two tasks left", func(ts []*pb.Task) bool { return len(ts) == 2 && len(activeSlots(ts)) == 2 })
}

func TestScaleDownPrefersCrowdedNodes(t *testing.T) {
	h := start(t)
	addNode(h, "b", pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE, pb.NodeState_NODE_STATE_READY)
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(service("api", 3, nil)) })
	h.eventually("api", "three tasks", func(ts []*pb.Task) bool { return len(activeSlots(ts)) == 3 })
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
	ts := h.eventually("api", "one slot removed", func(ts []*pb.Task) bool { return len(activeSlots(ts)) == 2 })
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
			h := start(t)
			h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(service("s", 1, tc.policy)) })
			h.eventually("s", "a task", func(ts []*pb.Task) bool { return len(ts) == 1 })
			h.place("s", "a")
			first := h.tasks("s")[0]
			h.setState(first.GetId(), tc.end)
			if tc.restarts {
				ts := h.eventually("s", "a replacement", func(ts []*pb.Task) bool { return len(ts) == 2 && len(activeSlots(ts)) == 1 })
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
			h.eventually("s", "the task shut down, not replaced", func(ts []*pb.Task) bool {
				return len(ts) == 1 && ts[0].GetDesiredState() == pb.TaskState_TASK_STATE_SHUTDOWN
			})
		})
	}
}

func TestRestartMaxAttemptsAndDelay(t *testing.T) {
	h := start(t)
	policy := &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY, MaxAttempts: 2, Delay: int64(300 * time.Millisecond)}
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(service("flaky", 1, policy)) })
	for attempt := 1; attempt <= 3; attempt++ {
		h.eventually("flaky", "a runnable task", func(ts []*pb.Task) bool {
			for _, tk := range ts {
				if tk.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING && tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_PENDING {
					if attempt > 1 && time.Since(time.Unix(0, tk.GetMeta().GetCreatedAt())) < 250*time.Millisecond {
						t.Fatalf("restart %d promoted to running before its delay", attempt)
					}
					return true
				}
			}
			return false
		})
		h.place("flaky", "a")
		for _, tk := range h.tasks("flaky") {
			if tk.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING {
				h.setState(tk.GetId(), pb.TaskState_TASK_STATE_FAILED)
			}
		}
	}
	// Three failures, two restarts allowed: no fourth task, ever.
	h.eventually("flaky", "the third failure shut down", func(ts []*pb.Task) bool { return len(activeSlots(ts)) == 0 && len(ts) == 3 })
	time.Sleep(500 * time.Millisecond) // longer than the restart delay: a fourth task would show by now
	if ts := h.tasks("flaky"); len(ts) != 3 {
		t.Fatalf("max attempts exceeded:\n%s", describe(ts))
	}
}

// A task failed because its node went Down did not fail by itself: it is
// replaced at once, without the restart delay, and is not counted as an
// attempt; a task that fails by itself still waits for the delay.
func TestNodeLostTaskReplacedAtOnce(t *testing.T) {
	h := start(t)
	policy := &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY, MaxAttempts: 1, Delay: int64(time.Hour)}
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(service("web", 1, policy)) })
	runnable := func(ts []*pb.Task) bool {
		for _, tk := range ts {
			if tk.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING && tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_PENDING {
				return true
			}
		}
		return false
	}
	for lost := 1; lost <= 3; lost++ {
		h.eventually("web", fmt.Sprintf("a runnable task after %d lost nodes", lost-1), runnable)
		h.place("web", "a")
		h.update(func(tx *raftstore.Tx) error {
			for _, tk := range tx.Tasks().Find(raftstore.IndexService, "web") {
				if tk.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING {
					tk.Status = &pb.TaskStatus{State: pb.TaskState_TASK_STATE_FAILED, Timestamp: time.Now().UnixNano(), Message: "node down", NodeLost: true}
					if err := tx.Tasks().Update(tk); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	h.eventually("web", "a runnable task after 3 lost nodes", runnable)
	h.place("web", "a")
	for _, tk := range h.tasks("web") {
		if tk.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING {
			h.setState(tk.GetId(), pb.TaskState_TASK_STATE_FAILED)
		}
	}
	// A real failure: its replacement waits for the hour's delay.
	ts := h.eventually("web", "a delayed replacement", func(ts []*pb.Task) bool {
		for _, tk := range ts {
			if tk.GetDesiredState() == pb.TaskState_TASK_STATE_READY {
				return true
			}
		}
		return false
	})
	if runnable(ts) {
		t.Fatalf("a task that failed by itself was replaced without its restart delay:\n%s", describe(ts))
	}
}

func TestTasksMoveOffDrainedAndRemovedNodes(t *testing.T) {
	h := start(t)
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(service("web", 2, nil)) })
	h.eventually("web", "two tasks", func(ts []*pb.Task) bool { return len(activeSlots(ts)) == 2 })
	h.place("web", "a")
	addNode(h, "a", pb.NodeAvailability_NODE_AVAILABILITY_DRAIN, pb.NodeState_NODE_STATE_READY)
	h.eventually("web", "replacements off the drained node", func(ts []*pb.Task) bool {
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
	// Paused: tasks stay.
	addNode(h, "b", pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE, pb.NodeState_NODE_STATE_READY)
	h.place("web", "b")
	addNode(h, "b", pb.NodeAvailability_NODE_AVAILABILITY_PAUSE, pb.NodeState_NODE_STATE_READY)
	time.Sleep(200 * time.Millisecond) // nothing must happen: give the orchestrator the chance to misbehave
	for _, tk := range h.tasks("web") {
		if tk.GetNodeId() == "b" && tk.GetDesiredState() != pb.TaskState_TASK_STATE_RUNNING {
			t.Fatalf("a paused node lost its task")
		}
	}
	// Removed node: its tasks are failed and replaced.
	h.update(func(tx *raftstore.Tx) error { return tx.Nodes().Delete("b") })
	h.eventually("web", "replacements for the removed node", func(ts []*pb.Task) bool {
		unplaced := 0
		for _, tk := range ts {
			if tk.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING && tk.GetNodeId() == "" {
				unplaced++
			}
		}
		return unplaced == 2
	})
}

func TestGlobalServiceFollowsNodes(t *testing.T) {
	h := start(t)
	addNode(h, "b", pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE, pb.NodeState_NODE_STATE_READY)
	svc := service("agent", 0, nil)
	svc.Spec.Mode = &pb.ServiceSpec_Global{Global: &pb.GlobalService{}}
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(svc) })
	nodesOf := func(ts []*pb.Task) string {
		var ns []string
		for _, tk := range ts {
			if tk.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING {
				ns = append(ns, tk.GetNodeId())
			}
		}
		sort.Strings(ns)
		return fmt.Sprint(ns)
	}
	h.eventually("agent", "a task on a and b", func(ts []*pb.Task) bool { return nodesOf(ts) == "[a b]" })
	addNode(h, "c", pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE, pb.NodeState_NODE_STATE_READY)
	h.eventually("agent", "a task on the node that joined", func(ts []*pb.Task) bool { return nodesOf(ts) == "[a b c]" })
	addNode(h, "a", pb.NodeAvailability_NODE_AVAILABILITY_DRAIN, pb.NodeState_NODE_STATE_READY)
	h.eventually("agent", "none on the drained node", func(ts []*pb.Task) bool { return nodesOf(ts) == "[b c]" })
}

func TestHistoryIsBoundedAndRemovedServiceWindsDown(t *testing.T) {
	h := start(t)
	h.update(func(tx *raftstore.Tx) error {
		return tx.Services().Create(service("s", 1, &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY}))
	})
	for range 8 {
		h.eventually("s", "a runnable task", func(ts []*pb.Task) bool { return len(activeSlots(ts)) == 1 })
		h.place("s", "a")
		for _, tk := range h.tasks("s") {
			if tk.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING {
				h.setState(tk.GetId(), pb.TaskState_TASK_STATE_FAILED)
			}
		}
	}
	h.eventually("s", "history trimmed to 5 plus the live task", func(ts []*pb.Task) bool { return len(ts) <= DefaultHistoryLimit+1 })
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Delete("s") })
	h.eventually("s", "every remaining task told to go", func(ts []*pb.Task) bool {
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
	h.eventually("s", "all deleted", func(ts []*pb.Task) bool { return len(ts) == 0 })
}
