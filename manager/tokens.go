package manager

import (
	"crypto/subtle"

	"github.com/shoal-cluster/shoal/internal/jointoken"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// newJoinToken returns a fresh token pinning the root CA with digest.
func newJoinToken(digest string) string { return jointoken.Format(digest, jointoken.NewSecret()) }

// formatToken builds a token from a root digest and a secret.
func formatToken(digest, secret string) string { return jointoken.Format(digest, secret) }

// parseToken splits a token into its root CA digest and secret; it checks
// only the shape.
func parseToken(token string) (digest, secret string, err error) { return jointoken.Parse(token) }

// roleForToken returns the role a token admits, comparing in constant time.
func roleForToken(c *pb.Cluster, token string) (pb.NodeRole, bool) {
	t := []byte(token)
	mgr := subtle.ConstantTimeCompare(t, []byte(c.GetJoinTokens().GetManager())) == 1
	wrk := subtle.ConstantTimeCompare(t, []byte(c.GetJoinTokens().GetWorker())) == 1
	switch {
	case mgr:
		return pb.NodeRole_NODE_ROLE_MANAGER, true
	case wrk:
		return pb.NodeRole_NODE_ROLE_WORKER, true
	}
	return pb.NodeRole_NODE_ROLE_UNSPECIFIED, false
}

// cloneCluster deep-copies a cluster object.
func cloneCluster(c *pb.Cluster) *pb.Cluster { return proto.Clone(c).(*pb.Cluster) }
