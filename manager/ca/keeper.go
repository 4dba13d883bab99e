package ca

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/shoal-cluster/shoal/gossip"
	"github.com/shoal-cluster/shoal/internal/clock"
	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/joinclient"
	"github.com/shoal-cluster/shoal/internal/nodecreds"
	"github.com/shoal-cluster/shoal/internal/pki"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

// Gossip is the node's gossip member, whose keys follow the cluster's.
type Gossip interface {
	SetKeys(keys [][]byte) error
}

// KeyRecord is where the node keeps the gossip keys it holds (its
// identity in the data dir).
type KeyRecord interface {
	GossipKeys() [][]byte
	SaveGossipKeys(keys [][]byte) error
}

// KeeperConfig is what a Keeper needs.
type KeeperConfig struct {
	Store  raftstore.StateStore
	Clock  clock.Clock
	NodeID string
	// Creds are this manager's certificate and roots.
	Creds  *nodecreds.Node
	Gossip Gossip
	Keys   KeyRecord
	// DataDir holds the admin client config the keeper keeps valid.
	DataDir string
	// APIAddr is this manager's: renewals go through it (to the leader),
	// and the admin client config names it.
	APIAddr string
	// Interval is how often the keeper looks.
	Interval time.Duration
	Log      *slog.Logger
}

// Keeper keeps one manager's credentials current: it follows the store's
// roots and gossip keys, renews the manager's certificate when it is due
// (through the leader, which records it), and keeps the admin client
// config in the data dir valid. Every manager runs one.
type Keeper struct {
	cfg KeeperConfig
}

// NewKeeper returns a Keeper; Run runs it.
func NewKeeper(cfg KeeperConfig) *Keeper { return &Keeper{cfg: cfg} }

// Run keeps the credentials current until ctx ends.
func (k *Keeper) Run(ctx context.Context) { every(ctx, k.cfg.Clock, k.cfg.Interval, k.check) }

// check does one round.
func (k *Keeper) check() {
	var c *pb.Cluster
	var role pb.NodeRole
	k.cfg.Store.View(func(tx *raftstore.Tx) {
		c = tx.Cluster()
		if n, ok := tx.Nodes().Get(k.cfg.NodeID); ok {
			role = n.GetRole()
		}
	})
	if c.GetRootCa() == nil {
		return
	}
	creds := k.cfg.Creds
	if err := creds.SetRoots(c.GetRootCa().GetTrustBundle()); err != nil {
		k.cfg.Log.Error("trust the cluster's new roots", "err", err)
	}
	k.followGossipKeys(c.GetGossipKeys())
	k.keepAdminConfig(c)
	if why := creds.RenewalDue(k.cfg.Clock.Now(), c.GetRootCa().GetDigest(), pki.NodeRoleName(role)); why != "" && role == pb.NodeRole_NODE_ROLE_MANAGER {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := creds.Renew(ctx, func(ctx context.Context, csr []byte) ([]byte, []byte, error) {
			resp, err := joinclient.Renew(ctx, k.cfg.APIAddr, creds.Creds(), csr)
			return resp.GetCertificate(), resp.GetRootCas(), err
		})
		cancel()
		if err != nil {
			k.cfg.Log.Warn("renew this node's certificate; will retry", "why", why, "err", err)
		} else {
			k.cfg.Log.Info("renewed this node's certificate", "why", why)
		}
	}
}

// followGossipKeys installs the cluster's gossip keys when they change.
func (k *Keeper) followGossipKeys(keys [][]byte) {
	if len(keys) == 0 || gossip.SameKeys(keys, k.cfg.Keys.GossipKeys()) {
		return
	}
	if err := k.cfg.Gossip.SetKeys(keys); err != nil {
		k.cfg.Log.Error("install the new gossip keys", "err", err)
		return
	}
	if err := k.cfg.Keys.SaveGossipKeys(keys); err != nil {
		k.cfg.Log.Error("save the new gossip keys", "err", err)
	}
}

// keepAdminConfig re-issues the admin client config `init` wrote in this
// data dir when the roots changed or it is two thirds through its life.
func (k *Keeper) keepAdminConfig(c *pb.Cluster) {
	path := filepath.Join(k.cfg.DataDir, datadir.AdminFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return // none here
	}
	cc, err := pki.ParseClientConfig(data)
	if err == nil {
		leaf, lerr := pki.ParseCert(cc.CertPEM)
		if lerr == nil && bytes.Equal(cc.RootsPEM, c.GetRootCa().GetTrustBundle()) &&
			k.cfg.Clock.Now().Before(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore)*2/3)) {
			return
		}
	}
	ca, err := signer(c)
	if err != nil {
		return
	}
	if err := writeAdminConfig(k.cfg.DataDir, ca, c.GetRootCa().GetTrustBundle(), c.GetId(), k.cfg.APIAddr, certLifetime(c)); err != nil {
		k.cfg.Log.Error("renew the admin client config", "err", err)
		return
	}
	k.cfg.Log.Info("renewed the admin client config", "path", path)
}
