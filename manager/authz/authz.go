// Package authz decides who may call which manager method: the gRPC
// interceptors that authorise every call by the caller's certificate (or,
// on a call another manager forwarded, by the caller it names), and the
// caller's identity that handlers read from the call's context. See the
// README's Trust model.
package authz

import (
	"context"
	"log/slog"
	"slices"
	"strings"

	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/internal/rpc"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// access is who may call a method.
type access int

const (
	// anyone, even a caller without a certificate: joining.
	anyone access = iota + 1
	// anyNode is any node, for itself (the request's node ID, if it has
	// one, must be its own); managers and admins may act for any node.
	anyNode
	// ownWorker is a worker acting for itself; managers forward for them.
	ownWorker
	// managers only.
	managers
	// admins and managers: the control API.
	admins
)

// methodAccess lists every method the manager serves; a method missing
// here is refused to everyone.
var methodAccess = map[string]access{
	pb.Membership_Join_FullMethodName:             anyone,
	pb.Membership_CheckToken_FullMethodName:       anyone,
	pb.Membership_Leave_FullMethodName:            anyNode,
	pb.Membership_CheckMember_FullMethodName:      anyNode,
	pb.Membership_RenewCertificate_FullMethodName: anyNode,
	pb.Membership_RaftStatus_FullMethodName:       admins,
	pb.Dispatcher_Session_FullMethodName:          ownWorker,
	pb.Dispatcher_Heartbeat_FullMethodName:        ownWorker,
	pb.Dispatcher_UpdateTaskStatus_FullMethodName: ownWorker,
}

func init() {
	for _, m := range pb.Control_ServiceDesc.Methods {
		methodAccess["/"+pb.Control_ServiceDesc.ServiceName+"/"+m.MethodName] = admins
	}
	for _, s := range pb.Control_ServiceDesc.Streams {
		methodAccess["/"+pb.Control_ServiceDesc.ServiceName+"/"+s.StreamName] = admins
	}
}

// callerKey is the context key of the caller's identity.
type callerKey struct{}

// Caller is the identity of the caller of an authorised call (zero for
// one without a certificate).
func Caller(ctx context.Context) pki.Identity {
	id, _ := ctx.Value(callerKey{}).(pki.Identity)
	return id
}

// WithCaller returns ctx carrying id as the caller's identity, as the
// interceptors leave it for handlers (and tests, and front doors that
// authenticate callers their own way).
func WithCaller(ctx context.Context, id pki.Identity) context.Context {
	return context.WithValue(ctx, callerKey{}, id)
}

// CallerHeader carries, on a call a follower forwards, the identity of
// the original caller ("role/id", or "none"): the leader trusts it only
// from a manager.
const CallerHeader = "shoal-caller"

// ForwardedCaller is the CallerHeader value for the caller of ctx.
func ForwardedCaller(ctx context.Context) string {
	id := Caller(ctx)
	if id.ID == "" {
		return "none"
	}
	return id.Role + "/" + id.ID
}

// Standing is a certificate's identity as the store sees it now: a
// demoted manager's counts as a worker's; removed says the node is on
// the cluster's deny list.
func Standing(tx *raftstore.Tx, id pki.Identity) (pki.Identity, bool) {
	if id.Role == pki.RoleManager {
		if n, ok := tx.Nodes().Get(id.ID); ok && n.GetRole() == pb.NodeRole_NODE_ROLE_WORKER {
			id.Role = pki.RoleWorker
		}
	}
	return id, slices.Contains(tx.Cluster().GetRemovedNodes(), id.ID)
}

// Authorizer authorises the calls a manager serves, from the cluster
// state: who was removed, who was demoted.
type Authorizer struct {
	store raftstore.StateStore
	log   *slog.Logger
}

// New returns an Authorizer reading the store's local state.
func New(store raftstore.StateStore, log *slog.Logger) *Authorizer {
	return &Authorizer{store: store, log: log}
}

// identify finds who is calling: the verified certificate, or, on a call a
// manager forwarded, the original caller it names. A manager certificate
// counts as a worker's once the store says the node was demoted, and only
// a manager that still is one, and was not removed, may name a caller.
func (a *Authorizer) identify(ctx context.Context) (pki.Identity, bool) {
	id, ok := rpc.PeerIdentity(ctx)
	if !ok {
		return pki.Identity{}, false
	}
	if id.Role != pki.RoleManager {
		return id, true
	}
	var removed bool
	a.store.View(func(tx *raftstore.Tx) { id, removed = Standing(tx, id) })
	if id.Role != pki.RoleManager || removed {
		return id, true // authorize refuses a removed node
	}
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(CallerHeader)
	if len(v) == 0 {
		return id, true
	}
	role, nodeID, ok := strings.Cut(v[0], "/")
	if !ok {
		return pki.Identity{}, false // forwarded for a caller without a certificate
	}
	fwd := pki.Identity{ID: nodeID, Role: role, ClusterID: id.ClusterID}
	if fwd.Role == pki.RoleManager {
		a.store.View(func(tx *raftstore.Tx) { fwd, _ = Standing(tx, fwd) }) // authorize checks removal
	}
	return fwd, true
}

// authorize decides whether the caller may call method; req is the
// request, when known, for methods that act for one node.
func (a *Authorizer) authorize(ctx context.Context, method string, req any) (context.Context, error) {
	rule, known := methodAccess[method]
	if !known {
		return ctx, status.Errorf(codes.PermissionDenied, "%s is not a Shoal manager method", method)
	}
	id, hasCert := a.identify(ctx)
	ctx = WithCaller(ctx, id)
	if rule == anyone {
		return ctx, nil
	}
	if !hasCert {
		return ctx, status.Error(codes.Unauthenticated, "this call needs a cluster certificate: use the admin client config `shoal init` wrote in the data dir, or one from `shoal cluster client-config`")
	}
	if id.IsNode() && method != pb.Membership_CheckMember_FullMethodName {
		var removed bool
		a.store.View(func(tx *raftstore.Tx) { removed = slices.Contains(tx.Cluster().GetRemovedNodes(), id.ID) })
		if removed {
			return ctx, status.Errorf(codes.PermissionDenied, "node %s was removed from the cluster: its certificate is revoked; delete its data dir and join again with a token", id.ID)
		}
	}
	switch rule {
	case managers:
		if id.Role != pki.RoleManager {
			return ctx, status.Errorf(codes.PermissionDenied, "only managers may call %s, not %s", shortMethod(method), id)
		}
	case admins:
		if id.Role != pki.RoleManager && id.Role != pki.RoleAdmin {
			return ctx, status.Errorf(codes.PermissionDenied, "%s may not use the control API (%s): only admin clients and managers may", id, shortMethod(method))
		}
	case anyNode, ownWorker:
		if rule == ownWorker && id.Role != pki.RoleWorker && id.Role != pki.RoleManager {
			return ctx, status.Errorf(codes.PermissionDenied, "only workers may call %s, not %s", shortMethod(method), id)
		}
		if id.Role == pki.RoleWorker {
			if r, ok := req.(interface{ GetNodeId() string }); ok && r.GetNodeId() != "" && r.GetNodeId() != id.ID {
				return ctx, status.Errorf(codes.PermissionDenied, "node %s may not act as node %s", id.ID, r.GetNodeId())
			}
		}
	}
	return ctx, nil
}

func shortMethod(full string) string { return full[strings.LastIndex(full, "/")+1:] }

// Unary authorises every unary call, logging refusals once.
func (a *Authorizer) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := a.authorize(ctx, info.FullMethod, req)
	if err != nil {
		a.logRefusal(ctx, info.FullMethod, err)
		return nil, err
	}
	return handler(ctx, req)
}

// Stream authorises every streaming call: the caller when the stream
// opens, and its request (a node acting for itself) when it is received.
func (a *Authorizer) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := a.authorize(ss.Context(), info.FullMethod, nil)
	if err != nil {
		a.logRefusal(ctx, info.FullMethod, err)
		return err
	}
	return handler(srv, &authStream{ServerStream: ss, ctx: ctx, a: a, method: info.FullMethod})
}

type authStream struct {
	grpc.ServerStream
	ctx    context.Context
	a      *Authorizer
	method string
}

func (s *authStream) Context() context.Context { return s.ctx }

func (s *authStream) RecvMsg(msg any) error {
	if err := s.ServerStream.RecvMsg(msg); err != nil {
		return err
	}
	if _, err := s.a.authorize(s.ServerStream.Context(), s.method, msg); err != nil {
		s.a.logRefusal(s.ctx, s.method, err)
		return err
	}
	return nil
}

// logRefusal logs a refused call once, on the server.
func (a *Authorizer) logRefusal(ctx context.Context, method string, err error) {
	caller := "a client without a certificate"
	if id := Caller(ctx); id.ID != "" {
		caller = id.String()
	}
	a.log.Warn("refused a call", "method", shortMethod(method), "caller", caller, "remote", rpc.PeerAddr(ctx), "err", status.Convert(err).Message())
}
