package orchestrator

import (
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

// FailNodeTasks fails, in tx, every task of a node that has not ended, with
// the status fail makes for it (the node went down, or became a manager),
// so that their services' orchestrator replaces them (and tells them to
// stop); a standalone task has nobody else to do so, and is told to shut
// down. It returns how many tasks it failed.
func FailNodeTasks(tx *raftstore.Tx, nodeID string, fail func(t *pb.Task) *pb.TaskStatus) (int, error) {
	failed := 0
	for _, t := range tx.Tasks().Find(raftstore.IndexNode, nodeID) {
		if t.GetStatus().GetState() >= pb.TaskState_TASK_STATE_COMPLETE {
			continue
		}
		t.Status = fail(t)
		if t.GetServiceId() == "" && t.GetDesiredState() < pb.TaskState_TASK_STATE_SHUTDOWN {
			t.DesiredState = pb.TaskState_TASK_STATE_SHUTDOWN
		}
		if err := tx.Tasks().Update(t); err != nil {
			return failed, err
		}
		failed++
	}
	return failed, nil
}
