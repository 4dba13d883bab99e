package jointoken

import (
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary join tokens (from a joining node or a user) to
// the parser: it refuses with one "malformed join token" error, or the
// parts it returns make the token again; every token the cluster issues
// parses back to its parts.
func FuzzParse(f *testing.F) {
	digest := strings.Repeat("a", 52)
	f.Add(Format(digest, NewSecret()))
	f.Add(Prefix + digest + "-short")
	f.Add(Prefix + "-" + NewSecret())
	f.Add("SHOAL-1-abcdef-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
	f.Add("nonsense")
	f.Add("")
	f.Fuzz(func(t *testing.T, token string) {
		d, s, err := Parse(token)
		if err != nil {
			if d != "" || s != "" || !strings.Contains(err.Error(), "malformed join token") {
				t.Fatalf("Parse(%q) = %q, %q, %v: want one malformed-token error", token, d, s, err)
			}
			return
		}
		if Format(d, s) != token || strings.Contains(d, "-") {
			t.Fatalf("Parse(%q) = %q, %q: the parts do not make the token", token, d, s)
		}
		fresh := NewSecret()
		if d2, s2, err := Parse(Format(d, fresh)); err != nil || d2 != d || s2 != fresh {
			t.Fatalf("a fresh token for %q parses to %q, %q, %v", d, d2, s2, err)
		}
	})
}
