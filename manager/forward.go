package manager

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

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
	if localMethods[info.FullMethod] {
		resp, err := handler(ctx, req)
		return resp, toStatus(err)
	}
	if m.store.IsLeader() {
		return m.answerAsLeader(ctx, req, handler)
	}
	if rpc.Forwarded(ctx) {
		return nil, status.Error(codes.Unavailable, "this manager is not the leader (the leader changed while the call was forwarded); retry")
	}
	resp, err := m.forwardToLeader(ctx, info.FullMethod, req)
	if errors.Is(err, errBecameLeader) {
		return m.answerAsLeader(ctx, req, handler)
	}
	return resp, err
}

// answerAsLeader serves a call on the leader. A client acts on the answer,
// so one that commits nothing must not come from a deposed leader's
// out-of-date state (a leader frozen for a while, resumed, and not yet
// told of its successor): an Update that changes nothing confirms the
// leadership itself, and a refusal read from the state (not found, already
// exists, a version conflict, a precondition) is confirmed here before it
// is returned.
func (m *Manager) answerAsLeader(ctx context.Context, req any, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(raftstore.WithConfirmedAnswers(ctx), req)
	err = toStatus(err)
	switch status.Code(err) {
	case codes.NotFound, codes.AlreadyExists, codes.Aborted, codes.FailedPrecondition, codes.InvalidArgument, codes.OutOfRange:
		if verr := m.store.VerifyLeader(ctx); verr != nil {
			return nil, toStatus(verr)
		}
	}
	return resp, err
}

// errBecameLeader says this manager won an election while it waited to
// forward a call: it serves the call itself.
var errBecameLeader = errors.New("this manager became the leader")

// errLeaderChanged ends a forwarded call whose target stopped being the
// leader.
var errLeaderChanged = errors.New("the leader changed")

// leaderPoll is how often a forwarded call in flight checks that its
// target still leads.
const leaderPoll = 20 * time.Millisecond

// maxForwards bounds how often one call follows the leader around.
const maxForwards = 8

// forwardToLeader replays a call on the leader and returns its answer. It
// follows the leader rather than waiting on one address: while there is
// no leader it waits for one (up to leaderWait), and a call in flight to a
// manager that stops leading (it died, went silent or lost an election) is
// sent again to the new leader with the same request ID, so a write is
// applied at most once. A write through a survivor thus takes the
// election plus a round trip, whatever became of the old leader.
func (m *Manager) forwardToLeader(ctx context.Context, method string, req any) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	md = md.Copy()
	if len(md.Get(rpc.RequestIDKey)) == 0 {
		md.Set(rpc.RequestIDKey, rpc.NewRequestID()) // so a resend is deduplicated
	}
	md.Set(rpc.ForwardedKey, m.id.NodeID)
	md.Set(callerHeader, forwardedCaller(ctx))
	outCtx := metadata.NewOutgoingContext(ctx, md)
	var last error
	for range maxForwards {
		leaderID, addr, err := m.awaitLeader(ctx)
		if err != nil {
			return nil, err
		}
		conn, err := m.conns.get(addr)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "reach the leader at %s: %v", addr, err)
		}
		out, err := newResponse(method)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		err = m.invokeWhileLeading(outCtx, conn, leaderID, method, req, out)
		if err == nil {
			return out, nil
		}
		if ctx.Err() != nil {
			return nil, toStatus(ctx.Err())
		}
		if !errors.Is(err, errLeaderChanged) {
			if status.Code(err) != codes.Unavailable {
				return nil, err
			}
			// The target stepped down, restarted or cannot be reached:
			// resend once this manager knows of another leader (or the
			// same one answers again), never in a tight loop.
			last = err
			m.waitLeaderChange(ctx, leaderID, 10*leaderPoll)
			continue
		}
		last = err
	}
	return nil, status.Errorf(codes.Unavailable, "the leader kept changing while the call was forwarded (%v); retry", last)
}

// awaitLeader returns the leader's Raft ID and API address, waiting up to
// leaderWait while an election runs. errBecameLeader means this manager
// leads now.
func (m *Manager) awaitLeader(ctx context.Context) (string, string, error) {
	ctx, cancel := context.WithTimeout(ctx, m.leaderWait())
	defer cancel()
	tick := time.NewTicker(leaderPoll)
	defer tick.Stop()
	for {
		if m.store.IsLeader() {
			return "", "", errBecameLeader
		}
		id, addr, err := m.leader()
		if err == nil && addr != m.cfg.APIAddr() {
			return id, addr, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = raftstore.ErrNoLeader // this manager's own barrier did not finish
			}
			return "", "", toStatus(err)
		case <-tick.C:
		}
	}
}

// leaderWait is how long a follower waits for an election before it tells
// the client there is no leader: several election rounds.
func (m *Manager) leaderWait() time.Duration {
	return max(10*m.cfg.Timing.ElectionTimeout, 2*time.Second)
}

// invokeWhileLeading makes the call on the manager leaderID names and
// abandons it, with errLeaderChanged, as soon as this manager learns of
// another leader (or of none).
func (m *Manager) invokeWhileLeading(ctx context.Context, conn *grpc.ClientConn, leaderID, method string, req, out any) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan error, 1)
	go func() { done <- conn.Invoke(ctx, method, req, out) }()
	tick := time.NewTicker(leaderPoll)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if errors.Is(context.Cause(ctx), errLeaderChanged) {
				return errLeaderChanged
			}
			if s, ok := status.FromError(err); ok && s.Code() == codes.Unavailable && !strings.Contains(s.Message(), "leader") {
				return status.Errorf(codes.Unavailable, "the leader did not answer: %s", s.Message())
			}
			return err
		case <-tick.C:
			if id, _ := m.store.Leader(); id != leaderID {
				cancel(errLeaderChanged)
			}
		}
	}
}

// waitLeaderChange waits until the leader is no longer leaderID, or for at
// most d.
func (m *Manager) waitLeaderChange(ctx context.Context, leaderID string, d time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	tick := time.NewTicker(leaderPoll)
	defer tick.Stop()
	for {
		if id, _ := m.store.Leader(); id != leaderID {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// leaderAPIAddr finds the leader's API address from its Raft ID.
func (m *Manager) leaderAPIAddr() (string, error) {
	_, addr, err := m.leader()
	return addr, err
}

// leader returns the leader's Raft ID and API address.
func (m *Manager) leader() (string, string, error) {
	leaderID, _ := m.store.Leader()
	if leaderID == "" {
		return "", "", raftstore.ErrNoLeader
	}
	var addr string
	m.store.View(func(tx *raftstore.Tx) {
		if n := nodeByRaftID(tx, leaderID); n != nil {
			addr = n.GetManagerStatus().GetApiAddr()
		}
	})
	if addr == "" {
		return "", "", fmt.Errorf("leader %s is not yet known to this manager: %w", leaderID, raftstore.ErrNoLeader)
	}
	return leaderID, addr, nil
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
