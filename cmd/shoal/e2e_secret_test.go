package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestSecretJourneyProcesses drives secrets through the CLI against real
// daemons: create from a file and from standard input, a service that
// reads its secret, inspect, rm refused while in use, then allowed; an
// oversized secret refused and logged once; no plaintext in the manager's
// Raft files or log, nor in the workers' data dirs.
func TestSecretJourneyProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	j := startServiceCluster(t)
	t.Cleanup(func() {
		for id := range j.nodes {
			os.Remove(filepath.Join("/dev/shm", "shoal-secrets-"+id)) // empty once the tasks ended
		}
	})
	host := []string{"--host", j.manager.addr()}
	secret := func(sub string, args ...string) (string, string, int) {
		return cli(t, append(append([]string{"secret", sub}, host...), args...)...)
	}
	raw := make([]byte, 16)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	value := "e2e-secret-" + hex.EncodeToString(raw)
	file := filepath.Join(j.base, "value")
	if err := os.WriteFile(file, []byte(value), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := secret("create", "db-pass", file)
	j.mustOK("secret create", out, errOut, code)
	if !regexp.MustCompile(`^[a-z0-9]{20,}\n$`).MatchString(out) {
		t.Fatalf("secret create printed %q, want the ID", out)
	}
	stdinCmd := exec.Command(shoalBin, append(append([]string{"secret", "create"}, host...), "from-stdin", "-")...)
	stdinCmd.Stdin = strings.NewReader("another value")
	if b, err := stdinCmd.CombinedOutput(); err != nil {
		t.Fatalf("secret create from stdin: %v\n%s", err, b)
	}

	big := filepath.Join(j.base, "big")
	if err := os.WriteFile(big, bytes.Repeat([]byte("x"), 500*1024+1), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = secret("create", "big", big)
	if code != 1 || !strings.Contains(errOut, `secret "big" is 512001 bytes, more than the limit of 512000 bytes (500 KiB)`) {
		t.Fatalf("oversized secret: exit %d, stderr %q", code, errOut)
	}

	out, errOut, code = secret("ls")
	j.mustOK("secret ls", out, errOut, code)
	rows := parseTable(t, out)
	if len(rows) != 2 || rows[0]["NAME"] != "db-pass" || rows[0]["SIZE"] != fmt.Sprintf("%dB", len(value)) || rows[1]["NAME"] != "from-stdin" {
		t.Fatalf("secret ls:\n%s", out)
	}

	script := fmt.Sprintf(`cat "$SHOAL_SECRETS_DIR/pw" > %s/out; exec sleep 600`, j.base)
	out, errOut, code = j.converge("create", "--name", "reader", "--secret", "db-pass,target=pw", "--stop-grace-period", "1s", "/bin/sh", "-c", script)
	j.mustOK("service create --secret", out, errOut, code)
	eventually(t, 20*time.Second, "the task to read its secret", func() (bool, string) {
		b, err := os.ReadFile(filepath.Join(j.base, "out"))
		return string(b) == value, fmt.Sprintf("%q %v", b, err)
	})
	out, errOut, code = j.svc("inspect", "--pretty", "reader")
	j.mustOK("service inspect --pretty", out, errOut, code)
	if !strings.Contains(out, "Secrets:\n db-pass:  -> pw (mode 0400)\n") {
		t.Errorf("service inspect --pretty does not list the secret:\n%s", out)
	}
	out, errOut, code = secret("inspect", "--pretty", "db-pass")
	j.mustOK("secret inspect --pretty", out, errOut, code)
	if !strings.Contains(out, "Used by:  reader") || strings.Contains(out, value) {
		t.Errorf("secret inspect --pretty:\n%s", out)
	}
	_, errOut, code = secret("rm", "db-pass")
	if code != 1 || !strings.Contains(errOut, `secret "db-pass" is in use by service reader`) {
		t.Fatalf("secret rm in use: exit %d, stderr %q", code, errOut)
	}

	out, errOut, code = j.svc("rm", "reader")
	j.mustOK("service rm", out, errOut, code)
	eventually(t, 30*time.Second, "secret rm once the tasks stopped", func() (bool, string) {
		_, errOut, code := secret("rm", "db-pass", "from-stdin")
		return code == 0, errOut
	})

	// Nothing holds the plaintext: the manager's Raft files and log, the
	// workers' data dirs (task db, runtime state).
	var scanned int
	for _, dir := range []string{filepath.Join(j.base, "m1"), filepath.Join(j.base, "w1"), filepath.Join(j.base, "w2")} {
		_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			b, err := os.ReadFile(path)
			if err == nil {
				scanned++
				if bytes.Contains(b, []byte(value)) {
					t.Errorf("plaintext in %s", path)
				}
			}
			return nil
		})
	}
	logData, err := os.ReadFile(j.manager.log.Name())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(logData, []byte(value)) {
		t.Error("the manager's log holds the secret's value")
	}
	if n := bytes.Count(logData, []byte("secret refused: too large")); n != 1 {
		t.Errorf("the oversized secret was logged %d times, want once", n)
	}
	if scanned < 5 {
		t.Errorf("only %d files scanned: the scan looks in the wrong place", scanned)
	}
}
