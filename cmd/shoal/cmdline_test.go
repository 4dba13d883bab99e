package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
)

// fakeCluster serves a fakeControl with two services over mutual TLS and
// returns its address and the flags of a client config it accepts.
func fakeCluster(t *testing.T) (string, []string) {
	t.Helper()
	fake := &fakeControl{services: map[string]*pb.Service{}, configs: []string{"app.conf", "nginx.conf"}}
	for _, name := range []string{"web", "api"} {
		id := fake.id("s")
		fake.services[id] = &pb.Service{Id: id, Meta: &pb.Meta{Version: 1}, SpecVersion: 1, Spec: &pb.ServiceSpec{
			Annotations: &pb.Annotations{Name: name},
			Task: &pb.TaskSpec{Runtime: "process", Container: &pb.ContainerSpec{Image: "/bin/" + name,
				Configs: []*pb.ConfigReference{{ConfigName: "app.conf", Target: "/app.conf"}}}},
			Mode: &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: 2}},
		}}
	}
	host := serveControl(t, fake)
	return host[1], host[2:]
}

// TestGlobalFlagsBeforeOrAfter: the global flags work before the command,
// after it, in their short form, and from the environment, alike.
func TestGlobalFlagsBeforeOrAfter(t *testing.T) {
	addr, tls := fakeCluster(t)
	config := tls[1]
	tests := []struct {
		name string
		args []string
		env  map[string]string
	}{
		{"after the command", []string{"service", "ls", "-q", "--host", addr, "--client-config", config}, nil},
		{"before the command", []string{"--host", addr, "--client-config", config, "service", "ls", "-q"}, nil},
		{"between the words", []string{"service", "--host", addr, "ls", "--client-config", config, "-q"}, nil},
		{"short form", []string{"-H", addr, "service", "ls", "--client-config=" + config, "--quiet"}, nil},
		{"with =", []string{"--host=" + addr, "service", "ls", "-q", "--client-config=" + config}, nil},
		{"single dash, as the flag package took them", []string{"service", "ls", "-host", addr, "-client-config", config, "-q"}, nil},
		{"environment", []string{"service", "ls", "-q"}, map[string]string{"SHOAL_HOST": addr, "SHOAL_CLIENT_CONFIG": config}},
		{"a flag beats the environment", []string{"service", "ls", "-q", "--host", addr}, map[string]string{"SHOAL_HOST": "127.0.0.1:1", "SHOAL_CLIENT_CONFIG": config}},
	}
	var want string
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			code, out, errOut := captureRun(t, tt.args...)
			if code != 0 || len(strings.Fields(out)) != 2 {
				t.Fatalf("shoal %q: exit %d, stdout %q, stderr %q; want the two service IDs", tt.args, code, out, errOut)
			}
			if i == 0 {
				want = out
			} else if out != want {
				t.Errorf("shoal %q printed %q, want %q", tt.args, out, want)
			}
		})
	}
}

// TestWrongCommandLinesExit2: every mistake in the command line exits 2
// with one error line and a pointer to the command's help, before any
// connection is tried (no cluster listens at --host, given to every case:
// the commands that run here refuse it).
func TestWrongCommandLinesExit2(t *testing.T) {
	tests := []struct {
		args []string
		want string // the error line
		help string // the command whose help it points to
	}{
		{[]string{"nodez"}, `unknown command "nodez" for "shoal"; did you mean "node"?`, "shoal"},
		{[]string{"service", "inspec"}, `unknown command "inspec" for "shoal service"; did you mean "inspect"?`, "shoal service"},
		{[]string{"service", "frobnicate"}, `unknown command "frobnicate" for "shoal service"`, "shoal service"},
		{[]string{"node", "ls", "--frobnicate"}, "flag provided but not defined: -frobnicate", "shoal node ls"},
		{[]string{"--frobnicate", "node", "ls"}, "flag provided but not defined: -frobnicate", "shoal"},
		{[]string{"service", "ls", "-x"}, "flag provided but not defined: -x", "shoal service ls"},
		{[]string{"service", "create", "--replicas", "three", "/bin/app"}, `invalid value "three" for flag -replicas: use a whole number`, "shoal service create"},
		{[]string{"service", "create", "--restart-delay", "5x", "/bin/app"}, `invalid value "5x" for flag -restart-delay: use a duration`, "shoal service create"},
		{[]string{"service", "create", "--replicas"}, "flag needs an argument: --replicas", "shoal service create"},
		{[]string{"service", "create"}, "service create needs an IMAGE", "shoal service create"},
		{[]string{"service", "update", "a", "b"}, "service update needs exactly one service name or ID", "shoal service update"},
		{[]string{"service", "scale"}, "service scale needs SERVICE=REPLICAS", "shoal service scale"},
		{[]string{"node", "inspect"}, "node inspect needs at least one node ID or hostname", "shoal node inspect"},
		{[]string{"node", "update", "--availability", "sideways", "m1"}, `--availability "sideways": use active, pause or drain`, "shoal node update"},
		{[]string{"secret", "create", "x"}, "secret create needs a NAME and a FILE", "shoal secret create"},
		{[]string{"cluster", "join-token", "boss"}, "say which token", "shoal cluster join-token"},
		{[]string{"cluster", "ca"}, "say what to do: `shoal cluster ca --rotate`", "shoal cluster ca"},
		{[]string{"version", "now"}, "version takes no arguments", "shoal version"},
		{[]string{"completion", "bash", "extra"}, `unknown command "extra" for "shoal completion bash"`, "shoal completion bash"},
		{[]string{"init", "--host", "m1"}, "--host is for client commands: init runs a node on this machine", "shoal init"},
		{[]string{"image", "load", "image.tar"}, "--host is for client commands: image load loads into this node's image store (see --data-dir), or with --docker into the Docker Engine of this machine", "shoal image load"},
		{[]string{"service", "ls", "--format", "yaml"}, `--format "yaml": use table or json`, "shoal service ls"},
		{[]string{"service", "inspect", "web\xff"}, `argument "web\xff" is not valid UTF-8 text`, "shoal service inspect"},
		{[]string{"dashboard", "--addr", "0.0.0.0:8080"}, "--addr 0.0.0.0:8080 serves on 0.0.0.0, not only loopback: give --tls-cert and --tls-key to serve HTTPS there, or use 127.0.0.1:PORT", "shoal dashboard"},
		{[]string{"dashboard", "--addr", ":8080"}, "--addr :8080 serves on every address, not only loopback", "shoal dashboard"},
		{[]string{"dashboard", "--addr", "8080"}, `--addr "8080": use IP:PORT, such as 127.0.0.1:8080`, "shoal dashboard"},
		{[]string{"dashboard", "--tls-cert", "cert.pem"}, "give both --tls-cert and --tls-key, or neither", "shoal dashboard"},
		{[]string{"dashboard", "now"}, "dashboard takes no arguments: choose where it listens with --addr IP:PORT", "shoal dashboard"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			args := append([]string{"--host", "127.0.0.1:1"}, tt.args...)
			start := time.Now()
			code, out, errOut := captureRun(t, args...)
			want := "Error: " + tt.want
			if code != 2 || !strings.HasPrefix(errOut, want) || out != "" {
				t.Fatalf("shoal %q: exit %d, stdout %q, stderr %q; want exit 2 and %q", args, code, out, errOut, want)
			}
			if lines := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n"); len(lines) != 2 || lines[1] != "See '"+tt.help+" --help'." {
				t.Errorf("stderr %q: want the error and \"See '%s --help'.\"", errOut, tt.help)
			}
			if d := time.Since(start); d > 500*time.Millisecond {
				t.Errorf("took %s: a command line mistake is found before any connection", d)
			}
		})
	}

	// A command group alone prints its usage to stderr and exits 2;
	// asking for help is not a mistake.
	for _, args := range [][]string{nil, {"service"}, {"node"}} {
		code, out, errOut := captureRun(t, args...)
		if code != 2 || out != "" || !strings.HasPrefix(errOut, "Usage:\n  shoal") || strings.Contains(errOut, "Error") {
			t.Errorf("shoal %q: exit %d, stdout %q, stderr %q; want its usage on stderr and exit 2", args, code, out, errOut)
		}
	}
	for _, args := range [][]string{{"--help"}, {"service", "--help"}, {"help", "service", "create"}, {"service", "create", "-h"}} {
		code, out, errOut := captureRun(t, args...)
		if code != 0 || !strings.Contains(out, "Usage:\n  shoal") || errOut != "" {
			t.Errorf("shoal %q: exit %d, stdout %q, stderr %q; want help on stdout and exit 0", args, code, out, errOut)
		}
	}
}

// TestServiceHelpGroups: service create's help lists its flags by concern,
// with the global flags last.
func TestServiceHelpGroups(t *testing.T) {
	code, out, _ := captureRun(t, "service", "create", "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	last := -1
	for _, title := range append(append([]string{"Flags"}, serviceFlagGroups()...), globalFlagsTitle) {
		i := strings.Index(out, "\n"+title+":\n")
		if i < last {
			t.Errorf("help: no %q section after the previous one:\n%s", title, out)
		}
		last = i
	}
	for _, want := range []string{"  -p, --publish port ", "  -e, --env KEY=VALUE ", "  -H, --host IP[:PORT] ", "  -d, --detach    "} {
		if !strings.Contains(out, want) {
			t.Errorf("help lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "true|false") {
		t.Errorf("help shows pflag's [=true|false]:\n%s", out)
	}
}

func TestNormalizeFlags(t *testing.T) {
	root := newRootCommand()
	tests := []struct{ in, want string }{
		{"service create -replicas 3 -publish 80 /bin/app -name x", "service create --replicas 3 --publish 80 /bin/app -name x"},
		{"service create -p 80 -e A=1 -dq /bin/app", "service create -p 80 -e A=1 -dq /bin/app"},
		{"service create -eFOO=1 -publish=8080:80 /bin/app", "service create -eFOO=1 --publish=8080:80 /bin/app"},
		{"-host m1 node ls -q", "--host m1 node ls -q"},
		{"node ls -host -quiet", "node ls --host -quiet"}, // -quiet is --host's value
		{"service update -env-add -replicas web", "service update --env-add -replicas web"},
		{"service create -- -replicas", "service create -- -replicas"},
		{"service ls -help", "service ls --help"},
		{"service ls -bogus", "service ls -bogus"},
		{"service logs -f -n 5 web", "service logs -f -n 5 web"},
	}
	for _, tt := range tests {
		if got := strings.Join(normalizeFlags(root, strings.Fields(tt.in)), " "); got != tt.want {
			t.Errorf("normalizeFlags(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestCompletionFakeCluster drives cobra's completion entry point against
// a fake cluster: names from the cluster, words for enum flags, nothing
// (and quickly) when no cluster answers.
func TestCompletionFakeCluster(t *testing.T) {
	addr, tls := fakeCluster(t)
	complete := func(args ...string) ([]string, string) {
		t.Helper()
		full := append(append([]string{"__complete", "--host", addr}, tls...), args...)
		code, out, errOut := captureRun(t, full...)
		if code != 0 {
			t.Fatalf("shoal %q: exit %d, stderr %q", full, code, errOut)
		}
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		var words []string
		for _, l := range lines[:len(lines)-1] {
			words = append(words, strings.SplitN(l, "\t", 2)[0])
		}
		return words, lines[len(lines)-1]
	}
	tests := []struct {
		args      []string
		want      []string
		directive string
	}{
		{[]string{"service", "scale", ""}, []string{"api=", "web="}, ":6"},
		{[]string{"service", "scale", "w"}, []string{"web="}, ":6"},
		{[]string{"service", "scale", "web=2", ""}, []string{"api="}, ":6"},
		{[]string{"service", "scale", "web="}, nil, ":6"},
		{[]string{"service", "ps", "api", ""}, []string{"web"}, ":4"},
		{[]string{"service", "update", ""}, []string{"api", "web"}, ":4"},
		{[]string{"service", "update", "web", ""}, nil, ":4"},
		{[]string{"service", "logs", "a"}, []string{"api"}, ":4"},
		{[]string{"node", "inspect", ""}, []string{"w1", "w2"}, ":4"},
		{[]string{"node", "rm", "n1"}, []string{"n1aaaaaaaaaaaaaaaaaaaaaaa"}, ":4"},
		{[]string{"service", "create", "--constraint", "node.hostname=="}, []string{"node.hostname==w1", "node.hostname==w2"}, ":4"},
		{[]string{"service", "create", "--constraint", "node.r"}, []string{"node.role=="}, ":6"},
		{[]string{"service", "create", "--mode", ""}, []string{"replicated", "global", "replicated-job", "global-job"}, ":4"},
		{[]string{"service", "update", "web", "--update-failure-action", "r"}, []string{"rollback"}, ":4"},
		{[]string{"service", "create", "--runtime", ""}, []string{"process", "docker", "container"}, ":4"},
		{[]string{"node", "update", "--availability", ""}, []string{"active", "pause", "drain"}, ":4"},
		{[]string{"service", "ls", "--format", ""}, []string{"table", "json"}, ":4"},
		{[]string{"service", "ps", "--filter", "node="}, []string{"node=w1", "node=w2"}, ":4"},
		{[]string{"service", "create", "--replicas", ""}, nil, ":4"},
		{[]string{"cluster", "join-token", ""}, []string{"worker", "manager"}, ":4"},
		{[]string{"config", "rm", ""}, []string{"app.conf", "nginx.conf"}, ":4"},
		{[]string{"config", "inspect", "app.conf", "n"}, []string{"nginx.conf"}, ":4"},
		{[]string{"config", "inspect", "app.conf", ""}, []string{"nginx.conf"}, ":4"},
		{[]string{"service", "create", "--config", ""}, []string{"app.conf", "nginx.conf"}, ":4"},
		{[]string{"service", "update", "web", "--config-rm", ""}, []string{"app.conf"}, ":4"},
		{[]string{"config", "ls", "--format", ""}, []string{"table", "json"}, ":4"},
	}
	for _, tt := range tests {
		got, directive := complete(tt.args...)
		if !slices.Equal(got, tt.want) || directive != tt.directive {
			t.Errorf("complete %q = %q %s, want %q %s", tt.args, got, directive, tt.want, tt.directive)
		}
	}

	// No cluster: nothing offered, no error, soon.
	start := time.Now()
	code, out, _ := captureRun(t, append(append([]string{"__complete", "--host", "127.0.0.1:1"}, tls...), "service", "scale", "")...)
	if code != 0 || out != ":6\n" {
		t.Errorf("completion with no cluster: exit %d, stdout %q; want only the directive", code, out)
	}
	if d := time.Since(start); d > completionTimeout+time.Second {
		t.Errorf("completion with no cluster took %s", d)
	}
}
