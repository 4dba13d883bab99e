// Package pki is Shoal's certificate authority: the cluster's ECDSA P-256
// root, node and admin certificates whose subject names the holder's ID,
// role and cluster, certificate requests, the root's digest that join
// tokens pin, and a cross-signed transition when the root is rotated.
package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base32"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
)

// Roles a certificate can carry (its subject's organizational unit).
const (
	RoleManager = "manager"
	RoleWorker  = "worker"
	RoleAdmin   = "admin"
	// RoleServer marks a server-only certificate (IssueServer): never a
	// valid identity for a Shoal peer (IdentityOf refuses it).
	RoleServer = "server"
)

// Identity is who a certificate speaks for.
type Identity struct {
	// ID is the node ID, or an admin client's ID.
	ID string
	// Role is RoleManager, RoleWorker or RoleAdmin.
	Role string
	// ClusterID is the cluster that issued the certificate.
	ClusterID string
}

// NodeRoleName is the role name of a node role, as certificates carry it
// and placement constraints (node.role==manager) name it; "" for a role
// that is not set.
func NodeRoleName(r pb.NodeRole) string {
	switch r {
	case pb.NodeRole_NODE_ROLE_MANAGER:
		return RoleManager
	case pb.NodeRole_NODE_ROLE_WORKER:
		return RoleWorker
	}
	return ""
}

// IsNode reports whether the identity is a node's (not an admin client's).
func (id Identity) IsNode() bool { return id.Role == RoleManager || id.Role == RoleWorker }

func (id Identity) String() string { return id.Role + " " + id.ID }

// IdentityOf reads the identity from a certificate's subject.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	s := cert.Subject
	if s.CommonName == "" || len(s.OrganizationalUnit) != 1 || len(s.Organization) != 1 {
		return Identity{}, errors.New("the certificate does not name a Shoal node, role and cluster")
	}
	id := Identity{ID: s.CommonName, Role: s.OrganizationalUnit[0], ClusterID: s.Organization[0]}
	switch id.Role {
	case RoleManager, RoleWorker, RoleAdmin:
		return id, nil
	}
	return Identity{}, fmt.Errorf("the certificate carries an unknown role %q", id.Role)
}

// rootLifetime is how long a root CA certificate is valid.
const rootLifetime = 20 * 365 * 24 * time.Hour

// clockSkew backdates certificates so a node whose clock is a little
// behind accepts them.
const clockSkew = time.Minute

// NewKey returns a fresh ECDSA P-256 key and its PEM encoding.
func NewKey() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode key: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// ParseKey reads a PEM-encoded ECDSA key.
func ParseKey(keyPEM []byte) (*ecdsa.PrivateKey, error) {
	b, _ := pem.Decode(keyPEM)
	if b == nil || b.Type != "EC PRIVATE KEY" {
		return nil, errors.New("no EC PRIVATE KEY block in the key")
	}
	k, err := x509.ParseECPrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse key: %w", err)
	}
	return k, nil
}

// NewCSR returns a PEM certificate request for key. The CA decides the
// subject; the request only proves the holder has the key.
func NewCSR(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("create certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// NewKeyAndCSR makes a key and a certificate request for it: the key
// (PEM) stays with its holder, the request goes to the CA.
func NewKeyAndCSR() (keyPEM, csr []byte, err error) {
	key, keyPEM, err := NewKey()
	if err != nil {
		return nil, nil, err
	}
	csr, err = NewCSR(key)
	if err != nil {
		return nil, nil, err
	}
	return keyPEM, csr, nil
}

// CA is a root (or, during a rotation, a new root cross-signed by the old
// one) that signs node and admin certificates.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// Chain is appended to every issued certificate: the cross-signed
	// intermediate during a rotation (so nodes that trust only the old
	// root accept the new certificates), then the root itself (so a joining
	// node can check the root's digest against its token).
	Chain []byte
}

// NewRoot creates a self-signed root CA for a cluster.
func NewRoot(clusterID string) (certPEM, keyPEM []byte, err error) {
	key, keyPEM, err := NewKey()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "shoal-root-ca", Organization: []string{clusterID}, SerialNumber: serial().Text(36)},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(rootLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create root CA: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// CrossSign issues a certificate for the new root's key and subject signed
// by the old root: nodes that trust only the old root can then verify
// certificates the new root issued.
func CrossSign(oldCertPEM, oldKeyPEM, newCertPEM []byte) ([]byte, error) {
	oldCA, err := ParseCA(oldCertPEM, oldKeyPEM, nil)
	if err != nil {
		return nil, err
	}
	newCert, err := ParseCert(newCertPEM)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               newCert.Subject,
		NotBefore:             newCert.NotBefore,
		NotAfter:              oldCA.Cert.NotAfter,
		KeyUsage:              newCert.KeyUsage,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, oldCA.Cert, newCert.PublicKey, oldCA.Key)
	if err != nil {
		return nil, fmt.Errorf("cross-sign the new root: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// ParseCA reads a root certificate and key; chain is what to append to
// issued certificates besides the root itself (a cross-signed
// intermediate, or nil).
func ParseCA(certPEM, keyPEM, chain []byte) (*CA, error) {
	cert, err := ParseCert(certPEM)
	if err != nil {
		return nil, err
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("the CA key does not match its certificate")
	}
	full := append(append([]byte(nil), chain...), certPEM...)
	return &CA{Cert: cert, Key: key, Chain: full}, nil
}

// Issue signs a certificate for id with the public key of the PEM
// certificate request csrPEM, valid for lifetime. It returns the
// certificate followed by the CA's chain, PEM-encoded.
func (ca *CA) Issue(csrPEM []byte, id Identity, lifetime time.Duration) ([]byte, error) {
	return ca.issue(csrPEM, id, lifetime, nil)
}

// ServerName says what a server certificate is for: the addresses and
// names clients that check host names (the docker CLI) dial it by.
type ServerName struct {
	IPs   []net.IP
	Hosts []string
}

// IssueServer signs a server-only certificate for the addresses in names,
// for front doors whose clients check host names. Its subject carries
// role RoleServer, which no Shoal link accepts from a peer, and its key
// usage is server authentication only.
func (ca *CA) IssueServer(csrPEM []byte, clusterID, id string, names ServerName, lifetime time.Duration) ([]byte, error) {
	return ca.issue(csrPEM, Identity{ID: id, Role: RoleServer, ClusterID: clusterID}, lifetime, &names)
}

func (ca *CA) issue(csrPEM []byte, id Identity, lifetime time.Duration, server *ServerName) ([]byte, error) {
	b, _ := pem.Decode(csrPEM)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("no CERTIFICATE REQUEST block in the request")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request signature: %w", err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, errors.New("the certificate request must carry an ECDSA P-256 key")
	}
	if id.ID == "" || id.ClusterID == "" {
		return nil, errors.New("a certificate needs an ID and a cluster ID")
	}
	if lifetime <= 0 {
		return nil, errors.New("a certificate needs a positive lifetime")
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: id.ID, OrganizationalUnit: []string{id.Role}, Organization: []string{id.ClusterID}},
		NotBefore:    now.Add(-min(clockSkew, lifetime/10)),
		NotAfter:     now.Add(lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if server != nil {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = server.IPs
		tmpl.DNSNames = server.Hosts
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), ca.Chain...), nil
}

// ParseCert reads the first certificate of a PEM bundle.
func ParseCert(certPEM []byte) (*x509.Certificate, error) {
	certs, err := ParseCerts(certPEM)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// ParseCerts reads every certificate of a PEM bundle; it needs at least one.
func ParseCerts(bundle []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for rest := bundle; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate in the PEM data")
	}
	return out, nil
}

var digestEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// Digest is the SHA-256 of a certificate, base32 in lower case: what a
// join token carries to pin the cluster's root CA.
func Digest(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return strings.ToLower(digestEncoding.EncodeToString(sum[:]))
}

// Pool builds a certificate pool from a PEM bundle of roots.
func Pool(rootsPEM []byte) (*x509.CertPool, error) {
	certs, err := ParseCerts(rootsPEM)
	if err != nil {
		return nil, fmt.Errorf("trusted roots: %w", err)
	}
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p, nil
}

// Verify checks a peer's certificate chain (leaf first, as sent in a TLS
// handshake) against roots at now, and returns the leaf's identity.
// Host names are not checked: Shoal certificates name nodes, not hosts.
func Verify(rawCerts [][]byte, roots *x509.CertPool, now time.Time) (Identity, *x509.Certificate, error) {
	if len(rawCerts) == 0 {
		return Identity{}, nil, errors.New("no certificate presented")
	}
	certs := make([]*x509.Certificate, len(rawCerts))
	for i, raw := range rawCerts {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return Identity{}, nil, fmt.Errorf("parse peer certificate: %w", err)
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return Identity{}, nil, describeVerifyError(err)
	}
	id, err := IdentityOf(certs[0])
	if err != nil {
		return Identity{}, nil, err
	}
	return id, certs[0], nil
}

// describeVerifyError says in plain words why a chain was refused.
func describeVerifyError(err error) error {
	var inv x509.CertificateInvalidError
	if errors.As(err, &inv) && inv.Reason == x509.Expired {
		return fmt.Errorf("the certificate has expired or is not yet valid: %w", err)
	}
	var unk x509.UnknownAuthorityError
	if errors.As(err, &unk) {
		return fmt.Errorf("the certificate was not issued by this cluster's CA: %w", err)
	}
	return fmt.Errorf("certificate refused: %w", err)
}

// EncodeCerts PEM-encodes certificates.
func EncodeCerts(certs ...*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

// serial returns a random 128-bit certificate serial number.
func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		panic("pki: no randomness: " + err.Error())
	}
	return n
}
