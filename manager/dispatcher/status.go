package dispatcher

import (
	"context"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type statusBatch struct {
	nodeID  string
	updates []*pb.TaskStatusUpdate
	done    chan error
}

// UpdateTaskStatus records a worker's task states; batches from many
// workers are coalesced into one store transaction.
func (d *Dispatcher) UpdateTaskStatus(ctx context.Context, req *pb.UpdateTaskStatusRequest) (*pb.UpdateTaskStatusResponse, error) {
	if err := d.leaderOnly(ctx); err != nil {
		return nil, err
	}
	if err := d.session(req.GetNodeId(), req.GetSessionId()); err != nil {
		return nil, err
	}
	for _, u := range req.GetUpdates() {
		if u.GetTaskId() == "" || u.GetStatus() == nil {
			return nil, status.Error(codes.InvalidArgument, "a status update needs a task ID and a status")
		}
	}
	b := statusBatch{nodeID: req.GetNodeId(), updates: req.GetUpdates(), done: make(chan error, 1)}
	select {
	case d.statusCh <- b:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case err := <-b.done:
		if err != nil {
			return nil, err
		}
		return &pb.UpdateTaskStatusResponse{}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// maxStatusBatch bounds how many updates go into one transaction.
const maxStatusBatch = 2000

// writeStatuses commits queued status batches until ctx ends.
func (d *Dispatcher) writeStatuses(ctx context.Context) {
	for {
		var batches []statusBatch
		select {
		case <-ctx.Done():
			return
		case b := <-d.statusCh:
			batches = append(batches, b)
		}
		n := len(batches[0].updates)
	gather:
		for n < maxStatusBatch {
			select {
			case b := <-d.statusCh:
				batches = append(batches, b)
				n += len(b.updates)
			default:
				break gather
			}
		}
		errs := make([]error, len(batches))
		_, err := d.store.Update(ctx, func(tx *raftstore.Tx) error {
			for i, b := range batches {
				errs[i] = applyStatuses(tx, b)
			}
			return nil
		})
		for i, b := range batches {
			if err != nil {
				b.done <- err
			} else {
				b.done <- errs[i]
			}
		}
	}
}

// applyStatuses stages one node's updates. Updates for tasks the node was
// not assigned are refused; states only move forward.
func applyStatuses(tx *raftstore.Tx, b statusBatch) error {
	var refused []string
	for _, u := range b.updates {
		t, ok := tx.Tasks().Get(u.GetTaskId())
		if !ok {
			continue // deleted meanwhile: nothing to record
		}
		if t.GetNodeId() != b.nodeID {
			refused = append(refused, u.GetTaskId())
			continue
		}
		if u.GetStatus().GetState() < t.GetStatus().GetState() {
			continue
		}
		t.Status = u.GetStatus()
		if err := tx.Tasks().Update(t); err != nil {
			return err
		}
	}
	if len(refused) > 0 {
		return status.Errorf(codes.PermissionDenied, "node %s may not report status for tasks it was not assigned: %v", b.nodeID, refused)
	}
	return nil
}
