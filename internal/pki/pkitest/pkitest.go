// Package pkitest makes certificate authorities and certificates for
// tests.
package pkitest

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/internal/rpc"
)

// CA is a test cluster's root CA.
type CA struct {
	*pki.CA
	ClusterID string
	RootPEM   []byte
}

// NewCA makes a root CA for clusterID.
func NewCA(t testing.TB, clusterID string) *CA {
	t.Helper()
	certPEM, keyPEM, err := pki.NewRoot(clusterID)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.ParseCA(certPEM, keyPEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{CA: ca, ClusterID: clusterID, RootPEM: certPEM}
}

// Issue makes a key and a certificate for id (role, ID) in the CA's
// cluster, valid for lifetime.
func (c *CA) Issue(t testing.TB, role, id string, lifetime time.Duration) (certPEM, keyPEM []byte) {
	t.Helper()
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err = c.CA.Issue(csr, pki.Identity{ID: id, Role: role, ClusterID: c.ClusterID}, lifetime)
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM
}

// IssueExpired makes a key and a certificate for id in the CA's cluster
// that expired an hour ago, as a node holds one it failed to renew: the
// certificate Issue makes, re-signed for the hour before that.
func (c *CA) IssueExpired(t testing.TB, role, id string) (certPEM, keyPEM []byte) {
	t.Helper()
	issued, keyPEM := c.Issue(t, role, id, time.Hour)
	leaf, err := pki.ParseCert(issued)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      leaf.Subject,
		NotBefore:    now.Add(-2 * time.Hour),
		NotAfter:     now.Add(-time.Hour),
		KeyUsage:     leaf.KeyUsage,
		ExtKeyUsage:  leaf.ExtKeyUsage,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.CA.Cert, leaf.PublicKey, c.CA.Key)
	if err != nil {
		t.Fatal(err)
	}
	return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), c.CA.Chain...), keyPEM
}

// Creds are credentials for id with a fresh certificate valid for an hour.
func (c *CA) Creds(t testing.TB, role, id string) *rpc.Credentials {
	t.Helper()
	certPEM, keyPEM := c.Issue(t, role, id, time.Hour)
	creds, err := rpc.NewCredentials(certPEM, keyPEM, c.RootPEM)
	if err != nil {
		t.Fatal(err)
	}
	return creds
}

// ClientConfig is an admin client config of the CA's cluster.
func (c *CA) ClientConfig(t testing.TB, host string) []byte {
	t.Helper()
	certPEM, keyPEM := c.Issue(t, pki.RoleAdmin, "admin-test", time.Hour)
	return (&pki.ClientConfig{Host: host, CertPEM: certPEM, KeyPEM: keyPEM, RootsPEM: c.RootPEM}).Encode()
}
