package updater

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/storetest"
	"github.com/shoal-cluster/shoal/manager/orchestrator"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// cluster runs the orchestrator, the updater and a simulated scheduler and
// worker: pending tasks are placed and run, except tasks whose image is
// /bin/false, which fail; tasks told to stop are shut down.
type cluster struct {
	t     *testing.T
	store *raftstore.Store
}

func start(t *testing.T) *cluster {
	t.Helper()
	s := storetest.OpenLeader(t)
	c := &cluster{t: t, store: s}
	c.update(func(tx *raftstore.Tx) error {
		return tx.Nodes().Create(&pb.Node{Id: "node-a", Role: pb.NodeRole_NODE_ROLE_WORKER,
			Spec:        &pb.NodeSpec{DesiredRole: pb.NodeRole_NODE_ROLE_WORKER},
			Description: &pb.NodeDescription{Hostname: "a", Runtimes: []string{"process"}},
			Status:      &pb.NodeStatus{State: pb.NodeState_NODE_STATE_READY}})
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 3)
	log := slog.New(slog.DiscardHandler)
	go func() { orchestrator.New(s, log).Run(ctx); done <- struct{}{} }()
	go func() { New(s, log).Run(ctx); done <- struct{}{} }()
	go func() { simulate(ctx, s); done <- struct{}{} }()
	t.Cleanup(func() {
		cancel()
		for range 3 {
			<-done
		}
	})
	return c
}

func simulate(ctx context.Context, s *raftstore.Store) {
	for ctx.Err() == nil {
		_, _ = s.Update(ctx, func(tx *raftstore.Tx) error {
			for _, t := range tx.Tasks().List() {
				st := t.GetStatus().GetState()
				next := st
				switch {
				case t.GetDesiredState() > pb.TaskState_TASK_STATE_RUNNING && st <= pb.TaskState_TASK_STATE_RUNNING:
					next = pb.TaskState_TASK_STATE_SHUTDOWN
				case st == pb.TaskState_TASK_STATE_PENDING:
					t.NodeId = "node-a"
					next = pb.TaskState_TASK_STATE_READY
				case st == pb.TaskState_TASK_STATE_READY && t.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING:
					next = pb.TaskState_TASK_STATE_RUNNING
					if t.GetSpec().GetContainer().GetImage() == "/bin/false" {
						next = pb.TaskState_TASK_STATE_FAILED
					}
				}
				if next != st {
					t.Status = &pb.TaskStatus{State: next, Timestamp: time.Now().UnixNano()}
					if err := tx.Tasks().Update(t); err != nil {
						return err
					}
				}
			}
			return nil
		})
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func spec(image string, replicas uint64, upd *pb.UpdateConfig) *pb.ServiceSpec {
	return &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: "web"},
		Task: &pb.TaskSpec{Runtime: "process", Container: &pb.ContainerSpec{Image: image},
			Restart: &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_NONE}},
		Mode:     &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: replicas}},
		Update:   upd,
		Rollback: &pb.UpdateConfig{Parallelism: 2},
	}
}

func (c *cluster) update(fn func(tx *raftstore.Tx) error) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.store.Update(ctx, fn); err != nil {
		c.t.Fatal(err)
	}
}

// changeSpec does what the control API does on `service update`.
func (c *cluster) changeSpec(next *pb.ServiceSpec) {
	c.update(func(tx *raftstore.Tx) error {
		s, _ := tx.Services().Get("web")
		s.PreviousSpec, s.Spec = s.Spec, next
		s.SpecVersion++
		s.UpdateStatus = &pb.UpdateStatus{State: pb.UpdateState_UPDATE_STATE_UPDATING, StartedAt: time.Now().UnixNano()}
		return tx.Services().Update(s)
	})
}

func (c *cluster) service() *pb.Service {
	var s *pb.Service
	c.store.View(func(tx *raftstore.Tx) { s, _ = tx.Services().Get("web") })
	return s
}

// running counts the running active tasks per image.
func (c *cluster) running() map[string]int {
	out := map[string]int{}
	c.store.View(func(tx *raftstore.Tx) {
		for _, t := range tx.Tasks().Find(raftstore.IndexService, "web") {
			if t.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING && t.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING {
				out[t.GetSpec().GetContainer().GetImage()]++
			}
		}
	})
	return out
}

func (c *cluster) eventually(what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out waiting for %s; running %v, update %v", what, c.running(), c.service().GetUpdateStatus())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRollingUpdateCompletes(t *testing.T) {
	for _, order := range []pb.UpdateOrder{pb.UpdateOrder_UPDATE_ORDER_STOP_FIRST, pb.UpdateOrder_UPDATE_ORDER_START_FIRST} {
		t.Run(order.String(), func(t *testing.T) {
			c := start(t)
			upd := &pb.UpdateConfig{Parallelism: 2, Order: order, Monitor: int64(50 * time.Millisecond)}
			c.update(func(tx *raftstore.Tx) error {
				return tx.Services().Create(&pb.Service{Id: "web", SpecVersion: 1, Spec: spec("/bin/v1", 5, upd)})
			})
			c.eventually("five v1 tasks", func() bool { return c.running()["/bin/v1"] == 5 })
			c.changeSpec(spec("/bin/v2", 5, upd))
			// During the update never fewer than replicas-parallelism run.
			deadline := time.Now().Add(30 * time.Second)
			for c.service().GetUpdateStatus().GetState() != pb.UpdateState_UPDATE_STATE_COMPLETED {
				r := c.running()
				if r["/bin/v1"]+r["/bin/v2"] < 3 {
					t.Fatalf("too many tasks down at once during the update: %v", r)
				}
				if time.Now().After(deadline) {
					t.Fatalf("update did not complete: %v %v", r, c.service().GetUpdateStatus())
				}
				time.Sleep(10 * time.Millisecond)
			}
			c.eventually("five v2 tasks", func() bool { r := c.running(); return r["/bin/v2"] == 5 && r["/bin/v1"] == 0 })
		})
	}
}

func TestFailedUpdateRollsBackOrPauses(t *testing.T) {
	cases := []struct {
		action pb.UpdateFailureAction
		want   pb.UpdateState
		image  string
	}{
		{pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK, pb.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED, "/bin/v1"},
		{pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_PAUSE, pb.UpdateState_UPDATE_STATE_PAUSED, ""},
	}
	for _, tc := range cases {
		t.Run(tc.action.String(), func(t *testing.T) {
			c := start(t)
			upd := &pb.UpdateConfig{Parallelism: 2, FailureAction: tc.action, Monitor: int64(50 * time.Millisecond)}
			c.update(func(tx *raftstore.Tx) error {
				return tx.Services().Create(&pb.Service{Id: "web", SpecVersion: 1, Spec: spec("/bin/v1", 4, upd)})
			})
			c.eventually("four v1 tasks", func() bool { return c.running()["/bin/v1"] == 4 })
			c.changeSpec(spec("/bin/false", 4, upd))
			c.eventually(tc.want.String(), func() bool { return c.service().GetUpdateStatus().GetState() == tc.want })
			if tc.image != "" {
				c.eventually("all replicas back on "+tc.image, func() bool { return c.running()[tc.image] == 4 })
				if got := c.service().GetSpec().GetTask().GetContainer().GetImage(); got != tc.image {
					t.Fatalf("spec after rollback runs %s", got)
				}
			} else if r := c.running(); r["/bin/v1"] < 2 {
				t.Fatalf("a paused update should leave the untouched replicas running: %v", r)
			}
		})
	}
}

func TestUpdateResumesAfterRestart(t *testing.T) {
	// A new updater (a new leader) carries an update on to the same end.
	c := start(t)
	upd := &pb.UpdateConfig{Parallelism: 1, Monitor: int64(200 * time.Millisecond)}
	c.update(func(tx *raftstore.Tx) error {
		return tx.Services().Create(&pb.Service{Id: "web", SpecVersion: 1, Spec: spec("/bin/v1", 3, upd)})
	})
	c.eventually("three v1 tasks", func() bool { return c.running()["/bin/v1"] == 3 })
	ctx, cancel := context.WithCancel(context.Background())
	second := New(c.store, slog.New(slog.DiscardHandler))
	done := make(chan struct{})
	go func() { second.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	c.changeSpec(spec("/bin/v2", 3, upd))
	c.eventually("update completed", func() bool {
		return c.service().GetUpdateStatus().GetState() == pb.UpdateState_UPDATE_STATE_COMPLETED
	})
	if r := c.running(); r["/bin/v2"] != 3 {
		t.Fatalf("after the update: %v", r)
	}
}
