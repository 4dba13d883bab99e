package controlapi

import (
	"context"
	"sort"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TaskStats reports the CPU and memory use of the running tasks of a
// service, of a node, or of the cluster, from the samples the leader holds
// (workers send them with their heartbeats). A running task without a
// sample yet is listed without usage.
func (s *Server) TaskStats(ctx context.Context, req *pb.TaskStatsRequest) (*pb.TaskStatsResponse, error) {
	if s.usage == nil {
		return nil, status.Error(codes.Unimplemented, "this manager keeps no task usage")
	}
	samples := s.usage.Snapshot()
	now := s.usage.Now()
	resp := &pb.TaskStatsResponse{}
	var ferr error
	err := s.store.ViewConsistent(ctx, func(tx *raftstore.Tx) {
		var tasks []*pb.Task
		var nodeID string
		if req.GetNode() != "" {
			n, err := resolveNode(tx, req.GetNode())
			if err != nil {
				ferr = err
				return
			}
			nodeID = n.GetId()
		}
		switch {
		case req.GetService() != "":
			svc, err := resolveService(tx, req.GetService())
			if err != nil {
				ferr = err
				return
			}
			tasks = tx.Tasks().Find(raftstore.IndexService, svc.GetId())
		case nodeID != "":
			tasks = tx.Tasks().Find(raftstore.IndexNode, nodeID)
		default:
			tasks = tx.Tasks().List()
		}
		hostnames := map[string]string{}
		for _, t := range tasks {
			if nodeID != "" && t.GetNodeId() != nodeID {
				continue
			}
			if t.GetDesiredState() != pb.TaskState_TASK_STATE_RUNNING || t.GetStatus().GetState() != pb.TaskState_TASK_STATE_RUNNING {
				continue
			}
			host, ok := hostnames[t.GetNodeId()]
			if !ok {
				if n, found := tx.Nodes().Get(t.GetNodeId()); found {
					host = n.GetDescription().GetHostname()
				}
				hostnames[t.GetNodeId()] = host
			}
			st := &pb.TaskStat{
				TaskId: t.GetId(), ServiceId: t.GetServiceId(), ServiceName: t.GetServiceName(), Slot: t.GetSlot(),
				NodeId: t.GetNodeId(), Hostname: host,
				CpuReservation: t.GetSpec().GetResources().GetReservations().GetNanoCpus(),
				MemoryLimit:    t.GetSpec().GetResources().GetLimits().GetMemoryBytes(),
			}
			if smp, ok := samples[t.GetId()]; ok && smp.NodeID == t.GetNodeId() {
				st.Usage = smp.Usage
				st.Age = int64(now.Sub(smp.At))
			}
			resp.Stats = append(resp.Stats, st)
		}
	})
	if err != nil {
		return nil, err
	}
	if ferr != nil {
		return nil, ferr
	}
	sort.Slice(resp.Stats, func(i, j int) bool {
		a, b := resp.Stats[i], resp.Stats[j]
		if a.GetServiceName() != b.GetServiceName() {
			return a.GetServiceName() < b.GetServiceName()
		}
		if a.GetSlot() != b.GetSlot() {
			return a.GetSlot() < b.GetSlot()
		}
		return a.GetTaskId() < b.GetTaskId()
	})
	return resp, nil
}
