package scheduler

import (
	"fmt"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
)

const (
	gib = int64(1) << 30
	mib = int64(1) << 20
	cpu = int64(1e9)
)

// mkNode is a Ready, active worker with a process runtime, 4 CPUs and
// 8 GiB; opts change it.
func mkNode(id string, opts ...func(*pb.Node)) *pb.Node {
	n := &pb.Node{
		Id:   id,
		Role: pb.NodeRole_NODE_ROLE_WORKER,
		Spec: &pb.NodeSpec{Annotations: &pb.Annotations{Labels: map[string]string{}}},
		Description: &pb.NodeDescription{
			Hostname:     "host-" + id,
			Os:           "linux",
			Arch:         "x86_64",
			Runtimes:     []string{"process"},
			Resources:    &pb.Resources{NanoCpus: 4 * cpu, MemoryBytes: 8 * gib},
			EngineLabels: map[string]string{},
		},
		Status: &pb.NodeStatus{State: pb.NodeState_NODE_STATE_READY},
	}
	for _, o := range opts {
		o(n)
	}
	return n
}

func withLabel(k, v string) func(*pb.Node) {
	return func(n *pb.Node) {
		if n.Spec.Annotations.Labels == nil {
			n.Spec.Annotations.Labels = map[string]string{}
		}
		n.Spec.Annotations.Labels[k] = v
	}
}
func withEngineLabel(k, v string) func(*pb.Node) {
	return func(n *pb.Node) { n.Description.EngineLabels[k] = v }
}
func withState(s pb.NodeState) func(*pb.Node) { return func(n *pb.Node) { n.Status.State = s } }
func withAvailability(a pb.NodeAvailability) func(*pb.Node) {
	return func(n *pb.Node) { n.Spec.Availability = a }
}
func withResources(cpus, mem int64) func(*pb.Node) {
	return func(n *pb.Node) { n.Description.Resources = &pb.Resources{NanoCpus: cpus, MemoryBytes: mem} }
}
func withRuntimes(rts ...string) func(*pb.Node) {
	return func(n *pb.Node) { n.Description.Runtimes = rts }
}
func withRole(r pb.NodeRole) func(*pb.Node) { return func(n *pb.Node) { n.Role = r } }

// mkTask is a pending task of service svc; opts change it.
func mkTask(id, svc string, opts ...func(*pb.Task)) *pb.Task {
	t := &pb.Task{
		Id:           id,
		ServiceId:    svc,
		ServiceName:  svc,
		Spec:         &pb.TaskSpec{Runtime: "process", Container: &pb.ContainerSpec{Image: "/bin/true"}, Placement: &pb.Placement{}},
		SpecVersion:  1,
		DesiredState: pb.TaskState_TASK_STATE_RUNNING,
		Status:       &pb.TaskStatus{State: pb.TaskState_TASK_STATE_PENDING},
	}
	for _, o := range opts {
		o(t)
	}
	return t
}

func reserve(cpus, mem int64) func(*pb.Task) {
	return func(t *pb.Task) {
		t.Spec.Resources = &pb.ResourceRequirements{Reservations: &pb.Resources{NanoCpus: cpus, MemoryBytes: mem}}
	}
}
func constraints(cs ...string) func(*pb.Task) {
	return func(t *pb.Task) { t.Spec.Placement.Constraints = cs }
}
func spread(descs ...string) func(*pb.Task) {
	return func(t *pb.Task) {
		for _, d := range descs {
			t.Spec.Placement.Preferences = append(t.Spec.Placement.Preferences, &pb.PlacementPreference{SpreadDescriptor: d})
		}
	}
}
func maxReplicas(n uint64) func(*pb.Task) {
	return func(t *pb.Task) { t.Spec.Placement.MaxReplicas = n }
}
func taskRuntime(rt string) func(*pb.Task) { return func(t *pb.Task) { t.Spec.Runtime = rt } }
func hostPortTask(port uint32, proto pb.PortProtocol) func(*pb.Task) {
	return func(t *pb.Task) {
		t.Endpoint = &pb.Endpoint{Spec: &pb.EndpointSpec{Ports: []*pb.PortConfig{
			{Protocol: proto, TargetPort: 80, PublishedPort: port, PublishMode: pb.PublishMode_PUBLISH_MODE_HOST},
		}}}
	}
}
func onNode(node string) func(*pb.Task) { return func(t *pb.Task) { t.NodeId = node } }

// running makes the task an active task on node.
func running(node string) func(*pb.Task) {
	return func(t *pb.Task) {
		t.NodeId = node
		t.Status = &pb.TaskStatus{State: pb.TaskState_TASK_STATE_RUNNING}
	}
}

// tasks makes n pending tasks of svc named svc-1..svc-n.
func tasks(svc string, n int, opts ...func(*pb.Task)) []*pb.Task {
	out := make([]*pb.Task, n)
	for i := range out {
		out[i] = mkTask(fmt.Sprintf("%s-%d", svc, i+1), svc, opts...)
	}
	return out
}

// modelOf builds a cluster model from nodes and existing tasks.
func modelOf(nodes []*pb.Node, existing ...*pb.Task) *cluster {
	c := newCluster()
	for _, n := range nodes {
		c.putNode(n)
	}
	for _, t := range existing {
		c.setUsage(t.GetId(), usageOf(t))
	}
	return c
}

// perNode counts the tasks placed on each node; "" counts unplaced ones.
func perNode(ds []decision) map[string]int {
	out := map[string]int{}
	for _, d := range ds {
		out[d.node]++
	}
	return out
}

func mustPlaceAll(t *testing.T, ds []decision) {
	t.Helper()
	for _, d := range ds {
		if d.node == "" {
			t.Fatalf("task %s not placed: %s", d.task.GetId(), d.reason)
		}
	}
}

func equalCounts(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
