package ca

import (
	"context"
	"log/slog"
	"time"

	"github.com/shoal-cluster/shoal/gossip"
	"github.com/shoal-cluster/shoal/internal/clock"
	"github.com/shoal-cluster/shoal/internal/pki"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Authority is the cluster's CA as the leader runs it, on the store's
// cluster object: it issues certificates and rotates the root CA, the
// gossip key and the join tokens. Its operations are the control and
// membership APIs' (they run on the leader).
type Authority struct {
	store raftstore.StateStore
	clock clock.Clock
	log   *slog.Logger
	// checkInterval is how often FinishRotation looks at the nodes.
	checkInterval time.Duration
}

// New returns the authority over the store's cluster object;
// checkInterval paces FinishRotation.
func New(store raftstore.StateStore, clk clock.Clock, checkInterval time.Duration, log *slog.Logger) *Authority {
	return &Authority{store: store, clock: clk, log: log, checkInterval: checkInterval}
}

// RenewNode issues a new certificate for the calling node, with the role
// the store says it has (a promotion or demotion changes it), and records
// it on the node.
func (a *Authority) RenewNode(ctx context.Context, caller pki.Identity, csr []byte) (*pb.RenewCertificateResponse, error) {
	if !caller.IsNode() {
		return nil, status.Error(codes.PermissionDenied, "only nodes renew their certificates; admin clients get a new one with `shoal cluster client-config`")
	}
	var (
		certPEM []byte
		cluster *pb.Cluster
	)
	_, err := a.store.Update(ctx, func(tx *raftstore.Tx) error {
		cluster = tx.Cluster()
		n, ok := tx.Nodes().Get(caller.ID)
		if !ok || cluster == nil {
			return status.Errorf(codes.NotFound, "node %s is not a member of this cluster", caller.ID)
		}
		var info *pb.NodeCertificate
		var err error
		certPEM, info, err = IssueNode(cluster, csr, caller.ID, n.GetRole())
		if err != nil {
			return err
		}
		n.Certificate = info
		return tx.Nodes().Update(n)
	})
	if err != nil {
		return nil, err
	}
	a.log.Info("renewed a node certificate", "node", caller.ID)
	return &pb.RenewCertificateResponse{Certificate: certPEM, RootCas: cluster.GetRootCa().GetTrustBundle(), GossipKeys: cluster.GetGossipKeys()}, nil
}

// IssueClient issues an admin client certificate; by is who asked.
func (a *Authority) IssueClient(ctx context.Context, csr []byte, by pki.Identity) (*pb.IssueClientCertificateResponse, error) {
	var c *pb.Cluster
	a.store.View(func(tx *raftstore.Tx) { c = tx.Cluster() })
	ca, err := signer(c)
	if err != nil {
		return nil, err
	}
	id := pki.Identity{ID: newAdminID(), Role: pki.RoleAdmin, ClusterID: c.GetId()}
	certPEM, err := ca.Issue(csr, id, certLifetime(c))
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "issue a client certificate: %v", err)
	}
	a.log.Info("issued an admin client certificate", "client", id.ID, "by", by.String())
	return &pb.IssueClientCertificateResponse{Certificate: certPEM, RootCas: c.GetRootCa().GetTrustBundle()}, nil
}

// RotateRoot starts a root CA rotation: a new root signs from now on,
// cross-signed by the old one so nodes that trust only the old root accept
// its certificates; every node trusts both until each has renewed, then
// the old root is dropped (FinishRotation). Join tokens carry the new
// root's digest.
func (a *Authority) RotateRoot(ctx context.Context) (*pb.RotateRootCAResponse, error) {
	var digest string
	_, err := a.store.Update(ctx, func(tx *raftstore.Tx) error {
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
	a.log.Info("root CA rotation started", "digest", digest)
	return &pb.RotateRootCAResponse{Digest: digest}, nil
}

// FinishRotation is a leader loop: once every node holds a certificate
// from the new root, the old root is no longer trusted.
func (a *Authority) FinishRotation(ctx context.Context) {
	every(ctx, a.clock, a.checkInterval, func() { a.finishRotation(ctx) })
}

// finishRotation drops the old root if every node renewed.
func (a *Authority) finishRotation(ctx context.Context) {
	var pending bool
	a.store.View(func(tx *raftstore.Tx) { pending = len(tx.Cluster().GetRootCa().GetCrossSigned()) > 0 })
	if !pending {
		return
	}
	var done bool
	_, err := a.store.Update(ctx, func(tx *raftstore.Tx) error {
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
		a.log.Warn("finish the root CA rotation", "err", err)
	} else if done {
		a.log.Info("root CA rotation complete: every node holds a certificate from the new root; the old root is no longer trusted")
	}
}

// every calls fn each interval of clk until ctx ends.
func every(ctx context.Context, clk clock.Clock, interval time.Duration, fn func()) {
	t := clk.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		fn()
	}
}

// RotateGossipKey makes a new gossip key the primary one; nodes keep the
// previous key too, so those that have not learnt the new one yet are
// still understood. The next rotation retires it.
func (a *Authority) RotateGossipKey(ctx context.Context) (*pb.RotateGossipKeyResponse, error) {
	var n int
	_, err := a.store.Update(ctx, func(tx *raftstore.Tx) error {
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
	a.log.Info("gossip key rotated")
	return &pb.RotateGossipKeyResponse{Keys: int32(n)}, nil
}

// RotateJoinToken replaces the worker or manager join token.
func (a *Authority) RotateJoinToken(ctx context.Context, role pb.NodeRole) (*pb.RotateJoinTokenResponse, error) {
	var token string
	_, err := a.store.Update(ctx, func(tx *raftstore.Tx) error {
		c := tx.Cluster()
		if c == nil {
			return status.Error(codes.Unavailable, "the cluster is still initialising; retry")
		}
		if c.JoinTokens == nil {
			c.JoinTokens = &pb.JoinTokens{}
		}
		token = NewJoinToken(c.GetRootCa().GetDigest())
		switch role {
		case pb.NodeRole_NODE_ROLE_WORKER:
			c.JoinTokens.Worker = token
		case pb.NodeRole_NODE_ROLE_MANAGER:
			c.JoinTokens.Manager = token
		default:
			return status.Error(codes.InvalidArgument, "rotate join token: say which one: worker or manager")
		}
		return tx.Clusters().Update(c)
	})
	if err != nil {
		return nil, err
	}
	if token == "" { // a retried request that already committed
		a.store.View(func(tx *raftstore.Tx) {
			token = tx.Cluster().GetJoinTokens().GetWorker()
			if role == pb.NodeRole_NODE_ROLE_MANAGER {
				token = tx.Cluster().GetJoinTokens().GetManager()
			}
		})
	}
	return &pb.RotateJoinTokenResponse{Token: token}, nil
}
