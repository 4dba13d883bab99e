// Package joinclient is how a new node talks to the cluster before it is
// a member: which role a token grants, and the join itself. Managers and
// workers both use it.
package joinclient

import (
	"context"
	"fmt"
	"time"

	"github.com/shoal-cluster/shoal/internal/rpc"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// timeout bounds each call; Unavailable answers are retried within it.
const timeout = 20 * time.Second

// CheckToken asks the manager at remote which role a token grants.
func CheckToken(ctx context.Context, remote, token string) (*pb.CheckTokenResponse, error) {
	var resp *pb.CheckTokenResponse
	err := call(ctx, remote, func(ctx context.Context, c pb.MembershipClient) (err error) {
		resp, err = c.CheckToken(ctx, &pb.CheckTokenRequest{Token: token})
		return err
	})
	return resp, err
}

// Join asks the cluster, through the manager at remote, to admit a node.
func Join(ctx context.Context, remote string, req *pb.JoinRequest) (*pb.JoinResponse, error) {
	var resp *pb.JoinResponse
	err := call(ctx, remote, func(ctx context.Context, c pb.MembershipClient) (err error) {
		resp, err = c.Join(ctx, req)
		return err
	})
	return resp, err
}

func call(ctx context.Context, remote string, fn func(context.Context, pb.MembershipClient) error) error {
	conn, err := rpc.Dial(remote, grpc.WithUnaryInterceptor(rpc.RetryUnavailable()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := fn(ctx, pb.NewMembershipClient(conn)); err != nil {
		return explain(remote, err)
	}
	return nil
}

// explain turns a failed call into one line that says what to do.
func explain(remote string, err error) error {
	st := status.Convert(err)
	if st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded {
		return fmt.Errorf("join %s: no Shoal manager answered (%s); check the address and that a manager runs there", remote, st.Message())
	}
	return fmt.Errorf("join %s: %s", remote, st.Message())
}
