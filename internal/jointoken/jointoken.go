// Package jointoken is the format of join tokens:
// SHOAL-1-<root CA digest>-<secret>. The digest lets a joining node check
// that it talks to the right cluster before it sends anything; the secret
// is what it trades for its certificate.
package jointoken

import (
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"strings"
)

// Prefix starts every join token.
const Prefix = "SHOAL-1-"

var encoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// NewSecret returns a fresh token secret with 160 random bits.
func NewSecret() string {
	var b [20]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("jointoken: no randomness: " + err.Error())
	}
	return strings.ToLower(encoding.EncodeToString(b[:]))
}

// Format builds a token from the root CA digest and a secret.
func Format(digest, secret string) string { return Prefix + digest + "-" + secret }

// Parse splits a token into the root CA digest and the secret; it checks
// only the shape.
func Parse(token string) (digest, secret string, err error) {
	rest, ok := strings.CutPrefix(token, Prefix)
	if !ok {
		return "", "", fmt.Errorf("malformed join token: it must start with %q; copy it from `shoal cluster join-token`", Prefix)
	}
	digest, secret, ok = strings.Cut(rest, "-")
	if !ok || len(digest) != 52 || len(secret) < 16 {
		return "", "", fmt.Errorf("malformed join token; copy it again from `shoal cluster join-token`")
	}
	return digest, secret, nil
}
