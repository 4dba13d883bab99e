package endpoints

import (
	"context"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/storetest"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

func TestServiceEndpoints(t *testing.T) {
	store := storetest.OpenLeader(t)
	running := &pb.TaskStatus{State: pb.TaskState_TASK_STATE_RUNNING}
	task := func(id, svc, node string, slot uint64, st *pb.TaskStatus, desired pb.TaskState) *pb.Task {
		return &pb.Task{Id: id, ServiceId: svc, NodeId: node, Slot: slot, DesiredState: desired, Status: st}
	}
	withPorts := &pb.TaskStatus{State: pb.TaskState_TASK_STATE_RUNNING, Ports: []*pb.PortBinding{{TargetPort: 80, HostIp: "10.0.0.1", HostPort: 30001}}}
	// A task the managers failed when its node went Down, with the ports
	// it served on (markDown keeps them for a task that was routable).
	lost := &pb.TaskStatus{State: pb.TaskState_TASK_STATE_FAILED, NodeLost: true, Ports: withPorts.GetPorts()}
	lostUnrouted := &pb.TaskStatus{State: pb.TaskState_TASK_STATE_FAILED, NodeLost: true}
	ready := &pb.NodeStatus{State: pb.NodeState_NODE_STATE_READY}
	down := &pb.NodeStatus{State: pb.NodeState_NODE_STATE_DOWN}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := store.Update(ctx, func(tx *raftstore.Tx) error {
		for _, n := range []*pb.Node{{Id: "n1", ApiAddr: "10.0.0.1:4242", Status: ready}, {Id: "n2", ApiAddr: "10.0.0.2:4242", Status: ready},
			{Id: "n3", ApiAddr: "10.0.0.3:4242", Status: down}, {Id: "n4", ApiAddr: "10.0.0.4:4242", Status: ready}} {
			if err := tx.Nodes().Create(n); err != nil {
				return err
			}
		}
		for _, s := range []*pb.Service{
			{Id: "web", Spec: &pb.ServiceSpec{Annotations: &pb.Annotations{Name: "web"}, Endpoint: &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80}}}}},
			{Id: "batch", Spec: &pb.ServiceSpec{Annotations: &pb.Annotations{Name: "batch"}}},
			{Id: "api", Spec: &pb.ServiceSpec{Annotations: &pb.Annotations{Name: "api"}, Endpoint: &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80}}}}},
		} {
			if err := tx.Services().Create(s); err != nil {
				return err
			}
		}
		for _, tk := range []*pb.Task{
			task("w1", "web", "n1", 1, withPorts, pb.TaskState_TASK_STATE_RUNNING),
			task("w2", "web", "n1", 2, withPorts, pb.TaskState_TASK_STATE_RUNNING),
			task("w3", "web", "n2", 3, &pb.TaskStatus{State: pb.TaskState_TASK_STATE_STARTING}, pb.TaskState_TASK_STATE_RUNNING),
			task("w4", "web", "n2", 4, withPorts, pb.TaskState_TASK_STATE_SHUTDOWN), // on its way out
			task("b1", "batch", "n1", 1, running, pb.TaskState_TASK_STATE_RUNNING),
			task("b2", "batch", "n1", 2, running, pb.TaskState_TASK_STATE_RUNNING),
			task("b3", "batch", "n2", 3, running, pb.TaskState_TASK_STATE_RUNNING),
			// api's node n3 went Down: slot 1's replacement is not up yet, so
			// the lost task lingers; slot 2's is, so it goes.
			task("a1", "api", "n3", 1, lost, pb.TaskState_TASK_STATE_SHUTDOWN),
			task("a1new", "api", "n1", 1, &pb.TaskStatus{State: pb.TaskState_TASK_STATE_STARTING}, pb.TaskState_TASK_STATE_RUNNING),
			task("a2", "api", "n3", 2, lost, pb.TaskState_TASK_STATE_SHUTDOWN),
			task("a2new", "api", "n2", 2, withPorts, pb.TaskState_TASK_STATE_RUNNING),
			task("a3", "api", "n3", 3, lost, pb.TaskState_TASK_STATE_REMOVE),                                                                                 // scaled away
			task("a4", "api", "n3", 4, lostUnrouted, pb.TaskState_TASK_STATE_SHUTDOWN),                                                                       // was not serving
			task("a5", "api", "n4", 5, lost, pb.TaskState_TASK_STATE_SHUTDOWN),                                                                               // its node is back: it stops it
			task("a6", "api", "n2", 6, &pb.TaskStatus{State: pb.TaskState_TASK_STATE_FAILED, Ports: withPorts.GetPorts()}, pb.TaskState_TASK_STATE_SHUTDOWN), // failed by itself
		} {
			if err := tx.Tasks().Create(tk); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		service string
		want    []string // task ID (or node ID for a service without ports) @ IP
	}{
		{"web", []string{"w1@10.0.0.1", "w2@10.0.0.1"}},    // running and meant to run only
		{"batch", []string{"n1@10.0.0.1", "n2@10.0.0.2"}},  // no ports: one entry per node
		{"api", []string{"a1@10.0.0.3", "a2new@10.0.0.2"}}, // make before break
	}
	for _, tc := range cases {
		var got []string
		store.View(func(tx *raftstore.Tx) {
			svc, _ := tx.Services().Get(tc.service)
			for _, e := range serviceEndpoints(tx, svc).GetTasks() {
				id := e.GetTaskId()
				if id == "" {
					id = e.GetNodeId()
				}
				got = append(got, id+"@"+e.GetIp())
			}
		})
		if len(got) != len(tc.want) {
			t.Fatalf("%s: %v, want %v", tc.service, got, tc.want)
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Fatalf("%s: %v, want %v", tc.service, got, tc.want)
			}
		}
	}
}

// TestRoutable: the endpoint feed sends traffic to a task only once it
// runs and, when its health is checked (by its spec or by its image's own
// HEALTHCHECK, as its status says), only while it is healthy.
func TestRoutable(t *testing.T) {
	probe := &pb.HealthCheck{HttpGet: "/healthz"}
	spec := func(hc *pb.HealthCheck) *pb.TaskSpec {
		return &pb.TaskSpec{Container: &pb.ContainerSpec{Healthcheck: hc}}
	}
	cases := []struct {
		name    string
		spec    *pb.TaskSpec
		state   pb.TaskState
		health  pb.HealthState
		desired pb.TaskState
		want    bool
	}{
		{"no check, running", spec(nil), pb.TaskState_TASK_STATE_RUNNING, pb.HealthState_HEALTH_STATE_NONE, pb.TaskState_TASK_STATE_RUNNING, true},
		{"disabled check, running", spec(&pb.HealthCheck{HttpGet: "/healthz", Disable: true}), pb.TaskState_TASK_STATE_RUNNING, pb.HealthState_HEALTH_STATE_NONE, pb.TaskState_TASK_STATE_RUNNING, true},
		{"check, running, no health reported yet", spec(probe), pb.TaskState_TASK_STATE_RUNNING, pb.HealthState_HEALTH_STATE_NONE, pb.TaskState_TASK_STATE_RUNNING, false},
		{"check, starting", spec(probe), pb.TaskState_TASK_STATE_RUNNING, pb.HealthState_HEALTH_STATE_STARTING, pb.TaskState_TASK_STATE_RUNNING, false},
		{"check, healthy", spec(probe), pb.TaskState_TASK_STATE_RUNNING, pb.HealthState_HEALTH_STATE_HEALTHY, pb.TaskState_TASK_STATE_RUNNING, true},
		{"check, unhealthy (being stopped)", spec(probe), pb.TaskState_TASK_STATE_RUNNING, pb.HealthState_HEALTH_STATE_UNHEALTHY, pb.TaskState_TASK_STATE_RUNNING, false},
		{"image check, starting", spec(nil), pb.TaskState_TASK_STATE_RUNNING, pb.HealthState_HEALTH_STATE_STARTING, pb.TaskState_TASK_STATE_RUNNING, false},
		{"image check, healthy", spec(nil), pb.TaskState_TASK_STATE_RUNNING, pb.HealthState_HEALTH_STATE_HEALTHY, pb.TaskState_TASK_STATE_RUNNING, true},
		{"image check, unhealthy", spec(nil), pb.TaskState_TASK_STATE_RUNNING, pb.HealthState_HEALTH_STATE_UNHEALTHY, pb.TaskState_TASK_STATE_RUNNING, false},
		{"not running yet", spec(nil), pb.TaskState_TASK_STATE_STARTING, pb.HealthState_HEALTH_STATE_NONE, pb.TaskState_TASK_STATE_RUNNING, false},
		{"failed", spec(probe), pb.TaskState_TASK_STATE_FAILED, pb.HealthState_HEALTH_STATE_UNHEALTHY, pb.TaskState_TASK_STATE_RUNNING, false},
		{"healthy but told to shut down", spec(probe), pb.TaskState_TASK_STATE_RUNNING, pb.HealthState_HEALTH_STATE_HEALTHY, pb.TaskState_TASK_STATE_SHUTDOWN, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tk := &pb.Task{Spec: tc.spec, DesiredState: tc.desired, Status: &pb.TaskStatus{State: tc.state, Health: tc.health}}
			if got := Routable(tk); got != tc.want {
				t.Fatalf("routable = %v, want %v", got, tc.want)
			}
		})
	}
}
