package scheduler

import (
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/protobuf/proto"
)

func clone[T proto.Message](m T) T { return proto.Clone(m).(T) }

// TestViewEvents checks when events queue a pending task again and when
// they schedule a retry of the tasks that could not be placed: the
// scheduler's own pending_reason writes must do neither, or every reason
// it writes would make it work again.
func TestViewEvents(t *testing.T) {
	v := newView()
	n1 := mkNode("n1")
	v.apply(raftstore.Event{Kind: raftstore.EventCreate, Object: n1})
	v.retry = false

	run := mkTask("run", "web", running("n1"), reserve(1*cpu, 1*gib))
	v.apply(raftstore.Event{Kind: raftstore.EventCreate, Object: run})
	if v.queueLen() != 0 || v.retry {
		t.Fatalf("an active task queued work: queue %d retry %v", v.queueLen(), v.retry)
	}
	if ns := v.c.nodes["n1"]; ns.usedCPU != 1*cpu || ns.usedMem != 1*gib || ns.tasks != 1 || v.c.services["web"][ns] != 1 {
		t.Fatalf("usage of n1 after an active task: %+v", ns)
	}

	p := mkTask("p", "web")
	v.apply(raftstore.Event{Kind: raftstore.EventCreate, Object: p})
	if got := v.take(10); len(got) != 1 || got[0].GetId() != "p" {
		t.Fatalf("take: %v", got)
	}
	v.unplaced["p"] = struct{}{}

	// The scheduler's own reason write: nothing to do.
	withReason := clone(p)
	withReason.PendingReason = "no suitable node (1 node not ready)"
	v.apply(raftstore.Event{Kind: raftstore.EventUpdate, Object: withReason, Old: p})
	if v.queueLen() != 0 || v.retry {
		t.Fatalf("a reason write queued work: queue %d retry %v", v.queueLen(), v.retry)
	}
	if v.pending["p"].task != withReason {
		t.Fatalf("pending task not refreshed")
	}

	// A change of what placement depends on queues it again.
	changed := clone(withReason)
	changed.Spec.Placement.Constraints = []string{"node.role==worker"}
	v.apply(raftstore.Event{Kind: raftstore.EventUpdate, Object: changed, Old: withReason})
	if v.queueLen() != 1 {
		t.Fatalf("a changed pending task was not queued")
	}
	if _, ok := v.unplaced["p"]; ok {
		t.Fatalf("a queued task is still marked unplaced")
	}
	v.take(10)
	v.unplaced["p"] = struct{}{}

	// A node update that changes nothing placement reads: no retry.
	same := clone(n1)
	same.Status.Message = "heartbeat"
	v.apply(raftstore.Event{Kind: raftstore.EventUpdate, Object: same, Old: n1})
	if v.retry {
		t.Fatalf("an irrelevant node change asked for a retry")
	}
	relabelled := clone(same)
	withLabel("zone", "a")(relabelled)
	v.apply(raftstore.Event{Kind: raftstore.EventUpdate, Object: relabelled, Old: same})
	if !v.retry {
		t.Fatalf("a label change did not ask for a retry")
	}
	v.requeueUnplaced()
	if v.queueLen() != 1 || len(v.unplaced) != 0 || v.retry {
		t.Fatalf("requeue: queue %d unplaced %d retry %v", v.queueLen(), len(v.unplaced), v.retry)
	}
	v.take(10)
	v.unplaced["p"] = struct{}{}

	// The active task ends: its resources are freed, a retry is due.
	ended := clone(run)
	ended.Status.State = pb.TaskState_TASK_STATE_COMPLETE
	v.apply(raftstore.Event{Kind: raftstore.EventUpdate, Object: ended, Old: run})
	if !v.retry {
		t.Fatalf("freeing resources did not ask for a retry")
	}
	if ns := v.c.nodes["n1"]; ns.usedCPU != 0 || ns.usedMem != 0 || ns.tasks != 0 || len(v.c.services) != 0 {
		t.Fatalf("usage of n1 after the task ended: %+v", ns)
	}

	// A pending task that is deleted or stopped leaves the view.
	v.apply(raftstore.Event{Kind: raftstore.EventDelete, Object: changed, Old: changed})
	if len(v.pending) != 0 || len(v.unplaced) != 0 || v.queueLen() != 0 {
		t.Fatalf("deleted task still tracked: pending %d unplaced %d queue %d", len(v.pending), len(v.unplaced), v.queueLen())
	}
	stop := mkTask("s", "web")
	v.apply(raftstore.Event{Kind: raftstore.EventCreate, Object: stop})
	stopped := clone(stop)
	stopped.DesiredState = pb.TaskState_TASK_STATE_SHUTDOWN
	v.apply(raftstore.Event{Kind: raftstore.EventUpdate, Object: stopped, Old: stop})
	if len(v.pending) != 0 || len(v.take(10)) != 0 {
		t.Fatalf("a task desired SHUTDOWN is still pending")
	}

	// Tasks on a deleted node keep their usage until they go.
	busy := mkTask("busy", "web", running("n1"))
	v.apply(raftstore.Event{Kind: raftstore.EventCreate, Object: busy})
	v.apply(raftstore.Event{Kind: raftstore.EventDelete, Object: relabelled, Old: relabelled})
	if ns := v.c.nodes["n1"]; ns == nil || ns.node != nil || ns.tasks != 1 || len(v.c.sortedNodes()) != 0 {
		t.Fatalf("deleted node: %+v", ns)
	}
	v.apply(raftstore.Event{Kind: raftstore.EventDelete, Object: busy, Old: busy})
	if _, ok := v.c.nodes["n1"]; ok {
		t.Fatalf("a deleted node without tasks is still tracked")
	}
}

// TestViewKeepsItsAssignments checks that an event older than one of the
// view's own assignments (its earlier pending_reason write, say) does not
// undo the assignment in the model.
func TestViewKeepsItsAssignments(t *testing.T) {
	v := newView()
	v.apply(raftstore.Event{Kind: raftstore.EventCreate, Object: mkNode("n1")})
	p := mkTask("p", "web", reserve(1*cpu, 0))
	v.apply(raftstore.Event{Kind: raftstore.EventCreate, Object: p})
	batch := v.take(10)
	ds := v.c.schedule(batch)
	if ds[0].node != "n1" {
		t.Fatalf("decision %+v", ds[0])
	}
	delete(v.pending, "p")
	v.assigned["p"] = "n1"

	stale := clone(p)
	stale.PendingReason = "no suitable node (1 node not ready)"
	v.apply(raftstore.Event{Kind: raftstore.EventUpdate, Object: stale, Old: p})
	if ns := v.c.nodes["n1"]; ns.usedCPU != 1*cpu || len(v.pending) != 0 || v.queueLen() != 0 {
		t.Fatalf("a stale event undid the assignment: used cpu %d, pending %d", ns.usedCPU, len(v.pending))
	}

	// The assignment's own event settles it.
	done := clone(p)
	done.NodeId = "n1"
	done.Status = &pb.TaskStatus{State: pb.TaskState_TASK_STATE_ASSIGNED}
	v.apply(raftstore.Event{Kind: raftstore.EventUpdate, Object: done, Old: stale})
	if _, ok := v.assigned["p"]; ok || v.c.nodes["n1"].usedCPU != 1*cpu {
		t.Fatalf("after the assignment event: assigned %v, used cpu %d", v.assigned, v.c.nodes["n1"].usedCPU)
	}

	// Had someone else stopped the task first, that event wins.
	q := mkTask("q", "web", reserve(1*cpu, 0))
	v.apply(raftstore.Event{Kind: raftstore.EventCreate, Object: q})
	v.c.schedule(v.take(10))
	delete(v.pending, "q")
	v.assigned["q"] = "n1"
	stopped := clone(q)
	stopped.DesiredState = pb.TaskState_TASK_STATE_SHUTDOWN
	v.apply(raftstore.Event{Kind: raftstore.EventUpdate, Object: stopped, Old: q})
	if _, ok := v.assigned["q"]; ok || v.c.nodes["n1"].usedCPU != 1*cpu {
		t.Fatalf("after the task was stopped: assigned %v, used cpu %d", v.assigned, v.c.nodes["n1"].usedCPU)
	}
}
