package dispatcher

import (
	"context"
	"errors"
	"testing"

	"github.com/shoal-cluster/shoal/internal/storetest"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

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
