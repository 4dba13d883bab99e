package worker

import (
	"context"
	"slices"
	"time"

	"github.com/shoal-cluster/shoal/gossip"
	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/joinclient"
	"github.com/shoal-cluster/shoal/internal/pki"
	pb "github.com/shoal-cluster/shoal/proto"
)

// noteSecurity follows the cluster's trust roots and gossip keys, as the
// session reports them (at its start and after each rotation).
func (a *Agent) noteSecurity(up *pb.SecurityUpdate) {
	if up == nil {
		return
	}
	if len(up.GetRootCas()) > 0 {
		if err := a.creds.SetRoots(up.GetRootCas()); err != nil {
			a.log.Error("trust the cluster's new roots", "err", err)
		}
	}
	a.mu.Lock()
	a.signingRoot = up.GetRootDigest()
	a.mu.Unlock()
	changed := false
	if revoked := up.GetRevokedNodes(); !slices.Equal(revoked, a.id.Revoked) {
		// Managers removed or demoted: their certificates no longer open
		// a session with this node nor read its tasks' logs.
		a.creds.Creds().SetRevoked(revoked)
		a.id.Revoked = revoked
		changed = true
	}
	if keys := up.GetGossipKeys(); len(keys) > 0 && !gossip.SameKeys(keys, a.id.GossipKeys) {
		if err := a.gossip.SetKeys(keys); err != nil {
			a.log.Error("install the new gossip keys", "err", err)
		} else {
			a.id.GossipKeys = keys
			changed = true
			a.log.Info("gossip keys rotated")
		}
	}
	if !changed {
		return
	}
	if err := datadir.Save(a.cfg.DataDir, a.id); err != nil {
		a.log.Error("save the cluster's gossip keys and revocations", "err", err)
	}
}

// keepCredentials renews the node's certificate when it is due: two
// thirds through its life, after a root CA rotation, or when it carries
// another role (a demoted manager). Open connections, the session's
// included, carry on: only new ones use the new certificate.
func (a *Agent) keepCredentials() {
	defer a.wg.Done()
	t := time.NewTicker(a.cfg.CertCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		signing := a.signingRoot
		a.mu.Unlock()
		why := a.creds.RenewalDue(time.Now(), signing, pki.RoleWorker)
		if why == "" {
			continue
		}
		var err error
		for _, addr := range a.managerCandidates() {
			ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
			err = a.creds.Renew(ctx, func(ctx context.Context, csr []byte) ([]byte, []byte, error) {
				resp, err := joinclient.Renew(ctx, addr, a.creds.Creds(), csr)
				return resp.GetCertificate(), resp.GetRootCas(), err
			})
			cancel()
			if err == nil {
				break
			}
		}
		if err != nil {
			a.log.Warn("renew this node's certificate; will retry", "why", why, "err", err)
			continue
		}
		a.log.Info("renewed this node's certificate", "why", why)
	}
}
