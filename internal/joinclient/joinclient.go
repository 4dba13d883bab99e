// Package joinclient is how a node talks to the cluster about its own
// membership: which role a token grants, the join itself (a certificate
// request traded for a certificate), and certificate renewal. Managers and
// workers both use it.
package joinclient

import (
	"context"
	"fmt"
	"time"

	"github.com/shoal-cluster/shoal/internal/jointoken"
	"github.com/shoal-cluster/shoal/internal/rpc"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// timeout bounds each call; Unavailable answers are retried within it.
const timeout = 20 * time.Second

// TokenCredentials are the TLS credentials of a node joining with token:
// it trusts only the root whose digest the token carries.
func TokenCredentials(token string) (*rpc.Credentials, error) {
	digest, _, err := jointoken.Parse(token)
	if err != nil {
		return nil, err
	}
	return rpc.PinnedCredentials(digest), nil
}

// CheckToken asks the manager at remote which role a token grants, after
// checking the manager holds a certificate of the cluster the token pins.
func CheckToken(ctx context.Context, remote, token string) (*pb.CheckTokenResponse, error) {
	creds, err := TokenCredentials(token)
	if err != nil {
		return nil, err
	}
	var resp *pb.CheckTokenResponse
	err = call(ctx, remote, creds, func(ctx context.Context, c pb.MembershipClient) (err error) {
		resp, err = c.CheckToken(ctx, &pb.CheckTokenRequest{Token: token})
		return err
	})
	return resp, err
}

// Join asks the cluster, through the manager at remote, to admit a node.
// A new node passes TokenCredentials; a promoted one its own.
func Join(ctx context.Context, remote string, creds *rpc.Credentials, req *pb.JoinRequest) (*pb.JoinResponse, error) {
	var resp *pb.JoinResponse
	err := call(ctx, remote, creds, func(ctx context.Context, c pb.MembershipClient) (err error) {
		resp, err = c.Join(ctx, req)
		return err
	})
	return resp, err
}

// Renew asks the cluster for a new certificate for the node creds speak
// for, signing the PEM certificate request csr.
func Renew(ctx context.Context, remote string, creds *rpc.Credentials, csr []byte) (*pb.RenewCertificateResponse, error) {
	var resp *pb.RenewCertificateResponse
	err := call(ctx, remote, creds, func(ctx context.Context, c pb.MembershipClient) (err error) {
		resp, err = c.RenewCertificate(ctx, &pb.RenewCertificateRequest{Csr: csr})
		return err
	})
	return resp, err
}

func call(ctx context.Context, remote string, creds *rpc.Credentials, fn func(context.Context, pb.MembershipClient) error) error {
	conn, err := rpc.Dial(remote, creds, grpc.WithUnaryInterceptor(rpc.RetryUnavailable()))
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
	if rpc.IsTLSRefusal(err) {
		return fmt.Errorf("join %s: the TLS handshake failed: %s", remote, rpc.DescribeTLSRefusal(err))
	}
	if st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded {
		return fmt.Errorf("join %s: no Shoal manager answered (%s); check the address and that a manager runs there", remote, st.Message())
	}
	return fmt.Errorf("join %s: %s", remote, st.Message())
}
