package dispatcher

import (
	"bytes"
	"context"

	"github.com/shoal-cluster/shoal/internal/registry"
	"github.com/shoal-cluster/shoal/internal/rpc"
	"github.com/shoal-cluster/shoal/manager/ca"
	"github.com/shoal-cluster/shoal/manager/endpoints"
	"github.com/shoal-cluster/shoal/manager/tasksubnet"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Session registers a worker and streams its assignments.
func (d *Dispatcher) Session(req *pb.SessionRequest, stream grpc.ServerStreamingServer[pb.SessionMessage]) error {
	if err := d.leaderOnly(stream.Context()); err != nil {
		return err
	}
	nodeID := req.GetNodeId()
	if _, err := d.authenticate(nodeID); err != nil {
		return err
	}
	d.mu.Lock()
	leaderCtx := d.ctx
	d.mu.Unlock()
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	stop := context.AfterFunc(leaderCtx, cancel)
	defer stop()

	sess := &workerSession{id: raftstore.NewID(), nodeID: nodeID, cancel: cancel}
	d.mu.Lock()
	if old, ok := d.sessions[nodeID]; ok {
		old.cancel()
	}
	d.sessions[nodeID] = sess
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		if d.sessions[nodeID] == sess {
			delete(d.sessions, nodeID)
		}
		d.mu.Unlock()
	}()
	if err := stream.SendHeader(metadata.Pairs(AcceptedHeader, sess.id)); err != nil {
		return err
	}

	addr := rpc.PeerHost(ctx)
	if _, err := d.store.Update(ctx, func(tx *raftstore.Tx) error {
		n, ok := tx.Nodes().Get(nodeID)
		if !ok {
			return status.Errorf(codes.NotFound, "node %s was removed meanwhile", nodeID)
		}
		if req.GetDescription() != nil {
			n.Description = req.GetDescription()
		}
		if n.Status == nil {
			n.Status = &pb.NodeStatus{}
		}
		n.Status.State = pb.NodeState_NODE_STATE_READY
		n.Status.Message = ""
		n.Status.LastHeartbeat = d.clock.Now().UnixNano()
		if n.Status.Addr == "" {
			n.Status.Addr = addr
		}
		// The worker's task subnet, handed out once and kept.
		if _, err := d.subnets.Ensure(tx, n); err != nil {
			d.log.Error("no task subnet for the worker: its tasks cannot get their own addresses", "worker", nodeID, "err", err)
		}
		return tx.Nodes().Update(n)
	}); err != nil {
		return err
	}
	d.armDeadline(nodeID, d.deadline(), reasonHeartbeat)
	d.beat(nodeID)
	d.log.Info("worker session opened", "worker", nodeID, "session", sess.id)

	// Read the node's tasks and subscribe in one step: no change slips between.
	var (
		tasks    []*pb.Task
		node     *pb.Node
		index    uint64
		security *pb.SecurityUpdate
		nets     *pb.TaskNetworks
	)
	sub := d.store.ViewAndWatch(func(tx *raftstore.Tx) {
		tasks = tx.Tasks().Find(raftstore.IndexNode, nodeID)
		node, _ = tx.Nodes().Get(nodeID)
		index = tx.Index()
		security = securityUpdate(tx.Cluster())
		nets = tasksubnet.Networks(tx)
	}, func(ev raftstore.Event) bool {
		switch o := ev.Object.(type) {
		case *pb.Task:
			old, _ := ev.Old.(*pb.Task)
			return o.GetNodeId() == nodeID || (old != nil && old.GetNodeId() == nodeID)
		case *pb.Node:
			// This node, and any node whose task subnet or address
			// changed (the worker routes other nodes' subnets); not the
			// comings and goings of nodes without one, which would wake
			// every session for every node joining.
			old, _ := ev.Old.(*pb.Node)
			return o.GetId() == nodeID || tasksubnet.Affects(old, o, ev.Kind == raftstore.EventDelete)
		case *pb.Cluster:
			return true
		case *pb.Service:
			// New registry credentials: a worker holding the old ones
			// gets these.
			old, _ := ev.Old.(*pb.Service)
			return old != nil && !bytes.Equal(old.GetSealedRegistryAuth(), o.GetSealedRegistryAuth())
		}
		return false
	})
	defer sub.Close()

	// The endpoint sets go with the session too: complete first, then
	// only the services that changed.
	sentEndpoints, endpointsChanged := d.feed.Snapshot()
	secrets, configs := d.newSecretTracker(nodeID), d.newConfigTracker(nodeID)
	for _, t := range tasks {
		secrets.note(t, false)
		configs.note(t, false)
	}
	first := &pb.SessionMessage{
		SessionId:       sess.id,
		HeartbeatPeriod: int64(d.period),
		Managers:        d.managers(),
		Node:            node,
		Assignments:     &pb.Assignments{Type: pb.AssignmentsType_ASSIGNMENTS_TYPE_COMPLETE, Updated: assigned(tasks), Index: index},
		Security:        security,
		Endpoints:       endpoints.Complete(sentEndpoints),
		Secrets:         secrets.changes(pb.AssignmentsType_ASSIGNMENTS_TYPE_COMPLETE),
		Configs:         configs.changes(pb.AssignmentsType_ASSIGNMENTS_TYPE_COMPLETE),
		TaskNetworks:    nets,
	}
	for _, m := range splitValues(first, maxValueBytes) {
		if err := stream.Send(m); err != nil {
			return err
		}
	}
	for {
		var ev raftstore.Event
		var ok bool
		select {
		case <-ctx.Done():
			if leaderCtx.Err() != nil {
				return status.Error(codes.Unavailable, "this manager lost leadership; reconnect to the new leader")
			}
			return ctx.Err()
		case <-endpointsChanged:
			var now map[string]*pb.ServiceEndpoints
			now, endpointsChanged = d.feed.Snapshot()
			u := endpoints.Diff(sentEndpoints, now)
			sentEndpoints = now
			if len(u.GetUpdated()) == 0 && len(u.GetRemoved()) == 0 {
				continue
			}
			if err := stream.Send(&pb.SessionMessage{SessionId: sess.id, Endpoints: u}); err != nil {
				return err
			}
			continue
		case ev, ok = <-sub.C():
			if !ok {
				return status.Errorf(codes.Unavailable, "assignment stream interrupted (%v); reconnect", sub.Err())
			}
		}
		msg := &pb.SessionMessage{SessionId: sess.id}
		batch := []raftstore.Event{ev}
		// Gather what else is already queued: one message per burst.
	drain:
		for len(batch) < 1024 {
			select {
			case more, ok := <-sub.C():
				if !ok {
					break drain
				}
				batch = append(batch, more)
			default:
				break drain
			}
		}
		inc := &pb.Assignments{Type: pb.AssignmentsType_ASSIGNMENTS_TYPE_INCREMENTAL}
		netsChanged := false
		for _, ev := range batch {
			inc.Index = ev.Index
			switch o := ev.Object.(type) {
			case *pb.Node:
				old, _ := ev.Old.(*pb.Node)
				if tasksubnet.Affects(old, o, ev.Kind == raftstore.EventDelete) {
					netsChanged = true
				}
				if o.GetId() != nodeID {
					continue
				}
				if ev.Kind == raftstore.EventDelete {
					return status.Errorf(codes.PermissionDenied, "node %s was removed from the cluster", nodeID)
				}
				msg.Node = o
			case *pb.Cluster:
				if up := securityUpdate(o); !proto.Equal(up, security) {
					security, msg.Security = up, up
				}
			case *pb.Service:
				secrets.stale(registry.AuthSecretID(o.GetId()))
			case *pb.Task:
				secrets.note(o, ev.Kind == raftstore.EventDelete)
				configs.note(o, ev.Kind == raftstore.EventDelete)
				old, _ := ev.Old.(*pb.Task)
				switch {
				case ev.Kind == raftstore.EventDelete || o.GetNodeId() != nodeID:
					inc.Removed = append(inc.Removed, o.GetId())
				case !isAssigned(o):
				case old == nil || !isAssigned(old) || old.GetDesiredState() != o.GetDesiredState() ||
					old.GetSpecVersion() != o.GetSpecVersion() || old.GetNodeId() != o.GetNodeId():
					inc.Updated = append(inc.Updated, o)
				}
			}
		}
		msg.Secrets = secrets.changes(pb.AssignmentsType_ASSIGNMENTS_TYPE_INCREMENTAL)
		msg.Configs = configs.changes(pb.AssignmentsType_ASSIGNMENTS_TYPE_INCREMENTAL)
		if netsChanged {
			var now *pb.TaskNetworks
			d.store.View(func(tx *raftstore.Tx) { now = tasksubnet.Networks(tx) })
			if !proto.Equal(now, nets) {
				nets, msg.TaskNetworks = now, now
			}
		}
		if len(inc.Updated) == 0 && len(inc.Removed) == 0 && msg.Node == nil && msg.Security == nil && msg.Secrets == nil && msg.Configs == nil && msg.TaskNetworks == nil {
			continue
		}
		if len(inc.Updated) > 0 || len(inc.Removed) > 0 {
			msg.Assignments = inc
		}
		for _, m := range splitValues(msg, maxValueBytes) {
			if err := stream.Send(m); err != nil {
				return err
			}
		}
	}
}

// securityUpdate is what workers must know of the cluster's trust roots
// and gossip keys.
func securityUpdate(c *pb.Cluster) *pb.SecurityUpdate {
	return &pb.SecurityUpdate{RootCas: c.GetRootCa().GetTrustBundle(), RootDigest: c.GetRootCa().GetDigest(), GossipKeys: c.GetGossipKeys(),
		RevokedNodes: ca.RevokedNodes(c)}
}

// isAssigned reports whether a task is the node's to run: the scheduler
// gave it a node (state ASSIGNED or later).
func isAssigned(t *pb.Task) bool {
	return t.GetNodeId() != "" && t.GetStatus().GetState() >= pb.TaskState_TASK_STATE_ASSIGNED
}

func assigned(tasks []*pb.Task) []*pb.Task {
	out := tasks[:0]
	for _, t := range tasks {
		if isAssigned(t) {
			out = append(out, t)
		}
	}
	return out
}

// managers lists the managers a worker may connect to.
func (d *Dispatcher) managers() []*pb.ManagerAddr {
	leaderID, _, _ := d.lead.LeaderAPI()
	var out []*pb.ManagerAddr
	d.store.View(func(tx *raftstore.Tx) {
		for _, n := range tx.Nodes().List() {
			if n.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER {
				out = append(out, &pb.ManagerAddr{NodeId: n.GetId(), ApiAddr: n.GetManagerStatus().GetApiAddr(), Leader: n.GetManagerStatus().GetRaftId() == leaderID})
			}
		}
	})
	return out
}

// session finds the open session a call names.
func (d *Dispatcher) session(nodeID, sessionID string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.sessions[nodeID]
	if !ok || s.id != sessionID {
		return status.Errorf(codes.NotFound, "session %s of node %s is not open on the leader; open a new session", sessionID, nodeID)
	}
	return nil
}

// Heartbeat resets the node's deadline.
func (d *Dispatcher) Heartbeat(ctx context.Context, req *pb.HeartbeatRequest) (*pb.HeartbeatResponse, error) {
	if err := d.leaderOnly(ctx); err != nil {
		return nil, err
	}
	if err := d.session(req.GetNodeId(), req.GetSessionId()); err != nil {
		return nil, err
	}
	d.armDeadline(req.GetNodeId(), d.deadline(), reasonHeartbeat)
	d.beat(req.GetNodeId())
	if d.usage != nil {
		d.usage.Record(req.GetNodeId(), req.GetUsage())
	}
	return &pb.HeartbeatResponse{Period: int64(d.period)}, nil
}
