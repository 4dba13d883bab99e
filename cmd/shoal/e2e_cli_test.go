package main

// Completion and the runtime IMAGE chooses, against real `shoal` processes:
// a manager on 127.0.0.31, then a worker on 127.0.0.32 that cannot reach a
// Docker Engine (it offers the process runtime only).

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/worker/container"
)

func TestCompletionAndRuntimeChoice(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	// The worker started below finds no Docker Engine, whatever this
	// machine has.
	t.Setenv("DOCKER_HOST", "unix://"+filepath.Join(t.TempDir(), "no-docker.sock"))
	t.Setenv(container.RuncEnv, "/nonexistent/runc") // nor the container runtime
	ips := []string{"127.0.0.31", "127.0.0.32"}
	port := freePort(t, ips...)
	base := t.TempDir()
	mdir := filepath.Join(base, "m1")
	m := startDaemon(t, ips[0], port, mdir, "init", "--data-dir", mdir, "--advertise", fmt.Sprintf("%s:%d", ips[0], port),
		"--hostname", "m1", "--gossip-fast", "--heartbeat-period", "500ms")
	host := []string{"--host", m.addr()}
	svc := func(args ...string) (string, string, int) {
		return cli(t, append(append([]string{"service"}, host...), args...)...)
	}
	runtimeOf := func(name string) string {
		out, errOut, code := svc("inspect", name)
		if code != 0 {
			t.Fatalf("service inspect %s: %s", name, errOut)
		}
		var got []struct {
			Spec struct {
				Task struct {
					Runtime string `json:"runtime"`
				} `json:"task"`
			} `json:"spec"`
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 1 {
			t.Fatalf("service inspect %s: %v\n%s", name, err, out)
		}
		return got[0].Spec.Task.Runtime
	}
	eventually(t, 20*time.Second, "the manager", func() (bool, string) {
		_, errOut, code := cli(t, "node", "ls", "--host", m.addr(), "--timeout", "2s")
		return code == 0, errOut
	})

	// No worker yet: any runtime is accepted, and its tasks wait for one.
	if out, errOut, code := svc("create", "-d", "--name", "early", "--replicas", "0", "nginx"); code != 0 {
		t.Fatalf("service create of a container image with no worker yet: exit %d, %s%s", code, out, errOut)
	}
	if rt := runtimeOf("early"); rt != "docker" {
		t.Errorf("service early (IMAGE nginx) runs on %q, want docker", rt)
	}

	token, errOut, code := cli(t, "cluster", "join-token", "-q", "worker", "--host", m.addr())
	if code != 0 {
		t.Fatalf("join-token: %s", errOut)
	}
	wdir := filepath.Join(base, "w1")
	startDaemon(t, ips[1], port, wdir, "join", "--data-dir", wdir, "--advertise", fmt.Sprintf("%s:%d", ips[1], port),
		"--hostname", "w1", "--gossip-fast", "--token", strings.TrimSpace(token), m.addr())
	eventually(t, 30*time.Second, "w1 Ready with the process runtime alone", func() (bool, string) {
		out, errOut, code := cli(t, "node", "inspect", "--pretty", "w1", "--host", m.addr(), "--timeout", "2s")
		return code == 0 && strings.Contains(out, "State:\t\t\tReady") && strings.Contains(out, "Runtimes:\t\tprocess\n"), out + errOut
	})
	// It says why it offers neither container runtime.
	if out, errOut, _ := cli(t, "node", "inspect", "--pretty", "w1", "--host", m.addr(), "--timeout", "2s"); !strings.Contains(out, "Runtime not offered:\tcontainer (") ||
		!strings.Contains(out, "Runtime not offered:\tdocker (") {
		t.Errorf("node inspect of w1 does not say why it offers neither container runtime:\n%s%s", out, errOut)
	}

	// The runtime follows IMAGE; one no worker offers is refused, saying
	// which offer what.
	out, errOut, code := svc("create", "-d", "--name", "web2", "nginx")
	want := "Error: no node offers the docker runtime (w1 offers process; start the Docker Engine on a worker or use --runtime process with an absolute path)\n"
	if code != 1 || errOut != want || out != "" {
		t.Errorf("service create nginx with no Docker worker: exit %d, stdout %q, stderr %q; want exit 1 and %q", code, out, errOut, want)
	}
	for _, name := range []string{"web", "api"} {
		if out, errOut, code := svc("create", "-d", "--name", name, "--replicas", "0", "/bin/sleep", "600"); code != 0 {
			t.Fatalf("service create %s: exit %d, %s%s", name, code, out, errOut)
		}
		if rt := runtimeOf(name); rt != "process" {
			t.Errorf("service %s (IMAGE /bin/sleep) runs on %q, want process", name, rt)
		}
	}
	// A service whose runtime no worker offers can still be changed.
	if out, errOut, code := svc("scale", "-d", "early=0"); code != 0 {
		t.Errorf("service scale early: exit %d, %s%s", code, out, errOut)
	}

	// Completion through cobra's entry point, as the shell asks for it.
	complete := func(args ...string) ([]string, string) {
		t.Helper()
		start := time.Now()
		out, errOut, code := cli(t, append([]string{"__complete"}, args...)...)
		if code != 0 {
			t.Fatalf("shoal __complete %q: exit %d, %s", args, code, errOut)
		}
		if d := time.Since(start); d > completionTimeout+2*time.Second {
			t.Errorf("shoal __complete %q took %s", args, d)
		}
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		var words []string
		for _, l := range lines[:len(lines)-1] {
			words = append(words, strings.SplitN(l, "\t", 2)[0])
		}
		sort.Strings(words)
		return words, lines[len(lines)-1]
	}
	noSpace := ":" + strconv.Itoa(2|4) // NoSpace | NoFileComp
	tests := []struct {
		args      []string
		want      []string
		directive string
	}{
		{[]string{"service", "scale", "--host", m.addr(), ""}, []string{"api=", "early=", "web="}, noSpace},
		{[]string{"--host", m.addr(), "service", "scale", "w"}, []string{"web="}, noSpace},
		{[]string{"service", "scale", "--host", m.addr(), "web=3", ""}, []string{"api=", "early="}, noSpace},
		{[]string{"service", "rm", "--host", m.addr(), "a"}, []string{"api"}, ":4"},
		{[]string{"node", "inspect", "--host", m.addr(), ""}, []string{"m1", "w1"}, ":4"},
		{[]string{"service", "create", "--host", m.addr(), "--constraint", "node.hostname=="}, []string{"node.hostname==m1", "node.hostname==w1"}, ":4"},
		{[]string{"service", "update", "--host", m.addr(), "--update-order", ""}, []string{"start-first", "stop-first"}, ":4"},
	}
	for _, tt := range tests {
		got, directive := complete(tt.args...)
		if !slices.Equal(got, tt.want) || directive != tt.directive {
			t.Errorf("shoal __complete %q = %q %s, want %q %s", tt.args, got, directive, tt.want, tt.directive)
		}
	}
	// No cluster at --host: nothing offered, and no error.
	deadPort := freePort(t, "127.0.0.9")
	if got, directive := complete("service", "scale", "--host", fmt.Sprintf("127.0.0.9:%d", deadPort), "--data-dir", mdir, ""); len(got) != 0 || directive != noSpace {
		t.Errorf("completion with no cluster: %q %s, want nothing", got, directive)
	}

	if out, errOut, code := svc("rm", "early", "web", "api"); code != 0 {
		t.Errorf("service rm: exit %d, %s%s", code, out, errOut)
	}
}
