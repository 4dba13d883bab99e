package leaderroute

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// InProcess is a client connection to a gRPC service implemented in this
// process, for other front doors of the manager (the Docker Engine API):
// each unary call runs through the Router as a call from the network
// would, so a leader-only call made on a follower is forwarded to the
// leader (following it when it changes) and store errors become gRPC
// codes. The caller must be in the context (authz.WithCaller): the front
// door authenticates its own clients. Streaming calls are not offered.
type InProcess struct {
	router  *Router
	srv     any
	methods map[string]grpc.MethodDesc
}

// InProcess returns a client connection to srv, which implements desc.
func (r *Router) InProcess(desc *grpc.ServiceDesc, srv any) *InProcess {
	m := map[string]grpc.MethodDesc{}
	for _, md := range desc.Methods {
		m["/"+desc.ServiceName+"/"+md.MethodName] = md
	}
	return &InProcess{router: r, srv: srv, methods: m}
}

// Invoke runs a unary method; reply receives a copy of the answer, so the
// caller never shares memory with the store.
func (c *InProcess) Invoke(ctx context.Context, method string, args, reply any, _ ...grpc.CallOption) error {
	md, ok := c.methods[method]
	if !ok {
		return status.Errorf(codes.Unimplemented, "%s is not served in process", method)
	}
	in, ok := args.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "%s: the request is not a protobuf message", method)
	}
	out, ok := reply.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "%s: the reply is not a protobuf message", method)
	}
	dec := func(v any) error {
		m, ok := v.(proto.Message)
		if !ok {
			return fmt.Errorf("%s: decode into %T", method, v)
		}
		proto.Merge(m, in)
		return nil
	}
	resp, err := md.Handler(c.srv, ctx, dec, c.router.Unary)
	if err != nil {
		return err
	}
	if m, ok := resp.(proto.Message); ok && m != nil {
		proto.Merge(out, m)
	}
	return nil
}

// NewStream refuses: front doors call streaming methods' Go forms.
func (c *InProcess) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Error(codes.Unimplemented, "streaming calls are not served in process")
}
