package dockerapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/shoal-cluster/shoal/internal/pki"
)

// Certs is what the TLS listener needs of the cluster's CA.
type Certs interface {
	// Roots are the roots client certificates must chain to, and the ID of
	// the cluster they must name.
	Roots() (*x509.CertPool, string, error)
	// ServerCert issues a server certificate and key for names.
	ServerCert(names pki.ServerName) (*tls.Certificate, error)
}

// Listener serves the API on one listener.
type Listener struct {
	srv  *http.Server
	lis  net.Listener
	path string // a unix socket's path, removed on Close
	done chan struct{}
}

// Addr is where the listener listens.
func (l *Listener) Addr() net.Addr { return l.lis.Addr() }

// Close stops serving at once (a following logs stream ends).
func (l *Listener) Close() error {
	err := l.srv.Close()
	<-l.done
	if l.path != "" {
		_ = os.Remove(l.path)
	}
	return err
}

func (l *Listener) serve(log *slog.Logger) {
	go func() {
		defer close(l.done)
		if err := l.srv.Serve(l.lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("docker API listener stopped", "addr", l.lis.Addr().String(), "err", err)
		}
	}()
}

// ListenUnix serves the API on a unix socket at path, readable and
// writable by this process's user only (mode 0600): whoever can open it
// may administer the cluster, as whoever can read the data dir's admin
// config can. Callers are served as id.
func (s *Server) ListenUnix(path string, id pki.Identity) (*Listener, error) {
	if len(path) > 104 {
		return nil, fmt.Errorf("docker API socket path %s is too long for a unix socket (%d bytes; at most 104): use a shorter data dir", path, len(path))
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket: remove it", path)
		}
		_ = os.Remove(path) // left by a node that did not stop cleanly
	}
	// The data dir is the node's own (0700): nobody else can reach the
	// socket before its mode is set.
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s for the docker API: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return nil, fmt.Errorf("docker API socket %s: %w", path, err)
	}
	l := &Listener{lis: lis, path: path, done: make(chan struct{}), srv: &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext:       func(ctx context.Context, _ net.Conn) context.Context { return WithClient(ctx, id) },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}}
	l.serve(s.log)
	return l, nil
}

// ListenTLS serves the API on addr with TLS: a server certificate from
// the cluster's CA for the addresses in names, and client certificates
// verified against the cluster's roots. Only admin certificates are
// served; a request with another (a node's) or none is answered 403 or
// 401, as Docker-shaped errors.
func (s *Server) ListenTLS(addr string, certs Certs, names pki.ServerName) (*Listener, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s for the docker API: %w (is the port in use?)", addr, err)
	}
	cache := &certCache{certs: certs, names: names}
	cfg := &tls.Config{
		MinVersion:             tls.VersionTLS12,
		SessionTicketsDisabled: true,
		ClientAuth:             tls.RequestClientCert,
		GetCertificate:         func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cache.get() },
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return nil // refused in the handler, with a Docker-shaped error
			}
			roots, clusterID, err := certs.Roots()
			if err != nil {
				return err
			}
			id, _, err := pki.Verify(raw, roots, time.Now())
			if err != nil {
				return err
			}
			if id.ClusterID != clusterID {
				return fmt.Errorf("the certificate is for cluster %s, not %s", id.ClusterID, clusterID)
			}
			return nil
		},
	}
	l := &Listener{lis: tls.NewListener(lis, cfg), done: make(chan struct{}), srv: &http.Server{
		Handler:           http.HandlerFunc(s.serveTLS),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}}
	l.serve(s.log)
	return l, nil
}

// serveTLS names the client by its verified certificate.
func (s *Server) serveTLS(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		writeError(w, http.StatusUnauthorized, "the docker API needs an admin client certificate of the cluster: get one with `shoal cluster client-config --docker DIR` and set DOCKER_CERT_PATH=DIR DOCKER_TLS_VERIFY=1")
		return
	}
	id, err := pki.IdentityOf(r.TLS.PeerCertificates[0])
	if err != nil {
		writeError(w, http.StatusForbidden, "the client certificate is not a Shoal admin certificate: "+err.Error())
		return
	}
	if id.Role != pki.RoleAdmin {
		writeError(w, http.StatusForbidden, fmt.Sprintf("the docker API takes admin client certificates only, not a %s's (%s): get one with `shoal cluster client-config --docker DIR`", id.Role, id.ID))
		return
	}
	s.ServeHTTP(w, r.WithContext(WithClient(r.Context(), id)))
}

// certCache keeps the listener's certificate until a third of its life
// is left or it no longer chains to the cluster's roots (a root rotation).
type certCache struct {
	certs Certs
	names pki.ServerName
	mu    sync.Mutex
	cur   *tls.Certificate
}

func (c *certCache) get() (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != nil && c.fresh() {
		return c.cur, nil
	}
	cert, err := c.certs.ServerCert(c.names)
	if err != nil {
		if c.cur != nil {
			return c.cur, nil // keep serving with the old one
		}
		return nil, err
	}
	c.cur = cert
	return cert, nil
}

func (c *certCache) fresh() bool {
	leaf := c.cur.Leaf
	if leaf == nil {
		return false
	}
	now := time.Now()
	if now.After(leaf.NotAfter.Add(-leaf.NotAfter.Sub(leaf.NotBefore) / 3)) {
		return false
	}
	roots, _, err := c.certs.Roots()
	if err != nil {
		return true
	}
	inter := x509.NewCertPool()
	for _, raw := range c.cur.Certificate[1:] {
		if ic, err := x509.ParseCertificate(raw); err == nil {
			inter.AddCert(ic)
		}
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err == nil
}
