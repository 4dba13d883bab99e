package updater

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/clock"
	"github.com/shoal-cluster/shoal/internal/storetest"
	"github.com/shoal-cluster/shoal/manager/orchestrator"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The tests simulate a cluster on a memory store with a fake clock, one
// round at a time (round): a worker moves each task one step (pending
// tasks are placed and run, except those whose image is /bin/false, which
// fail; tasks told to stop are shut down), the orchestrator reconciles,
// and the updater takes the rollout steps that are due; then the clock
// moves on by tick. Nothing runs in the background, so every run is the
// same. TestRunCarriesUpdateOnAfterRestart runs the updater's own loop.

var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// tick is the simulated worker's period: how far the clock moves per round.
const tick = 10 * time.Millisecond

// maxRounds bounds a wait: a minute of simulated time, at least.
const maxRounds = int(time.Minute / tick)

var discard = slog.New(slog.DiscardHandler)

// cluster is the simulated cluster.
type cluster struct {
	t     *testing.T
	clock *clock.Fake
	store *raftstore.MemoryStore
	orch  *orchestrator.Orchestrator
	upd   *Updater
	// rollouts are the updater's rollouts in progress, by service, each
	// with the time of its next step.
	rollouts map[string]*pending
	// check, if set, runs after every step that may have written.
	check func()
}

type pending struct {
	r    *rollout
	next time.Time
}

func start(t *testing.T) *cluster {
	t.Helper()
	clk := clock.NewFake(epoch)
	s := storetest.Memory(t, clk.Now)
	c := &cluster{t: t, clock: clk, store: s, orch: orchestrator.New(s, clk, discard), upd: New(s, clk, discard), rollouts: map[string]*pending{}}
	c.update(func(tx *raftstore.Tx) error {
		return tx.Nodes().Create(&pb.Node{Id: "node-a", Role: pb.NodeRole_NODE_ROLE_WORKER,
			Spec:        &pb.NodeSpec{DesiredRole: pb.NodeRole_NODE_ROLE_WORKER},
			Description: &pb.NodeDescription{Hostname: "a", Runtimes: []string{"process"}},
			Status:      &pb.NodeStatus{State: pb.NodeState_NODE_STATE_READY}})
	})
	return c
}

func (c *cluster) index() uint64 {
	var idx uint64
	c.store.View(func(tx *raftstore.Tx) { idx = tx.Index() })
	return idx
}

func (c *cluster) checked() {
	if c.check != nil {
		c.check()
	}
}

// round runs the cluster for one tick, or up to the next rollout step or
// timer when nothing changed: the rounds in between would change nothing
// either, as every actor decides from the state and the clock.
func (c *cluster) round() {
	c.t.Helper()
	ctx := context.Background()
	start := c.index()
	defer func() {
		step := tick
		if c.index() == start {
			if next, ok := c.nextWake(); ok && next > step {
				step = next
			}
		}
		c.clock.Advance(step)
	}()
	c.work(ctx)
	c.checked()
	for range 10 {
		before := c.index()
		c.orch.ReconcileAll(ctx)
		c.checked()
		if c.index() == before {
			break
		}
	}
	c.stepUpdater(ctx)
}

// nextWake is how long until the next rollout step or timer, if any.
func (c *cluster) nextWake() (time.Duration, bool) {
	next, ok := c.clock.Next()
	for _, p := range c.rollouts {
		if d := p.next.Sub(c.clock.Now()); !ok || d < next {
			next, ok = d, true
		}
	}
	return next, ok
}

// work is the worker (and the scheduler): every task moves one step.
func (c *cluster) work(ctx context.Context) {
	_, err := c.store.Update(ctx, func(tx *raftstore.Tx) error {
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
				t.Status = &pb.TaskStatus{State: next, Timestamp: c.clock.Now().UnixNano()}
				if err := tx.Tasks().Update(t); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		c.t.Fatalf("worker: %v", err)
	}
}

// stepUpdater does what the updater's loop does at this instant: a
// rollout for every service being updated (a new one for a new spec
// version), each taking its steps that are due.
func (c *cluster) stepUpdater(ctx context.Context) {
	var services []*pb.Service
	c.store.View(func(tx *raftstore.Tx) { services = tx.Services().List() })
	live := map[string]bool{}
	for _, s := range services {
		live[s.GetId()] = true
		p := c.rollouts[s.GetId()]
		switch {
		case !updating(s):
			delete(c.rollouts, s.GetId())
		case p == nil || p.r.v != s.GetSpecVersion():
			c.rollouts[s.GetId()] = &pending{r: c.upd.newRollout(s.GetId(), s.GetSpecVersion()), next: c.clock.Now()}
		}
	}
	ids := make([]string, 0, len(c.rollouts))
	for id := range c.rollouts {
		if !live[id] {
			delete(c.rollouts, id)
			continue
		}
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		p := c.rollouts[id]
		for !p.next.After(c.clock.Now()) {
			wait, done := p.r.step(ctx)
			c.checked()
			if done {
				delete(c.rollouts, id)
				break
			}
			p.next = c.clock.Now().Add(wait)
		}
	}
}

// runUntil runs rounds until cond holds.
func (c *cluster) runUntil(what string, cond func() bool) {
	c.t.Helper()
	for i := 0; !cond(); i++ {
		if i == maxRounds {
			c.t.Fatalf("%s did not happen in %d rounds; running %v, update %v", what, maxRounds, c.running(), c.service().GetUpdateStatus())
		}
		c.round()
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
	if _, err := c.store.Update(context.Background(), fn); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) create(s *pb.ServiceSpec) {
	c.update(func(tx *raftstore.Tx) error {
		return tx.Services().Create(&pb.Service{Id: "web", SpecVersion: 1, Spec: s})
	})
}

// changeSpec does what the control API does on `service update`.
func (c *cluster) changeSpec(next *pb.ServiceSpec) {
	c.update(func(tx *raftstore.Tx) error {
		s, _ := tx.Services().Get("web")
		s.PreviousSpec, s.Spec = s.Spec, next
		s.SpecVersion++
		s.UpdateStatus = &pb.UpdateStatus{State: pb.UpdateState_UPDATE_STATE_UPDATING, StartedAt: c.clock.Now().UnixNano()}
		return tx.Services().Update(s)
	})
}

func (c *cluster) service() *pb.Service {
	var s *pb.Service
	c.store.View(func(tx *raftstore.Tx) { s, _ = tx.Services().Get("web") })
	return s
}

func (c *cluster) updateState() pb.UpdateState { return c.service().GetUpdateStatus().GetState() }

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

func TestRollingUpdateCompletes(t *testing.T) {
	for _, order := range []pb.UpdateOrder{pb.UpdateOrder_UPDATE_ORDER_STOP_FIRST, pb.UpdateOrder_UPDATE_ORDER_START_FIRST} {
		t.Run(order.String(), func(t *testing.T) {
			c := start(t)
			upd := &pb.UpdateConfig{Parallelism: 2, Order: order, Monitor: int64(50 * time.Millisecond)}
			c.create(spec("/bin/v1", 5, upd))
			c.runUntil("five v1 tasks", func() bool { return c.running()["/bin/v1"] == 5 })
			c.changeSpec(spec("/bin/v2", 5, upd))
			// During the update never fewer than replicas-parallelism run,
			// checked after every write.
			c.check = func() {
				if c.updateState() == pb.UpdateState_UPDATE_STATE_COMPLETED {
					return
				}
				if r := c.running(); r["/bin/v1"]+r["/bin/v2"] < 3 {
					t.Fatalf("too many tasks down at once during the update: %v", r)
				}
			}
			c.runUntil("the update completed", func() bool { return c.updateState() == pb.UpdateState_UPDATE_STATE_COMPLETED })
			c.runUntil("five v2 tasks", func() bool { r := c.running(); return r["/bin/v2"] == 5 && r["/bin/v1"] == 0 })
			// Stamped by the clock, in the transaction that recorded it.
			if svc := c.service(); svc.GetUpdateStatus().GetCompletedAt() != svc.GetMeta().GetUpdatedAt() || svc.GetUpdateStatus().GetMessage() != "update completed" {
				t.Fatalf("update status %v, service updated at %d", svc.GetUpdateStatus(), svc.GetMeta().GetUpdatedAt())
			}
		})
	}
}

// Each batch is watched for the monitor period, then the delay passes,
// before the next batch starts (or, after the last one, the update
// completes); and that happens then, at most a poll later.
func TestMonitorAndDelayBetweenBatches(t *testing.T) {
	const monitor, delay = 700 * time.Millisecond, 2 * time.Second
	c := start(t)
	upd := &pb.UpdateConfig{Parallelism: 1, Monitor: int64(monitor), Delay: int64(delay)}
	c.create(spec("/bin/v1", 3, upd))
	c.runUntil("three v1 tasks", func() bool { return c.running()["/bin/v1"] == 3 })
	c.changeSpec(spec("/bin/v2", 3, upd))
	// When each new task was first seen running, checked after every write.
	up := map[string]time.Time{}
	c.check = func() {
		c.store.View(func(tx *raftstore.Tx) {
			for _, tk := range tx.Tasks().Find(raftstore.IndexService, "web") {
				if _, seen := up[tk.GetId()]; !seen && tk.GetSpecVersion() == 2 && tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING {
					up[tk.GetId()] = c.clock.Now()
				}
			}
		})
	}
	c.runUntil("the update completed", func() bool { return c.updateState() == pb.UpdateState_UPDATE_STATE_COMPLETED })
	var batches []*pb.Task
	c.store.View(func(tx *raftstore.Tx) {
		for _, tk := range tx.Tasks().Find(raftstore.IndexService, "web") {
			if tk.GetSpecVersion() == 2 {
				batches = append(batches, tk)
			}
		}
	})
	sort.Slice(batches, func(i, j int) bool { return batches[i].GetMeta().GetCreatedAt() < batches[j].GetMeta().GetCreatedAt() })
	if len(batches) != 3 {
		t.Fatalf("%d new tasks, want 3", len(batches))
	}
	for i := 1; i < len(batches); i++ {
		prevUp := up[batches[i-1].GetId()]
		gap := time.Unix(0, batches[i].GetMeta().GetCreatedAt()).Sub(prevUp)
		if gap < monitor+delay || gap > monitor+delay+pollInterval {
			t.Errorf("batch %d started %v after batch %d was up; want the monitor period and delay (%v), plus at most a poll", i+1, gap, i, monitor+delay)
		}
	}
	last := up[batches[2].GetId()]
	if d := time.Unix(0, c.service().GetUpdateStatus().GetCompletedAt()).Sub(last); d < monitor+delay || d > monitor+delay+pollInterval {
		t.Errorf("completed %v after the last batch was up; want the monitor period and delay (%v), plus at most a poll", d, monitor+delay)
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
			c.create(spec("/bin/v1", 4, upd))
			c.runUntil("four v1 tasks", func() bool { return c.running()["/bin/v1"] == 4 })
			c.changeSpec(spec("/bin/false", 4, upd))
			c.runUntil(tc.want.String(), func() bool { return c.updateState() == tc.want })
			if tc.image != "" {
				c.runUntil("all replicas back on "+tc.image, func() bool { return c.running()[tc.image] == 4 })
				if got := c.service().GetSpec().GetTask().GetContainer().GetImage(); got != tc.image {
					t.Fatalf("spec after rollback runs %s", got)
				}
			} else if r := c.running(); r["/bin/v1"] < 2 {
				t.Fatalf("a paused update should leave the untouched replicas running: %v", r)
			}
		})
	}
}

// A new updater (a new leader) carries an update on to the same end.
func TestUpdateResumesAfterRestart(t *testing.T) {
	c := start(t)
	upd := &pb.UpdateConfig{Parallelism: 1, Monitor: int64(200 * time.Millisecond)}
	c.create(spec("/bin/v1", 3, upd))
	c.runUntil("three v1 tasks", func() bool { return c.running()["/bin/v1"] == 3 })
	c.changeSpec(spec("/bin/v2", 3, upd))
	c.runUntil("the first new task running", func() bool { return c.running()["/bin/v2"] == 1 })
	// The leader changes: its rollouts are gone; a new updater starts.
	c.upd, c.rollouts = New(c.store, c.clock, discard), map[string]*pending{}
	c.runUntil("update completed", func() bool { return c.updateState() == pb.UpdateState_UPDATE_STATE_COMPLETED })
	if r := c.running(); r["/bin/v2"] != 3 {
		t.Fatalf("after the update: %v", r)
	}
}

// The updater's loop starts a rollout when a service's update starts and
// drives it on the clock; stopped (leadership lost) and started again, a
// new loop carries the update on. The test moves the clock only while the
// rollout waits on it, so the run is the same every time.
func TestRunCarriesUpdateOnAfterRestart(t *testing.T) {
	c := start(t)
	upd := &pb.UpdateConfig{Parallelism: 1, Monitor: int64(200 * time.Millisecond)}
	c.create(spec("/bin/v1", 3, upd))
	c.runUntil("three v1 tasks", func() bool { return c.running()["/bin/v1"] == 3 })

	stop := c.runLoop(New(c.store, c.clock, discard))
	c.changeSpec(spec("/bin/v2", 3, upd))
	c.stepWithLoop("the first new task running", func() bool { return c.running()["/bin/v2"] == 1 })
	stop()
	if _, armed := c.clock.Next(); armed {
		t.Fatal("a stopped updater left a timer armed")
	}
	before := c.running()
	stop = c.runLoop(New(c.store, c.clock, discard))
	defer stop()
	c.stepWithLoop("update completed", func() bool { return c.updateState() == pb.UpdateState_UPDATE_STATE_COMPLETED })
	if r := c.running(); r["/bin/v2"] != 3 || before["/bin/v2"] != 1 {
		t.Fatalf("before the restart %v, after the update %v", before, r)
	}
}

// runLoop runs u's loop until the returned stop is called.
func (c *cluster) runLoop(u *Updater) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); u.Run(ctx) }()
	return func() { cancel(); wg.Wait() }
}

// stepWithLoop runs the worker and the orchestrator while the updater's
// loop runs, until cond holds. Between rounds it waits until the rollout
// waits on the clock (or the update is over), then moves the clock to the
// rollout's next step, at most a tick.
func (c *cluster) stepWithLoop(what string, cond func() bool) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // fails the test; never decides it
	defer cancel()
	sub := c.store.Watch(func(ev raftstore.Event) bool { return ev.Table == raftstore.KindService })
	defer sub.Close()
	for i := 0; !cond(); i++ {
		if i == maxRounds {
			c.t.Fatalf("%s did not happen in %d rounds; running %v, update %v", what, maxRounds, c.running(), c.service().GetUpdateStatus())
		}
		c.work(ctx)
		for range 10 {
			before := c.index()
			c.orch.ReconcileAll(ctx)
			if c.index() == before {
				break
			}
		}
		// The rollout is parked once a timer is armed; it is over once the
		// service is no longer updating.
		for {
			if _, armed := c.clock.Next(); armed || !updating(c.service()) {
				break
			}
			armed := make(chan error, 1)
			wctx, stopWait := context.WithCancel(ctx)
			go func() { armed <- c.clock.WaitForTimer(wctx, -1) }()
			var err error
			select {
			case <-sub.C():
				stopWait()
				<-armed
			case err = <-armed:
			}
			stopWait()
			if err != nil {
				c.t.Fatalf("waiting for the rollout to wait on the clock: %v", err)
			}
		}
		d, armed := c.clock.Next()
		if !armed || d > tick {
			d = tick
		}
		c.clock.Advance(d)
	}
}

// Which tasks a rollout replaces next, from one state.
func TestOutdated(t *testing.T) {
	spec1 := &pb.TaskSpec{Container: &pb.ContainerSpec{Image: "/bin/v1"}}
	spec2 := &pb.TaskSpec{Container: &pb.ContainerSpec{Image: "/bin/v2"}}
	task := func(id string, slot, version uint64, spec *pb.TaskSpec, desired, state pb.TaskState, created int64) *pb.Task {
		return &pb.Task{Id: id, Slot: slot, SpecVersion: version, Spec: spec, DesiredState: desired,
			Status: &pb.TaskStatus{State: state}, Meta: &pb.Meta{CreatedAt: created}}
	}
	const (
		running  = pb.TaskState_TASK_STATE_RUNNING
		shutdown = pb.TaskState_TASK_STATE_SHUTDOWN
		failed   = pb.TaskState_TASK_STATE_FAILED
		remove   = pb.TaskState_TASK_STATE_REMOVE
	)
	failedSlot := []*pb.Task{task("old", 1, 1, spec1, shutdown, shutdown, 1), task("new", 1, 2, spec2, shutdown, failed, 2)}
	for _, tc := range []struct {
		name  string
		tasks []*pb.Task
		v     uint64
		spec  *pb.TaskSpec
		want  string
	}{
		{"old tasks, in slot order", []*pb.Task{
			task("c", 3, 1, spec1, running, running, 1), task("a", 1, 1, spec1, running, running, 1), task("b", 2, 2, spec2, running, running, 2),
		}, 2, spec2, "[a c]"},
		{"an old task already on the new spec stays (a rollback to the spec it never left)", []*pb.Task{
			task("a", 1, 1, spec2, running, running, 1),
		}, 2, spec2, "[]"},
		{"a slot whose new task ended is not refilled by its own rollout", failedSlot, 2, spec2, "[]"},
		{"a rollback refills the slot whose new task failed", failedSlot, 3, spec1, "[new]"},
		{"a slot whose last task ended on an older spec is refilled", []*pb.Task{
			task("older", 1, 1, spec1, shutdown, shutdown, 1), task("old", 1, 1, spec1, shutdown, failed, 2),
		}, 2, spec2, "[old]"},
		{"removed slots are left alone", []*pb.Task{
			task("gone", 4, 1, spec1, remove, shutdown, 1),
		}, 2, spec2, "[]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := []string{}
			for _, tk := range outdated(tc.tasks, tc.v, tc.spec) {
				got = append(got, tk.GetId())
			}
			if fmt.Sprint(got) != tc.want {
				t.Fatalf("outdated = %v, want %s", got, tc.want)
			}
		})
	}
}
