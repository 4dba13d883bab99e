package jointoken

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	digest := strings.Repeat("a", 52)
	secret := NewSecret()
	cases := []struct {
		token   string
		wantErr string
	}{
		{Format(digest, secret), ""},
		{"SWARM-1-" + digest + "-" + secret, "must start with"},
		{Prefix + digest, "malformed"},
		{Prefix + "short-" + secret, "malformed"},
		{Prefix + digest + "-tooshort", "malformed"},
	}
	for _, tc := range cases {
		d, s, err := Parse(tc.token)
		if tc.wantErr == "" {
			if err != nil || d != digest || s != secret {
				t.Errorf("Parse(%q) = %q, %q, %v", tc.token, d, s, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("Parse(%q): %v, want %q", tc.token, err, tc.wantErr)
		}
	}
	if a, b := NewSecret(), NewSecret(); a == b {
		t.Fatal("two secrets are equal")
	}
}
