package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestConfigJourneyProcesses drives configs through the CLI against real
// daemons: create from a file and from standard input, bad input refused
// with one line, a service whose task reads its config at its target,
// inspect showing the data and the user, rm refused while in use, a swap
// with --config-rm/--config-add, then rm.
func TestConfigJourneyProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	j := startServiceCluster(t)
	t.Cleanup(func() {
		for id := range j.nodes {
			for _, dir := range []string{"/run", "/dev/shm"} {
				os.Remove(filepath.Join(dir, "shoal-configs-"+id)) // empty once the tasks ended
			}
		}
	})
	host := []string{"--host", j.manager.addr()}
	config := func(sub string, args ...string) (string, string, int) {
		return cli(t, append(append([]string{"config", sub}, host...), args...)...)
	}
	file := filepath.Join(j.base, "app.conf")
	if err := os.WriteFile(file, []byte("mode=v1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := config("create", "app.conf", file)
	j.mustOK("config create", out, errOut, code)
	stdinCmd := cliCommand(context.Background(), append(append([]string{"config", "create"}, host...), "--label", "v=2", "app2.conf", "-")...)
	stdinCmd.Stdin = strings.NewReader("mode=v2\n")
	if b, err := stdinCmd.CombinedOutput(); err != nil {
		t.Fatalf("config create from stdin: %v\n%s", err, b)
	}

	big := filepath.Join(j.base, "big")
	if err := os.WriteFile(big, bytes.Repeat([]byte("x"), 1000*1024+1), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"config", "create", "big", big}, `config "big" is 1024001 bytes, more than the limit of 1024000 bytes (1000 KiB)`},
		{[]string{"config", "create", "x", filepath.Join(j.base, "missing")}, "read the config's data: open"},
		{[]string{"config", "create", "bad/name", file}, `invalid config name "bad/name"`},
		{[]string{"service", "create", "--name", "bad", "--config", "nope", "/bin/true"}, `no config "nope"; create it first`},
		{[]string{"service", "create", "--name", "bad", "--config", "app.conf,target=relative", "/bin/true"}, `target="relative": use an absolute file path`},
	} {
		_, errOut, code := cli(t, append(tc.args, host...)...)
		if first, _, _ := strings.Cut(errOut, "\n"); code == 0 || !strings.Contains(first, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want a first line with %q", tc.args, code, errOut, tc.want)
		}
	}
	out, errOut, code = config("ls")
	j.mustOK("config ls", out, errOut, code)
	if rows := parseTable(t, out); len(rows) != 2 || rows[0]["NAME"] != "app.conf" || rows[0]["SIZE"] != "8B" || rows[1]["NAME"] != "app2.conf" {
		t.Fatalf("config ls after the bad input:\n%s", out)
	}

	script := fmt.Sprintf(`cat "$SHOAL_CONFIGS_DIR/etc/app/app.conf" > %s/out.tmp && mv %s/out.tmp %s/out; exec sleep 600`, j.base, j.base, j.base)
	out, errOut, code = j.converge("create", "--name", "reader", "--config", "source=app.conf,target=/etc/app/app.conf,mode=0440",
		"--stop-grace-period", "1s", "/bin/sh", "-c", script)
	j.mustOK("service create --config", out, errOut, code)
	readsConfig := func(want string) {
		t.Helper()
		eventually(t, 30*time.Second, "the task to read "+want, func() (bool, string) {
			b, err := os.ReadFile(filepath.Join(j.base, "out"))
			return string(b) == want, fmt.Sprintf("%q %v", b, err)
		})
	}
	readsConfig("mode=v1\n")
	out, errOut, code = j.svc("inspect", "--pretty", "reader")
	j.mustOK("service inspect --pretty", out, errOut, code)
	if !strings.Contains(out, "Configs:\n app.conf:  -> /etc/app/app.conf (mode 0440)\n") {
		t.Errorf("service inspect --pretty does not list the config:\n%s", out)
	}
	out, errOut, code = config("inspect", "--pretty", "app.conf")
	j.mustOK("config inspect --pretty", out, errOut, code)
	if !strings.Contains(out, "Used by:  reader\n") || !strings.HasSuffix(out, "Data:\nmode=v1\n") {
		t.Errorf("config inspect --pretty:\n%s", out)
	}
	_, errOut, code = config("rm", "app.conf")
	if code != 1 || !strings.Contains(errOut, `config "app.conf" is in use by service reader`) {
		t.Fatalf("config rm in use: exit %d, stderr %q", code, errOut)
	}

	// Configs cannot change: a new one takes the old one's place.
	out, errOut, code = j.converge("update", "--config-rm", "app.conf", "--config-add", "app2.conf,target=/etc/app/app.conf", "reader")
	j.mustOK("service update --config-rm --config-add", out, errOut, code)
	readsConfig("mode=v2\n")
	eventually(t, 30*time.Second, "config rm once the old task stopped", func() (bool, string) {
		_, errOut, code := config("rm", "app.conf")
		return code == 0, errOut
	})
	out, errOut, code = j.svc("rm", "reader")
	j.mustOK("service rm", out, errOut, code)
	eventually(t, 30*time.Second, "the last config removed", func() (bool, string) {
		_, errOut, code := config("rm", "app2.conf")
		return code == 0, errOut
	})
}
