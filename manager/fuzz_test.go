package manager

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/storetest"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// FuzzCreateServiceSpec feeds arbitrary CreateServiceRequest bytes (what a
// client sends) through the handler's decoding, defaults and validation
// against a real store: no panic, and a refusal is one InvalidArgument or
// AlreadyExists status that says what to fix.
func FuzzCreateServiceSpec(f *testing.F) {
	store := storetest.OpenLeader(f)
	for _, spec := range []*pb.ServiceSpec{
		{},
		{Annotations: &pb.Annotations{Name: "web"}, Task: &pb.TaskSpec{Runtime: "process", Container: &pb.ContainerSpec{Image: "/bin/app", Env: []string{"A=1"}}}},
		{Task: &pb.TaskSpec{Runtime: "docker", Container: &pb.ContainerSpec{Image: "shoal/hello:v1"},
			Placement: &pb.Placement{Constraints: []string{"node.labels.zone==a"}, Preferences: []*pb.PlacementPreference{{SpreadDescriptor: "node.labels.zone"}}},
			Resources: &pb.ResourceRequirements{Reservations: &pb.Resources{NanoCpus: 1e8}}},
			Mode:     &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: 3}},
			Endpoint: &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80, PublishedPort: 8080}, {TargetPort: 81, PublishedPort: 8080}}}},
		{Mode: &pb.ServiceSpec_Global{Global: &pb.GlobalService{}}, Task: &pb.TaskSpec{Container: &pb.ContainerSpec{Command: []string{"/bin/sh"},
			Healthcheck: &pb.HealthCheck{HttpGet: "/", TcpSocket: 80, Interval: -1}}}},
		{Update: &pb.UpdateConfig{MaxFailureRatio: 2, Delay: int64(time.Second)}},
	} {
		data, err := proto.Marshal(&pb.CreateServiceRequest{Spec: spec})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.CreateServiceRequest
		if err := proto.Unmarshal(data, &req); err != nil || req.GetSpec() == nil {
			return
		}
		spec := proto.Clone(req.GetSpec()).(*pb.ServiceSpec)
		defaultServiceSpec(spec)
		var err error
		store.View(func(tx *raftstore.Tx) { err = validateServiceSpec(tx, spec, "") })
		if err == nil {
			return
		}
		st, ok := status.FromError(err)
		if !ok || (st.Code() != codes.InvalidArgument && st.Code() != codes.AlreadyExists) || st.Message() == "" {
			t.Fatalf("validation refused with %v: want one InvalidArgument or AlreadyExists status", err)
		}
	})
}

// FuzzNodeSpec feeds arbitrary UpdateNodeRequest bytes to the node spec
// validation: no panic, and a refusal is one InvalidArgument status.
func FuzzNodeSpec(f *testing.F) {
	for _, spec := range []*pb.NodeSpec{
		{DesiredRole: pb.NodeRole_NODE_ROLE_WORKER, Availability: pb.NodeAvailability_NODE_AVAILABILITY_DRAIN},
		{DesiredRole: pb.NodeRole_NODE_ROLE_MANAGER, Annotations: &pb.Annotations{Labels: map[string]string{"zone": "a", "bad key": "x"}}},
		{Availability: 42},
	} {
		data, err := proto.Marshal(&pb.UpdateNodeRequest{Ref: "n1", Spec: spec})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.UpdateNodeRequest
		if err := proto.Unmarshal(data, &req); err != nil {
			return
		}
		if err := validateNodeSpec(req.GetSpec()); err != nil {
			if st, ok := status.FromError(err); !ok || st.Code() != codes.InvalidArgument {
				t.Fatalf("validation refused with %v: want one InvalidArgument status", err)
			}
		}
	})
}

// errDryRun aborts a store transaction after its checks ran.
var errDryRun = errors.New("dry run")

// FuzzTaskStatusUpdates feeds arbitrary UpdateTaskStatusRequest bytes (what
// a worker reports) to the status validation and staging the leader runs,
// on a real store holding tasks of two nodes: no panic, a node never
// changes another node's task, and a task's state never moves backward.
// The transaction is aborted after the checks, so every input starts from
// the same state.
func FuzzTaskStatusUpdates(f *testing.F) {
	store := storetest.OpenLeader(f)
	running := &pb.TaskStatus{State: pb.TaskState_TASK_STATE_RUNNING}
	seed := []*pb.Task{
		{Id: "t1", ServiceId: "s1", Slot: 1, NodeId: "n1", Status: running},
		{Id: "t2", ServiceId: "s1", Slot: 2, NodeId: "n2", Status: running},
		{Id: "t3", ServiceId: "s1", Slot: 3, NodeId: "n1", Status: &pb.TaskStatus{State: pb.TaskState_TASK_STATE_ASSIGNED}},
	}
	if _, err := store.Update(context.Background(), func(tx *raftstore.Tx) error {
		for _, task := range seed {
			if err := tx.Tasks().Create(task); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		f.Fatal(err)
	}
	for _, req := range []*pb.UpdateTaskStatusRequest{
		{NodeId: "n1", Updates: []*pb.TaskStatusUpdate{{TaskId: "t3", Status: running}, {TaskId: "t1", Status: &pb.TaskStatus{State: pb.TaskState_TASK_STATE_FAILED, Err: "exit 1"}}}},
		{NodeId: "n1", Updates: []*pb.TaskStatusUpdate{{TaskId: "t2", Status: &pb.TaskStatus{State: pb.TaskState_TASK_STATE_COMPLETE}}}},
		{NodeId: "n2", Updates: []*pb.TaskStatusUpdate{{TaskId: "t2", Status: &pb.TaskStatus{State: pb.TaskState_TASK_STATE_PREPARING}}, {TaskId: "gone"}}},
	} {
		data, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.UpdateTaskStatusRequest
		if err := proto.Unmarshal(data, &req); err != nil {
			return
		}
		for _, u := range req.GetUpdates() {
			if u.GetTaskId() == "" || u.GetStatus() == nil {
				return // UpdateTaskStatus refuses the request before staging
			}
		}
		_, err := store.Update(context.Background(), func(tx *raftstore.Tx) error {
			before := map[string]*pb.Task{}
			for _, task := range tx.Tasks().List() {
				before[task.GetId()] = task
			}
			serr := applyStatuses(tx, statusBatch{nodeID: req.GetNodeId(), updates: req.GetUpdates()})
			if serr != nil {
				if st, ok := status.FromError(serr); !ok || st.Code() != codes.PermissionDenied {
					t.Errorf("staging refused with %v: want one PermissionDenied status", serr)
				}
			}
			for id, old := range before {
				now, ok := tx.Tasks().Get(id)
				if !ok {
					t.Errorf("task %s disappeared", id)
					continue
				}
				if old.GetNodeId() != req.GetNodeId() && !proto.Equal(old.GetStatus(), now.GetStatus()) {
					t.Errorf("node %q changed task %s of node %s", req.GetNodeId(), id, old.GetNodeId())
				}
				if now.GetStatus().GetState() < old.GetStatus().GetState() {
					t.Errorf("task %s went back from %v to %v", id, old.GetStatus().GetState(), now.GetStatus().GetState())
				}
			}
			return errDryRun
		})
		if !errors.Is(err, errDryRun) {
			t.Fatalf("the dry-run transaction ended with %v", err)
		}
	})
}
