package worker

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/registry"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
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

// pullingRuntime's Prepare reports progress as an image pull does, hands
// the test the status the agent then holds, and waits for the test.
type pullingRuntime struct {
	Runtime
	a        *Agent
	auth     chan *pb.RegistryAuth
	reported chan *pb.TaskStatus
	release  chan struct{}
}

func (r *pullingRuntime) Name() string { return "pulling" }

func (r *pullingRuntime) Prepare(ctx context.Context, t *pb.Task, s TaskFiles) error {
	r.auth <- s.RegistryAuth
	for _, msg := range []string{"pulling 0/2 layers", "pulling 1/2 layers", "pulling 1/2 layers"} {
		ReportProgress(ctx, msg)
	}
	r.reported <- r.a.task(t.GetId()).GetStatus()
	<-r.release
	return nil
}

// A preparing task's progress is its status message, reported as it
// changes, with the time the task began preparing; the service's registry
// credentials reach Prepare once they have arrived.
func TestPrepareProgressAndRegistryAuth(t *testing.T) {
	rt := &pullingRuntime{auth: make(chan *pb.RegistryAuth, 1), reported: make(chan *pb.TaskStatus, 1), release: make(chan struct{})}
	began := time.Now().Add(-time.Minute).UnixNano()
	tk := &pb.Task{Id: "t1", ServiceId: "svc1", Spec: &pb.TaskSpec{Runtime: "pulling", Container: &pb.ContainerSpec{WithRegistryAuth: true}},
		DesiredState: pb.TaskState_TASK_STATE_RUNNING,
		Status:       &pb.TaskStatus{State: pb.TaskState_TASK_STATE_PREPARING, Message: "preparing", Timestamp: began}}
	a := testAgent(t, rt, tk)
	a.secrets = map[string][]byte{}
	a.configs = map[string][]byte{}
	a.secretFiles, a.configFiles = newSecretFiles(""), newConfigFiles("")
	rt.a = a
	c := &taskController{a: a, id: tk.GetId(), poke: make(chan struct{}, 1)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// The credentials have not arrived: the task waits.
	if s, wait := c.step(ctx, a.task("t1")); s != nil || !wait {
		t.Fatalf("step without the credentials: %v, wait %v; want to wait", s, wait)
	}
	raw, err := proto.Marshal(&pb.RegistryAuth{Server: "127.0.0.1:5443", Username: "alice", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	a.secrets[registry.AuthSecretID("svc1")] = raw

	done := make(chan *pb.TaskStatus, 1)
	go func() {
		s, _ := c.step(ctx, a.task("t1"))
		done <- s
	}()
	if got := <-rt.auth; got.GetUsername() != "alice" || got.GetPassword() != "pw" {
		t.Errorf("Prepare got credentials %v", got)
	}
	s := <-rt.reported
	if s.GetState() != pb.TaskState_TASK_STATE_PREPARING || s.GetMessage() != "pulling 1/2 layers" || s.GetTimestamp() != began {
		t.Errorf("status while pulling: %v; want PREPARING, \"pulling 1/2 layers\", the time it began preparing", s)
	}
	a.mu.Lock()
	pending := a.pending["t1"]
	a.mu.Unlock()
	if pending.GetMessage() != "pulling 1/2 layers" {
		t.Errorf("the progress is not queued for the managers: %v", pending)
	}
	close(rt.release)
	if s := <-done; s.GetState() != pb.TaskState_TASK_STATE_READY {
		t.Errorf("after Prepare: %v, want READY", s)
	}
}
