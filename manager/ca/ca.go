// Package ca is the cluster's certificate authority: it creates the root
// CA at init, signs node certificates (joins, promotions, renewals) and
// admin client certificates, rotates the root CA (cross-signed, finished
// once every node renewed) and the gossip key, makes and checks join
// tokens, and keeps this manager's own credentials current. The CA key
// lives in the store's cluster object and never leaves the managers.
package ca

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/shoal-cluster/shoal/gossip"
	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/nodecreds"
	"github.com/shoal-cluster/shoal/internal/pki"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// DefaultCertExpiry is the default lifetime of node certificates.
const DefaultCertExpiry = 90 * 24 * time.Hour

// PendingRootKey holds, in the data dir, the root CA key `init` made
// until the cluster object that keeps it in the store is committed.
const PendingRootKey = "certs/root-ca.key"

// Bootstrap creates, at init, the cluster's root CA, this node's
// certificate, the admin client config (for a manager at apiAddr) and the
// first gossip key, which it sets in id.
func Bootstrap(dataDir string, id *datadir.Identity, apiAddr string, certExpiry time.Duration) error {
	rootPEM, rootKeyPEM, err := pki.NewRoot(id.ClusterID)
	if err != nil {
		return err
	}
	ca, err := pki.ParseCA(rootPEM, rootKeyPEM, nil)
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := issueLocal(ca, pki.Identity{ID: id.NodeID, Role: pki.RoleManager, ClusterID: id.ClusterID}, certExpiry)
	if err != nil {
		return err
	}
	if err := datadir.SaveCerts(dataDir, certPEM, keyPEM, rootPEM); err != nil {
		return err
	}
	if err := datadir.WriteFile(filepath.Join(dataDir, PendingRootKey), rootKeyPEM); err != nil {
		return err
	}
	if err := writeAdminConfig(dataDir, ca, rootPEM, id.ClusterID, apiAddr, certExpiry); err != nil {
		return err
	}
	id.GossipKeys = [][]byte{gossip.NewKey()}
	return nil
}

// issueLocal makes a key and has ca sign a certificate for it.
func issueLocal(ca *pki.CA, id pki.Identity, lifetime time.Duration) (certPEM, keyPEM []byte, err error) {
	keyPEM, csr, err := pki.NewKeyAndCSR()
	if err != nil {
		return nil, nil, err
	}
	certPEM, err = ca.Issue(csr, id, lifetime)
	return certPEM, keyPEM, err
}

// newAdminID names a new admin client.
func newAdminID() string { return "admin-" + raftstore.NewID()[:12] }

// writeAdminConfig writes a fresh admin client config into a data dir.
func writeAdminConfig(dir string, ca *pki.CA, rootsPEM []byte, clusterID, host string, lifetime time.Duration) error {
	certPEM, keyPEM, err := issueLocal(ca, pki.Identity{ID: newAdminID(), Role: pki.RoleAdmin, ClusterID: clusterID}, lifetime)
	if err != nil {
		return err
	}
	cc := &pki.ClientConfig{Host: host, CertPEM: certPEM, KeyPEM: keyPEM, RootsPEM: rootsPEM}
	return datadir.WriteFile(filepath.Join(dir, datadir.AdminFile), cc.Encode())
}

// InitialRootCA reads the root CA `init` made (its key from the data dir,
// its certificate from rootPEM, the node's roots), for the cluster object.
func InitialRootCA(dataDir string, rootPEM []byte) (*pb.RootCA, error) {
	keyPEM, err := os.ReadFile(filepath.Join(dataDir, PendingRootKey))
	if err != nil {
		return nil, fmt.Errorf("read the new cluster's root CA key: %w", err)
	}
	root, err := pki.ParseCert(rootPEM)
	if err != nil {
		return nil, err
	}
	return &pb.RootCA{Cert: rootPEM, Key: keyPEM, TrustBundle: rootPEM, Digest: pki.Digest(root)}, nil
}

// signer is the cluster's CA as the store keeps it.
func signer(c *pb.Cluster) (*pki.CA, error) {
	r := c.GetRootCa()
	if r == nil {
		return nil, status.Error(codes.Unavailable, "the cluster has no CA yet; retry")
	}
	ca, err := pki.ParseCA(r.GetCert(), r.GetKey(), r.GetCrossSigned())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "the cluster's CA: %v", err)
	}
	return ca, nil
}

// certLifetime is the lifetime of new certificates.
func certLifetime(c *pb.Cluster) time.Duration {
	if d := time.Duration(c.GetSpec().GetCertExpiry()); d > 0 {
		return d
	}
	return DefaultCertExpiry
}

// RevokeManagerCerts records, in the transaction, that node n was demoted:
// workers refuse the manager certificates it holds until the last of them
// has expired (the managers go by its role in the store). Entries whose
// certificates have all expired are dropped on the way.
func RevokeManagerCerts(tx *raftstore.Tx, n *pb.Node) error {
	c := tx.Cluster()
	if c == nil {
		return nil
	}
	now := time.Now()
	for id, until := range c.DemotedManagers {
		if until < now.UnixNano() {
			delete(c.DemotedManagers, id)
		}
	}
	if c.DemotedManagers == nil {
		c.DemotedManagers = map[string]int64{}
	}
	c.DemotedManagers[n.GetId()] = max(n.GetCertificate().GetNotAfter(), now.Add(certLifetime(c)).UnixNano())
	return tx.Clusters().Update(c)
}

// RevokedNodes are the nodes whose certificates workers refuse, sorted:
// removed nodes and managers demoted while their manager certificates may
// still be valid.
func RevokedNodes(c *pb.Cluster) []string {
	out := slices.Clone(c.GetRemovedNodes())
	now := time.Now().UnixNano()
	for id, until := range c.GetDemotedManagers() {
		if until >= now {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// IssueNode signs a node's certificate request with the role it has, and
// describes the certificate for the node's record.
func IssueNode(c *pb.Cluster, csr []byte, nodeID string, role pb.NodeRole) ([]byte, *pb.NodeCertificate, error) {
	ca, err := signer(c)
	if err != nil {
		return nil, nil, err
	}
	name := pki.NodeRoleName(role)
	if name == "" {
		name = pki.RoleWorker // a role not recorded gets the least privilege
	}
	certPEM, err := ca.Issue(csr, pki.Identity{ID: nodeID, Role: name, ClusterID: c.GetId()}, certLifetime(c))
	if err != nil {
		return nil, nil, status.Errorf(codes.InvalidArgument, "issue a certificate for node %s: %v", nodeID, err)
	}
	leaf, err := pki.ParseCert(certPEM)
	if err != nil {
		return nil, nil, status.Error(codes.Internal, err.Error())
	}
	keyDigest := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	info := &pb.NodeCertificate{Serial: leaf.SerialNumber.Text(16), NotAfter: leaf.NotAfter.UnixNano(),
		RootDigest: c.GetRootCa().GetDigest(), Role: role, KeyDigest: keyDigest[:]}
	return certPEM, info, nil
}

// LoadNodeCreds reads a manager's credentials from its data dir.
func LoadNodeCreds(dir string) (*nodecreds.Node, error) {
	nc, err := nodecreds.Load(dir)
	if errors.Is(err, datadir.ErrNoCerts) {
		return nil, fmt.Errorf("%w: this data dir was made by a Shoal without TLS; join the node again with an empty data dir", err)
	}
	return nc, err
}

// Public is the cluster object without what never leaves the managers:
// the CA key and the gossip keys.
func Public(c *pb.Cluster) *pb.Cluster {
	if c == nil {
		return nil
	}
	c = proto.Clone(c).(*pb.Cluster)
	if c.RootCa != nil {
		c.RootCa.Key = nil
	}
	c.GossipKeys = nil
	return c
}

// IssueServer signs a server-only certificate (pki.CA.IssueServer) with
// the cluster's CA, for a front door whose clients check host names.
func IssueServer(c *pb.Cluster, csr []byte, id string, names pki.ServerName) ([]byte, error) {
	ca, err := signer(c)
	if err != nil {
		return nil, err
	}
	return ca.IssueServer(csr, c.GetId(), id, names, certLifetime(c))
}
