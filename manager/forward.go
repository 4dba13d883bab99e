package manager

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/internal/rpc"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// localMethods are served by whichever manager receives them; every other
// method runs on the leader, forwarded there by followers.
var localMethods = map[string]bool{
	pb.Control_GetCluster_FullMethodName:     true,
	pb.Membership_RaftStatus_FullMethodName:  true,
	pb.Membership_CheckMember_FullMethodName: true,
}

// unaryInterceptor tags the call with its request ID, forwards leader-only
// calls from a follower to the leader, and turns store errors into gRPC
// status codes.
func (m *Manager) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if id := rpc.RequestIDFromIncoming(ctx); id != "" {
		ctx = raftstore.WithRequestID(ctx, id)
	}
	if localMethods[info.FullMethod] || m.store.IsLeader() {
		resp, err := handler(ctx, req)
		return resp, toStatus(err)
	}
	if rpc.Forwarded(ctx) {
		return nil, status.Error(codes.Unavailable, "this manager is not the leader (the leader changed while the call was forwarded); retry")
	}
	resp, err := m.forwardToLeader(ctx, info.FullMethod, req)
	return resp, err
}

// forwardToLeader replays a call on the leader and returns its answer.
func (m *Manager) forwardToLeader(ctx context.Context, method string, req any) (any, error) {
	addr, err := m.leaderAPIAddr()
	if err != nil {
		return nil, toStatus(err)
	}
	conn, err := m.conns.get(addr)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "reach the leader at %s: %v", addr, err)
	}
	out, err := newResponse(method)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	md, _ := metadata.FromIncomingContext(ctx)
	md = md.Copy()
	md.Set(rpc.ForwardedKey, m.id.NodeID)
	md.Set(callerHeader, forwardedCaller(ctx))
	outCtx := metadata.NewOutgoingContext(ctx, md)
	if err := conn.Invoke(outCtx, method, req, out); err != nil {
		if s, ok := status.FromError(err); ok && s.Code() == codes.Unavailable && !strings.Contains(s.Message(), "leader") {
			return nil, status.Errorf(codes.Unavailable, "the leader at %s did not answer: %s", addr, s.Message())
		}
		return nil, err
	}
	return out, nil
}

// leaderAPIAddr finds the leader's API address from its Raft ID.
func (m *Manager) leaderAPIAddr() (string, error) {
	leaderID, _ := m.store.Leader()
	if leaderID == "" {
		return "", raftstore.ErrNoLeader
	}
	var addr string
	m.store.View(func(tx *raftstore.Tx) {
		if n := nodeByRaftID(tx, leaderID); n != nil {
			addr = n.GetManagerStatus().GetApiAddr()
		}
	})
	if addr == "" {
		return "", fmt.Errorf("leader %s is not yet known to this manager: %w", leaderID, raftstore.ErrNoLeader)
	}
	return addr, nil
}

// nodeByRaftID finds the manager node with a Raft ID.
func nodeByRaftID(tx *raftstore.Tx, raftID string) *pb.Node {
	for _, n := range tx.Nodes().List() {
		if n.GetManagerStatus().GetRaftId() == raftID {
			return n
		}
	}
	return nil
}

// newResponse makes an empty response message for a full method name,
// looked up in the protobuf registry.
func newResponse(fullMethod string) (proto.Message, error) {
	name := strings.TrimPrefix(fullMethod, "/")
	svc, method, ok := strings.Cut(name, "/")
	if !ok {
		return nil, fmt.Errorf("bad method name %q", fullMethod)
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	if err != nil {
		return nil, fmt.Errorf("method %s: %w", fullMethod, err)
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is not a service", svc)
	}
	md := sd.Methods().ByName(protoreflect.Name(method))
	if md == nil {
		return nil, fmt.Errorf("no method %s", fullMethod)
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		return nil, fmt.Errorf("method %s: %w", fullMethod, err)
	}
	return mt.New().Interface(), nil
}

// toStatus maps store errors to gRPC codes; other errors pass unchanged.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Unknown
	switch {
	case errors.Is(err, raftstore.ErrNotLeader), errors.Is(err, raftstore.ErrNoLeader),
		errors.Is(err, raftstore.ErrOutcomeUnknown), errors.Is(err, raftstore.ErrClosed):
		code = codes.Unavailable
	case errors.Is(err, raftstore.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, raftstore.ErrExists), errors.Is(err, raftstore.ErrNameConflict):
		code = codes.AlreadyExists
	case errors.Is(err, raftstore.ErrVersionConflict):
		code = codes.Aborted
	case errors.Is(err, raftstore.ErrTooLarge):
		code = codes.ResourceExhausted
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return status.Error(code, err.Error())
}

// connPool keeps one client connection per node address, made with this
// manager's certificate.
type connPool struct {
	creds  *rpc.Credentials
	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	closed bool
}

func newConnPool(creds *rpc.Credentials) *connPool {
	return &connPool{creds: creds, conns: map[string]*grpc.ClientConn{}}
}

// get is a connection to the manager at addr.
func (p *connPool) get(addr string) (*grpc.ClientConn, error) { return p.dial(addr, pki.RoleManager) }

// getWorker is a connection to the worker at addr.
func (p *connPool) getWorker(addr string) (*grpc.ClientConn, error) {
	return p.dial(addr, pki.RoleWorker)
}

func (p *connPool) dial(addr, role string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	// A handler or loop still running while the manager stops must not
	// open a connection that nobody would close.
	if p.closed {
		return nil, status.Error(codes.Unavailable, "this manager is stopping")
	}
	key := role + "@" + addr
	if c, ok := p.conns[key]; ok {
		return c, nil
	}
	c, err := rpc.DialRole(addr, p.creds, role)
	if err != nil {
		return nil, err
	}
	p.conns[key] = c
	return c, nil
}

func (p *connPool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for addr, c := range p.conns {
		c.Close()
		delete(p.conns, addr)
	}
}
