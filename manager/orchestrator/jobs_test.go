package orchestrator

import (
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

func replicatedJob(id string, total, maxConcurrent uint64, restart *pb.RestartPolicy) *pb.Service {
	s := service(id, 0, restart)
	s.Spec.Mode = &pb.ServiceSpec_ReplicatedJob{ReplicatedJob: &pb.ReplicatedJob{TotalCompletions: total, MaxConcurrent: maxConcurrent}}
	s.JobStatus = &pb.JobStatus{JobIteration: 1}
	return s
}

func globalJob(id string, restart *pb.RestartPolicy) *pb.Service {
	s := service(id, 0, restart)
	s.Spec.Mode = &pb.ServiceSpec_GlobalJob{GlobalJob: &pb.GlobalJob{}}
	s.JobStatus = &pb.JobStatus{JobIteration: 1}
	return s
}

// finishRunning ends the service's running tasks with the given states, in
// slot order (or node order, for global jobs): ends[i] for the i-th.
func (h *harness) finishRunning(svc string, ends ...pb.TaskState) {
	h.t.Helper()
	h.update(func(tx *raftstore.Tx) error {
		i := 0
		for _, tk := range sortedTasks(tx.Tasks().Find(raftstore.IndexService, svc)) {
			if i >= len(ends) {
				break
			}
			if tk.GetDesiredState() != pb.TaskState_TASK_STATE_RUNNING || tk.GetStatus().GetState() != pb.TaskState_TASK_STATE_RUNNING {
				continue
			}
			tk.Status = &pb.TaskStatus{State: ends[i], Timestamp: h.clock.Now().UnixNano()}
			if ends[i] != pb.TaskState_TASK_STATE_COMPLETE {
				tk.Status.Err = "exit status 1"
			}
			i++
			if err := tx.Tasks().Update(tk); err != nil {
				return err
			}
		}
		return nil
	})
}

func sortedTasks(ts []*pb.Task) []*pb.Task {
	out := append([]*pb.Task(nil), ts...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			a, b := out[i], out[j]
			if b.GetSlot() < a.GetSlot() || (b.GetSlot() == a.GetSlot() && b.GetNodeId() < a.GetNodeId()) {
				out[i], out[j] = b, a
			}
		}
	}
	return out
}

// jobView sums up a job's tasks of one iteration.
type jobView struct {
	complete map[string]int // completions per slot (or node)
	active   map[string]int // active tasks per slot (or node)
	running  int            // active tasks in all
}

func viewJob(ts []*pb.Task, iter uint64) jobView {
	v := jobView{complete: map[string]int{}, active: map[string]int{}}
	for _, tk := range ts {
		if tk.GetJobIteration() != iter {
			continue
		}
		key := tk.GetNodeId()
		if tk.GetSlot() != 0 {
			key = string(rune('0' + tk.GetSlot()))
		}
		if tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_COMPLETE {
			v.complete[key]++
		}
		if tk.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING {
			v.active[key]++
			v.running++
		}
	}
	return v
}

// checkJobInvariants fails the test if a slot (or node) has completed more
// than once, or runs a task beside a completion or beside another task.
func (h *harness) checkJobInvariants(svc string, iter uint64) jobView {
	h.t.Helper()
	ts := h.tasks(svc)
	v := viewJob(ts, iter)
	for k, n := range v.complete {
		if n > 1 || v.active[k] > 0 {
			h.t.Fatalf("slot %s completed %d times with %d active tasks:\n%s", k, n, v.active[k], describe(ts))
		}
	}
	for k, n := range v.active {
		if n > 1 {
			h.t.Fatalf("slot %s has %d active tasks:\n%s", k, n, describe(ts))
		}
	}
	for _, tk := range ts {
		if tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_COMPLETE && tk.GetJobIteration() == iter &&
			tk.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING {
			h.t.Fatalf("a completion's desired state is %s, want COMPLETE:\n%s", tk.GetDesiredState(), describe(ts))
		}
	}
	return v
}

func TestReplicatedJob(t *testing.T) {
	onFailure := &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ON_FAILURE}
	complete, failed := pb.TaskState_TASK_STATE_COMPLETE, pb.TaskState_TASK_STATE_FAILED
	cases := []struct {
		name          string
		total, max    uint64
		policy        *pb.RestartPolicy
		rounds        [][]pb.TaskState // how the running tasks end, round by round
		wantCompleted int
		wantTasks     int // tasks made in all
	}{
		{name: "completions in batches of max-concurrent", total: 5, max: 2, policy: onFailure,
			rounds: [][]pb.TaskState{{complete, complete}, {complete, complete}, {complete}}, wantCompleted: 5, wantTasks: 5},
		{name: "one at a time by default", total: 3, max: 0, policy: onFailure,
			rounds: [][]pb.TaskState{{complete}, {complete}, {complete}}, wantCompleted: 3, wantTasks: 3},
		{name: "a failure is retried in its slot", total: 2, max: 2, policy: onFailure,
			rounds: [][]pb.TaskState{{failed, complete}, {complete}}, wantCompleted: 2, wantTasks: 3},
		{name: "no policy means on-failure for jobs", total: 2, max: 2, policy: nil,
			rounds: [][]pb.TaskState{{complete, failed}, {complete}}, wantCompleted: 2, wantTasks: 3},
		{name: "restart any never reruns a completion", total: 2, max: 1,
			policy: &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY},
			rounds: [][]pb.TaskState{{complete}, {complete}}, wantCompleted: 2, wantTasks: 2},
		{name: "a slot the policy gave up on stays failed; the others go on", total: 3, max: 1,
			policy: &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_NONE},
			rounds: [][]pb.TaskState{{failed}, {complete}, {complete}}, wantCompleted: 2, wantTasks: 3},
		{name: "max attempts bound the retries", total: 1, max: 1,
			policy: &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ON_FAILURE, MaxAttempts: 1},
			rounds: [][]pb.TaskState{{failed}, {failed}}, wantCompleted: 0, wantTasks: 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.update(func(tx *raftstore.Tx) error {
				return tx.Services().Create(replicatedJob("j", tc.total, tc.max, tc.policy))
			})
			limit := int(max(tc.max, 1))
			for i, round := range tc.rounds {
				h.reconcile()
				h.advance(time.Minute) // restart delays
				h.reconcile()
				v := h.checkJobInvariants("j", 1)
				if v.running > limit {
					t.Fatalf("round %d: %d tasks active, max-concurrent is %d:\n%s", i, v.running, limit, describe(h.tasks("j")))
				}
				h.place("j", "a")
				h.finishRunning("j", round...)
			}
			h.reconcile()
			h.advance(time.Minute)
			h.reconcile()
			v := h.checkJobInvariants("j", 1)
			done := 0
			for _, n := range v.complete {
				done += n
			}
			if done != tc.wantCompleted || v.running != 0 || len(h.tasks("j")) != tc.wantTasks {
				t.Fatalf("want %d completions, no active task and %d tasks in all; got %d completions, %d active:\n%s",
					tc.wantCompleted, tc.wantTasks, done, v.running, describe(h.tasks("j")))
			}
		})
	}
}

// TestJobNodeLost: a task lost with its node is replaced at once in its
// slot; completed slots are not run again, and a completion reported late
// by the lost task does not count twice.
func TestJobNodeLost(t *testing.T) {
	h := newHarness(t)
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(replicatedJob("j", 3, 3, nil)) })
	h.reconcile()
	h.place("j", "a")
	h.finishRunning("j", pb.TaskState_TASK_STATE_COMPLETE) // slot 1 done
	h.reconcile()
	h.failRunning("j", true) // slots 2 and 3 lost with their node
	h.reconcile()            // no clock advance: node_lost skips the delay
	v := h.checkJobInvariants("j", 1)
	if v.running != 2 || v.active["2"] != 1 || v.active["3"] != 1 || v.complete["1"] != 1 {
		t.Fatalf("want slots 2 and 3 replaced, slot 1 left done:\n%s", describe(h.tasks("j")))
	}
	h.place("j", "a")
	h.finishRunning("j", pb.TaskState_TASK_STATE_COMPLETE, pb.TaskState_TASK_STATE_COMPLETE)
	h.reconcile()
	v = h.checkJobInvariants("j", 1)
	if len(v.complete) != 3 || v.running != 0 || len(h.tasks("j")) != 5 {
		t.Fatalf("want 3 slots done by 5 tasks:\n%s", describe(h.tasks("j")))
	}
}

// TestJobHistoryKeepsCompletions: trimming history never deletes the
// completion that keeps a slot done, or the slot would run again.
func TestJobHistoryKeepsCompletions(t *testing.T) {
	h := newHarness(t)
	h.update(func(tx *raftstore.Tx) error {
		c := &pb.Cluster{Id: "c", Spec: &pb.ClusterSpec{TaskHistoryLimit: 1}}
		if err := tx.Clusters().Create(c); err != nil {
			return err
		}
		return tx.Services().Create(replicatedJob("j", 1, 1, &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ON_FAILURE}))
	})
	for _, end := range []pb.TaskState{pb.TaskState_TASK_STATE_FAILED, pb.TaskState_TASK_STATE_FAILED, pb.TaskState_TASK_STATE_COMPLETE} {
		h.reconcile()
		h.advance(time.Minute)
		h.reconcile()
		h.place("j", "a")
		h.finishRunning("j", end)
	}
	for range 3 {
		h.reconcile()
		h.advance(time.Minute)
	}
	v := h.checkJobInvariants("j", 1)
	if v.complete["1"] != 1 || v.running != 0 {
		t.Fatalf("want slot 1 done once and nothing running:\n%s", describe(h.tasks("j")))
	}
}

// TestJobNewIteration: a new iteration (every update of a job) stops what
// the previous one still runs and runs every slot again.
func TestJobNewIteration(t *testing.T) {
	h := newHarness(t)
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(replicatedJob("j", 2, 1, nil)) })
	h.reconcile()
	h.place("j", "a")
	h.finishRunning("j", pb.TaskState_TASK_STATE_COMPLETE)
	h.reconcile()
	h.place("j", "a") // slot 2 runs
	h.update(func(tx *raftstore.Tx) error {
		s, _ := tx.Services().Get("j")
		s.JobStatus = &pb.JobStatus{JobIteration: 2}
		return tx.Services().Update(s)
	})
	h.reconcile()
	for _, tk := range h.tasks("j") {
		if tk.GetJobIteration() == 1 && tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING && tk.GetDesiredState() != pb.TaskState_TASK_STATE_SHUTDOWN {
			t.Fatalf("the previous iteration's running task was not told to stop:\n%s", describe(h.tasks("j")))
		}
	}
	v := h.checkJobInvariants("j", 2)
	if v.running != 1 || v.active["1"] != 1 || len(v.complete) != 0 {
		t.Fatalf("want iteration 2 to start at slot 1:\n%s", describe(h.tasks("j")))
	}
}

func TestGlobalJob(t *testing.T) {
	h := newHarness(t)
	addNode(h, "b", pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE, pb.NodeState_NODE_STATE_READY)
	addNode(h, "c", pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE, pb.NodeState_NODE_STATE_DOWN)
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(globalJob("g", nil)) })
	h.reconcile()
	if v := h.checkJobInvariants("g", 1); v.running != 2 || v.active["a"] != 1 || v.active["b"] != 1 {
		t.Fatalf("want one task on each ready node:\n%s", describe(h.tasks("g")))
	}
	h.place("g", "")
	// a completes, b fails (retried on b after the delay).
	h.finishRunning("g", pb.TaskState_TASK_STATE_COMPLETE, pb.TaskState_TASK_STATE_FAILED)
	h.reconcile()
	h.advance(time.Minute)
	h.reconcile()
	if v := h.checkJobInvariants("g", 1); v.running != 1 || v.active["b"] != 1 || v.complete["a"] != 1 {
		t.Fatalf("want a done and b retried:\n%s", describe(h.tasks("g")))
	}
	// Node c comes up later: it runs the job too; a does not run it again.
	addNode(h, "c", pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE, pb.NodeState_NODE_STATE_READY)
	h.reconcile()
	if v := h.checkJobInvariants("g", 1); v.running != 2 || v.active["c"] != 1 {
		t.Fatalf("want a task on the new node c:\n%s", describe(h.tasks("g")))
	}
	h.place("g", "")
	h.finishRunning("g", pb.TaskState_TASK_STATE_COMPLETE, pb.TaskState_TASK_STATE_COMPLETE)
	// Draining a node whose run is over keeps its completion.
	addNode(h, "a", pb.NodeAvailability_NODE_AVAILABILITY_DRAIN, pb.NodeState_NODE_STATE_READY)
	h.reconcile()
	v := h.checkJobInvariants("g", 1)
	if v.running != 0 || len(v.complete) != 3 {
		t.Fatalf("want the three nodes done:\n%s", describe(h.tasks("g")))
	}
	// A node removed while it runs the job: its task goes, with no retry.
	addNode(h, "d", pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE, pb.NodeState_NODE_STATE_READY)
	h.reconcile()
	h.place("g", "")
	h.update(func(tx *raftstore.Tx) error { return tx.Nodes().Delete("d") })
	h.reconcile()
	v = h.checkJobInvariants("g", 1)
	for _, tk := range h.tasks("g") {
		if tk.GetNodeId() == "d" {
			t.Fatalf("the removed node's task is still there:\n%s", describe(h.tasks("g")))
		}
	}
	if v.running != 0 || len(v.complete) != 3 {
		t.Fatalf("want the three nodes done and nothing running:\n%s", describe(h.tasks("g")))
	}
}

// TestJobDrainedTaskCompletesAfterAll: a task told to stop because its
// node was drained may still exit 0; then its slot is done, and the
// successor on its way is stopped rather than run the slot again.
func TestJobDrainedTaskCompletesAfterAll(t *testing.T) {
	h := newHarness(t)
	addNode(h, "b", pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE, pb.NodeState_NODE_STATE_READY)
	h.update(func(tx *raftstore.Tx) error { return tx.Services().Create(replicatedJob("j", 1, 1, nil)) })
	h.reconcile()
	h.place("j", "a")
	first := h.tasks("j")[0]
	addNode(h, "a", pb.NodeAvailability_NODE_AVAILABILITY_DRAIN, pb.NodeState_NODE_STATE_READY)
	h.reconcile()
	if v := h.checkJobInvariants("j", 1); v.active["1"] != 1 || len(h.tasks("j")) != 2 {
		t.Fatalf("want slot 1 moving off the drained node:\n%s", describe(h.tasks("j")))
	}
	h.setState(first.GetId(), pb.TaskState_TASK_STATE_COMPLETE)
	h.reconcile()
	v := h.checkJobInvariants("j", 1)
	if v.complete["1"] != 1 || v.running != 0 {
		t.Fatalf("want slot 1 done by the drained task and its successor stopped:\n%s", describe(h.tasks("j")))
	}
}
