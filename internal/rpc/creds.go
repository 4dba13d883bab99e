package rpc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/shoal-cluster/shoal/internal/pki"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Credentials are a node's or a client's TLS identity: its certificate
// chain and key, and the cluster roots it trusts. They are safe for
// concurrent use, and Update swaps them in place (renewal, CA rotation):
// new connections use the new certificate, open ones carry on.
type Credentials struct {
	mu       sync.RWMutex
	cert     *tls.Certificate // nil: none yet (a joining node)
	leaf     *x509.Certificate
	id       pki.Identity
	roots    *x509.CertPool
	rootsPEM []byte
	// pin is the root digest a join token carries, for a node that has no
	// roots yet: it trusts the server whose chain holds that root.
	pin string
	// revoked are node IDs whose certificates are refused although the
	// CA vouches for them (a worker's copy of the cluster's revocations).
	revoked map[string]bool
}

// NewCredentials builds credentials from a PEM certificate chain (leaf
// first), its PEM key and the PEM roots to trust.
func NewCredentials(certPEM, keyPEM, rootsPEM []byte) (*Credentials, error) {
	c := &Credentials{}
	if err := c.Update(certPEM, keyPEM, rootsPEM); err != nil {
		return nil, err
	}
	return c, nil
}

// PinnedCredentials are those of a node about to join: no certificate yet,
// and trust in exactly the root whose digest its join token carries.
func PinnedCredentials(digest string) *Credentials { return &Credentials{pin: digest} }

// Update replaces the certificate, key and trusted roots.
func (c *Credentials) Update(certPEM, keyPEM, rootsPEM []byte) error {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("load certificate and key: %w", err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return fmt.Errorf("parse certificate: %w", err)
	}
	id, err := pki.IdentityOf(leaf)
	if err != nil {
		return err
	}
	roots, err := pki.Pool(rootsPEM)
	if err != nil {
		return err
	}
	cert.Leaf = leaf
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cert, c.leaf, c.id, c.roots, c.rootsPEM, c.pin = &cert, leaf, id, roots, append([]byte(nil), rootsPEM...), ""
	return nil
}

// UpdateRoots replaces only the trusted roots (a CA rotation's trust
// bundle reaching a node before its new certificate).
func (c *Credentials) UpdateRoots(rootsPEM []byte) error {
	roots, err := pki.Pool(rootsPEM)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.roots, c.rootsPEM = roots, append([]byte(nil), rootsPEM...)
	return nil
}

// Identity is who the certificate speaks for (zero before there is one).
func (c *Credentials) Identity() pki.Identity {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.id
}

// Leaf is the current certificate (nil before there is one).
func (c *Credentials) Leaf() *x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.leaf
}

// SetRevoked replaces the node IDs whose certificates this side refuses
// on new connections, in either direction.
func (c *Credentials) SetRevoked(ids []string) {
	revoked := make(map[string]bool, len(ids))
	for _, id := range ids {
		revoked[id] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.revoked = revoked
}

// RootsPEM are the trusted roots, PEM-encoded.
func (c *Credentials) RootsPEM() []byte {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return append([]byte(nil), c.rootsPEM...)
}

// trust is what a peer's certificate is checked against.
type trust struct {
	roots   *x509.CertPool
	cluster string
	revoked map[string]bool
}

func (c *Credentials) snapshot() (*tls.Certificate, trust, string) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.cert, trust{roots: c.roots, cluster: c.id.ClusterID, revoked: c.revoked}, c.pin
}

// Accept decides whether a verified peer may connect at all (revocation);
// nil accepts every peer the cluster's CA vouches for.
type Accept func(pki.Identity) error

// ServerTLS is the TLS 1.3 configuration of a server. Client certificates
// are verified against the current roots and cluster; with
// requireClientCert a client without one is refused (Raft), otherwise it
// is let through to the handlers, which allow it only to join. Every
// refusal is logged once, with the remote address.
func (c *Credentials) ServerTLS(requireClientCert bool, accept Accept, log *slog.Logger) *tls.Config {
	if log == nil {
		log = slog.Default()
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			cert, tr, _ := c.snapshot()
			if cert == nil {
				return nil, errors.New("this node has no certificate yet")
			}
			remote := "?"
			if hello.Conn != nil {
				remote = hello.Conn.RemoteAddr().String()
			}
			return &tls.Config{
				MinVersion: tls.VersionTLS13,
				// A resumed session skips VerifyPeerCertificate, so a
				// peer revoked or demoted since would get back in.
				SessionTicketsDisabled: true,
				Certificates:           []tls.Certificate{*cert},
				NextProtos:             []string{"h2"},
				ClientAuth:             tls.RequestClientCert,
				VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
					err := verifyPeer(raw, tr, "", requireClientCert, accept)
					if err != nil {
						log.Warn("refused a TLS client", "remote", remote, "err", err)
					}
					return err
				},
			}, nil
		},
	}
}

// ClientTLS is the TLS 1.3 configuration of a client that expects its
// server to hold a certificate of role serverRole ("" for any role).
func (c *Credentials) ClientTLS(serverRole string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The chain is verified below, against the cluster's roots: Shoal
		// certificates name nodes, not host names.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, tr, _ := c.snapshot()
			if cert == nil {
				return &tls.Certificate{}, nil
			}
			// The server would refuse a certificate that is invalid here
			// too, but TLS 1.3 cannot tell the client why: say it now.
			if _, _, err := pki.Verify(cert.Certificate, tr.roots, time.Now()); err != nil {
				return nil, fmt.Errorf("this client's own certificate is unusable: %w", err)
			}
			return cert, nil
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, tr, pin := c.snapshot()
			if pin != "" {
				var err error
				if tr.roots, err = pinnedRoot(raw, pin); err != nil {
					return err
				}
			}
			return verifyPeer(raw, tr, serverRole, true, nil)
		},
	}
}

// ErrWrongCluster is a peer whose chain lacks the root a join token pins.
var ErrWrongCluster = errors.New("the manager's certificate is not from the cluster the join token names (CA digest mismatch): check the address, or get the token again with `shoal cluster join-token` on the right cluster")

// pinnedRoot finds, in the chain a server sent, the root whose digest is
// pin, and returns a pool of that root alone.
func pinnedRoot(raw [][]byte, pin string) (*x509.CertPool, error) {
	for _, r := range raw {
		cert, err := x509.ParseCertificate(r)
		if err != nil {
			continue
		}
		if cert.IsCA && pki.Digest(cert) == pin {
			p := x509.NewCertPool()
			p.AddCert(cert)
			return p, nil
		}
	}
	return nil, ErrWrongCluster
}

func verifyPeer(raw [][]byte, tr trust, role string, require bool, accept Accept) error {
	if len(raw) == 0 {
		if require {
			return errors.New("no client certificate: this link needs a cluster certificate")
		}
		return nil
	}
	if tr.roots == nil {
		return errors.New("no trusted roots yet")
	}
	id, _, err := pki.Verify(raw, tr.roots, time.Now())
	if err != nil {
		return err
	}
	if tr.cluster != "" && id.ClusterID != tr.cluster {
		return fmt.Errorf("the certificate is for cluster %s, not %s", id.ClusterID, tr.cluster)
	}
	if tr.revoked[id.ID] {
		return fmt.Errorf("the certificate of %s is revoked: the node was removed or demoted", id)
	}
	if role != "" && id.Role != role {
		return fmt.Errorf("the peer is a %s (%s), not a %s", id.Role, id.ID, role)
	}
	if accept != nil {
		return accept(id)
	}
	return nil
}

// PeerIdentity returns the verified certificate identity of the caller of
// an incoming gRPC call; false for a caller without a certificate.
func PeerIdentity(ctx context.Context) (pki.Identity, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return pki.Identity{}, false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return pki.Identity{}, false
	}
	id, err := pki.IdentityOf(info.State.PeerCertificates[0])
	if err != nil {
		return pki.Identity{}, false
	}
	return id, true
}

// PeerAddr is the remote address of the caller of an incoming gRPC call
// ("" when unknown).
func PeerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// PeerHost is the host part of PeerAddr (all of it when it has no port).
func PeerHost(ctx context.Context) string {
	addr := PeerAddr(ctx)
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
