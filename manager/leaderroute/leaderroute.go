// Package leaderroute runs every leader-only call on the leader: a gRPC
// interceptor that serves the call on the leader (confirming a refusal
// read from its state before answering it) and, on a follower, forwards it
// to the leader, following the leader when it changes and sending the same
// request ID again, so a write applies at most once. It also keeps the
// manager's pool of client connections to other nodes and maps store
// errors to gRPC status codes.
package leaderroute

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/shoal-cluster/shoal/internal/rpc"
	"github.com/shoal-cluster/shoal/manager/authz"
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

// Raft is what the router needs of this manager's Raft store.
type Raft interface {
	// IsLeader reports whether this manager leads (and may write).
	IsLeader() bool
	// Leader is the leader's Raft ID and address as this manager knows it.
	Leader() (id, addr string)
	// VerifyLeader confirms with a quorum that this manager still leads.
	VerifyLeader(ctx context.Context) error
}

// Locator finds the leader's API address.
type Locator interface {
	// LeaderAPI returns the leader's Raft ID and API address, or an error
	// wrapping raftstore.ErrNoLeader while there is none (or it is not
	// known yet).
	LeaderAPI() (raftID, apiAddr string, err error)
}

// Dialer makes client connections to other managers.
type Dialer interface {
	Manager(addr string) (*grpc.ClientConn, error)
}

// Config is what a Router needs.
type Config struct {
	Raft    Raft
	Leaders Locator
	Dialer  Dialer
	// NodeID and APIAddr are this manager's: a forwarded call names its
	// forwarder, and a manager never forwards to itself.
	NodeID  string
	APIAddr string
	// ElectionTimeout is Raft's; a follower waits several election rounds
	// for a leader before it tells the client there is none.
	ElectionTimeout time.Duration
}

// Router is the interceptor that runs leader-only calls on the leader.
type Router struct {
	cfg Config
}

// New returns a Router.
func New(cfg Config) *Router { return &Router{cfg: cfg} }

// Unary tags the call with its request ID, forwards leader-only calls from
// a follower to the leader, and turns store errors into gRPC status codes.
// It runs after authorisation: the caller it forwards for is the one
// authz left in the context.
func (r *Router) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	id := rpc.RequestIDFromIncoming(ctx)
	if id == "" {
		// A call without one (in process, from the Docker Engine API or
		// the dashboard) gets its ID here, so that every way it may run
		// (forwarded, resent to a new leader, or served here once this
		// manager wins an election meanwhile) carries the same one, and
		// a write is applied at most once.
		id = rpc.NewRequestID()
		md, _ := metadata.FromIncomingContext(ctx)
		md = md.Copy()
		md.Set(rpc.RequestIDKey, id)
		ctx = metadata.NewIncomingContext(ctx, md)
	}
	ctx = raftstore.WithRequestID(ctx, id)
	if localMethods[info.FullMethod] {
		resp, err := handler(ctx, req)
		return resp, ToStatus(err)
	}
	if r.cfg.Raft.IsLeader() {
		return r.answerAsLeader(ctx, req, handler)
	}
	if rpc.Forwarded(ctx) {
		return nil, status.Error(codes.Unavailable, "this manager is not the leader (the leader changed while the call was forwarded); retry")
	}
	resp, err := r.forwardToLeader(ctx, info.FullMethod, req)
	if errors.Is(err, errBecameLeader) {
		return r.answerAsLeader(ctx, req, handler)
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
func (r *Router) answerAsLeader(ctx context.Context, req any, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(raftstore.WithConfirmedAnswers(ctx), req)
	err = ToStatus(err)
	switch status.Code(err) {
	case codes.NotFound, codes.AlreadyExists, codes.Aborted, codes.FailedPrecondition, codes.InvalidArgument, codes.OutOfRange:
		if verr := r.cfg.Raft.VerifyLeader(ctx); verr != nil {
			return nil, ToStatus(verr)
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
func (r *Router) forwardToLeader(ctx context.Context, method string, req any) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	md = md.Copy()
	if len(md.Get(rpc.RequestIDKey)) == 0 {
		md.Set(rpc.RequestIDKey, rpc.NewRequestID()) // so a resend is deduplicated
	}
	md.Set(rpc.ForwardedKey, r.cfg.NodeID)
	md.Set(authz.CallerHeader, authz.ForwardedCaller(ctx))
	outCtx := metadata.NewOutgoingContext(ctx, md)
	var last error
	for range maxForwards {
		leaderID, addr, err := r.awaitLeader(ctx)
		if err != nil {
			return nil, err
		}
		conn, err := r.cfg.Dialer.Manager(addr)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "reach the leader at %s: %v", addr, err)
		}
		out, err := newResponse(method)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		err = r.invokeWhileLeading(outCtx, conn, leaderID, method, req, out)
		if err == nil {
			return out, nil
		}
		if ctx.Err() != nil {
			return nil, ToStatus(ctx.Err())
		}
		if !errors.Is(err, errLeaderChanged) {
			if status.Code(err) != codes.Unavailable {
				return nil, err
			}
			// The target stepped down, restarted or cannot be reached:
			// resend once this manager knows of another leader (or the
			// same one answers again), never in a tight loop.
			last = err
			r.waitLeaderChange(ctx, leaderID, 10*leaderPoll)
			continue
		}
		last = err
	}
	return nil, status.Errorf(codes.Unavailable, "the leader kept changing while the call was forwarded (%v); retry", last)
}

// awaitLeader returns the leader's Raft ID and API address, waiting up to
// leaderWait while an election runs. errBecameLeader means this manager
// leads now.
func (r *Router) awaitLeader(ctx context.Context) (string, string, error) {
	ctx, cancel := context.WithTimeout(ctx, r.leaderWait())
	defer cancel()
	tick := time.NewTicker(leaderPoll)
	defer tick.Stop()
	for {
		if r.cfg.Raft.IsLeader() {
			return "", "", errBecameLeader
		}
		id, addr, err := r.cfg.Leaders.LeaderAPI()
		if err == nil && addr != r.cfg.APIAddr {
			return id, addr, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = raftstore.ErrNoLeader // this manager's own barrier did not finish
			}
			return "", "", ToStatus(err)
		case <-tick.C:
		}
	}
}

// leaderWait is how long a follower waits for an election before it tells
// the client there is no leader: several election rounds.
func (r *Router) leaderWait() time.Duration {
	return max(10*r.cfg.ElectionTimeout, 2*time.Second)
}

// invokeWhileLeading makes the call on the manager leaderID names and
// abandons it, with errLeaderChanged, as soon as this manager learns of
// another leader (or of none).
func (r *Router) invokeWhileLeading(ctx context.Context, conn *grpc.ClientConn, leaderID, method string, req, out any) error {
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
			if id, _ := r.cfg.Raft.Leader(); id != leaderID {
				cancel(errLeaderChanged)
			}
		}
	}
}

// waitLeaderChange waits until the leader is no longer leaderID, or for at
// most d.
func (r *Router) waitLeaderChange(ctx context.Context, leaderID string, d time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	tick := time.NewTicker(leaderPoll)
	defer tick.Stop()
	for {
		if id, _ := r.cfg.Raft.Leader(); id != leaderID {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
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

// ToStatus maps store errors to gRPC codes; other errors pass unchanged.
func ToStatus(err error) error {
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
