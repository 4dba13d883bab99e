package tests

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// helloSpec is a replicated hello service on the process runtime.
func helloSpec(t *testing.T, name string, replicas uint64, env ...string) *pb.ServiceSpec {
	return &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: name},
		Task: &pb.TaskSpec{
			Runtime: "process",
			Container: &pb.ContainerSpec{
				Image: helloBinary(t), Env: env, StopGracePeriod: int64(2 * time.Second),
				Healthcheck: &pb.HealthCheck{HttpGet: "/healthz", Interval: int64(200 * time.Millisecond), Retries: 2},
			},
			Restart: &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY, Delay: int64(100 * time.Millisecond)},
		},
		Mode:     &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: replicas}},
		Update:   &pb.UpdateConfig{Parallelism: 2, Monitor: int64(300 * time.Millisecond), FailureAction: pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK},
		Rollback: &pb.UpdateConfig{Parallelism: 3, Monitor: int64(100 * time.Millisecond)},
		Endpoint: &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80}}},
	}
}

func (c *cluster) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

func (c *cluster) createService(spec *pb.ServiceSpec) *pb.Service {
	c.t.Helper()
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.control(c.leader()).CreateService(ctx, &pb.CreateServiceRequest{Spec: spec})
	if err != nil {
		c.t.Fatalf("create service: %v", err)
	}
	return resp.GetService()
}

// serviceTasks lists a service's tasks through the control API.
func (c *cluster) serviceTasks(name string) []*pb.Task {
	c.t.Helper()
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.control(c.live()[0]).ListTasks(ctx, &pb.ListTasksRequest{ServiceRef: name})
	if err != nil {
		return nil
	}
	return resp.GetTasks()
}

// runningPerNode counts the running, healthy tasks of a service per node.
func (c *cluster) runningPerNode(name string) map[string]int {
	out := map[string]int{}
	for _, t := range c.serviceTasks(name) {
		if t.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING && t.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING &&
			t.GetStatus().GetHealth() == pb.HealthState_HEALTH_STATE_HEALTHY {
			out[t.GetNodeId()]++
		}
	}
	return out
}

func total(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// waitRunning waits until a service runs want healthy tasks, with each
// node's count checked by perNode (nil: any spread).
func (c *cluster) waitRunning(name string, want int, perNode func(map[string]int) bool) map[string]int {
	c.t.Helper()
	var got map[string]int
	c.eventually(45*time.Second, fmt.Sprintf("%d running tasks of %s", want, name), func() (bool, string) {
		got = c.runningPerNode(name)
		return total(got) == want && (perNode == nil || perNode(got)), fmt.Sprint(got)
	})
	return got
}

func (c *cluster) scale(name string, replicas uint64) {
	c.t.Helper()
	ctx, cancel := c.ctx()
	defer cancel()
	cl := c.control(c.live()[0])
	got, err := cl.GetService(ctx, &pb.GetServiceRequest{Ref: name})
	if err != nil {
		c.t.Fatal(err)
	}
	spec := proto.Clone(got.GetService().GetSpec()).(*pb.ServiceSpec)
	spec.GetReplicated().Replicas = replicas
	if _, err := cl.UpdateService(ctx, &pb.UpdateServiceRequest{Ref: name, Version: got.GetService().GetMeta().GetVersion(), Spec: spec}); err != nil {
		c.t.Fatal(err)
	}
}

func evenly(n int) func(map[string]int) bool {
	return func(m map[string]int) bool {
		for _, v := range m {
			if v != n {
				return false
			}
		}
		return true
	}
}

func TestServiceSpreadsScalesAndHeals(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(3)
	c.createService(helloSpec(t, "web", 6))
	c.waitRunning("web", 6, evenly(2))
	c.scale("web", 9)
	c.waitRunning("web", 9, evenly(3))
	c.scale("web", 3)
	c.waitRunning("web", 3, evenly(1))

	// Kill a task's process: the restart policy replaces it.
	var victim *pb.Task
	for _, tk := range c.serviceTasks("web") {
		if tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING && tk.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING {
			victim = tk
			break
		}
	}
	if err := syscall.Kill(int(victim.GetStatus().GetPid()), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.eventually(30*time.Second, "the killed task replaced", func() (bool, string) {
		replaced := false
		for _, tk := range c.serviceTasks("web") {
			if tk.GetSlot() == victim.GetSlot() && tk.GetId() != victim.GetId() && tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING {
				replaced = true
			}
		}
		return replaced && total(c.runningPerNode("web")) == 3, fmt.Sprint(c.runningPerNode("web"))
	})

	// Kill a worker: its task runs elsewhere once the deadline passes.
	w := c.workers[0]
	w.a.Close()
	killAll(w.runtime)
	w.a = nil
	got := c.waitRunning("web", 3, func(m map[string]int) bool { return m[w.cfg.DataDir] == 0 && m[nodeIDOf(c, "w1")] == 0 })
	t.Logf("after worker loss: %v", got)
}

// nodeIDOf finds a node's ID by hostname.
func nodeIDOf(c *cluster, hostname string) string {
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.control(c.live()[0]).GetNode(ctx, &pb.GetNodeRequest{Ref: hostname})
	if err != nil {
		return ""
	}
	return resp.GetNode().GetId()
}

func TestDrainPauseAndGlobal(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(2)
	c.createService(helloSpec(t, "web", 4))
	c.waitRunning("web", 4, evenly(2))
	ctx, cancel := c.ctx()
	defer cancel()
	cl := c.control(c.leader())
	setAvailability := func(host string, a pb.NodeAvailability) {
		n, err := cl.GetNode(ctx, &pb.GetNodeRequest{Ref: host})
		if err != nil {
			t.Fatal(err)
		}
		spec := proto.Clone(n.GetNode().GetSpec()).(*pb.NodeSpec)
		spec.Availability = a
		if _, err := cl.UpdateNode(ctx, &pb.UpdateNodeRequest{Ref: host, Spec: spec}); err != nil {
			t.Fatal(err)
		}
	}
	w1, w2 := nodeIDOf(c, "w1"), nodeIDOf(c, "w2")
	// Drain w1: its tasks move to w2.
	setAvailability("w1", pb.NodeAvailability_NODE_AVAILABILITY_DRAIN)
	c.waitRunning("web", 4, func(m map[string]int) bool { return m[w2] == 4 })
	// Pause w2 and make w1 active: w2 keeps its tasks, scaling up goes to w1.
	setAvailability("w1", pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE)
	setAvailability("w2", pb.NodeAvailability_NODE_AVAILABILITY_PAUSE)
	c.scale("web", 6)
	c.waitRunning("web", 6, func(m map[string]int) bool { return m[w2] == 4 && m[w1] == 2 })

	// A global service runs on every eligible node, including one that joins later.
	g := helloSpec(t, "agent", 0)
	g.Mode = &pb.ServiceSpec_Global{Global: &pb.GlobalService{}}
	setAvailability("w2", pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE)
	c.createService(g)
	c.waitRunning("agent", 2, evenly(1))
	c.addWorkers(1)
	c.waitRunning("agent", 3, evenly(1))
}

func TestPlacementConstraintsAndReservations(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(2)
	ctx, cancel := c.ctx()
	defer cancel()
	cl := c.control(c.leader())
	n, err := cl.GetNode(ctx, &pb.GetNodeRequest{Ref: "w2"})
	if err != nil {
		t.Fatal(err)
	}
	spec := proto.Clone(n.GetNode().GetSpec()).(*pb.NodeSpec)
	spec.Annotations.Labels = map[string]string{"zone": "b"}
	if _, err := cl.UpdateNode(ctx, &pb.UpdateNodeRequest{Ref: "w2", Spec: spec}); err != nil {
		t.Fatal(err)
	}
	zoned := helloSpec(t, "zoned", 3)
	zoned.Task.Placement = &pb.Placement{Constraints: []string{"node.labels.zone==b"}}
	c.createService(zoned)
	w2 := n.GetNode().GetId()
	c.waitRunning("zoned", 3, func(m map[string]int) bool { return m[w2] == 3 })

	// Reservations: half the memory of a node each, so one per node.
	mem := n.GetNode().GetDescription().GetResources().GetMemoryBytes()
	big := helloSpec(t, "big", 3)
	big.Task.Resources = &pb.ResourceRequirements{Reservations: &pb.Resources{MemoryBytes: mem/2 + 1}}
	c.createService(big)
	c.waitRunning("big", 2, evenly(1))
	c.eventually(20*time.Second, "the third task pending with a reason", func() (bool, string) {
		for _, tk := range c.serviceTasks("big") {
			if tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_PENDING && strings.Contains(tk.GetPendingReason(), "insufficient memory on 2 nodes") {
				return true, ""
			}
		}
		return false, "no pending task with the reason"
	})

	// Bad input is refused with a clear error and changes nothing.
	bad := []struct {
		name string
		spec func() *pb.ServiceSpec
		code codes.Code
		msg  string
	}{
		{"name taken", func() *pb.ServiceSpec { return helloSpec(t, "big", 1) }, codes.AlreadyExists, "already exists"},
		{"malformed constraint", func() *pb.ServiceSpec {
			s := helloSpec(t, "bad1", 1)
			s.Task.Placement = &pb.Placement{Constraints: []string{"node.labels.zone=b"}}
			return s
		}, codes.InvalidArgument, "constraint"},
		{"reservation bigger than any node", func() *pb.ServiceSpec {
			s := helloSpec(t, "bad2", 1)
			s.Task.Resources = &pb.ResourceRequirements{Reservations: &pb.Resources{MemoryBytes: mem * 4}}
			return s
		}, codes.InvalidArgument, "more than any node"},
		{"absurd replicas", func() *pb.ServiceSpec { return helloSpec(t, "bad3", 10_000_000) }, codes.InvalidArgument, "replicas"},
		{"relative executable", func() *pb.ServiceSpec {
			s := helloSpec(t, "bad4", 1)
			s.Task.Container.Image = "hello"
			return s
		}, codes.InvalidArgument, "absolute path"},
		{"not DNS-safe", func() *pb.ServiceSpec { return helloSpec(t, "Bad_Name", 1) }, codes.InvalidArgument, "DNS-safe"},
	}
	for _, b := range bad {
		_, err := cl.CreateService(ctx, &pb.CreateServiceRequest{Spec: b.spec()})
		if status.Code(err) != b.code || !strings.Contains(status.Convert(err).Message(), b.msg) {
			t.Errorf("%s: got %v, want %s containing %q", b.name, err, b.code, b.msg)
		}
	}
	list, err := cl.ListServices(ctx, &pb.ListServicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range list.GetServices() {
		names = append(names, s.GetSpec().GetAnnotations().GetName())
	}
	sort.Strings(names)
	if fmt.Sprint(names) != "[big zoned]" {
		t.Fatalf("bad input changed the services: %v", names)
	}
}

// updateImage starts a rolling update that sets env on the service.
func (c *cluster) updateEnv(name string, env ...string) {
	c.t.Helper()
	ctx, cancel := c.ctx()
	defer cancel()
	cl := c.control(c.leader())
	got, err := cl.GetService(ctx, &pb.GetServiceRequest{Ref: name})
	if err != nil {
		c.t.Fatal(err)
	}
	spec := proto.Clone(got.GetService().GetSpec()).(*pb.ServiceSpec)
	spec.Task.Container.Env = env
	if _, err := cl.UpdateService(ctx, &pb.UpdateServiceRequest{Ref: name, Version: got.GetService().GetMeta().GetVersion(), Spec: spec}); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) updateState(name string) *pb.UpdateStatus {
	ctx, cancel := c.ctx()
	defer cancel()
	got, err := c.control(c.live()[0]).GetService(ctx, &pb.GetServiceRequest{Ref: name})
	if err != nil {
		return nil
	}
	return got.GetService().GetUpdateStatus()
}

// runningEnv counts running healthy tasks whose env includes kv.
func (c *cluster) runningWithEnv(name, kv string) int {
	n := 0
	for _, t := range c.serviceTasks(name) {
		if t.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING && t.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING &&
			t.GetStatus().GetHealth() == pb.HealthState_HEALTH_STATE_HEALTHY && containsEnv(t, kv) {
			n++
		}
	}
	return n
}

func containsEnv(t *pb.Task, kv string) bool {
	for _, e := range t.GetSpec().GetContainer().GetEnv() {
		if e == kv {
			return true
		}
	}
	return kv == ""
}

func TestFailingUpdateRollsBack(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(3)
	c.createService(helloSpec(t, "web", 6, "HELLO_VERSION=v1"))
	c.waitRunning("web", 6, nil)
	c.updateEnv("web", "HELLO_VERSION=v2", "HELLO_UNHEALTHY=1")
	c.eventually(60*time.Second, "an automatic rollback", func() (bool, string) {
		st := c.updateState("web")
		return st.GetState() == pb.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED, st.String()
	})
	c.eventually(45*time.Second, "all replicas back on v1", func() (bool, string) {
		n := c.runningWithEnv("web", "HELLO_VERSION=v1")
		return n == 6 && total(c.runningPerNode("web")) == 6, fmt.Sprint(n, c.runningPerNode("web"))
	})
}

func TestLeaderKilledDuringRollingUpdate(t *testing.T) {
	c := newCluster(t)
	c.addManagers(3)
	c.addWorkers(2)
	spec := helloSpec(t, "web", 4, "HELLO_VERSION=v1")
	spec.Update = &pb.UpdateConfig{Parallelism: 1, Monitor: int64(500 * time.Millisecond)}
	c.createService(spec)
	c.waitRunning("web", 4, nil)
	c.updateEnv("web", "HELLO_VERSION=v2")
	c.eventually(30*time.Second, "the update under way", func() (bool, string) {
		n := c.runningWithEnv("web", "HELLO_VERSION=v2")
		return n >= 1, fmt.Sprint(n)
	})
	c.stopManager(c.leader())
	c.eventually(60*time.Second, "the new leader finishing the update", func() (bool, string) {
		st := c.updateState("web")
		n := c.runningWithEnv("web", "HELLO_VERSION=v2")
		return st.GetState() == pb.UpdateState_UPDATE_STATE_COMPLETED && n == 4, fmt.Sprint(st, n)
	})
}
