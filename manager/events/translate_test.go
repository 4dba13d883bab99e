package events

import (
	"reflect"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

func svc(replicas uint64, image string) *pb.Service {
	return &pb.Service{Id: "s1", Spec: &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: "web"},
		Task:        &pb.TaskSpec{Container: &pb.ContainerSpec{Image: image}},
		Mode:        &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: replicas}},
	}}
}

func withStatus(s *pb.Service, st pb.UpdateState, started int64) *pb.Service {
	s.UpdateStatus = &pb.UpdateStatus{State: st, StartedAt: started}
	return s
}

func autoscaled(s *pb.Service, decidedAt int64, reason string) *pb.Service {
	s.Spec.Autoscale = &pb.AutoscaleSpec{TargetCpuPercent: 70, MinReplicas: 1, MaxReplicas: 10}
	if decidedAt != 0 {
		s.AutoscaleStatus = &pb.AutoscaleStatus{DecidedAt: decidedAt, Reason: reason}
	}
	return s
}

func task(state pb.TaskState, node, errMsg string) *pb.Task {
	return &pb.Task{Id: "t1", ServiceName: "web", Slot: 2, NodeId: node, Status: &pb.TaskStatus{State: state, Err: errMsg}}
}

func node(state pb.NodeState, av pb.NodeAvailability, role pb.NodeRole, labels map[string]string) *pb.Node {
	return &pb.Node{Id: "n1", Role: role, Description: &pb.NodeDescription{Hostname: "w1"},
		Spec:   &pb.NodeSpec{Availability: av, Annotations: &pb.Annotations{Labels: labels}},
		Status: &pb.NodeStatus{State: state, Addr: "10.0.0.4"}}
}

// brief is an event without its index and time.
type brief struct {
	typ, action, id, name string
	attrs                 map[string]string
}

func TestTranslate(t *testing.T) {
	const (
		create = raftstore.EventCreate
		update = raftstore.EventUpdate
		del    = raftstore.EventDelete
	)
	ready, down := pb.NodeState_NODE_STATE_READY, pb.NodeState_NODE_STATE_DOWN
	active, drain := pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE, pb.NodeAvailability_NODE_AVAILABILITY_DRAIN
	worker, mgr := pb.NodeRole_NODE_ROLE_WORKER, pb.NodeRole_NODE_ROLE_MANAGER
	running, failed := pb.TaskState_TASK_STATE_RUNNING, pb.TaskState_TASK_STATE_FAILED
	cases := []struct {
		name     string
		kind     raftstore.EventKind
		old, obj raftstore.Object
		want     []brief
	}{
		{"service created", create, nil, svc(3, "hello:v1"),
			[]brief{{"service", "create", "s1", "web", map[string]string{"image": "hello:v1", "replicas": "3"}}}},
		{"service scaled", update, svc(3, "hello:v1"), svc(5, "hello:v1"),
			[]brief{{"service", "scale", "s1", "web", map[string]string{"image": "hello:v1", "replicas": "5", "old_replicas": "3"}}}},
		{"service autoscaled", update, autoscaled(svc(3, "hello:v1"), 0, ""), autoscaled(svc(6, "hello:v1"), 9, "average CPU 142% of the 70% target"),
			[]brief{{"service", "autoscale", "s1", "web", map[string]string{"image": "hello:v1", "replicas": "6", "old_replicas": "3",
				"reason": "average CPU 142% of the 70% target"}}}},
		{"autoscaled service scaled by a bounds change, not by a decision", update, autoscaled(svc(3, "hello:v1"), 9, "x"), autoscaled(svc(2, "hello:v1"), 9, "x"),
			[]brief{{"service", "scale", "s1", "web", map[string]string{"image": "hello:v1", "replicas": "2", "old_replicas": "3"}}}},
		{"service image updated", update, svc(3, "hello:v1"), withStatus(svc(3, "hello:v2"), pb.UpdateState_UPDATE_STATE_UPDATING, 7),
			[]brief{{"service", "update", "s1", "web", map[string]string{"image": "hello:v2", "replicas": "3", "old_image": "hello:v1", "updatestate": "updating"}}}},
		{"service rolled back", update, withStatus(svc(3, "hello:v2"), pb.UpdateState_UPDATE_STATE_COMPLETED, 7), withStatus(svc(3, "hello:v1"), pb.UpdateState_UPDATE_STATE_ROLLBACK_STARTED, 9),
			[]brief{{"service", "rollback", "s1", "web", map[string]string{"image": "hello:v1", "replicas": "3", "message": ""}}}},
		{"rolling update completes", update, withStatus(svc(3, "hello:v2"), pb.UpdateState_UPDATE_STATE_UPDATING, 7), withStatus(svc(3, "hello:v2"), pb.UpdateState_UPDATE_STATE_COMPLETED, 7),
			[]brief{{"service", "update", "s1", "web", map[string]string{"updatestate": "completed", "message": ""}}}},
		{"service unchanged", update, svc(3, "hello:v1"), svc(3, "hello:v1"), nil},
		{"service removed", del, svc(3, "hello:v1"), svc(3, "hello:v1"),
			[]brief{{"service", "remove", "s1", "web", nil}}},
		{"task created", create, nil, task(pb.TaskState_TASK_STATE_NEW, "", ""),
			[]brief{{"task", "state", "t1", "web.2", map[string]string{"service": "web", "state": "new", "slot": "2"}}}},
		{"task fails", update, task(running, "n1", ""), task(failed, "n1", "exit 1"),
			[]brief{{"task", "state", "t1", "web.2", map[string]string{"service": "web", "state": "failed", "old_state": "running", "slot": "2", "node": "n1", "error": "exit 1"}}}},
		{"task heartbeat only", update, task(running, "n1", ""), task(running, "n1", ""), nil},
		{"task history trimmed", del, task(failed, "n1", ""), task(failed, "n1", ""), nil},
		{"node joins", create, nil, node(ready, active, worker, nil),
			[]brief{{"node", "join", "n1", "w1", map[string]string{"role": "worker", "addr": "10.0.0.4"}}}},
		{"node down", update, node(ready, active, worker, nil), node(down, active, worker, nil),
			[]brief{{"node", "down", "n1", "w1", map[string]string{"role": "worker", "old_state": "ready", "message": ""}}}},
		{"node drained and promoted", update, node(ready, active, worker, nil), node(ready, drain, mgr, nil),
			[]brief{{"node", "drain", "n1", "w1", map[string]string{"role": "manager"}}, {"node", "promote", "n1", "w1", map[string]string{"role": "manager"}}}},
		{"node labelled", update, node(ready, active, worker, nil), node(ready, active, worker, map[string]string{"zone": "a"}),
			[]brief{{"node", "update", "n1", "w1", map[string]string{"role": "worker"}}}},
		{"leader elected", update, &pb.Cluster{Id: "c", Leader: "n1", LeaderTerm: 2}, &pb.Cluster{Id: "c", Leader: "n2", LeaderTerm: 3},
			[]brief{{"node", "leader", "n2", "", map[string]string{"term": "3"}}}},
		{"cluster change without election", update, &pb.Cluster{Id: "c", Leader: "n1", LeaderTerm: 2}, &pb.Cluster{Id: "c", Leader: "n1", LeaderTerm: 2, RemovedNodes: []string{"x"}}, nil},
		{"config removed", del, &pb.Config{Id: "c1", Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: "nginx.conf"}}}, &pb.Config{Id: "c1", Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: "nginx.conf"}}},
			[]brief{{"config", "remove", "c1", "nginx.conf", nil}}},
		{"secret created", create, nil, &pb.Secret{Id: "x1", Spec: &pb.SecretSpec{Annotations: &pb.Annotations{Name: "db"}}},
			[]brief{{"secret", "create", "x1", "db", nil}}},
		{"config created", create, nil, &pb.Config{Id: "c1", Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: "app.conf"}}},
			[]brief{{"config", "create", "c1", "app.conf", nil}}},
		{"config removed", del, &pb.Config{Id: "c1", Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: "app.conf"}}},
			&pb.Config{Id: "c1", Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: "app.conf"}}},
			[]brief{{"config", "remove", "c1", "app.conf", nil}}},
		{"network created", create, nil, &pb.Network{Id: "n1", Spec: &pb.NetworkSpec{Annotations: &pb.Annotations{Name: "demo_default"}}},
			[]brief{{"network", "create", "n1", "demo_default", nil}}},
		{"network removed", del, &pb.Network{Id: "n1", Spec: &pb.NetworkSpec{Annotations: &pb.Annotations{Name: "demo_default"}}},
			&pb.Network{Id: "n1", Spec: &pb.NetworkSpec{Annotations: &pb.Annotations{Name: "demo_default"}}},
			[]brief{{"network", "remove", "n1", "demo_default", nil}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Translate(raftstore.Event{Kind: c.kind, Old: c.old, Object: c.obj, Index: 42, Time: 1000})
			var briefs []brief
			for _, e := range got {
				if e.GetIndex() != 42 || e.GetTime() != 1000 {
					t.Errorf("event %v: index %d time %d, want 42 and 1000", e, e.GetIndex(), e.GetTime())
				}
				attrs := e.GetAttributes()
				if len(attrs) == 0 {
					attrs = nil
				}
				briefs = append(briefs, brief{e.GetType(), e.GetAction(), e.GetId(), e.GetName(), attrs})
			}
			if !reflect.DeepEqual(briefs, c.want) {
				t.Errorf("got  %+v\nwant %+v", briefs, c.want)
			}
		})
	}
}
