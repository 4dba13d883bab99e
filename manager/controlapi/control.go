// Package controlapi is the cluster's control API: nodes, services, tasks,
// secrets, the cluster object (its join tokens and CA and gossip key
// rotations) and service logs. Its Server serves the Control gRPC service,
// and each operation is also a Go method taking the request message, for
// other front doors (a Docker Engine API, a dashboard) to call.
package controlapi

import (
	"context"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/internal/registry"
	"github.com/shoal-cluster/shoal/manager/authz"
	"github.com/shoal-cluster/shoal/manager/ca"
	"github.com/shoal-cluster/shoal/manager/sealer"
	"github.com/shoal-cluster/shoal/manager/usage"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Raft is what the control API needs of this manager's Raft store.
type Raft interface {
	// Leader is the leader's Raft ID and address as this manager knows it.
	Leader() (id, addr string)
}

// Members is the Raft membership: demotions, removals and which managers
// answer.
type Members interface {
	// Demote takes a manager out of the Raft configuration, refusing when
	// that would lose the last manager or quorum.
	Demote(ctx context.Context, n *pb.Node) error
	// Remove removes a node and bars its ID from rejoining.
	Remove(ctx context.Context, nodeID string, force bool) error
	// RaftStatusOf asks a manager for its Raft status.
	RaftStatusOf(ctx context.Context, n *pb.Node) (*pb.ManagerRaftStatus, error)
	// Reachability is the leader's view of whether a manager answers.
	Reachability(ctx context.Context, n *pb.Node) pb.Reachability
}

// Heartbeats are the workers' heartbeats as the leader saw them (they are
// not stored).
type Heartbeats interface {
	LastBeat(nodeID string) (time.Time, bool)
}

// Usage is the leader's latest task samples (manager/usage).
type Usage interface {
	Snapshot() map[string]usage.Sample
	Now() time.Time
}

// Authority is the cluster's CA: client certificates and rotations.
type Authority interface {
	IssueClient(ctx context.Context, csr []byte, by pki.Identity) (*pb.IssueClientCertificateResponse, error)
	RotateRoot(ctx context.Context) (*pb.RotateRootCAResponse, error)
	RotateGossipKey(ctx context.Context) (*pb.RotateGossipKeyResponse, error)
	RotateJoinToken(ctx context.Context, role pb.NodeRole) (*pb.RotateJoinTokenResponse, error)
}

// SecretsKey seals new secrets.
type SecretsKey interface {
	// Key returns the cluster's secrets key, or why this manager has none.
	Key() (*sealer.Key, error)
}

// Workers makes client connections to workers (their task logs).
type Workers interface {
	Worker(addr string) (*grpc.ClientConn, error)
}

// EventSource streams the cluster's events from this manager's replica.
type EventSource interface {
	Stream(ctx context.Context, req *pb.EventsRequest, send func(*pb.ClusterEvent) error) error
}

// Config is what a Server needs.
type Config struct {
	Store      raftstore.StateStore
	Raft       Raft
	Members    Members
	Heartbeats Heartbeats
	CA         Authority
	Keys       SecretsKey
	Workers    Workers
	// Events is this manager's event history.
	Events EventSource
	// Usage is the tasks' CPU and memory use (nil: TaskStats is unavailable).
	Usage Usage
	// ClusterID picks the cluster's block of virtual IPs.
	ClusterID string
	// AdvertiseIP is this manager's address, where new ingress ports are
	// checked.
	AdvertiseIP string
	// Resolve pins image tags to digests (default registry.Resolve).
	Resolve Resolver
	Log     *slog.Logger
}

// Server is the user-facing API. Every method but GetCluster, ServiceLogs
// and Events runs on the leader (the leaderroute interceptor sees to it
// for gRPC calls); reads there are linearizable (ViewConsistent).
type Server struct {
	pb.UnimplementedControlServer
	store       raftstore.StateStore
	raft        Raft
	members     Members
	beats       Heartbeats
	ca          Authority
	keys        SecretsKey
	workers     Workers
	events      EventSource
	usage       Usage
	clusterID   string
	advertiseIP string
	resolve     Resolver
	log         *slog.Logger
}

// New returns a Server.
func New(cfg Config) *Server {
	resolve := cfg.Resolve
	if resolve == nil {
		resolve = registry.Resolve
	}
	return &Server{store: cfg.Store, raft: cfg.Raft, members: cfg.Members, beats: cfg.Heartbeats, ca: cfg.CA, keys: cfg.Keys,
		workers: cfg.Workers, events: cfg.Events, usage: cfg.Usage, clusterID: cfg.ClusterID, advertiseIP: cfg.AdvertiseIP, resolve: resolve, log: cfg.Log}
}

// ListNodes returns every node with the leader's view of manager health.
func (s *Server) ListNodes(ctx context.Context, req *pb.ListNodesRequest) (*pb.ListNodesResponse, error) {
	var nodes []*pb.Node
	if err := s.store.ViewConsistent(ctx, func(tx *raftstore.Tx) { nodes = tx.Nodes().List() }); err != nil {
		return nil, err
	}
	out := nodes[:0]
	for _, n := range nodes {
		if req.GetRole() == pb.NodeRole_NODE_ROLE_UNSPECIFIED || n.GetRole() == req.GetRole() {
			out = append(out, n)
		}
	}
	s.decorate(ctx, out)
	return &pb.ListNodesResponse{Nodes: out}, nil
}

// GetNode returns one node by ID, unique ID prefix or hostname.
func (s *Server) GetNode(ctx context.Context, req *pb.GetNodeRequest) (*pb.GetNodeResponse, error) {
	var (
		n   *pb.Node
		err error
	)
	if verr := s.store.ViewConsistent(ctx, func(tx *raftstore.Tx) { n, err = resolveNode(tx, req.GetRef()) }); verr != nil {
		return nil, verr
	}
	if err != nil {
		return nil, err
	}
	s.decorate(ctx, []*pb.Node{n})
	return &pb.GetNodeResponse{Node: n}, nil
}

// UpdateNode changes a node's spec: availability, labels, and its role
// (promote/demote).
func (s *Server) UpdateNode(ctx context.Context, req *pb.UpdateNodeRequest) (*pb.UpdateNodeResponse, error) {
	spec := req.GetSpec()
	if spec == nil {
		return nil, status.Error(codes.InvalidArgument, "update node: a spec is required")
	}
	if err := validateNodeSpec(spec); err != nil {
		return nil, err
	}
	var target *pb.Node
	var err error
	s.store.View(func(tx *raftstore.Tx) { target, err = resolveNode(tx, req.GetRef()) })
	if err != nil {
		return nil, err
	}
	// Refuse a stale update before demoting: the Raft removal cannot be
	// undone when the version check in the transaction fails afterwards.
	if req.GetVersion() != 0 && req.GetVersion() != target.GetMeta().GetVersion() {
		return nil, status.Errorf(codes.Aborted, "node %s changed since version %d (now %d); read it again and retry", target.GetId(), req.GetVersion(), target.GetMeta().GetVersion())
	}
	if target.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER && spec.GetDesiredRole() == pb.NodeRole_NODE_ROLE_WORKER {
		if err := s.members.Demote(ctx, target); err != nil {
			return nil, err
		}
	}
	var out *pb.Node
	_, err = s.store.Update(ctx, func(tx *raftstore.Tx) error {
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
			if err := ca.RevokeManagerCerts(tx, n); err != nil {
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
	s.store.View(func(tx *raftstore.Tx) { out, _ = tx.Nodes().Get(target.GetId()) })
	if out == nil {
		return nil, status.Errorf(codes.NotFound, "node %s was removed meanwhile", target.GetId())
	}
	s.decorate(ctx, []*pb.Node{out})
	return &pb.UpdateNodeResponse{Node: out}, nil
}

// RemoveNode deletes a node from the cluster for good.
func (s *Server) RemoveNode(ctx context.Context, req *pb.RemoveNodeRequest) (*pb.RemoveNodeResponse, error) {
	var target *pb.Node
	var err error
	s.store.View(func(tx *raftstore.Tx) { target, err = resolveNode(tx, req.GetRef()) })
	if err != nil {
		return nil, err
	}
	if target.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER && !req.GetForce() {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s is a manager; demote it first (`shoal node demote %s`) or remove it with --force", target.GetId(), target.GetId())
	}
	if target.GetRole() != pb.NodeRole_NODE_ROLE_MANAGER && !req.GetForce() && target.GetStatus().GetState() == pb.NodeState_NODE_STATE_READY {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s is not down; stop it first or remove it with --force", target.GetId())
	}
	if err := s.members.Remove(ctx, target.GetId(), req.GetForce()); err != nil {
		return nil, err
	}
	return &pb.RemoveNodeResponse{}, nil
}

// GetCluster reports the cluster and every manager's Raft state. It runs
// on the manager that receives it, from its local replica, so it works
// without a leader too.
func (s *Server) GetCluster(ctx context.Context, _ *pb.GetClusterRequest) (*pb.GetClusterResponse, error) {
	resp := &pb.GetClusterResponse{}
	var managers []*pb.Node
	s.store.View(func(tx *raftstore.Tx) {
		resp.Cluster = ca.Public(tx.Cluster())
		for _, n := range tx.Nodes().List() {
			if n.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER {
				managers = append(managers, n)
			}
		}
	})
	if resp.Cluster == nil {
		return nil, status.Error(codes.Unavailable, "this manager has not received the cluster state yet; retry")
	}
	leaderID, leaderAddr := s.raft.Leader()
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
			st, err := s.members.RaftStatusOf(ctx, n)
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
func (s *Server) RotateJoinToken(ctx context.Context, req *pb.RotateJoinTokenRequest) (*pb.RotateJoinTokenResponse, error) {
	return s.ca.RotateJoinToken(ctx, req.GetRole())
}

// IssueClientCertificate issues an admin client certificate.
func (s *Server) IssueClientCertificate(ctx context.Context, req *pb.IssueClientCertificateRequest) (*pb.IssueClientCertificateResponse, error) {
	return s.ca.IssueClient(ctx, req.GetCsr(), authz.Caller(ctx))
}

// RotateRootCA starts a root CA rotation: a new root, cross-signed by the
// old one, signs from now on; the old root is dropped once every node has
// renewed its certificate.
func (s *Server) RotateRootCA(ctx context.Context, _ *pb.RotateRootCARequest) (*pb.RotateRootCAResponse, error) {
	return s.ca.RotateRoot(ctx)
}

// RotateGossipKey makes a new gossip key the primary one; nodes keep the
// previous key too until the next rotation.
func (s *Server) RotateGossipKey(ctx context.Context, _ *pb.RotateGossipKeyRequest) (*pb.RotateGossipKeyResponse, error) {
	return s.ca.RotateGossipKey(ctx)
}

// decorate fills in what only the leader knows right now: which manager
// leads and which answer.
func (s *Server) decorate(ctx context.Context, nodes []*pb.Node) {
	leaderID, _ := s.raft.Leader()
	for _, n := range nodes {
		if n.GetRole() == pb.NodeRole_NODE_ROLE_WORKER {
			if t, ok := s.beats.LastBeat(n.GetId()); ok && n.Status != nil {
				n.Status.LastHeartbeat = t.UnixNano()
			}
		}
		if n.GetRole() != pb.NodeRole_NODE_ROLE_MANAGER || n.ManagerStatus == nil {
			continue
		}
		r := s.members.Reachability(ctx, n)
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
