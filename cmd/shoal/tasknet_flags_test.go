package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTaskSubnetPoolFlag: a pool that cannot hold node subnets is refused
// with what to give instead, and no node is made.
func TestTaskSubnetPoolFlag(t *testing.T) {
	for _, tc := range []struct{ pool, want string }{
		{"10.0.0.0/25", "smaller than one node's /24"},
		{"fd00::/48", "not an IPv4 prefix"},
		{"ten-dot-something", "not an IPv4 prefix"},
	} {
		t.Run(tc.pool, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "node")
			code, _, errOut := captureRun(t, "init", "--data-dir", dir, "--advertise", "127.0.0.1:1", "--task-subnet-pool", tc.pool)
			if code == 0 || !strings.Contains(errOut, "--task-subnet-pool") || !strings.Contains(errOut, tc.want) {
				t.Fatalf("init --task-subnet-pool %s: exit %d, stderr %q; want a refusal saying %q", tc.pool, code, errOut, tc.want)
			}
			if ents, _ := os.ReadDir(dir); len(ents) > 0 {
				t.Fatalf("a refused init left %d entries in the data dir", len(ents))
			}
		})
	}
}
