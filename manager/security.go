package manager

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/shoal-cluster/shoal/gossip"
	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/joinclient"
	"github.com/shoal-cluster/shoal/internal/nodecreds"
	"github.com/shoal-cluster/shoal/internal/pki"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultCertExpiry is the default lifetime of node certificates.
const DefaultCertExpiry = 90 * 24 * time.Hour

// pendingRootKey holds the root CA key `init` made until the cluster
// object that keeps it in the store is committed.
const pendingRootKey = "certs/root-ca.key"

// bootstrapSecurity creates, at init, the cluster's root CA, this node's
// certificate, the admin client config and the first gossip key.
func bootstrapSecurity(cfg Config, id *datadir.Identity) error {
	rootPEM, rootKeyPEM, err := pki.NewRoot(id.ClusterID)
	if err != nil {
		return err
	}
	ca, err := pki.ParseCA(rootPEM, rootKeyPEM, nil)
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := issueLocal(ca, pki.Identity{ID: id.NodeID, Role: pki.RoleManager, ClusterID: id.ClusterID}, cfg.CertExpiry)
	if err != nil {
		return err
	}
	if err := datadir.SaveCerts(cfg.DataDir, certPEM, keyPEM, rootPEM); err != nil {
		return err
	}
	if err := datadir.WriteFile(filepath.Join(cfg.DataDir, pendingRootKey), rootKeyPEM); err != nil {
		return err
	}
	if err := writeAdminConfig(cfg.DataDir, ca, rootPEM, id.ClusterID, cfg.APIAddr(), cfg.CertExpiry); err != nil {
		return err
	}
	id.GossipKeys = [][]byte{gossip.NewKey()}
	return nil
}

// issueLocal makes a key and has ca sign a certificate for it.
func issueLocal(ca *pki.CA, id pki.Identity, lifetime time.Duration) (certPEM, keyPEM []byte, err error) {
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		return nil, nil, err
	}
	csr, err := pki.NewCSR(key)
	if err != nil {
		return nil, nil, err
	}
	certPEM, err = ca.Issue(csr, id, lifetime)
	return certPEM, keyPEM, err
}

// writeAdminConfig writes a fresh admin client config into a data dir.
func writeAdminConfig(dir string, ca *pki.CA, rootsPEM []byte, clusterID, host string, lifetime time.Duration) error {
	certPEM, keyPEM, err := issueLocal(ca, pki.Identity{ID: "admin-" + raftstore.NewID()[:12], Role: pki.RoleAdmin, ClusterID: clusterID}, lifetime)
	if err != nil {
		return err
	}
	cc := &pki.ClientConfig{Host: host, CertPEM: certPEM, KeyPEM: keyPEM, RootsPEM: rootsPEM}
	return datadir.WriteFile(filepath.Join(dir, datadir.AdminFile), cc.Encode())
}

// initialRootCA reads the root CA `init` made, for the cluster object.
func (m *Manager) initialRootCA() (*pb.RootCA, error) {
	keyPEM, err := os.ReadFile(filepath.Join(m.cfg.DataDir, pendingRootKey))
	if err != nil {
		return nil, fmt.Errorf("read the new cluster's root CA key: %w", err)
	}
	rootPEM := m.creds.Creds().RootsPEM()
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

// revokeManagerCerts records, in the transaction, that node n was demoted:
// workers refuse the manager certificates it holds until the last of them
// has expired (the managers go by its role in the store). Entries whose
// certificates have all expired are dropped on the way.
func revokeManagerCerts(tx *raftstore.Tx, n *pb.Node) error {
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

// revokedNodes are the nodes whose certificates workers refuse, sorted:
// removed nodes and managers demoted while their manager certificates may
// still be valid.
func revokedNodes(c *pb.Cluster) []string {
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

// issueNode signs a node's certificate request with the role it has.
func issueNode(c *pb.Cluster, csr []byte, nodeID string, role pb.NodeRole) ([]byte, *pb.NodeCertificate, error) {
	ca, err := signer(c)
	if err != nil {
		return nil, nil, err
	}
	certPEM, err := ca.Issue(csr, pki.Identity{ID: nodeID, Role: roleName(role), ClusterID: c.GetId()}, certLifetime(c))
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

// roleName is the certificate role of a node role.
func roleName(r pb.NodeRole) string {
	if r == pb.NodeRole_NODE_ROLE_MANAGER {
		return pki.RoleManager
	}
	return pki.RoleWorker
}

// RenewCertificate issues a new certificate for the calling node, with the
// role the store says it has (a promotion or demotion changes it).
func (s *membershipServer) RenewCertificate(ctx context.Context, req *pb.RenewCertificateRequest) (*pb.RenewCertificateResponse, error) {
	id := callerOf(ctx)
	if !id.IsNode() {
		return nil, status.Error(codes.PermissionDenied, "only nodes renew their certificates; admin clients get a new one with `shoal cluster client-config`")
	}
	var (
		certPEM []byte
		cluster *pb.Cluster
	)
	_, err := s.m.store.Update(ctx, func(tx *raftstore.Tx) error {
		cluster = tx.Cluster()
		n, ok := tx.Nodes().Get(id.ID)
		if !ok || cluster == nil {
			return status.Errorf(codes.NotFound, "node %s is not a member of this cluster", id.ID)
		}
		var info *pb.NodeCertificate
		var err error
		certPEM, info, err = issueNode(cluster, req.GetCsr(), id.ID, n.GetRole())
		if err != nil {
			return err
		}
		n.Certificate = info
		return tx.Nodes().Update(n)
	})
	if err != nil {
		return nil, err
	}
	s.m.log.Info("renewed a node certificate", "node", id.ID)
	return &pb.RenewCertificateResponse{Certificate: certPEM, RootCas: cluster.GetRootCa().GetTrustBundle(), GossipKeys: cluster.GetGossipKeys()}, nil
}

// IssueClientCertificate issues an admin client certificate.
func (s *controlServer) IssueClientCertificate(ctx context.Context, req *pb.IssueClientCertificateRequest) (*pb.IssueClientCertificateResponse, error) {
	var c *pb.Cluster
	s.m.store.View(func(tx *raftstore.Tx) { c = tx.Cluster() })
	ca, err := signer(c)
	if err != nil {
		return nil, err
	}
	id := pki.Identity{ID: "admin-" + raftstore.NewID()[:12], Role: pki.RoleAdmin, ClusterID: c.GetId()}
	certPEM, err := ca.Issue(req.GetCsr(), id, certLifetime(c))
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "issue a client certificate: %v", err)
	}
	s.m.log.Info("issued an admin client certificate", "client", id.ID, "by", callerOf(ctx).String())
	return &pb.IssueClientCertificateResponse{Certificate: certPEM, RootCas: c.GetRootCa().GetTrustBundle()}, nil
}

// RotateRootCA starts a root CA rotation: a new root signs from now on,
// cross-signed by the old one so nodes that trust only the old root accept
// its certificates; every node trusts both until each has renewed, then
// the old root is dropped (finishRotation). Join tokens carry the new
// root's digest.
func (s *controlServer) RotateRootCA(ctx context.Context, _ *pb.RotateRootCARequest) (*pb.RotateRootCAResponse, error) {
	var digest string
	_, err := s.m.store.Update(ctx, func(tx *raftstore.Tx) error {
		c := tx.Cluster()
		if c.GetRootCa() == nil {
			return status.Error(codes.Unavailable, "the cluster has no CA yet; retry")
		}
		if len(c.GetRootCa().GetCrossSigned()) > 0 {
			digest = c.GetRootCa().GetDigest()
			if raftstore.RequestID(ctx) != "" && c.GetRootCa().GetRotationRequest() == raftstore.RequestID(ctx) {
				return nil // a retried request that already committed
			}
			return status.Error(codes.FailedPrecondition, "a root CA rotation is already in progress: wait until every node has renewed its certificate (`shoal cluster info` shows it)")
		}
		old := c.GetRootCa()
		newCert, newKey, err := pki.NewRoot(c.GetId())
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		cross, err := pki.CrossSign(old.GetCert(), old.GetKey(), newCert)
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		root, err := pki.ParseCert(newCert)
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		digest = pki.Digest(root)
		c.RootCa = &pb.RootCA{Cert: newCert, Key: newKey, CrossSigned: cross, Digest: digest,
			TrustBundle: append(append([]byte(nil), old.GetCert()...), newCert...), RotationRequest: raftstore.RequestID(ctx)}
		c.JoinTokens = &pb.JoinTokens{Worker: retoken(c.GetJoinTokens().GetWorker(), digest), Manager: retoken(c.GetJoinTokens().GetManager(), digest)}
		return tx.Clusters().Update(c)
	})
	if err != nil {
		return nil, err
	}
	s.m.log.Info("root CA rotation started", "digest", digest)
	return &pb.RotateRootCAResponse{Digest: digest}, nil
}

// finishRotation runs on the leader: once every node holds a certificate
// from the new root, the old root is no longer trusted.
func (m *Manager) finishRotation(ctx context.Context) {
	t := time.NewTicker(m.cfg.CertCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var pending bool
		m.store.View(func(tx *raftstore.Tx) { pending = len(tx.Cluster().GetRootCa().GetCrossSigned()) > 0 })
		if !pending {
			continue
		}
		var done bool
		_, err := m.store.Update(ctx, func(tx *raftstore.Tx) error {
			c := tx.Cluster()
			r := c.GetRootCa()
			if len(r.GetCrossSigned()) == 0 {
				return nil
			}
			for _, n := range tx.Nodes().List() {
				if n.GetCertificate().GetRootDigest() != r.GetDigest() {
					return nil
				}
			}
			r.CrossSigned, r.TrustBundle, r.RotationRequest = nil, r.GetCert(), ""
			done = true
			return tx.Clusters().Update(c)
		})
		if err != nil {
			m.log.Warn("finish the root CA rotation", "err", err)
		} else if done {
			m.log.Info("root CA rotation complete: every node holds a certificate from the new root; the old root is no longer trusted")
		}
	}
}

// RotateGossipKey makes a new gossip key the primary one; nodes keep the
// previous key too, so those that have not learnt the new one yet are
// still understood. The next rotation retires it.
func (s *controlServer) RotateGossipKey(ctx context.Context, _ *pb.RotateGossipKeyRequest) (*pb.RotateGossipKeyResponse, error) {
	var n int
	_, err := s.m.store.Update(ctx, func(tx *raftstore.Tx) error {
		c := tx.Cluster()
		if c == nil {
			return status.Error(codes.Unavailable, "the cluster is still initialising; retry")
		}
		keys := [][]byte{gossip.NewKey()}
		if len(c.GetGossipKeys()) > 0 {
			keys = append(keys, c.GetGossipKeys()[0])
		}
		c.GossipKeys = keys
		n = len(keys)
		return tx.Clusters().Update(c)
	})
	if err != nil {
		return nil, err
	}
	s.m.log.Info("gossip key rotated")
	return &pb.RotateGossipKeyResponse{Keys: int32(n)}, nil
}

// keepCredentials runs on every manager: it follows the store's roots and
// gossip keys, renews this node's certificate when it is due (through the
// leader, which records it), and keeps the admin client config in the
// data dir valid.
func (m *Manager) keepCredentials() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.CertCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stopped:
			return
		case <-t.C:
		}
		var c *pb.Cluster
		var role pb.NodeRole
		m.store.View(func(tx *raftstore.Tx) {
			c = tx.Cluster()
			if n, ok := tx.Nodes().Get(m.id.NodeID); ok {
				role = n.GetRole()
			}
		})
		if c.GetRootCa() == nil {
			continue
		}
		if err := m.creds.SetRoots(c.GetRootCa().GetTrustBundle()); err != nil {
			m.log.Error("trust the cluster's new roots", "err", err)
		}
		m.followGossipKeys(c.GetGossipKeys())
		m.keepAdminConfig(c)
		want := ""
		if role != pb.NodeRole_NODE_ROLE_UNSPECIFIED {
			want = roleName(role)
		}
		if why := m.creds.RenewalDue(time.Now(), c.GetRootCa().GetDigest(), want); why != "" && role == pb.NodeRole_NODE_ROLE_MANAGER {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := m.creds.Renew(ctx, func(ctx context.Context, csr []byte) ([]byte, []byte, error) {
				resp, err := joinclient.Renew(ctx, m.cfg.APIAddr(), m.creds.Creds(), csr)
				return resp.GetCertificate(), resp.GetRootCas(), err
			})
			cancel()
			if err != nil {
				m.log.Warn("renew this node's certificate; will retry", "why", why, "err", err)
			} else {
				m.log.Info("renewed this node's certificate", "why", why)
			}
		}
	}
}

// followGossipKeys installs the cluster's gossip keys when they change.
func (m *Manager) followGossipKeys(keys [][]byte) {
	if len(keys) == 0 || sameKeys(keys, m.id.GossipKeys) {
		return
	}
	if err := m.gossip.SetKeys(keys); err != nil {
		m.log.Error("install the new gossip keys", "err", err)
		return
	}
	m.id.GossipKeys = keys
	if err := datadir.Save(m.cfg.DataDir, m.id); err != nil {
		m.log.Error("save the new gossip keys", "err", err)
	}
}

func sameKeys(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// keepAdminConfig re-issues the admin client config `init` wrote in this
// data dir when the roots changed or it is two thirds through its life.
func (m *Manager) keepAdminConfig(c *pb.Cluster) {
	path := filepath.Join(m.cfg.DataDir, datadir.AdminFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return // none here
	}
	cc, err := pki.ParseClientConfig(data)
	if err == nil {
		leaf, lerr := pki.ParseCert(cc.CertPEM)
		if lerr == nil && bytes.Equal(cc.RootsPEM, c.GetRootCa().GetTrustBundle()) &&
			time.Now().Before(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore)*2/3)) {
			return
		}
	}
	ca, err := signer(c)
	if err != nil {
		return
	}
	if err := writeAdminConfig(m.cfg.DataDir, ca, c.GetRootCa().GetTrustBundle(), c.GetId(), m.cfg.APIAddr(), certLifetime(c)); err != nil {
		m.log.Error("renew the admin client config", "err", err)
		return
	}
	m.log.Info("renewed the admin client config", "path", path)
}

// loadNodeCreds reads a manager's credentials from its data dir.
func loadNodeCreds(dir string) (*nodecreds.Node, error) {
	nc, err := nodecreds.Load(dir)
	if errors.Is(err, datadir.ErrNoCerts) {
		return nil, fmt.Errorf("%w: this data dir was made by a Shoal without TLS; join the node again with an empty data dir", err)
	}
	return nc, err
}

// retoken keeps a token's secret and swaps its root digest.
func retoken(token, digest string) string {
	_, secret, err := parseToken(token)
	if err != nil {
		return newJoinToken(digest)
	}
	return formatToken(digest, secret)
}

// publicCluster is the cluster object without what never leaves the
// managers: the CA key and the gossip keys.
func publicCluster(c *pb.Cluster) *pb.Cluster {
	if c == nil {
		return nil
	}
	c = cloneCluster(c)
	if c.RootCa != nil {
		c.RootCa.Key = nil
	}
	c.GossipKeys = nil
	return c
}
