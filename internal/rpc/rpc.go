// Package rpc is the one place Shoal's gRPC servers and clients get their
// transport credentials, keepalive settings and request-ID handling, so
// that mutual TLS can be switched on without touching any handler.
package rpc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/shoal-cluster/shoal/internal/pki"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Metadata keys Shoal sets on calls.
const (
	// RequestIDKey carries the caller's idempotency key: a call retried with
	// the same ID is committed at most once.
	RequestIDKey = "shoal-request-id"
	// ForwardedKey marks a call a follower forwarded to the leader, so it is
	// never forwarded twice.
	ForwardedKey = "shoal-forwarded"
)

// keepalive: clients ping every 10s; the server must allow that or it
// closes the connection with too_many_pings.
var (
	clientKeepalive = keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}
	serverPolicy    = keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}
)

// ServerOptions returns the options every Shoal gRPC server is built with:
// mutual TLS 1.3 with creds (accept refuses revoked peers; callers
// without a certificate get through the handshake, and the handlers let
// them only join), keepalive and message limits, followed by extra.
func ServerOptions(creds *Credentials, accept Accept, log *slog.Logger, extra ...grpc.ServerOption) []grpc.ServerOption {
	opts := []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(creds.ServerTLS(false, accept, log))),
		grpc.KeepaliveEnforcementPolicy(serverPolicy),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.MaxRecvMsgSize(16 << 20),
	}
	return append(opts, extra...)
}

// Dial returns a mutual-TLS client connection to the Shoal manager at addr
// (host:port), presenting creds. grpc.NewClient connects lazily; the first
// call does the dialing.
func Dial(addr string, creds *Credentials, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	return DialRole(addr, creds, pki.RoleManager, extra...)
}

// DialRole is Dial to a node whose certificate must carry role.
func DialRole(addr string, creds *Credentials, role string, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	if creds == nil {
		return nil, fmt.Errorf("dial %s: no TLS credentials", addr)
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(creds.ClientTLS(role))),
		grpc.WithKeepaliveParams(clientKeepalive),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16 << 20)),
	}
	conn, err := grpc.NewClient(addr, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return conn, nil
}

// NewRequestID returns a random request ID.
func NewRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// RequestIDFromIncoming returns the request ID of an incoming call, if any.
func RequestIDFromIncoming(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(RequestIDKey); len(v) > 0 {
		return v[0]
	}
	return ""
}

// Forwarded reports whether an incoming call was forwarded by a manager.
func Forwarded(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	return len(md.Get(ForwardedKey)) > 0
}

// RetryUnavailable is a client interceptor: it gives each call a request ID
// and retries it, with the same ID, while the cluster answers Unavailable
// (no leader yet, leadership moving, a manager restarting), until the call's
// deadline. The ID makes the retry safe: a write is applied at most once.
// When nothing listens at the address at all, it gives up after
// refusedGrace: a wrong address should fail fast.
func RetryUnavailable() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		md, _ := metadata.FromOutgoingContext(ctx)
		if len(md.Get(RequestIDKey)) == 0 {
			ctx = metadata.AppendToOutgoingContext(ctx, RequestIDKey, NewRequestID())
		}
		backoff := 50 * time.Millisecond
		var refusedSince time.Time
		for {
			err := invoker(ctx, method, req, reply, cc, opts...)
			if status.Code(err) != codes.Unavailable || IsTLSRefusal(err) {
				return err
			}
			if IsConnectionRefused(err) {
				if refusedSince.IsZero() {
					refusedSince = time.Now()
				} else if time.Since(refusedSince) > refusedGrace {
					return err
				}
			} else {
				refusedSince = time.Time{}
			}
			select {
			case <-ctx.Done():
				return err
			case <-time.After(backoff):
			}
			if backoff < time.Second {
				backoff *= 2
			}
		}
	}
}

// refusedGrace is how long a refused connection is retried: long enough for
// a manager to restart, short enough that a wrong address fails fast.
const refusedGrace = 3 * time.Second

// IsConnectionRefused reports whether err says nothing listens at the address.
func IsConnectionRefused(err error) bool {
	msg := status.Convert(err).Message()
	return strings.Contains(msg, "connection refused") || strings.Contains(msg, "no route to host")
}

// IsTLSRefusal reports whether a call failed because one side refused the
// other's certificate: retrying cannot help.
func IsTLSRefusal(err error) bool {
	msg := status.Convert(err).Message()
	return strings.Contains(msg, "authentication handshake failed") || strings.Contains(msg, "tls:") ||
		strings.Contains(msg, "x509:") || strings.Contains(msg, "first record does not look like a TLS handshake")
}

// DescribeTLSRefusal turns a TLS failure into a sentence that says what
// to do next.
func DescribeTLSRefusal(err error) string {
	msg := status.Convert(err).Message()
	switch {
	case strings.Contains(msg, ErrWrongCluster.Error()):
		return ErrWrongCluster.Error()
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return "the server does not speak TLS: is it a Shoal node of this version?"
	case strings.Contains(msg, "remote error: tls:"):
		return "the server refused this certificate (expired, revoked, from another cluster, or from before a root CA rotation; the server's log says which); " +
			"an admin client gets a new config with `shoal cluster client-config` on a manager: " + msg
	case strings.Contains(msg, "not issued by this cluster's CA"):
		return "the server's certificate is not from the CA this client trusts (another cluster, or the root CA was rotated since this client config was made: export a new one with `shoal cluster client-config`): " + msg
	}
	return msg
}
