package manager

import (
	"context"
	"net"
	"sort"
	"strings"
	"sync"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// controlServer is the user-facing API. Every method but GetCluster runs
// on the leader; reads there are linearizable (ViewConsistent).
type controlServer struct {
	pb.UnimplementedControlServer
	m *Manager
}

// ListNodes returns every node with the leader's view of manager health.
func (s *controlServer) ListNodes(ctx context.Context, req *pb.ListNodesRequest) (*pb.ListNodesResponse, error) {
	var nodes []*pb.Node
	if err := s.m.store.ViewConsistent(ctx, func(tx *raftstore.Tx) { nodes = tx.Nodes().List() }); err != nil {
		return nil, err
	}
	out := nodes[:0]
	for _, n := range nodes {
		if req.GetRole() == pb.NodeRole_NODE_ROLE_UNSPECIFIED || n.GetRole() == req.GetRole() {
			out = append(out, n)
		}
	}
	s.m.decorate(ctx, out)
	return &pb.ListNodesResponse{Nodes: out}, nil
}

// GetNode returns one node by ID, unique ID prefix or hostname.
func (s *controlServer) GetNode(ctx context.Context, req *pb.GetNodeRequest) (*pb.GetNodeResponse, error) {
	var (
		n   *pb.Node
		err error
	)
	if verr := s.m.store.ViewConsistent(ctx, func(tx *raftstore.Tx) { n, err = resolveNode(tx, req.GetRef()) }); verr != nil {
		return nil, verr
	}
	if err != nil {
		return nil, err
	}
	s.m.decorate(ctx, []*pb.Node{n})
	return &pb.GetNodeResponse{Node: n}, nil
}

// UpdateNode changes a node's spec: availability, labels, and its role
// (promote/demote).
func (s *controlServer) UpdateNode(ctx context.Context, req *pb.UpdateNodeRequest) (*pb.UpdateNodeResponse, error) {
	m := s.m
	spec := req.GetSpec()
	if spec == nil {
		return nil, status.Error(codes.InvalidArgument, "update node: a spec is required")
	}
	if err := validateNodeSpec(spec); err != nil {
		return nil, err
	}
	var target *pb.Node
	var err error
	m.store.View(func(tx *raftstore.Tx) { target, err = resolveNode(tx, req.GetRef()) })
	if err != nil {
		return nil, err
	}
	// Refuse a stale update before demoting: the Raft removal cannot be
	// undone when the version check in the transaction fails afterwards.
	if req.GetVersion() != 0 && req.GetVersion() != target.GetMeta().GetVersion() {
		return nil, status.Errorf(codes.Aborted, "node %s changed since version %d (now %d); read it again and retry", target.GetId(), req.GetVersion(), target.GetMeta().GetVersion())
	}
	if target.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER && spec.GetDesiredRole() == pb.NodeRole_NODE_ROLE_WORKER {
		if err := m.demote(ctx, target); err != nil {
			return nil, err
		}
	}
	var out *pb.Node
	_, err = m.store.Update(ctx, func(tx *raftstore.Tx) error {
		n, ok := tx.Nodes().Get(target.GetId())
		if !ok {
			return status.Errorf(codes.NotFound, "node %s was removed meanwhile", target.GetId())
		}
		if req.GetVersion() != 0 && req.GetVersion() != n.GetMeta().GetVersion() {
			return status.Errorf(codes.Aborted, "node %s changed since version %d (now %d); read it again and retry", n.GetId(), req.GetVersion(), n.GetMeta().GetVersion())
		}
		n.Spec = proto.Clone(spec).(*pb.NodeSpec)
		if spec.GetDesiredRole() == pb.NodeRole_NODE_ROLE_WORKER && n.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER {
			n.Role = pb.NodeRole_NODE_ROLE_WORKER
			n.ManagerStatus = nil
			if err := revokeManagerCerts(tx, n); err != nil {
				return err
			}
		}
		out = n
		return tx.Nodes().Update(n)
	})
	if err != nil {
		return nil, err
	}
	// Read back: a retried request that already committed skips the function.
	m.store.View(func(tx *raftstore.Tx) { out, _ = tx.Nodes().Get(target.GetId()) })
	if out == nil {
		return nil, status.Errorf(codes.NotFound, "node %s was removed meanwhile", target.GetId())
	}
	m.decorate(ctx, []*pb.Node{out})
	return &pb.UpdateNodeResponse{Node: out}, nil
}

// RemoveNode deletes a node from the cluster for good.
func (s *controlServer) RemoveNode(ctx context.Context, req *pb.RemoveNodeRequest) (*pb.RemoveNodeResponse, error) {
	var target *pb.Node
	var err error
	s.m.store.View(func(tx *raftstore.Tx) { target, err = resolveNode(tx, req.GetRef()) })
	if err != nil {
		return nil, err
	}
	if target.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER && !req.GetForce() {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s is a manager; demote it first (`shoal node demote %s`) or remove it with --force", target.GetId(), target.GetId())
	}
	if target.GetRole() != pb.NodeRole_NODE_ROLE_MANAGER && !req.GetForce() && target.GetStatus().GetState() == pb.NodeState_NODE_STATE_READY {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s is not down; stop it first or remove it with --force", target.GetId())
	}
	if err := s.m.removeNode(ctx, target.GetId(), req.GetForce()); err != nil {
		return nil, err
	}
	return &pb.RemoveNodeResponse{}, nil
}

// GetCluster reports the cluster and every manager's Raft state. It runs
// on the manager that receives it, from its local replica, so it works
// without a leader too.
func (s *controlServer) GetCluster(ctx context.Context, _ *pb.GetClusterRequest) (*pb.GetClusterResponse, error) {
	m := s.m
	resp := &pb.GetClusterResponse{}
	var managers []*pb.Node
	m.store.View(func(tx *raftstore.Tx) {
		resp.Cluster = publicCluster(tx.Cluster())
		for _, n := range tx.Nodes().List() {
			if n.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER {
				managers = append(managers, n)
			}
		}
	})
	if resp.Cluster == nil {
		return nil, status.Error(codes.Unavailable, "this manager has not received the cluster state yet; retry")
	}
	leaderID, leaderAddr := m.store.Leader()
	resp.LeaderAddr = leaderAddr
	resp.Managers = make([]*pb.ManagerRaftStatus, len(managers))
	var wg sync.WaitGroup
	for i, n := range managers {
		if n.GetManagerStatus().GetRaftId() == leaderID && leaderID != "" {
			resp.LeaderNodeId = n.GetId()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := m.remoteRaftStatus(ctx, n)
			if err != nil {
				st = &pb.ManagerRaftStatus{
					NodeId: n.GetId(), Hostname: n.GetDescription().GetHostname(),
					RaftId: n.GetManagerStatus().GetRaftId(), RaftAddr: n.GetManagerStatus().GetRaftAddr(),
					ApiAddr: n.GetManagerStatus().GetApiAddr(), State: "Unreachable",
					Reachability: pb.Reachability_REACHABILITY_UNREACHABLE, Error: status.Convert(err).Message(),
				}
			}
			resp.Managers[i] = st
		}()
	}
	wg.Wait()
	return resp, nil
}

// RotateJoinToken replaces the worker or manager join token.
func (s *controlServer) RotateJoinToken(ctx context.Context, req *pb.RotateJoinTokenRequest) (*pb.RotateJoinTokenResponse, error) {
	var token string
	_, err := s.m.store.Update(ctx, func(tx *raftstore.Tx) error {
		c := tx.Cluster()
		if c == nil {
			return status.Error(codes.Unavailable, "the cluster is still initialising; retry")
		}
		if c.JoinTokens == nil {
			c.JoinTokens = &pb.JoinTokens{}
		}
		token = newJoinToken(c.GetRootCa().GetDigest())
		switch req.GetRole() {
		case pb.NodeRole_NODE_ROLE_WORKER:
			c.JoinTokens.Worker = token
		case pb.NodeRole_NODE_ROLE_MANAGER:
			c.JoinTokens.Manager = token
		default:
			return status.Error(codes.InvalidArgument, "rotate join token: say which one: worker or manager")
		}
		return tx.Clusters().Update(c)
	})
	if err != nil {
		return nil, err
	}
	if token == "" { // a retried request that already committed
		s.m.store.View(func(tx *raftstore.Tx) {
			token = tx.Cluster().GetJoinTokens().GetWorker()
			if req.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER {
				token = tx.Cluster().GetJoinTokens().GetManager()
			}
		})
	}
	return &pb.RotateJoinTokenResponse{Token: token}, nil
}

// decorate fills in what only the leader knows right now: which manager
// leads and which answer.
func (m *Manager) decorate(ctx context.Context, nodes []*pb.Node) {
	leaderID, _ := m.store.Leader()
	for _, n := range nodes {
		if n.GetRole() == pb.NodeRole_NODE_ROLE_WORKER {
			if t, ok := m.disp.lastBeat(n.GetId()); ok && n.Status != nil {
				n.Status.LastHeartbeat = t.UnixNano()
			}
		}
		if n.GetRole() != pb.NodeRole_NODE_ROLE_MANAGER || n.ManagerStatus == nil {
			continue
		}
		r := m.reachabilityOf(ctx, n)
		n.ManagerStatus.Reachability = r
		n.ManagerStatus.Leader = n.GetManagerStatus().GetRaftId() == leaderID
		if n.Status == nil {
			n.Status = &pb.NodeStatus{}
		}
		if r == pb.Reachability_REACHABILITY_REACHABLE {
			n.Status.State = pb.NodeState_NODE_STATE_READY
		} else {
			n.Status.State = pb.NodeState_NODE_STATE_DOWN
		}
	}
}

// demote takes a manager out of the Raft configuration, refusing when that
// would lose the last manager or quorum. Demoting the leader first hands
// leadership to another manager; the client's retry then lands there.
func (m *Manager) demote(ctx context.Context, n *pb.Node) error {
	raftID := n.GetManagerStatus().GetRaftId()
	if err := m.checkQuorumWithout(ctx, raftID); err != nil {
		return err
	}
	if n.GetId() == m.id.NodeID {
		if err := m.store.TransferLeadership(ctx); err != nil {
			return status.Errorf(codes.Unavailable, "hand leadership over before demoting the leader: %v", err)
		}
		return status.Error(codes.Unavailable, "leadership moved to another manager; retry the call")
	}
	if err := m.store.RemoveServer(ctx, raftID); err != nil {
		return err
	}
	m.log.Info("manager removed from the Raft configuration", "node", n.GetId(), "raft_id", raftID)
	return nil
}

// checkQuorumWithout refuses to remove a voter when the remaining
// reachable voters would not form a quorum.
func (m *Manager) checkQuorumWithout(ctx context.Context, raftID string) error {
	servers, err := m.store.Servers()
	if err != nil {
		return err
	}
	var remaining []raftstore.Server
	for _, sv := range servers {
		if sv.Voter && sv.ID != raftID {
			remaining = append(remaining, sv)
		}
	}
	if len(remaining) == 0 {
		return status.Error(codes.FailedPrecondition, "can't remove the last manager: the cluster would have no managers left; add another manager first")
	}
	reachable := 0
	m.store.View(func(tx *raftstore.Tx) {
		for _, sv := range remaining {
			if n := nodeByRaftID(tx, sv.ID); n != nil && m.reachabilityOf(ctx, n) == pb.Reachability_REACHABILITY_REACHABLE {
				reachable++
			} else if n == nil && sv.ID == m.id.RaftID {
				reachable++
			}
		}
	})
	if need := len(remaining)/2 + 1; reachable < need {
		return status.Errorf(codes.FailedPrecondition, "removing this manager would leave %d reachable of %d managers, below the quorum of %d; bring the unreachable managers back first", reachable, len(remaining), need)
	}
	return nil
}

// removeNode removes a node and bars its ID from rejoining.
func (m *Manager) removeNode(ctx context.Context, nodeID string, force bool) error {
	var n *pb.Node
	m.store.View(func(tx *raftstore.Tx) { n, _ = tx.Nodes().Get(nodeID) })
	if n == nil {
		return status.Errorf(codes.NotFound, "no node %s; list nodes with `shoal node ls`", nodeID)
	}
	if n.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER {
		if err := m.demote(ctx, n); err != nil {
			return err
		}
	}
	_, err := m.store.Update(ctx, func(tx *raftstore.Tx) error {
		if _, ok := tx.Nodes().Get(nodeID); !ok {
			return nil
		}
		if err := tx.Nodes().Delete(nodeID); err != nil {
			return err
		}
		c := tx.Cluster()
		if c == nil {
			return nil
		}
		c.RemovedNodes = append(c.RemovedNodes, nodeID)
		return tx.Clusters().Update(c)
	})
	if err == nil {
		m.log.Info("node removed", "node", nodeID, "force", force)
	}
	return err
}

// resolveNode finds a node by ID, unique ID prefix or hostname.
func resolveNode(tx *raftstore.Tx, ref string) (*pb.Node, error) {
	if ref == "" {
		return nil, status.Error(codes.InvalidArgument, "a node ID or hostname is required")
	}
	if n, ok := tx.Nodes().Get(ref); ok {
		return n, nil
	}
	var matches []*pb.Node
	for _, n := range tx.Nodes().List() {
		if strings.HasPrefix(n.GetId(), ref) {
			matches = append(matches, n)
		}
	}
	if len(matches) == 0 {
		matches = tx.Nodes().Find(raftstore.IndexName, ref)
	}
	switch len(matches) {
	case 0:
		return nil, status.Errorf(codes.NotFound, "no node %q; list nodes with `shoal node ls`", ref)
	case 1:
		return matches[0], nil
	}
	ids := make([]string, 0, len(matches))
	for _, n := range matches {
		ids = append(ids, n.GetId())
	}
	sort.Strings(ids)
	return nil, status.Errorf(codes.InvalidArgument, "%q matches %d nodes (%s); use a longer ID", ref, len(matches), strings.Join(ids, ", "))
}

// validateNodeSpec checks a node spec from a client.
func validateNodeSpec(spec *pb.NodeSpec) error {
	if _, ok := pb.NodeAvailability_name[int32(spec.GetAvailability())]; !ok {
		return status.Errorf(codes.InvalidArgument, "unknown availability %d; use active, pause or drain", spec.GetAvailability())
	}
	switch spec.GetDesiredRole() {
	case pb.NodeRole_NODE_ROLE_WORKER, pb.NodeRole_NODE_ROLE_MANAGER:
	default:
		return status.Error(codes.InvalidArgument, "the node spec needs a desired role: worker or manager")
	}
	for k := range spec.GetAnnotations().GetLabels() {
		if k == "" || strings.ContainsAny(k, " =\t\n") {
			return status.Errorf(codes.InvalidArgument, "invalid label key %q: no spaces or '='", k)
		}
	}
	return nil
}

// hostOf returns the host part of host:port.
func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return h
}
