package endpoints

import (
	"context"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/storetest"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: a
// feed's loop and its store subscriptions end with its context.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestFeedFollowsStore: the feed starts from the store's state, announces
// each change by closing the channel Snapshot returned, replaces only the
// sets that changed, and ends with its context.
func TestFeedFollowsStore(t *testing.T) {
	store := storetest.Memory(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	web := &pb.Service{Id: "web", Spec: &pb.ServiceSpec{Annotations: &pb.Annotations{Name: "web"}, Endpoint: &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80}}}}}
	ports := []*pb.PortBinding{{TargetPort: 80, HostIp: "127.0.0.1", HostPort: 30001}}
	task := func(id string, state pb.TaskState) *pb.Task {
		return &pb.Task{Id: id, ServiceId: "web", NodeId: "n1", Slot: 1, DesiredState: pb.TaskState_TASK_STATE_RUNNING,
			Status: &pb.TaskStatus{State: state, Ports: ports}}
	}
	write := func(fn func(tx *raftstore.Tx) error) {
		t.Helper()
		if _, err := store.Update(ctx, fn); err != nil {
			t.Fatal(err)
		}
	}
	write(func(tx *raftstore.Tx) error {
		if err := tx.Nodes().Create(&pb.Node{Id: "n1", ApiAddr: "127.0.0.1:4242", Status: &pb.NodeStatus{State: pb.NodeState_NODE_STATE_READY}}); err != nil {
			return err
		}
		if err := tx.Services().Create(web); err != nil {
			return err
		}
		return tx.Tasks().Create(task("t1", pb.TaskState_TASK_STATE_RUNNING))
	})

	f := NewFeed(store)
	_, changed := f.Snapshot() // before Run: its first refresh closes this channel
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); f.Run(runCtx) }()
	defer func() { stop(); <-done }()

	// wait returns the sets once the feed has announced a change.
	wait := func(changed <-chan struct{}, what string) map[string]*pb.ServiceEndpoints {
		t.Helper()
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatalf("no change announced: %s", what)
		}
		now, _ := f.Snapshot()
		return now
	}
	taskIDs := func(se *pb.ServiceEndpoints) []string {
		var ids []string
		for _, e := range se.GetTasks() {
			ids = append(ids, e.GetTaskId())
		}
		return ids
	}

	first := wait(changed, "the store's initial state")
	if got := taskIDs(first["web"]); len(got) != 1 || got[0] != "t1" {
		t.Fatalf("web's endpoints at first: %v, want [t1]", got)
	}
	if u := Complete(first); !u.GetComplete() || len(u.GetUpdated()) != 1 {
		t.Fatalf("complete update %v", u)
	}

	_, changed = f.Snapshot()
	write(func(tx *raftstore.Tx) error {
		t1, _ := tx.Tasks().Get("t1")
		t1.Status = &pb.TaskStatus{State: pb.TaskState_TASK_STATE_FAILED}
		if err := tx.Tasks().Update(t1); err != nil {
			return err
		}
		return tx.Tasks().Create(task("t2", pb.TaskState_TASK_STATE_RUNNING))
	})
	next := wait(changed, "t1 failed and t2 running")
	if got := taskIDs(next["web"]); len(got) != 1 || got[0] != "t2" {
		t.Fatalf("web's endpoints after t1 failed and t2 started: %v, want [t2]", got)
	}
	if u := Diff(first, next); len(u.GetUpdated()) != 1 || len(u.GetRemoved()) != 0 {
		t.Fatalf("diff %v, want web updated", u)
	}

	_, changed = f.Snapshot()
	write(func(tx *raftstore.Tx) error { return tx.Services().Delete("web") })
	gone := wait(changed, "web removed")
	if _, ok := gone["web"]; ok {
		t.Fatal("web still has a set after its removal")
	}
	if u := Diff(next, gone); len(u.GetRemoved()) != 1 || u.GetRemoved()[0] != "web" {
		t.Fatalf("diff %v, want web removed", u)
	}
}
