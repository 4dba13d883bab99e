package pki_test

import (
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/pki"
)

func newCA(t *testing.T, cluster string) (certPEM, keyPEM []byte, ca *pki.CA) {
	t.Helper()
	certPEM, keyPEM, err := pki.NewRoot(cluster)
	if err != nil {
		t.Fatal(err)
	}
	ca, err = pki.ParseCA(certPEM, keyPEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM, ca
}

func csr(t *testing.T) []byte {
	t.Helper()
	key, _, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	c, err := pki.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func rawChain(t *testing.T, chainPEM []byte) [][]byte {
	t.Helper()
	certs, err := pki.ParseCerts(chainPEM)
	if err != nil {
		t.Fatal(err)
	}
	raw := make([][]byte, len(certs))
	for i, c := range certs {
		raw[i] = c.Raw
	}
	return raw
}

func TestIssueAndVerify(t *testing.T) {
	rootPEM, _, ca := newCA(t, "c1")
	chain, err := ca.Issue(csr(t), pki.Identity{ID: "n1", Role: pki.RoleWorker, ClusterID: "c1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pki.Pool(rootPEM)
	if err != nil {
		t.Fatal(err)
	}
	id, leaf, err := pki.Verify(rawChain(t, chain), roots, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if id != (pki.Identity{ID: "n1", Role: pki.RoleWorker, ClusterID: "c1"}) {
		t.Fatalf("identity %+v", id)
	}
	if leaf.PublicKeyAlgorithm != x509.ECDSA || leaf.NotAfter.Sub(leaf.NotBefore) > time.Hour+7*time.Minute {
		t.Fatalf("leaf %v, %s to %s", leaf.PublicKeyAlgorithm, leaf.NotBefore, leaf.NotAfter)
	}
	// The chain ends with the root, whose digest a token pins.
	certs, _ := pki.ParseCerts(chain)
	root, _ := pki.ParseCert(rootPEM)
	if pki.Digest(certs[len(certs)-1]) != pki.Digest(root) || len(pki.Digest(root)) != 52 {
		t.Fatalf("chain does not end with the root")
	}
	if _, _, err := pki.Verify(rawChain(t, chain), roots, leaf.NotAfter.Add(time.Second)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired: %v", err)
	}
	otherPEM, _, _ := newCA(t, "c1")
	others, _ := pki.Pool(otherPEM)
	if _, _, err := pki.Verify(rawChain(t, chain), others, time.Now()); err == nil || !strings.Contains(err.Error(), "not issued by this cluster's CA") {
		t.Fatalf("another CA: %v", err)
	}
}

func TestIssueRefusesBadRequests(t *testing.T) {
	_, _, ca := newCA(t, "c1")
	good := csr(t)
	tampered := append([]byte(nil), good...)
	b, _ := pem.Decode(tampered)
	b.Bytes[len(b.Bytes)-5] ^= 0xff
	cases := map[string]struct {
		csr []byte
		id  pki.Identity
		ttl time.Duration
	}{
		"not a request": {[]byte("hello"), pki.Identity{ID: "n", Role: pki.RoleWorker, ClusterID: "c1"}, time.Hour},
		"bad signature": {pem.EncodeToMemory(b), pki.Identity{ID: "n", Role: pki.RoleWorker, ClusterID: "c1"}, time.Hour},
		"no ID":         {good, pki.Identity{Role: pki.RoleWorker, ClusterID: "c1"}, time.Hour},
		"no lifetime":   {good, pki.Identity{ID: "n", Role: pki.RoleWorker, ClusterID: "c1"}, 0},
		"no cluster ID": {good, pki.Identity{ID: "n", Role: pki.RoleWorker}, time.Hour},
	}
	for name, tc := range cases {
		if _, err := ca.Issue(tc.csr, tc.id, tc.ttl); err == nil {
			t.Errorf("%s: issued", name)
		}
	}
}

// TestCrossSignedRotation: a certificate from the new root verifies for
// a node that trusts only the old root (through the cross-signed
// intermediate) and for one that trusts only the new root.
func TestCrossSignedRotation(t *testing.T) {
	oldPEM, oldKey, _ := newCA(t, "c1")
	newPEM, newKey, err := pki.NewRoot("c1")
	if err != nil {
		t.Fatal(err)
	}
	cross, err := pki.CrossSign(oldPEM, oldKey, newPEM)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.ParseCA(newPEM, newKey, cross)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.Issue(csr(t), pki.Identity{ID: "n1", Role: pki.RoleManager, ClusterID: "c1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for name, roots := range map[string][]byte{"old root": oldPEM, "new root": newPEM, "both": append(append([]byte(nil), oldPEM...), newPEM...)} {
		pool, err := pki.Pool(roots)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := pki.Verify(rawChain(t, chain), pool, time.Now()); err != nil {
			t.Errorf("trusting the %s: %v", name, err)
		}
	}
}

func TestClientConfigRoundTrip(t *testing.T) {
	rootPEM, _, ca := newCA(t, "c1")
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	c, _ := pki.NewCSR(key)
	certPEM, err := ca.Issue(c, pki.Identity{ID: "admin-1", Role: pki.RoleAdmin, ClusterID: "c1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	in := &pki.ClientConfig{Host: "10.0.0.1:4242", CertPEM: certPEM, KeyPEM: keyPEM, RootsPEM: rootPEM}
	out, err := pki.ParseClientConfig(in.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if out.Host != in.Host || string(out.CertPEM) != string(certPEM) || string(out.KeyPEM) != string(keyPEM) || string(out.RootsPEM) != string(rootPEM) {
		t.Fatalf("round trip changed the config: %+v", out)
	}
	if _, err := pki.ParseClientConfig(rootPEM); err == nil {
		t.Fatal("a bare certificate parsed as a client config")
	}
}
