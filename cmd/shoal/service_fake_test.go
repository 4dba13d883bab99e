package main

import (
	"bytes"
	"context"
	"fmt"
	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/internal/pki/pkitest"
	"google.golang.org/grpc/credentials"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// fakeControl is a toy cluster: every ListTasks moves each task one state
// closer to what it should be, so the CLI's progress sees it converge.
type fakeControl struct {
	pb.UnimplementedControlServer
	mu       sync.Mutex
	services map[string]*pb.Service
	tasks    []*pb.Task
	next     int
	// failImage: tasks of this image fail when they reach STARTING, and
	// the update is paused.
	failImage string
	// stuckImage: tasks of this image stay PENDING.
	stuckImage string
	// configs are the names ListConfigs answers.
	configs []string
	// beforeUpdate runs at the start of UpdateService (under mu).
	beforeUpdate func()
}

var fakeNodes = []*pb.Node{
	{Id: "n1aaaaaaaaaaaaaaaaaaaaaaa", Description: &pb.NodeDescription{Hostname: "w1"}},
	{Id: "n2bbbbbbbbbbbbbbbbbbbbbbb", Description: &pb.NodeDescription{Hostname: "w2"}},
}

func (f *fakeControl) id(prefix string) string {
	f.next++
	return fmt.Sprintf("%s%024d", prefix, f.next)
}

func (f *fakeControl) find(ref string) (*pb.Service, error) {
	for _, s := range f.services {
		if s.Id == ref || s.Spec.GetAnnotations().GetName() == ref {
			return s, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "no such service: %s", ref)
}

// reconcile makes tasks for the service's current spec.
func (f *fakeControl) reconcile(s *pb.Service) {
	want := map[uint64]bool{}
	var slots []uint64
	switch m := s.Spec.GetMode().(type) {
	case *pb.ServiceSpec_Replicated:
		for i := uint64(1); i <= m.Replicated.GetReplicas(); i++ {
			slots = append(slots, i)
		}
	case *pb.ServiceSpec_Global:
		slots = []uint64{0, 0}
	}
	for _, t := range f.tasks {
		if t.ServiceId != s.Id || t.DesiredState != pb.TaskState_TASK_STATE_RUNNING {
			continue
		}
		keep := t.SpecVersion == s.SpecVersion && (t.Slot == 0 || t.Slot <= uint64(len(slots)))
		if !keep {
			t.DesiredState = pb.TaskState_TASK_STATE_SHUTDOWN
		} else {
			want[t.Slot] = true
		}
	}
	for i, slot := range slots {
		if slot != 0 && want[slot] {
			continue
		}
		node := fakeNodes[0].Id
		if slot == 0 {
			node = fakeNodes[i].Id
			if want[0] {
				continue
			}
		}
		f.tasks = append(f.tasks, &pb.Task{
			Id: f.id("t"), ServiceId: s.Id, ServiceName: s.Spec.Annotations.GetName(), Slot: slot, NodeId: node,
			Meta: &pb.Meta{CreatedAt: time.Now().UnixNano(), Version: uint64(f.next)}, Spec: proto.Clone(s.Spec.Task).(*pb.TaskSpec),
			SpecVersion: s.SpecVersion, DesiredState: pb.TaskState_TASK_STATE_RUNNING,
			Status: &pb.TaskStatus{State: pb.TaskState_TASK_STATE_PENDING, Timestamp: time.Now().UnixNano()},
		})
	}
}

func (f *fakeControl) advance() {
	steps := []pb.TaskState{pb.TaskState_TASK_STATE_PENDING, pb.TaskState_TASK_STATE_ASSIGNED, pb.TaskState_TASK_STATE_PREPARING,
		pb.TaskState_TASK_STATE_STARTING, pb.TaskState_TASK_STATE_RUNNING}
	for _, t := range f.tasks {
		st := t.Status
		if t.DesiredState > pb.TaskState_TASK_STATE_RUNNING {
			if st.State <= pb.TaskState_TASK_STATE_RUNNING {
				st.State = pb.TaskState_TASK_STATE_SHUTDOWN
			}
			continue
		}
		img := t.Spec.GetContainer().GetImage()
		if img == f.stuckImage {
			t.PendingReason = "no node has 64 CPUs free"
			continue
		}
		if img == f.failImage && st.State == pb.TaskState_TASK_STATE_STARTING {
			st.State, st.Err = pb.TaskState_TASK_STATE_FAILED, "task: non-zero exit (1)"
			s := f.services[t.ServiceId]
			s.UpdateStatus = &pb.UpdateStatus{State: pb.UpdateState_UPDATE_STATE_PAUSED, StartedAt: s.UpdateStatus.GetStartedAt(), Message: "update paused: task " + t.Id + " failed"}
			continue
		}
		for i, s := range steps[:len(steps)-1] {
			if st.State == s {
				st.State = steps[i+1]
				break
			}
		}
	}
	for _, s := range f.services {
		us := s.UpdateStatus
		if us == nil || (us.State != pb.UpdateState_UPDATE_STATE_UPDATING && us.State != pb.UpdateState_UPDATE_STATE_ROLLBACK_STARTED) {
			continue
		}
		done := true
		for _, t := range f.tasks {
			if t.ServiceId == s.Id && t.DesiredState == pb.TaskState_TASK_STATE_RUNNING && t.Status.State != pb.TaskState_TASK_STATE_RUNNING {
				done = false
			}
		}
		if done {
			us.State++
			if us.State == pb.UpdateState_UPDATE_STATE_UPDATING+1 {
				us.State = pb.UpdateState_UPDATE_STATE_COMPLETED
			} else {
				us.State = pb.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED
			}
		}
	}
}

func (f *fakeControl) CreateService(_ context.Context, req *pb.CreateServiceRequest) (*pb.CreateServiceResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	spec := req.GetSpec()
	if _, err := f.find(spec.GetAnnotations().GetName()); err == nil {
		return nil, status.Errorf(codes.AlreadyExists, "service name %s is taken", spec.GetAnnotations().GetName())
	}
	s := &pb.Service{Id: f.id("s"), Meta: &pb.Meta{Version: 1}, Spec: spec, SpecVersion: 1}
	f.services[s.Id] = s
	f.reconcile(s)
	return &pb.CreateServiceResponse{Service: s}, nil
}

func (f *fakeControl) GetService(_ context.Context, req *pb.GetServiceRequest) (*pb.GetServiceResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.find(req.GetRef())
	if err != nil {
		return nil, err
	}
	return &pb.GetServiceResponse{Service: proto.Clone(s).(*pb.Service)}, nil
}

func (f *fakeControl) UpdateService(_ context.Context, req *pb.UpdateServiceRequest) (*pb.UpdateServiceResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.beforeUpdate != nil {
		f.beforeUpdate()
	}
	s, err := f.find(req.GetRef())
	if err != nil {
		return nil, err
	}
	if req.GetVersion() != 0 && req.GetVersion() != s.Meta.Version {
		return nil, status.Errorf(codes.Aborted, "service %s changed since version %d", s.Id, req.GetVersion())
	}
	state := pb.UpdateState_UPDATE_STATE_UPDATING
	if req.GetRollback() {
		s.Spec, s.PreviousSpec = s.PreviousSpec, s.Spec
		state = pb.UpdateState_UPDATE_STATE_ROLLBACK_STARTED
	} else {
		s.PreviousSpec, s.Spec = s.Spec, req.GetSpec()
	}
	s.Meta.Version++
	if !proto.Equal(s.Spec.Task, s.PreviousSpec.Task) {
		s.SpecVersion++
		s.UpdateStatus = &pb.UpdateStatus{State: state, StartedAt: time.Now().UnixNano()}
	}
	f.reconcile(s)
	return &pb.UpdateServiceResponse{Service: proto.Clone(s).(*pb.Service)}, nil
}

func (f *fakeControl) ListTasks(_ context.Context, req *pb.ListTasksRequest) (*pb.ListTasksResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.find(req.GetServiceRef())
	if err != nil {
		return nil, err
	}
	f.advance()
	var out []*pb.Task
	for _, t := range f.tasks {
		if t.ServiceId == s.Id && (!req.GetRunningOnly() || t.Status.State <= pb.TaskState_TASK_STATE_RUNNING) {
			out = append(out, proto.Clone(t).(*pb.Task))
		}
	}
	return &pb.ListTasksResponse{Tasks: out}, nil
}

func (f *fakeControl) ListServices(context.Context, *pb.ListServicesRequest) (*pb.ListServicesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &pb.ListServicesResponse{}
	for _, s := range f.services {
		resp.Services = append(resp.Services, proto.Clone(s).(*pb.Service))
		c := &pb.ServiceTaskCounts{ServiceId: s.Id}
		for _, t := range f.tasks {
			if t.ServiceId == s.Id && t.DesiredState == pb.TaskState_TASK_STATE_RUNNING {
				c.Desired++
				if t.Status.State == pb.TaskState_TASK_STATE_RUNNING {
					c.Running++
				}
			}
		}
		resp.Counts = append(resp.Counts, c)
	}
	return resp, nil
}

func (f *fakeControl) RemoveService(_ context.Context, req *pb.RemoveServiceRequest) (*pb.RemoveServiceResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.find(req.GetRef())
	if err != nil {
		return nil, err
	}
	delete(f.services, s.Id)
	return &pb.RemoveServiceResponse{}, nil
}

func (f *fakeControl) ListNodes(context.Context, *pb.ListNodesRequest) (*pb.ListNodesResponse, error) {
	return &pb.ListNodesResponse{Nodes: fakeNodes}, nil
}

func (f *fakeControl) ServiceLogs(req *pb.ServiceLogsRequest, stream grpc.ServerStreamingServer[pb.LogLine]) error {
	f.mu.Lock()
	s, err := f.find(req.GetRef())
	var lines []*pb.LogLine
	for _, t := range f.tasks {
		if err == nil && t.ServiceId == s.Id && t.DesiredState == pb.TaskState_TASK_STATE_RUNNING {
			lines = append(lines, &pb.LogLine{TaskId: t.Id, NodeId: t.NodeId, Slot: t.Slot, ServiceName: t.ServiceName, Data: []byte("listening on :80\n")})
		}
	}
	f.mu.Unlock()
	if err != nil {
		return err
	}
	for _, l := range lines {
		if err := stream.Send(l); err != nil {
			return err
		}
	}
	return nil
}

// captureRun runs the CLI with stdout captured.
func captureRun(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		done <- string(b)
	}()
	var errb bytes.Buffer
	code = run(args, &errb)
	os.Stdout = saved
	w.Close()
	return code, <-done, errb.String()
}

// TestServiceCommandsFakeCluster runs the service commands against a fake
// Control server: the requests they send, their output, and their progress
// until convergence.
func TestServiceCommandsFakeCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for progress to converge")
	}
	fake := &fakeControl{services: map[string]*pb.Service{}, failImage: "/bin/broken", stuckImage: "/bin/huge"}
	host := serveControl(t, fake)
	// Our flags go first: after IMAGE, create passes everything to the task.
	svc := func(args ...string) []string {
		return append(append([]string{"service", args[0]}, host...), args[1:]...)
	}

	// create, with progress until converged.
	code, out, errOut := captureRun(t, svc("create", "--name", "web", "--replicas", "2", "--publish", "8080:80", "/bin/hello", "--port", "80")...)
	if code != 0 {
		t.Fatalf("create: exit %d, stderr %q, stdout:\n%s", code, errOut, out)
	}
	for _, want := range []string{"overall progress: 0 out of 2 tasks\n", "1/2: assigned  [", "1/2: running   [" + strings.Repeat("=", 50) + ">]\n",
		"overall progress: 2 out of 2 tasks\n", "verify: Waiting 1 second to verify that tasks are stable...\n", "verify: Service converged\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("create output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\x1b[") {
		t.Errorf("create output to a pipe has terminal escapes:\n%q", out)
	}
	web := fake.services[strings.SplitN(out, "\n", 2)[0]]
	if web == nil {
		t.Fatalf("create did not print the service ID first:\n%s", out)
	}
	if got := web.Spec.Task.Container; got.Image != "/bin/hello" || strings.Join(got.Args, " ") != "--port 80" {
		t.Errorf("created container %v", got)
	}

	// A name that is taken: the server's one line.
	if code, _, errOut := captureRun(t, svc("create", "--name", "web", "-d", "/bin/hello")...); code != 1 || errOut != "Error: service name web is taken\n" {
		t.Errorf("create taken name: exit %d, stderr %q", code, errOut)
	}

	// ls and ps.
	code, out, _ = captureRun(t, svc("ls")...)
	if code != 0 || !strings.Contains(out, "web    replicated   2/2        /bin/hello   *:8080->80/tcp") {
		t.Errorf("ls: exit %d:\n%s", code, out)
	}
	code, out, _ = captureRun(t, svc("ps", "web")...)
	if code != 0 || !regexp.MustCompile(`web\.1 +/bin/hello +w1 +Running +Running (less than a second|\d+ seconds?) ago`).MatchString(out) {
		t.Errorf("ps: exit %d:\n%s", code, out)
	}
	if code, _, errOut := captureRun(t, svc("ps", "nope")...); code != 1 || errOut != "Error: no such service: nope\n" {
		t.Errorf("ps nope: exit %d, stderr %q", code, errOut)
	}

	// scale.
	code, out, _ = captureRun(t, svc("scale", "web=3")...)
	if code != 0 || !strings.HasPrefix(out, "web scaled to 3\n") || !strings.Contains(out, "3/3: running") || !strings.HasSuffix(out, "verify: Service converged\n") {
		t.Errorf("scale: exit %d:\n%s", code, out)
	}
	if web.Spec.GetReplicated().GetReplicas() != 3 {
		t.Errorf("replicas %d after scale", web.Spec.GetReplicated().GetReplicas())
	}

	// update: rolling, waits for the update to complete.
	code, out, errOut = captureRun(t, svc("update", "--image", "/bin/hello2", "--env-add", "A=1", "web")...)
	if code != 0 || !strings.HasPrefix(out, "web\n") || !strings.Contains(out, "update: updating\n") || !strings.Contains(out, "update: completed\n") ||
		!strings.HasSuffix(out, "verify: Service converged\n") {
		t.Errorf("update: exit %d, stderr %q:\n%s", code, errOut, out)
	}
	if c := web.Spec.Task.Container; c.Image != "/bin/hello2" || strings.Join(c.Env, ",") != "A=1" || strings.Join(c.Args, " ") != "--port 80" {
		t.Errorf("after update: container %v", c)
	}

	// Someone else changes the service between our read and our write.
	fake.beforeUpdate = func() { web.Meta.Version++ }
	code, _, errOut = captureRun(t, svc("update", "--env-add", "B=2", "-d", "web")...)
	if code != 1 || errOut != "Error: service web was changed by someone else; run the command again\n" {
		t.Errorf("concurrent update: exit %d, stderr %q", code, errOut)
	}
	// scale retries instead: it sets the replicas whatever they were.
	n := 0
	fake.beforeUpdate = func() {
		if n++; n == 1 {
			web.Meta.Version++
		}
	}
	if code, out, errOut := captureRun(t, svc("scale", "-d", "web=2")...); code != 0 || out != "web scaled to 2\n" {
		t.Errorf("scale with a concurrent change: exit %d, stderr %q, stdout %q", code, errOut, out)
	}
	fake.beforeUpdate = nil

	// A failing update is paused: exit 1 with what to do.
	code, out, errOut = captureRun(t, svc("update", "--image", "/bin/broken", "web")...)
	if code != 1 || !strings.Contains(errOut, "the update of service web is paused: update paused: task ") ||
		!strings.Contains(errOut, "then fix it with `shoal service update` or undo it with `shoal service rollback web`") {
		t.Errorf("paused update: exit %d, stderr %q:\n%s", code, errOut, out)
	}
	if !strings.Contains(out, "failed    [>") {
		t.Errorf("paused update: the failure is not shown:\n%s", out)
	}

	// rollback.
	code, out, errOut = captureRun(t, svc("rollback", "web")...)
	if code != 0 || !strings.Contains(out, "overall progress: rolling back update: 2 out of 2 tasks") || !strings.Contains(out, "update: rollback_completed") ||
		!strings.HasSuffix(out, "verify: Service converged\n") {
		t.Errorf("rollback: exit %d, stderr %q:\n%s", code, errOut, out)
	}
	if web.Spec.Task.Container.Image != "/bin/hello2" {
		t.Errorf("image %q after rollback", web.Spec.Task.Container.Image)
	}

	// A service that cannot converge: the timeout says so, and leaves it.
	start := time.Now()
	code, out, errOut = captureRun(t, svc("update", "--timeout", "1500ms", "--image", "/bin/huge", "web")...)
	if code != 1 || !strings.Contains(errOut, "service web has not converged after 1.5s (0 out of 2 tasks): it keeps converging in the background; see `shoal service ps web`") {
		t.Errorf("timeout: exit %d, stderr %q", code, errOut)
	}
	if !strings.Contains(out, "no node has 64 CPUs free") {
		t.Errorf("timeout: the pending reason is not shown:\n%s", out)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("timeout of 1.5s took %v", d)
	}

	// Global services cannot be scaled.
	if code, _, errOut := captureRun(t, svc("create", "--name", "agent", "--mode", "global", "-d", "/bin/agent")...); code != 0 {
		t.Fatalf("create global: exit %d, %q", code, errOut)
	}
	if code, _, errOut := captureRun(t, svc("scale", "agent=3")...); code != 1 || errOut != "Error: scale: service agent is global (one task on every eligible node); only replicated services and replicated jobs can be scaled\n" {
		t.Errorf("scale global: exit %d, stderr %q", code, errOut)
	}
	code, out, _ = captureRun(t, svc("update", "--force", "agent")...)
	if code != 0 || !strings.Contains(out, "w1: running") || !strings.Contains(out, "w2: running") {
		t.Errorf("update global: exit %d:\n%s", code, out)
	}

	// logs, inspect, rm.
	code, out, _ = captureRun(t, svc("logs", "--no-task-ids", "agent")...)
	if code != 0 || !strings.Contains(out, "agent.n1aaaaaaaaaa@w1    | listening on :80\n") {
		t.Errorf("logs: exit %d:\n%s", code, out)
	}
	code, out, _ = captureRun(t, svc("inspect", "--pretty", "web")...)
	if code != 0 || !strings.Contains(out, "Name:") || !strings.Contains(out, "State:    updating") {
		t.Errorf("inspect --pretty: exit %d:\n%s", code, out)
	}
	code, out, _ = captureRun(t, svc("inspect", "web", "agent")...)
	if code != 0 || !strings.HasPrefix(out, "[") || strings.Count(out, `"spec_version"`) != 2 {
		t.Errorf("inspect: exit %d:\n%s", code, out)
	}
	code, out, errOut = captureRun(t, svc("rm", "web", "nope", "agent")...)
	if code != 1 || out != "web\nagent\n" || errOut != "Error: no such service: nope\n" {
		t.Errorf("rm: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if len(fake.services) != 0 {
		t.Errorf("%d services left after rm", len(fake.services))
	}
}

// fakeTLSServer is a gRPC server that speaks mutual TLS as a manager does,
// with a test CA, and the CLI flags of an admin client config it accepts.
func fakeTLSServer(t *testing.T) (*grpc.Server, []string) {
	t.Helper()
	ca := pkitest.NewCA(t, "fake")
	config := filepath.Join(t.TempDir(), "admin.pem")
	if err := os.WriteFile(config, ca.ClientConfig(t, ""), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(ca.Creds(t, pki.RoleManager, "fake-manager").ServerTLS(false, nil, nil))))
	return srv, []string{"--client-config", config}
}

// serveControl serves srv (a fake, or the managers' control API on a
// memory store) as the Control service over mutual TLS until the test
// ends, and returns the CLI flags that reach it (--host and the admin
// client config).
func serveControl(t *testing.T, srv pb.ControlServer) []string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server, tlsFlags := fakeTLSServer(t)
	pb.RegisterControlServer(server, srv)
	go server.Serve(l)
	t.Cleanup(server.Stop)
	return append([]string{"--host", l.Addr().String()}, tlsFlags...)
}

func (f *fakeControl) ListConfigs(context.Context, *pb.ListConfigsRequest) (*pb.ListConfigsResponse, error) {
	resp := &pb.ListConfigsResponse{}
	for _, name := range f.configs {
		resp.Configs = append(resp.Configs, &pb.Config{Id: "c-" + name, Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: name}}})
	}
	return resp, nil
}
