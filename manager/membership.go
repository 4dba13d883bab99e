package manager

import (
	"context"
	"crypto/subtle"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/shoal-cluster/shoal/internal/pki"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// membershipServer serves joins, leaves and Raft status.
type membershipServer struct {
	pb.UnimplementedMembershipServer
	m *Manager
}

// Join admits a node holding a valid token (runs on the leader).
func (s *membershipServer) Join(ctx context.Context, req *pb.JoinRequest) (*pb.JoinResponse, error) {
	m := s.m
	var cluster *pb.Cluster
	m.store.View(func(tx *raftstore.Tx) { cluster = tx.Cluster() })
	if cluster == nil {
		return nil, status.Error(codes.Unavailable, "the cluster is still initialising; retry")
	}
	if caller := callerOf(ctx); caller.Role == pki.RoleManager && caller.ID == req.GetNodeId() {
		return m.addVoter(ctx, cluster, req)
	}
	if req.GetPromotion() {
		return m.promote(ctx, cluster, req)
	}
	role, err := checkToken(cluster, req.GetToken())
	if err != nil {
		return nil, err
	}
	if req.GetNodeId() == "" || req.GetApiAddr() == "" {
		return nil, status.Error(codes.InvalidArgument, "join request needs a node ID and an API address")
	}
	if role == pb.NodeRole_NODE_ROLE_MANAGER && (req.GetRaftId() == "" || req.GetRaftAddr() == "") {
		return nil, status.Error(codes.InvalidArgument, "a manager's join request needs its Raft ID and address")
	}
	if len(req.GetCsr()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "a join request needs a certificate request")
	}
	if slices.Contains(cluster.GetRemovedNodes(), req.GetNodeId()) {
		return nil, status.Errorf(codes.PermissionDenied, "node %s was removed from this cluster and cannot rejoin with its old identity; join with an empty data dir", req.GetNodeId())
	}
	node := &pb.Node{
		Id: req.GetNodeId(),
		Spec: &pb.NodeSpec{
			Annotations:  &pb.Annotations{Name: req.GetDescription().GetHostname()},
			DesiredRole:  role,
			Availability: pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE,
		},
		Description:   req.GetDescription(),
		Status:        &pb.NodeStatus{State: pb.NodeState_NODE_STATE_READY, Addr: hostOf(req.GetApiAddr()), LastHeartbeat: time.Now().UnixNano()},
		ManagerStatus: &pb.ManagerStatus{RaftId: req.GetRaftId(), RaftAddr: req.GetRaftAddr(), ApiAddr: req.GetApiAddr()},
		Role:          role,
		ApiAddr:       req.GetApiAddr(),
	}
	certPEM, info, err := issueNode(cluster, req.GetCsr(), req.GetNodeId(), role)
	if err != nil {
		return nil, err
	}
	node.Certificate = info
	if role == pb.NodeRole_NODE_ROLE_WORKER {
		// A worker is Unknown until it opens its first session.
		node.ManagerStatus = nil
		node.Status.State = pb.NodeState_NODE_STATE_UNKNOWN
	}
	_, err = m.store.Update(ctx, func(tx *raftstore.Tx) error {
		if old, ok := tx.Nodes().Get(node.GetId()); ok {
			if old.GetRole() == role && old.GetManagerStatus().GetRaftId() == req.GetRaftId() && old.GetApiAddr() == req.GetApiAddr() &&
				subtle.ConstantTimeCompare(old.GetCertificate().GetKeyDigest(), info.GetKeyDigest()) == 1 {
				// A retried join (the same key asks again): the record
				// stays, the certificate is the one just issued.
				old.Certificate = info
				return tx.Nodes().Update(old)
			}
			return status.Errorf(codes.AlreadyExists, "node ID %s is taken", node.GetId())
		}
		for _, n := range tx.Nodes().List() {
			if n.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER && n.GetManagerStatus().GetApiAddr() == req.GetApiAddr() {
				return status.Errorf(codes.AlreadyExists, "manager %s already uses address %s; remove it first (`shoal node rm --force %s`) or advertise another address", n.GetId(), req.GetApiAddr(), n.GetId())
			}
		}
		return tx.Nodes().Create(node)
	})
	if err != nil {
		return nil, err
	}
	resp := &pb.JoinResponse{ClusterId: cluster.GetId(), Role: role, Certificate: certPEM,
		RootCas: cluster.GetRootCa().GetTrustBundle(), GossipKeys: cluster.GetGossipKeys()}
	if role == pb.NodeRole_NODE_ROLE_WORKER {
		m.log.Info("worker joined", "node", req.GetNodeId(), "addr", req.GetApiAddr())
	} else {
		resp.SecretsKey = m.keyForJoin()
		m.log.Info("manager admitted; it joins Raft once it holds its certificate", "node", req.GetNodeId())
	}
	return resp, nil
}

// addVoter is the second step of a manager's join or promotion: the node,
// now holding its manager certificate (so that its Raft transport can
// serve the leader), asks to be added to the Raft configuration.
func (m *Manager) addVoter(ctx context.Context, cluster *pb.Cluster, req *pb.JoinRequest) (*pb.JoinResponse, error) {
	var n *pb.Node
	m.store.View(func(tx *raftstore.Tx) { n, _ = tx.Nodes().Get(req.GetNodeId()) })
	if n == nil || n.GetRole() != pb.NodeRole_NODE_ROLE_MANAGER || n.GetManagerStatus().GetRaftId() != req.GetRaftId() ||
		n.GetManagerStatus().GetRaftAddr() != req.GetRaftAddr() {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s was not admitted as a manager with Raft ID %s; join with a manager token first", req.GetNodeId(), req.GetRaftId())
	}
	if err := m.store.AddVoter(ctx, req.GetRaftId(), req.GetRaftAddr()); err != nil {
		if req.GetPromotion() {
			return nil, status.Errorf(codes.Unavailable, "add %s to the Raft configuration: %v; the promotion will be retried", req.GetRaftAddr(), err)
		}
		m.log.Warn("add voter failed; undoing the join", "node", req.GetNodeId(), "err", err)
		_, _ = m.store.Update(context.Background(), func(tx *raftstore.Tx) error {
			if _, ok := tx.Nodes().Get(req.GetNodeId()); ok {
				return tx.Nodes().Delete(req.GetNodeId())
			}
			return nil
		})
		return nil, status.Errorf(codes.Unavailable, "add %s to the Raft configuration: %v", req.GetRaftAddr(), err)
	}
	if req.GetPromotion() {
		m.log.Info("worker promoted to manager", "node", req.GetNodeId(), "raft", req.GetRaftAddr())
	} else {
		m.log.Info("manager joined", "node", req.GetNodeId(), "raft", req.GetRaftAddr())
	}
	return &pb.JoinResponse{ClusterId: cluster.GetId(), Role: pb.NodeRole_NODE_ROLE_MANAGER, SecretsKey: m.keyForJoin()}, nil
}

// CheckToken tells a joining node which role its token grants.
func (s *membershipServer) CheckToken(ctx context.Context, req *pb.CheckTokenRequest) (*pb.CheckTokenResponse, error) {
	var cluster *pb.Cluster
	s.m.store.View(func(tx *raftstore.Tx) { cluster = tx.Cluster() })
	if cluster == nil {
		return nil, status.Error(codes.Unavailable, "the cluster is still initialising; retry")
	}
	role, err := checkToken(cluster, req.GetToken())
	if err != nil {
		return nil, err
	}
	return &pb.CheckTokenResponse{ClusterId: cluster.GetId(), Role: role}, nil
}

// checkToken returns the role a token grants in this cluster.
func checkToken(cluster *pb.Cluster, token string) (pb.NodeRole, error) {
	digest, _, err := parseToken(token)
	if err != nil {
		return 0, status.Error(codes.InvalidArgument, err.Error())
	}
	if digest != cluster.GetRootCa().GetDigest() {
		return 0, status.Errorf(codes.PermissionDenied, "the join token pins another root CA than this cluster's (it is for another cluster, or from before a CA rotation); get a token with `shoal cluster join-token` on this cluster")
	}
	role, ok := roleForToken(cluster, token)
	if !ok {
		return 0, status.Error(codes.PermissionDenied, "invalid join token (it may have been rotated); get the current one with `shoal cluster join-token manager|worker`")
	}
	return role, nil
}

// promote makes a worker that was promoted a manager: it proves itself with
// its certificate, then its record turns into a manager's (its tasks are
// failed so they are placed elsewhere: managers run no tasks), it gets a
// manager certificate and it is added to Raft as a voter.
func (m *Manager) promote(ctx context.Context, cluster *pb.Cluster, req *pb.JoinRequest) (*pb.JoinResponse, error) {
	if req.GetRaftId() == "" || req.GetRaftAddr() == "" || req.GetApiAddr() == "" {
		return nil, status.Error(codes.InvalidArgument, "a promotion needs the node's Raft ID, Raft and API addresses")
	}
	if caller := callerOf(ctx); !caller.IsNode() || caller.ID != req.GetNodeId() {
		return nil, status.Errorf(codes.PermissionDenied, "only node %s itself may complete its promotion, with its certificate", req.GetNodeId())
	}
	var certPEM []byte
	_, err := m.store.Update(ctx, func(tx *raftstore.Tx) error {
		n, ok := tx.Nodes().Get(req.GetNodeId())
		var info *pb.NodeCertificate
		var err error
		if ok {
			if certPEM, info, err = issueNode(cluster, req.GetCsr(), req.GetNodeId(), pb.NodeRole_NODE_ROLE_MANAGER); err != nil {
				return err
			}
		}
		switch {
		case !ok:
			return status.Errorf(codes.NotFound, "node %s is not a member of this cluster", req.GetNodeId())
		case n.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER && n.GetManagerStatus().GetRaftId() == req.GetRaftId():
			n.Certificate = info // a retried promotion
			return tx.Nodes().Update(n)
		case n.GetRole() != pb.NodeRole_NODE_ROLE_WORKER || n.GetSpec().GetDesiredRole() != pb.NodeRole_NODE_ROLE_MANAGER:
			return status.Errorf(codes.FailedPrecondition, "node %s was not promoted; run `shoal node promote %s` first", req.GetNodeId(), req.GetNodeId())
		}
		n.Role = pb.NodeRole_NODE_ROLE_MANAGER
		n.Certificate = info
		if c := tx.Cluster(); c != nil && c.DemotedManagers[n.GetId()] != 0 {
			delete(c.DemotedManagers, n.GetId()) // its manager certificates are good again
			if err := tx.Clusters().Update(c); err != nil {
				return err
			}
		}
		n.ApiAddr = req.GetApiAddr()
		n.ManagerStatus = &pb.ManagerStatus{RaftId: req.GetRaftId(), RaftAddr: req.GetRaftAddr(), ApiAddr: req.GetApiAddr()}
		if n.Description != nil {
			n.Description.Runtimes = nil // managers run no tasks
		}
		n.Status = &pb.NodeStatus{State: pb.NodeState_NODE_STATE_READY, Addr: hostOf(req.GetApiAddr()), LastHeartbeat: time.Now().UnixNano()}
		if err := tx.Nodes().Update(n); err != nil {
			return err
		}
		for _, t := range tx.Tasks().Find(raftstore.IndexNode, n.GetId()) {
			if t.GetStatus().GetState() >= pb.TaskState_TASK_STATE_COMPLETE {
				continue
			}
			t.Status = &pb.TaskStatus{Timestamp: time.Now().UnixNano(), State: pb.TaskState_TASK_STATE_FAILED,
				Message: "node promoted", Err: fmt.Sprintf("node %s became a manager; managers run no tasks", n.GetId())}
			if t.GetServiceId() == "" && t.GetDesiredState() < pb.TaskState_TASK_STATE_SHUTDOWN {
				t.DesiredState = pb.TaskState_TASK_STATE_SHUTDOWN
			}
			if err := tx.Tasks().Update(t); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	m.log.Info("promotion: manager certificate issued; the node joins Raft next", "node", req.GetNodeId())
	return &pb.JoinResponse{ClusterId: cluster.GetId(), Role: pb.NodeRole_NODE_ROLE_MANAGER, Certificate: certPEM,
		RootCas: cluster.GetRootCa().GetTrustBundle(), GossipKeys: cluster.GetGossipKeys(), SecretsKey: m.keyForJoin()}, nil
}

// Leave removes the calling node from the cluster (runs on the leader).
// A worker may only take itself out: the authorisation interceptor checks
// the node ID against its certificate.
func (s *membershipServer) Leave(ctx context.Context, req *pb.LeaveRequest) (*pb.LeaveResponse, error) {
	var n *pb.Node
	s.m.store.View(func(tx *raftstore.Tx) { n, _ = tx.Nodes().Get(req.GetNodeId()) })
	if n == nil {
		return &pb.LeaveResponse{}, nil // already gone
	}
	if err := s.m.removeNode(ctx, req.GetNodeId(), true); err != nil {
		return nil, err
	}
	return &pb.LeaveResponse{}, nil
}

// RaftStatus reports this manager's own Raft state.
func (s *membershipServer) RaftStatus(ctx context.Context, _ *pb.RaftStatusRequest) (*pb.ManagerRaftStatus, error) {
	return s.m.localRaftStatus(), nil
}

// CheckMember tells a node whether it was removed. It answers from this
// manager's replica: "removed" is only said when known for sure.
func (s *membershipServer) CheckMember(ctx context.Context, req *pb.CheckMemberRequest) (*pb.CheckMemberResponse, error) {
	resp := &pb.CheckMemberResponse{ClusterId: s.m.id.ClusterID}
	s.m.store.View(func(tx *raftstore.Tx) {
		c := tx.Cluster()
		if slices.Contains(c.GetRemovedNodes(), req.GetNodeId()) {
			resp.Removed = true
			return
		}
		n, ok := tx.Nodes().Get(req.GetNodeId())
		if ok && req.GetRaftId() != "" && (n.GetRole() != pb.NodeRole_NODE_ROLE_MANAGER || n.GetManagerStatus().GetRaftId() != req.GetRaftId()) {
			resp.Removed = true
			resp.Demoted = n.GetRole() == pb.NodeRole_NODE_ROLE_WORKER
		}
	})
	return resp, nil
}

// localRaftStatus is this manager's own view of Raft.
func (m *Manager) localRaftStatus() *pb.ManagerRaftStatus {
	st := m.store.Status()
	out := &pb.ManagerRaftStatus{
		NodeId:       m.id.NodeID,
		Hostname:     m.cfg.Hostname,
		RaftId:       m.id.RaftID,
		RaftAddr:     m.cfg.RaftAddr(),
		ApiAddr:      m.cfg.APIAddr(),
		State:        st.State,
		Term:         st.Term,
		CommitIndex:  st.CommitIndex,
		AppliedIndex: st.AppliedIndex,
		LastLogIndex: st.LastIndex,
		Reachability: pb.Reachability_REACHABILITY_REACHABLE,
	}
	if servers, err := m.store.Servers(); err == nil {
		for _, sv := range servers {
			if sv.ID == m.id.RaftID {
				out.Voter = sv.Voter
			}
		}
	}
	return out
}

// reachability is the leader's latest view of which managers answer.
type reachability struct {
	mu    sync.Mutex
	state map[string]pb.Reachability // by node ID
}

func newReachability() *reachability { return &reachability{state: map[string]pb.Reachability{}} }

func (r *reachability) set(id string, v pb.Reachability) {
	r.mu.Lock()
	r.state[id] = v
	r.mu.Unlock()
}

func (r *reachability) get(id string) (pb.Reachability, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.state[id]
	return v, ok
}

// probeManagers runs on the leader: it asks every other manager for its
// Raft status each ProbeInterval and records who answers.
func (m *Manager) probeManagers(ctx context.Context) {
	t := time.NewTicker(m.cfg.ProbeInterval)
	defer t.Stop()
	for {
		m.probeAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *Manager) probeAll(ctx context.Context) {
	var managers []*pb.Node
	m.store.View(func(tx *raftstore.Tx) {
		for _, n := range tx.Nodes().List() {
			if n.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER {
				managers = append(managers, n)
			}
		}
	})
	var wg sync.WaitGroup
	for _, n := range managers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.reach.set(n.GetId(), m.probe(ctx, n))
		}()
	}
	wg.Wait()
}

// probe checks one manager.
func (m *Manager) probe(ctx context.Context, n *pb.Node) pb.Reachability {
	if n.GetId() == m.id.NodeID {
		return pb.Reachability_REACHABILITY_REACHABLE
	}
	if _, err := m.remoteRaftStatus(ctx, n); err != nil {
		return pb.Reachability_REACHABILITY_UNREACHABLE
	}
	return pb.Reachability_REACHABILITY_REACHABLE
}

// remoteRaftStatus asks a manager for its Raft status.
func (m *Manager) remoteRaftStatus(ctx context.Context, n *pb.Node) (*pb.ManagerRaftStatus, error) {
	if n.GetId() == m.id.NodeID {
		return m.localRaftStatus(), nil
	}
	conn, err := m.conns.get(n.GetManagerStatus().GetApiAddr())
	if err != nil {
		return nil, err
	}
	timeout := m.cfg.ProbeInterval
	if timeout > time.Second {
		timeout = time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := pb.NewMembershipClient(conn).RaftStatus(ctx, &pb.RaftStatusRequest{})
	if err != nil {
		return nil, fmt.Errorf("manager %s at %s: %w", n.GetId(), n.GetManagerStatus().GetApiAddr(), err)
	}
	return st, nil
}

// reachabilityOf returns the leader's view of a manager, probing it now
// when no view exists yet.
func (m *Manager) reachabilityOf(ctx context.Context, n *pb.Node) pb.Reachability {
	if v, ok := m.reach.get(n.GetId()); ok {
		return v
	}
	v := m.probe(ctx, n)
	m.reach.set(n.GetId(), v)
	return v
}
