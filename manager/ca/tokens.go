package ca

import (
	"crypto/subtle"

	"github.com/shoal-cluster/shoal/internal/jointoken"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// NewJoinToken returns a fresh token pinning the root CA with digest.
func NewJoinToken(digest string) string { return jointoken.Format(digest, jointoken.NewSecret()) }

// ParseToken splits a token into its root CA digest and secret; it checks
// only the shape.
func ParseToken(token string) (digest, secret string, err error) { return jointoken.Parse(token) }

// retoken keeps a token's secret and swaps its root digest.
func retoken(token, digest string) string {
	_, secret, err := ParseToken(token)
	if err != nil {
		return NewJoinToken(digest)
	}
	return jointoken.Format(digest, secret)
}

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

// CheckToken returns the role a token grants in this cluster.
func CheckToken(cluster *pb.Cluster, token string) (pb.NodeRole, error) {
	digest, _, err := ParseToken(token)
	if err != nil {
		return 0, status.Error(codes.InvalidArgument, err.Error())
	}
	if digest != cluster.GetRootCa().GetDigest() {
		return 0, status.Errorf(codes.PermissionDenied, "the join token pins another root CA than this cluster's (it is for another cluster, or from before a CA rotation); get a token with `shoal cluster join-token` on this cluster")
	}
	role, ok := roleForToken(cluster, token)
	if !ok {
		return 0, status.Error(codes.PermissionDenied, "invalid join token (it may have been rotated); get the current one with `shoal cluster join-token manager|worker`")
	}
	return role, nil
}
