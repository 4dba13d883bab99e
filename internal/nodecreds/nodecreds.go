// Package nodecreds keeps a node's TLS credentials in its data dir and in
// memory together: installing a new certificate (join, renewal, a role
// change) or new roots (a CA rotation) updates both, and it tells when the
// certificate is due for renewal.
package nodecreds

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/internal/rpc"
)

// Node is a node's credentials, on disk and in use.
type Node struct {
	dir   string
	creds *rpc.Credentials

	mu      sync.Mutex
	certPEM []byte
	keyPEM  []byte
	issuer  string // digest of the root at the end of the chain
}

// Load reads the credentials in a data dir.
func Load(dir string) (*Node, error) {
	certPEM, keyPEM, rootsPEM, err := datadir.LoadCerts(dir)
	if err != nil {
		return nil, err
	}
	creds, err := rpc.NewCredentials(certPEM, keyPEM, rootsPEM)
	if err != nil {
		return nil, fmt.Errorf("credentials in %s: %w", dir, err)
	}
	n := &Node{dir: dir, creds: creds, certPEM: certPEM, keyPEM: keyPEM}
	n.issuer = issuerDigest(certPEM)
	return n, nil
}

// Pending are the credentials of a node that will get its certificate
// from a join: until Install, servers using them refuse every handshake,
// and clients trust only the root a join token pins (digest).
func Pending(dir, digest string) *Node {
	return &Node{dir: dir, creds: rpc.PinnedCredentials(digest)}
}

// Creds are the credentials to build TLS configurations with; they follow
// every Install and SetRoots.
func (n *Node) Creds() *rpc.Credentials { return n.creds }

// Install saves and starts using a new certificate chain, key and roots.
func (n *Node) Install(certPEM, keyPEM, rootsPEM []byte) error {
	if err := n.creds.Update(certPEM, keyPEM, rootsPEM); err != nil {
		return err
	}
	if err := datadir.SaveCerts(n.dir, certPEM, keyPEM, rootsPEM); err != nil {
		return err
	}
	n.mu.Lock()
	n.certPEM, n.keyPEM, n.issuer = certPEM, keyPEM, issuerDigest(certPEM)
	n.mu.Unlock()
	return nil
}

// SetRoots saves and starts trusting new roots (a CA rotation).
func (n *Node) SetRoots(rootsPEM []byte) error {
	if string(rootsPEM) == string(n.creds.RootsPEM()) {
		return nil
	}
	if err := n.creds.UpdateRoots(rootsPEM); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return datadir.SaveCerts(n.dir, n.certPEM, n.keyPEM, rootsPEM)
}

// RenewalDue says why the certificate should be renewed now, or "": two
// thirds of its lifetime have passed, another root now signs (a CA
// rotation), or it carries another role than role (promotion, demotion).
func (n *Node) RenewalDue(now time.Time, signingDigest, role string) string {
	leaf := n.creds.Leaf()
	if leaf == nil {
		return ""
	}
	n.mu.Lock()
	issuer := n.issuer
	n.mu.Unlock()
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	switch {
	case now.After(leaf.NotBefore.Add(life * 2 / 3)):
		return "two thirds of its lifetime have passed"
	case signingDigest != "" && issuer != signingDigest:
		return "the cluster's root CA was rotated"
	case role != "" && n.creds.Identity().Role != role:
		return fmt.Sprintf("the node is a %s now", role)
	}
	return ""
}

// Renew makes a new key and has the cluster sign it through request,
// which returns the certificate chain and the roots; then installs them.
func (n *Node) Renew(ctx context.Context, request func(ctx context.Context, csr []byte) (cert, roots []byte, err error)) error {
	keyPEM, csr, err := pki.NewKeyAndCSR()
	if err != nil {
		return err
	}
	cert, roots, err := request(ctx, csr)
	if err != nil {
		return err
	}
	return n.Install(cert, keyPEM, roots)
}

// issuerDigest is the digest of the last certificate of a chain: the root
// that issued it (issued chains end with their root).
func issuerDigest(chainPEM []byte) string {
	certs, err := pki.ParseCerts(chainPEM)
	if err != nil || len(certs) < 2 {
		return ""
	}
	return pki.Digest(certs[len(certs)-1])
}
