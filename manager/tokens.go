package manager

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base32"
	"fmt"
	"strings"

	pb "github.com/shoal-cluster/shoal/proto"
)

// tokenPrefix starts every join token: SHOAL-1-<cluster-id>-<secret>.
const tokenPrefix = "SHOAL-1-"

var tokenEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// newJoinToken returns a fresh token for the cluster with 160 random bits.
func newJoinToken(clusterID string) string {
	var b [20]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("manager: no randomness: " + err.Error())
	}
	return tokenPrefix + clusterID + "-" + strings.ToLower(tokenEncoding.EncodeToString(b[:]))
}

// parseToken splits a token into its cluster ID; it checks only the shape.
func parseToken(token string) (clusterID string, err error) {
	rest, ok := strings.CutPrefix(token, tokenPrefix)
	if !ok {
		return "", fmt.Errorf("malformed join token: it must start with %q; copy it from `shoal cluster join-token`", tokenPrefix)
	}
	cid, secret, ok := strings.Cut(rest, "-")
	if !ok || cid == "" || len(secret) < 16 {
		return "", fmt.Errorf("malformed join token; copy it again from `shoal cluster join-token`")
	}
	return cid, nil
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
