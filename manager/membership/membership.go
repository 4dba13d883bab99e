// Package membership is who belongs to the cluster: the Membership gRPC
// service (joins with a token and the second step of a manager's join or
// promotion, leaves, certificate renewals, whether a node is still a
// member, this manager's Raft status), the Raft voters (added on join,
// removed on demotion or removal, under quorum checks), where the leader's
// API is, and which managers answer (probed by the leader).
package membership

import (
	"context"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/shoal-cluster/shoal/internal/clock"
	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/manager/authz"
	"github.com/shoal-cluster/shoal/manager/ca"
	"github.com/shoal-cluster/shoal/manager/orchestrator"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Raft is what membership needs of this manager's Raft store.
type Raft interface {
	IsLeader() bool
	// Leader is the leader's Raft ID and address as this manager knows it.
	Leader() (id, addr string)
	Status() raftstore.Status
	Servers() ([]raftstore.Server, error)
	AddVoter(ctx context.Context, id, addr string) error
	RemoveServer(ctx context.Context, id string) error
	TransferLeadership(ctx context.Context) error
}

// Dialer makes client connections to other managers.
type Dialer interface {
	Manager(addr string) (*grpc.ClientConn, error)
}

// Certificates renews nodes' certificates (the cluster's CA).
type Certificates interface {
	RenewNode(ctx context.Context, caller pki.Identity, csr []byte) (*pb.RenewCertificateResponse, error)
}

// SecretsKey is the secrets key handed to a node joining as a manager.
type SecretsKey interface {
	// ForJoin is the raw key; nil when this manager holds none.
	ForJoin() []byte
}

// Self is this manager as it answers for itself.
type Self struct {
	NodeID    string
	RaftID    string
	Hostname  string
	ClusterID string
	APIAddr   string
	RaftAddr  string
}

// Config is what a Server needs.
type Config struct {
	Store        raftstore.StateStore
	Raft         Raft
	Dialer       Dialer
	Certificates Certificates
	Keys         SecretsKey
	Self         Self
	// ProbeInterval is how often the leader checks the other managers.
	ProbeInterval time.Duration
	Clock         clock.Clock
	Log           *slog.Logger
}

// Server serves the Membership gRPC service and keeps the Raft voters.
type Server struct {
	pb.UnimplementedMembershipServer
	store raftstore.StateStore
	raft  Raft
	conns Dialer
	certs Certificates
	keys  SecretsKey
	self  Self
	probe time.Duration
	clock clock.Clock
	log   *slog.Logger
	reach *reachability
}

// New returns a Server.
func New(cfg Config) *Server {
	return &Server{store: cfg.Store, raft: cfg.Raft, conns: cfg.Dialer, certs: cfg.Certificates, keys: cfg.Keys,
		self: cfg.Self, probe: cfg.ProbeInterval, clock: cfg.Clock, log: cfg.Log, reach: newReachability()}
}

// IsLeader reports whether this manager leads.
func (s *Server) IsLeader() bool { return s.raft.IsLeader() }

// LeaderAPI returns the leader's Raft ID and API address.
func (s *Server) LeaderAPI() (string, string, error) {
	leaderID, _ := s.raft.Leader()
	if leaderID == "" {
		return "", "", raftstore.ErrNoLeader
	}
	var addr string
	s.store.View(func(tx *raftstore.Tx) {
		if n := managerByRaftID(tx, leaderID); n != nil {
			addr = n.GetManagerStatus().GetApiAddr()
		}
	})
	if addr == "" {
		return "", "", fmt.Errorf("leader %s is not yet known to this manager: %w", leaderID, raftstore.ErrNoLeader)
	}
	return leaderID, addr, nil
}

// managerByRaftID finds the manager node with a Raft ID.
func managerByRaftID(tx *raftstore.Tx, raftID string) *pb.Node {
	for _, n := range tx.Nodes().List() {
		if n.GetManagerStatus().GetRaftId() == raftID {
			return n
		}
	}
	return nil
}

// RenewCertificate issues a new certificate for the calling node, with the
// role the store says it has (a promotion or demotion changes it).
func (s *Server) RenewCertificate(ctx context.Context, req *pb.RenewCertificateRequest) (*pb.RenewCertificateResponse, error) {
	return s.certs.RenewNode(ctx, authz.Caller(ctx), req.GetCsr())
}

// Join admits a node holding a valid token (runs on the leader).
func (s *Server) Join(ctx context.Context, req *pb.JoinRequest) (*pb.JoinResponse, error) {
	var cluster *pb.Cluster
	s.store.View(func(tx *raftstore.Tx) { cluster = tx.Cluster() })
	if cluster == nil {
		return nil, status.Error(codes.Unavailable, "the cluster is still initialising; retry")
	}
	if caller := authz.Caller(ctx); caller.Role == pki.RoleManager && caller.ID == req.GetNodeId() {
		return s.addVoter(ctx, cluster, req)
	}
	if req.GetPromotion() {
		return s.promote(ctx, cluster, req)
	}
	role, err := ca.CheckToken(cluster, req.GetToken())
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
		Status:        &pb.NodeStatus{State: pb.NodeState_NODE_STATE_READY, Addr: hostOf(req.GetApiAddr()), LastHeartbeat: s.clock.Now().UnixNano()},
		ManagerStatus: &pb.ManagerStatus{RaftId: req.GetRaftId(), RaftAddr: req.GetRaftAddr(), ApiAddr: req.GetApiAddr()},
		Role:          role,
		ApiAddr:       req.GetApiAddr(),
	}
	certPEM, info, err := ca.IssueNode(cluster, req.GetCsr(), req.GetNodeId(), role)
	if err != nil {
		return nil, err
	}
	node.Certificate = info
	if role == pb.NodeRole_NODE_ROLE_WORKER {
		// A worker is Unknown until it opens its first session.
		node.ManagerStatus = nil
		node.Status.State = pb.NodeState_NODE_STATE_UNKNOWN
	}
	_, err = s.store.Update(ctx, func(tx *raftstore.Tx) error {
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
		s.log.Info("worker joined", "node", req.GetNodeId(), "addr", req.GetApiAddr())
	} else {
		resp.SecretsKey = s.keys.ForJoin()
		s.log.Info("manager admitted; it joins Raft once it holds its certificate", "node", req.GetNodeId())
	}
	return resp, nil
}

// addVoter is the second step of a manager's join or promotion: the node,
// now holding its manager certificate (so that its Raft transport can
// serve the leader), asks to be added to the Raft configuration.
func (s *Server) addVoter(ctx context.Context, cluster *pb.Cluster, req *pb.JoinRequest) (*pb.JoinResponse, error) {
	var n *pb.Node
	s.store.View(func(tx *raftstore.Tx) { n, _ = tx.Nodes().Get(req.GetNodeId()) })
	if n == nil || n.GetRole() != pb.NodeRole_NODE_ROLE_MANAGER || n.GetManagerStatus().GetRaftId() != req.GetRaftId() ||
		n.GetManagerStatus().GetRaftAddr() != req.GetRaftAddr() {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s was not admitted as a manager with Raft ID %s; join with a manager token first", req.GetNodeId(), req.GetRaftId())
	}
	if err := s.raft.AddVoter(ctx, req.GetRaftId(), req.GetRaftAddr()); err != nil {
		if req.GetPromotion() {
			return nil, status.Errorf(codes.Unavailable, "add %s to the Raft configuration: %v; the promotion will be retried", req.GetRaftAddr(), err)
		}
		s.log.Warn("add voter failed; undoing the join", "node", req.GetNodeId(), "err", err)
		_, _ = s.store.Update(context.Background(), func(tx *raftstore.Tx) error {
			if _, ok := tx.Nodes().Get(req.GetNodeId()); ok {
				return tx.Nodes().Delete(req.GetNodeId())
			}
			return nil
		})
		return nil, status.Errorf(codes.Unavailable, "add %s to the Raft configuration: %v", req.GetRaftAddr(), err)
	}
	if req.GetPromotion() {
		s.log.Info("worker promoted to manager", "node", req.GetNodeId(), "raft", req.GetRaftAddr())
	} else {
		s.log.Info("manager joined", "node", req.GetNodeId(), "raft", req.GetRaftAddr())
	}
	return &pb.JoinResponse{ClusterId: cluster.GetId(), Role: pb.NodeRole_NODE_ROLE_MANAGER, SecretsKey: s.keys.ForJoin()}, nil
}

// CheckToken tells a joining node which role its token grants.
func (s *Server) CheckToken(ctx context.Context, req *pb.CheckTokenRequest) (*pb.CheckTokenResponse, error) {
	var cluster *pb.Cluster
	s.store.View(func(tx *raftstore.Tx) { cluster = tx.Cluster() })
	if cluster == nil {
		return nil, status.Error(codes.Unavailable, "the cluster is still initialising; retry")
	}
	role, err := ca.CheckToken(cluster, req.GetToken())
	if err != nil {
		return nil, err
	}
	return &pb.CheckTokenResponse{ClusterId: cluster.GetId(), Role: role}, nil
}

// promote makes a worker that was promoted a manager: it proves itself with
// its certificate, then its record turns into a manager's (its tasks are
// failed so they are placed elsewhere: managers run no tasks), it gets a
// manager certificate and it is added to Raft as a voter.
func (s *Server) promote(ctx context.Context, cluster *pb.Cluster, req *pb.JoinRequest) (*pb.JoinResponse, error) {
	if req.GetRaftId() == "" || req.GetRaftAddr() == "" || req.GetApiAddr() == "" {
		return nil, status.Error(codes.InvalidArgument, "a promotion needs the node's Raft ID, Raft and API addresses")
	}
	if caller := authz.Caller(ctx); !caller.IsNode() || caller.ID != req.GetNodeId() {
		return nil, status.Errorf(codes.PermissionDenied, "only node %s itself may complete its promotion, with its certificate", req.GetNodeId())
	}
	var certPEM []byte
	_, err := s.store.Update(ctx, func(tx *raftstore.Tx) error {
		n, ok := tx.Nodes().Get(req.GetNodeId())
		var info *pb.NodeCertificate
		var err error
		if ok {
			if certPEM, info, err = ca.IssueNode(cluster, req.GetCsr(), req.GetNodeId(), pb.NodeRole_NODE_ROLE_MANAGER); err != nil {
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
		n.Status = &pb.NodeStatus{State: pb.NodeState_NODE_STATE_READY, Addr: hostOf(req.GetApiAddr()), LastHeartbeat: s.clock.Now().UnixNano()}
		if err := tx.Nodes().Update(n); err != nil {
			return err
		}
		_, err = orchestrator.FailNodeTasks(tx, n.GetId(), func(*pb.Task) *pb.TaskStatus {
			return &pb.TaskStatus{Timestamp: s.clock.Now().UnixNano(), State: pb.TaskState_TASK_STATE_FAILED,
				Message: "node promoted", Err: fmt.Sprintf("node %s became a manager; managers run no tasks", n.GetId())}
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("promotion: manager certificate issued; the node joins Raft next", "node", req.GetNodeId())
	return &pb.JoinResponse{ClusterId: cluster.GetId(), Role: pb.NodeRole_NODE_ROLE_MANAGER, Certificate: certPEM,
		RootCas: cluster.GetRootCa().GetTrustBundle(), GossipKeys: cluster.GetGossipKeys(), SecretsKey: s.keys.ForJoin()}, nil
}

// Leave removes the calling node from the cluster (runs on the leader).
// A worker may only take itself out: the authorisation interceptor checks
// the node ID against its certificate.
func (s *Server) Leave(ctx context.Context, req *pb.LeaveRequest) (*pb.LeaveResponse, error) {
	var n *pb.Node
	s.store.View(func(tx *raftstore.Tx) { n, _ = tx.Nodes().Get(req.GetNodeId()) })
	if n == nil {
		return &pb.LeaveResponse{}, nil // already gone
	}
	if err := s.Remove(ctx, req.GetNodeId(), true); err != nil {
		return nil, err
	}
	return &pb.LeaveResponse{}, nil
}

// RaftStatus reports this manager's own Raft state.
func (s *Server) RaftStatus(ctx context.Context, _ *pb.RaftStatusRequest) (*pb.ManagerRaftStatus, error) {
	return s.LocalRaftStatus(), nil
}

// CheckMember tells a node whether it was removed. It answers from this
// manager's replica: "removed" is only said when known for sure.
func (s *Server) CheckMember(ctx context.Context, req *pb.CheckMemberRequest) (*pb.CheckMemberResponse, error) {
	resp := &pb.CheckMemberResponse{ClusterId: s.self.ClusterID}
	s.store.View(func(tx *raftstore.Tx) {
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

// LocalRaftStatus is this manager's own view of Raft.
func (s *Server) LocalRaftStatus() *pb.ManagerRaftStatus {
	st := s.raft.Status()
	out := &pb.ManagerRaftStatus{
		NodeId:       s.self.NodeID,
		Hostname:     s.self.Hostname,
		RaftId:       s.self.RaftID,
		RaftAddr:     s.self.RaftAddr,
		ApiAddr:      s.self.APIAddr,
		State:        st.State,
		Term:         st.Term,
		CommitIndex:  st.CommitIndex,
		AppliedIndex: st.AppliedIndex,
		LastLogIndex: st.LastIndex,
		Reachability: pb.Reachability_REACHABILITY_REACHABLE,
	}
	if servers, err := s.raft.Servers(); err == nil {
		for _, sv := range servers {
			if sv.ID == s.self.RaftID {
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

// ProbeManagers is a leader loop: it asks every other manager for its
// Raft status each ProbeInterval and records who answers.
func (s *Server) ProbeManagers(ctx context.Context) {
	t := s.clock.NewTicker(s.probe)
	defer t.Stop()
	for {
		s.probeAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

func (s *Server) probeAll(ctx context.Context) {
	var managers []*pb.Node
	s.store.View(func(tx *raftstore.Tx) {
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
			s.reach.set(n.GetId(), s.probeOne(ctx, n))
		}()
	}
	wg.Wait()
}

// probeOne checks one manager.
func (s *Server) probeOne(ctx context.Context, n *pb.Node) pb.Reachability {
	if n.GetId() == s.self.NodeID {
		return pb.Reachability_REACHABILITY_REACHABLE
	}
	if _, err := s.RaftStatusOf(ctx, n); err != nil {
		return pb.Reachability_REACHABILITY_UNREACHABLE
	}
	return pb.Reachability_REACHABILITY_REACHABLE
}

// RaftStatusOf asks a manager for its Raft status (this one answers
// itself).
func (s *Server) RaftStatusOf(ctx context.Context, n *pb.Node) (*pb.ManagerRaftStatus, error) {
	if n.GetId() == s.self.NodeID {
		return s.LocalRaftStatus(), nil
	}
	conn, err := s.conns.Manager(n.GetManagerStatus().GetApiAddr())
	if err != nil {
		return nil, err
	}
	timeout := s.probe
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

// Reachability returns the leader's view of a manager, probing it now
// when no view exists yet.
func (s *Server) Reachability(ctx context.Context, n *pb.Node) pb.Reachability {
	if v, ok := s.reach.get(n.GetId()); ok {
		return v
	}
	v := s.probeOne(ctx, n)
	s.reach.set(n.GetId(), v)
	return v
}

// Demote takes a manager out of the Raft configuration, refusing when that
// would lose the last manager or quorum. Demoting the leader first hands
// leadership to another manager; the client's retry then lands there.
func (s *Server) Demote(ctx context.Context, n *pb.Node) error {
	raftID := n.GetManagerStatus().GetRaftId()
	if err := s.checkQuorumWithout(ctx, raftID); err != nil {
		return err
	}
	if n.GetId() == s.self.NodeID {
		if err := s.raft.TransferLeadership(ctx); err != nil {
			return status.Errorf(codes.Unavailable, "hand leadership over before demoting the leader: %v", err)
		}
		return status.Error(codes.Unavailable, "leadership moved to another manager; retry the call")
	}
	if err := s.raft.RemoveServer(ctx, raftID); err != nil {
		return err
	}
	s.log.Info("manager removed from the Raft configuration", "node", n.GetId(), "raft_id", raftID)
	return nil
}

// checkQuorumWithout refuses to remove a voter when the remaining
// reachable voters would not form a quorum.
func (s *Server) checkQuorumWithout(ctx context.Context, raftID string) error {
	servers, err := s.raft.Servers()
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
	s.store.View(func(tx *raftstore.Tx) {
		for _, sv := range remaining {
			if n := managerByRaftID(tx, sv.ID); n != nil && s.Reachability(ctx, n) == pb.Reachability_REACHABILITY_REACHABLE {
				reachable++
			} else if n == nil && sv.ID == s.self.RaftID {
				reachable++
			}
		}
	})
	if need := len(remaining)/2 + 1; reachable < need {
		return status.Errorf(codes.FailedPrecondition, "removing this manager would leave %d reachable of %d managers, below the quorum of %d; bring the unreachable managers back first", reachable, len(remaining), need)
	}
	return nil
}

// Remove removes a node and bars its ID from rejoining.
func (s *Server) Remove(ctx context.Context, nodeID string, force bool) error {
	var n *pb.Node
	s.store.View(func(tx *raftstore.Tx) { n, _ = tx.Nodes().Get(nodeID) })
	if n == nil {
		return status.Errorf(codes.NotFound, "no node %s; list nodes with `shoal node ls`", nodeID)
	}
	if n.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER {
		if err := s.Demote(ctx, n); err != nil {
			return err
		}
	}
	_, err := s.store.Update(ctx, func(tx *raftstore.Tx) error {
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
		s.log.Info("node removed", "node", nodeID, "force", force)
	}
	return err
}

// hostOf returns the host part of host:port.
func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return h
}
