package rpc_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/internal/pki/pkitest"
	"github.com/shoal-cluster/shoal/internal/rpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// syncBuffer is a log sink the server writes from its own goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// serve starts a gRPC server with the health service over mutual TLS.
func serve(t *testing.T, creds *rpc.Credentials, accept rpc.Accept) (string, *syncBuffer) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	srv := grpc.NewServer(rpc.ServerOptions(creds, accept, slog.New(slog.NewTextHandler(logs, nil)))...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return l.Addr().String(), logs
}

func check(t *testing.T, addr string, opts ...grpc.DialOption) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func dialCheck(t *testing.T, addr string, creds *rpc.Credentials, role string) error {
	t.Helper()
	conn, err := rpc.DialRole(addr, creds, role)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// expiredCreds are credentials whose certificate has expired.
func expiredCreds(t *testing.T, ca *pkitest.CA, role, id string) *rpc.Credentials {
	t.Helper()
	certPEM, keyPEM := ca.IssueExpired(t, role, id)
	creds, err := rpc.NewCredentials(certPEM, keyPEM, ca.RootPEM)
	if err != nil {
		t.Fatal(err)
	}
	return creds
}

func TestMutualTLSRefusals(t *testing.T) {
	ca := pkitest.NewCA(t, "c1")
	revoked := errors.New("node w9 was removed")
	addr, logs := serve(t, ca.Creds(t, pki.RoleManager, "m1"), func(id pki.Identity) error {
		if id.ID == "w9" {
			return revoked
		}
		return nil
	})
	forger := pkitest.NewCA(t, "c1") // same cluster ID, another key
	other := pkitest.NewCA(t, "c2")
	rootDigest := func(ca *pkitest.CA) string {
		c, err := pki.ParseCert(ca.RootPEM)
		if err != nil {
			t.Fatal(err)
		}
		return pki.Digest(c)
	}

	// rawDial presents creds' certificate without the client's own checks,
	// as an attacker would, and reports how the server answered.
	rawDial := func(certPEM, keyPEM []byte) error {
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.Dial("tcp", addr, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
			Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}})
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1)) // the server's refusal arrives here in TLS 1.3
		return err
	}
	forgedCert, forgedKey := forger.Issue(t, pki.RoleAdmin, "a1", time.Hour)
	expired := expiredCreds(t, ca, pki.RoleWorker, "w2")
	expiredCert, expiredKey := ca.IssueExpired(t, pki.RoleWorker, "w3")

	cases := []struct {
		name      string
		call      func() error
		wantErr   string // "" for success
		serverLog string // what the server logs when it refuses
	}{
		{name: "admin client", call: func() error { return dialCheck(t, addr, ca.Creds(t, pki.RoleAdmin, "a1"), pki.RoleManager) }},
		{name: "worker client", call: func() error { return dialCheck(t, addr, ca.Creds(t, pki.RoleWorker, "w1"), pki.RoleManager) }},
		{name: "joining node pinning the right root", call: func() error {
			return dialCheck(t, addr, rpc.PinnedCredentials(rootDigest(ca)), pki.RoleManager)
		}},
		{name: "plaintext client", call: func() error {
			return check(t, addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		}, wantErr: "error reading server preface"},
		{name: "certificate from another CA", call: func() error {
			return rawDial(forgedCert, forgedKey)
		}, wantErr: "tls: bad certificate", serverLog: "not issued by this cluster's CA"},
		{name: "expired certificate", call: func() error {
			return rawDial(expiredCert, expiredKey)
		}, wantErr: "tls: bad certificate", serverLog: "has expired"},
		{name: "revoked node", call: func() error {
			certPEM, keyPEM := ca.Issue(t, pki.RoleWorker, "w9", time.Hour)
			return rawDial(certPEM, keyPEM)
		}, wantErr: "tls: bad certificate", serverLog: "node w9 was removed"},
		{name: "Shoal client with a forged certificate", call: func() error {
			creds, err := rpc.NewCredentials(forgedCert, forgedKey, ca.RootPEM)
			if err != nil {
				t.Fatal(err)
			}
			return dialCheck(t, addr, creds, pki.RoleManager)
		}, wantErr: "own certificate is unusable: the certificate was not issued by this cluster's CA"},
		{name: "Shoal client with an expired certificate", call: func() error {
			return dialCheck(t, addr, expired, pki.RoleManager)
		}, wantErr: "own certificate is unusable: the certificate has expired"},
		{name: "token of another cluster", call: func() error {
			return dialCheck(t, addr, rpc.PinnedCredentials(rootDigest(other)), pki.RoleManager)
		}, wantErr: "CA digest mismatch"},
		{name: "server of another role", call: func() error {
			return dialCheck(t, addr, ca.Creds(t, pki.RoleManager, "m2"), pki.RoleWorker)
		}, wantErr: "not a worker"},
		{name: "server of another cluster", call: func() error {
			return dialCheck(t, addr, other.Creds(t, pki.RoleAdmin, "a1"), pki.RoleManager)
		}, wantErr: "not issued by this cluster's CA"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not say %q", err, tc.wantErr)
			}
			if !rpc.IsTLSRefusal(status.Error(codes.Unavailable, err.Error())) && tc.name != "plaintext client" {
				t.Errorf("error %q is not recognised as a TLS refusal (it would be retried)", err)
			}
			if tc.serverLog != "" && !strings.Contains(logs.String(), tc.serverLog) {
				t.Errorf("the server did not log %q; its log:\n%s", tc.serverLog, logs.String())
			}
		})
	}
}

// TestRequireClientCert: a Raft-style server refuses a client without a
// certificate in the handshake itself.
func TestRequireClientCert(t *testing.T) {
	ca := pkitest.NewCA(t, "c1")
	server := ca.Creds(t, pki.RoleManager, "m1").ServerTLS(true, nil, slog.New(slog.DiscardHandler))
	l, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_, err = c.Read(make([]byte, 1))
		done <- err
	}()
	client := rpc.PinnedCredentials("")
	cfg := client.ClientTLS(pki.RoleManager)
	cfg.VerifyPeerCertificate = nil // trust the server: the point is the server's refusal
	c, err := tls.Dial("tcp", l.Addr().String(), cfg)
	if err == nil {
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil {
		t.Fatal("the client without a certificate was served")
	}
	if serr := <-done; serr == nil || !strings.Contains(serr.Error(), "no client certificate") {
		t.Fatalf("server side: %v, want a refusal for the missing certificate", serr)
	}
}

func TestUpdateSwapsCertificate(t *testing.T) {
	ca := pkitest.NewCA(t, "c1")
	creds := ca.Creds(t, pki.RoleWorker, "w1")
	certPEM, keyPEM := ca.Issue(t, pki.RoleManager, "w1", time.Hour)
	if err := creds.Update(certPEM, keyPEM, ca.RootPEM); err != nil {
		t.Fatal(err)
	}
	if got := creds.Identity(); got.Role != pki.RoleManager || got.ID != "w1" || got.ClusterID != "c1" {
		t.Fatalf("identity after update: %+v", got)
	}
	if err := creds.Update([]byte("junk"), keyPEM, ca.RootPEM); err == nil {
		t.Fatal("junk certificate accepted")
	}
	if creds.Identity().Role != pki.RoleManager {
		t.Fatal("a refused update changed the credentials")
	}
}

// TestResumedSessionVerifiedAgain: a client that kept a TLS session from
// before its revocation is refused like any other. TLS 1.3 resumption
// would skip the certificate checks, so servers issue no session tickets.
func TestResumedSessionVerifiedAgain(t *testing.T) {
	ca := pkitest.NewCA(t, "c1")
	var revoked atomic.Bool
	accept := func(id pki.Identity) error {
		if revoked.Load() && id.ID == "m2" {
			return errors.New("m2 was removed")
		}
		return nil
	}
	addr, _ := serve(t, ca.Creds(t, pki.RoleManager, "m1"), accept)
	cfg := ca.Creds(t, pki.RoleManager, "m2").ClientTLS(pki.RoleManager)
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(8) // a client keeping its tickets
	opt := grpc.WithTransportCredentials(credentials.NewTLS(cfg))
	if err := check(t, addr, opt); err != nil {
		t.Fatalf("before the revocation: %v", err)
	}
	revoked.Store(true)
	if err := check(t, addr, opt); err == nil {
		t.Fatal("a revoked client was served again on a resumed session")
	}
}

// TestSetRevoked: a node ID on a side's revoked list is refused whichever
// end of the connection it is, and only on that side.
func TestSetRevoked(t *testing.T) {
	ca := pkitest.NewCA(t, "c1")
	for _, tc := range []struct {
		name                     string
		serverRevokes, clientRev []string
		wantRefused              bool
	}{
		{name: "nothing revoked"},
		{name: "the server revoked the client", serverRevokes: []string{"w1"}, wantRefused: true},
		{name: "the client revoked the server", clientRev: []string{"m1"}, wantRefused: true},
		{name: "another node revoked", serverRevokes: []string{"m9"}, clientRev: []string{"w9"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			server := ca.Creds(t, pki.RoleManager, "m1")
			server.SetRevoked(tc.serverRevokes)
			addr, _ := serve(t, server, nil)
			client := ca.Creds(t, pki.RoleWorker, "w1")
			client.SetRevoked(tc.clientRev)
			err := dialCheck(t, addr, client, pki.RoleManager)
			if refused := err != nil; refused != tc.wantRefused {
				t.Fatalf("err = %v, want refused %v", err, tc.wantRefused)
			}
		})
	}
}
