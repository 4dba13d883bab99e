package worker

import (
	"context"
	"log/slog"
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
)

// checkedRuntime is a runtime whose one task runs until stopped and
// reports the health the test sets, as a container with an image
// HEALTHCHECK would. Stop hands the test the status the agent holds at
// that moment and blocks until the test lets it go on.
type checkedRuntime struct {
	Runtime
	health  pb.HealthState
	a       *Agent
	stopped chan *pb.TaskStatus
	release chan struct{}
}

func (r *checkedRuntime) Name() string { return "checked" }

func (r *checkedRuntime) Inspect(context.Context, string) (TaskInfo, error) {
	return TaskInfo{State: RunRunning, Pid: 4242}, nil
}

func (r *checkedRuntime) Wait(ctx context.Context, _ string) (Exit, error) {
	<-ctx.Done()
	return Exit{}, ctx.Err()
}

func (r *checkedRuntime) Health(context.Context, string) (pb.HealthState, string, error) {
	return r.health, "probe said no", nil
}

func (r *checkedRuntime) Stop(_ context.Context, id string, _ time.Duration) error {
	r.stopped <- r.a.task(id).GetStatus()
	<-r.release
	return nil
}

// testAgent is an agent with just what a task controller needs.
func testAgent(t *testing.T, rt Runtime, tasks ...*pb.Task) *Agent {
	t.Helper()
	db, err := openTaskDB(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.close() })
	a := &Agent{log: slog.New(slog.DiscardHandler), db: db, runtimes: map[string]Runtime{rt.Name(): rt},
		tasks: map[string]*pb.Task{}, pending: map[string]*pb.TaskStatus{}, statusWake: make(chan struct{}, 1)}
	for _, tk := range tasks {
		a.tasks[tk.GetId()] = tk
	}
	return a
}

// A task found unhealthy is reported so (still RUNNING, health UNHEALTHY)
// before the runtime is asked to stop it, which may take the whole grace
// period; only then is it reported FAILED.
func TestUnhealthyReportedBeforeStop(t *testing.T) {
	rt := &checkedRuntime{health: pb.HealthState_HEALTH_STATE_UNHEALTHY, stopped: make(chan *pb.TaskStatus, 1), release: make(chan struct{})}
	tk := &pb.Task{Id: "t1", Spec: &pb.TaskSpec{Runtime: "checked", Container: &pb.ContainerSpec{}}, DesiredState: pb.TaskState_TASK_STATE_RUNNING,
		Status: &pb.TaskStatus{State: pb.TaskState_TASK_STATE_RUNNING, Health: pb.HealthState_HEALTH_STATE_HEALTHY}}
	a := testAgent(t, rt, tk)
	rt.a = a
	c := &taskController{a: a, id: tk.GetId(), poke: make(chan struct{}, 1)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type result struct {
		s    *pb.TaskStatus
		wait bool
	}
	done := make(chan result, 1)
	go func() {
		s, wait := c.waitRunning(ctx, rt, tk)
		done <- result{s, wait}
	}()

	var during *pb.TaskStatus
	select {
	case during = <-rt.stopped:
	case <-ctx.Done():
		t.Fatal("the unhealthy task was never stopped")
	}
	if during.GetState() != pb.TaskState_TASK_STATE_RUNNING || during.GetHealth() != pb.HealthState_HEALTH_STATE_UNHEALTHY {
		t.Fatalf("while stopping: status %v, want RUNNING and UNHEALTHY", during)
	}
	a.mu.Lock()
	queued := a.pending[tk.GetId()]
	a.mu.Unlock()
	if queued.GetHealth() != pb.HealthState_HEALTH_STATE_UNHEALTHY {
		t.Fatalf("while stopping: the report queued for the managers is %v, want health UNHEALTHY", queued)
	}
	select {
	case <-a.statusWake:
	default:
		t.Fatal("the status report was not woken for the UNHEALTHY status")
	}

	close(rt.release)
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		t.Fatal("waitRunning did not return after the stop")
	}
	if r.s.GetState() != pb.TaskState_TASK_STATE_FAILED || r.s.GetHealth() != pb.HealthState_HEALTH_STATE_UNHEALTHY {
		t.Fatalf("after the stop: %v, want FAILED and UNHEALTHY", r.s)
	}
}

// A task starts running with the health it will be judged by: a checked
// task is never reported RUNNING with no health (and so routed to) before
// its first check.
func TestRunningCarriesInitialHealth(t *testing.T) {
	probe := &pb.HealthCheck{HttpGet: "/healthz"}
	cases := []struct {
		name     string
		hc       *pb.HealthCheck
		reported pb.HealthState // the runtime's view (an image HEALTHCHECK)
		want     pb.HealthState
	}{
		{"spec check", probe, pb.HealthState_HEALTH_STATE_NONE, pb.HealthState_HEALTH_STATE_STARTING},
		{"image check", nil, pb.HealthState_HEALTH_STATE_STARTING, pb.HealthState_HEALTH_STATE_STARTING},
		{"image check disabled", &pb.HealthCheck{Disable: true}, pb.HealthState_HEALTH_STATE_STARTING, pb.HealthState_HEALTH_STATE_NONE},
		{"no check", nil, pb.HealthState_HEALTH_STATE_NONE, pb.HealthState_HEALTH_STATE_NONE},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rt := &checkedRuntime{health: tc.reported}
			tk := &pb.Task{Id: "t1", Spec: &pb.TaskSpec{Runtime: "checked", Container: &pb.ContainerSpec{Healthcheck: tc.hc}},
				DesiredState: pb.TaskState_TASK_STATE_RUNNING, Status: &pb.TaskStatus{State: pb.TaskState_TASK_STATE_STARTING}}
			c := &taskController{a: testAgent(t, rt, tk), id: tk.GetId()}
			s, _ := c.step(context.Background(), tk)
			if s.GetState() != pb.TaskState_TASK_STATE_RUNNING || s.GetHealth() != tc.want {
				t.Fatalf("got %v, want RUNNING with health %v", s, tc.want)
			}
		})
	}
}
