package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// dockerCLI runs the real docker CLI against a Shoal manager.
type dockerCLI struct {
	t   *testing.T
	bin string
	env []string // DOCKER_* for the manager it talks to
}

// run runs `docker ARGS` (stdin from in, if any) and returns its output,
// error output and exit code.
func (d *dockerCLI) run(timeout time.Duration, in string, args ...string) (string, string, int) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.bin, args...)
	cmd.Env = d.env
	if in != "" {
		cmd.Stdin = strings.NewReader(in)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return out.String(), errb.String(), ee.ExitCode()
	case err != nil:
		d.t.Fatalf("run docker %v: %v", args, err)
	}
	return out.String(), errb.String(), 0
}

// dockerEnv is the environment for the docker CLI talking to host (with
// TLS certificates in certDir, if set), with a config dir of its own so
// that no context or setting of the machine's user applies.
func dockerEnv(t *testing.T, host, certDir string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DOCKER_") {
			env = append(env, kv)
		}
	}
	env = append(env, "DOCKER_HOST="+host, "DOCKER_CONFIG="+t.TempDir())
	if certDir != "" {
		env = append(env, "DOCKER_TLS_VERIFY=1", "DOCKER_CERT_PATH="+certDir)
	}
	return env
}

// dockerStep is one docker command and what its output must show.
type dockerStep struct {
	name    string
	stdin   string
	args    []string
	timeout time.Duration
	// code is the exit code wanted; want are fragments of stdout+stderr
	// (each a regular expression); not must not appear.
	code int
	want []string
	not  []string
}

func (d *dockerCLI) step(s dockerStep) string {
	d.t.Helper()
	if s.timeout == 0 {
		s.timeout = 30 * time.Second
	}
	out, errOut, code := d.run(s.timeout, s.stdin, s.args...)
	all := out + errOut
	if code != s.code {
		d.t.Fatalf("%s: docker %s exited %d, want %d:\n%s", s.name, strings.Join(s.args, " "), code, s.code, all)
	}
	for _, w := range s.want {
		if !regexp.MustCompile(w).MatchString(all) {
			d.t.Fatalf("%s: docker %s: output lacks %q:\n%s", s.name, strings.Join(s.args, " "), w, all)
		}
	}
	for _, w := range s.not {
		if regexp.MustCompile(w).MatchString(all) {
			d.t.Fatalf("%s: docker %s: output has %q:\n%s", s.name, strings.Join(s.args, " "), w, all)
		}
	}
	return out
}

// dockerAPICluster is three managers serving the Docker Engine API and
// two workers, as shoal processes, with the docker CLI pointed at the
// first manager's unix socket.
type dockerAPICluster struct {
	base  string // the nodes' data dirs and the hello binary are under it
	bin   string // the docker CLI
	hello string // the sample app, built for the process runtime
	ips   []string
	names []string
	nodes map[string]*node
	dport int    // the managers' Docker API port (TLS)
	certs string // the admin certificate for TLS, as the docker CLI reads it
	d     *dockerCLI
}

// startDockerAPICluster starts the cluster (skipping where there is no
// docker CLI, except in CI) on the loopback addresses ips (five).
func startDockerAPICluster(t *testing.T, ips []string) *dockerAPICluster {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a five-node cluster")
	}
	bin, err := exec.LookPath("docker")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("the docker CLI is required in CI")
		}
		t.Skip("no docker CLI on this machine")
	}
	base, err := os.MkdirTemp("", "shoal-dk-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for len(processesUnder(base)) > 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		for pid := range processesUnder(base) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		os.RemoveAll(base)
	})
	hello := filepath.Join(base, "bin", "hello")
	if out, err := exec.Command("go", "build", "-o", hello, "../hello").CombinedOutput(); err != nil {
		t.Fatalf("build hello: %v\n%s", err, out)
	}

	port := freePort(t, ips...)
	dport := freePort(t, ips...)
	names := []string{"m1", "m2", "m3", "w1", "w2"}
	nodes := map[string]*node{}
	daemonArgs := func(i int) []string {
		args := []string{"--data-dir", filepath.Join(base, names[i]), "--advertise", fmt.Sprintf("%s:%d", ips[i], port),
			"--hostname", names[i], "--gossip-fast", "--heartbeat-period", "500ms"}
		if i < 3 {
			args = append(args, "--docker-api-addr", net.JoinHostPort(ips[i], strconv.Itoa(dport)))
		}
		return args
	}
	nodes["m1"] = startDaemon(t, ips[0], port, filepath.Join(base, "m1"), append([]string{"init"}, daemonArgs(0)...)...)
	m1 := nodes["m1"].addr()
	token := func(role string) string {
		var tok string
		eventually(t, 20*time.Second, "the "+role+" token", func() (bool, string) {
			out, errOut, code := cli(t, "cluster", "join-token", "-q", role, "--host", m1, "--timeout", "2s")
			tok = strings.TrimSpace(out)
			return code == 0 && strings.HasPrefix(tok, "SHOAL-1-"), errOut
		})
		return tok
	}
	mtok, wtok := token("manager"), token("worker")
	for i := 1; i < 5; i++ {
		tok := mtok
		if i >= 3 {
			tok = wtok
		}
		nodes[names[i]] = startDaemon(t, ips[i], port, filepath.Join(base, names[i]),
			append(append([]string{"join"}, daemonArgs(i)...), "--token", tok, m1)...)
		if i < 3 { // managers join one at a time
			want := i + 1
			eventually(t, 30*time.Second, fmt.Sprintf("%d managers", want), func() (bool, string) {
				out, errOut, code := cli(t, "node", "ls", "--host", m1, "--timeout", "2s")
				return code == 0 && countReady(out) == want, out + errOut
			})
		}
	}

	sock := "unix://" + filepath.Join(base, "m1", "docker.sock")
	d := &dockerCLI{t: t, bin: bin, env: dockerEnv(t, sock, "")}
	eventually(t, 30*time.Second, "five Ready nodes in docker node ls", func() (bool, string) {
		out, errOut, _ := d.run(10*time.Second, "", "node", "ls")
		return strings.Count(out, " Ready ") == 5, out + errOut
	})

	// The admin certificate for TLS.
	certs := filepath.Join(t.TempDir(), "docker-certs")
	if out, errOut, code := cli(t, "cluster", "client-config", "--docker", certs, "--host", m1); code != 0 {
		t.Fatalf("client-config --docker: %s%s", out, errOut)
	}
	return &dockerAPICluster{base: base, bin: bin, hello: hello, ips: ips, names: names, nodes: nodes, dport: dport, certs: certs, d: d}
}

// TestDockerCLI drives a cluster of three managers and two workers with
// the unmodified docker CLI: through the leader's unix socket, through a
// follower over TLS with an admin certificate, and through that follower
// again after the leader is killed.
func TestDockerCLI(t *testing.T) {
	ips := []string{"127.0.0.41", "127.0.0.42", "127.0.0.43", "127.0.0.44", "127.0.0.45"}
	c := startDockerAPICluster(t, ips)
	base, bin, hello, names, nodes, dport, certs, d := c.base, c.bin, c.hello, c.names, c.nodes, c.dport, c.certs, c.d
	webPort := freePort(t, ips...)

	web := func(ip string) (string, error) {
		c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := c.Get("http://" + net.JoinHostPort(ip, strconv.Itoa(webPort)) + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	expectVersion := func(version string) {
		t.Helper()
		eventually(t, 20*time.Second, "web answering "+version+" on every node", func() (bool, string) {
			for _, ip := range ips {
				body, err := web(ip)
				if err != nil || !strings.Contains(body, "("+version+")") {
					return false, fmt.Sprintf("%s: %q %v", ip, body, err)
				}
			}
			return true, ""
		})
	}

	conv := 90 * time.Second
	for _, s := range []dockerStep{
		{name: "version", args: []string{"version"}, want: []string{`Server: Shoal`, `API version:\s+1\.51 \(minimum version 1\.24\)`}},
		{name: "info", args: []string{"info"}, want: []string{`Swarm: active`, `Is Manager: true`, `Managers: 3`, `Nodes: 5`}},
		{name: "node ls", args: []string{"node", "ls"}, want: []string{`\* +m1 +Ready +Active +(Leader|Reachable)`, `m[123] +Ready +Active +Leader`, `m2 +Ready +Active +(Leader|Reachable)`, `w1 +Ready +Active`}},
		{name: "node inspect self", args: []string{"node", "inspect", "--format", "{{.Description.Hostname}} {{.Spec.Role}}", "self"}, want: []string{`^m1 manager\n$`}},
		{name: "node ls filter", args: []string{"node", "ls", "--filter", "role=worker", "--format", "{{.Hostname}}"}, want: []string{`^w1\nw2\n$`}},
		{name: "node update label", args: []string{"node", "update", "--label-add", "zone=a", "w1"}, want: []string{`^w1\n$`}},
		{name: "node label shown", args: []string{"node", "inspect", "--format", "{{.Spec.Labels.zone}}", "w1"}, want: []string{`^a\n$`}},
		{name: "node drain", args: []string{"node", "update", "--availability", "drain", "w2"}},
		{name: "node drained", args: []string{"node", "ls", "--filter", "name=w2"}, want: []string{`w2 +Ready +Drain`}},
		{name: "node active", args: []string{"node", "update", "--availability", "active", "w2"}},
	} {
		d.step(s)
	}
	// Promote a worker and demote it again: it carries on as a worker.
	d.step(dockerStep{name: "node promote", args: []string{"node", "promote", "w2"}, want: []string{`Node w2 promoted to a manager in the swarm`}})
	eventually(t, 45*time.Second, "w2 a reachable manager", func() (bool, string) {
		out, errOut, _ := d.run(10*time.Second, "", "node", "ls")
		return regexp.MustCompile(`w2 +Ready +Active +Reachable`).MatchString(out), out + errOut
	})
	d.step(dockerStep{name: "node demote", timeout: 45 * time.Second, args: []string{"node", "demote", "w2"}, want: []string{`Manager w2 demoted in the swarm`}})
	eventually(t, 45*time.Second, "w2 a Ready worker again", func() (bool, string) {
		out, errOut, _ := d.run(10*time.Second, "", "node", "ls", "--filter", "role=worker", "--format", "{{.Hostname}} {{.Status}}")
		return out == "w1 Ready\nw2 Ready\n", out + errOut
	})
	for _, s := range []dockerStep{
		{name: "node rm of a manager", args: []string{"node", "rm", "m3"}, code: 1, want: []string{`m3|manager`}},
		{name: "node rm unknown", args: []string{"node", "rm", "nosuchnode"}, code: 1, want: []string{`nosuchnode`}},

		{name: "secret create", stdin: "s3cr3t", args: []string{"secret", "create", "--label", "team=a", "dbpass", "-"}, want: []string{`^[a-z0-9]{25}\n$`}},
		{name: "secret ls", args: []string{"secret", "ls"}, want: []string{`dbpass`}},
		{name: "secret ls filter", args: []string{"secret", "ls", "--filter", "label=team=b", "-q"}, want: []string{`^$`}},
		{name: "secret inspect", args: []string{"secret", "inspect", "--format", "{{.Spec.Name}} {{.Spec.Labels.team}}", "dbpass"}, want: []string{`^dbpass a\n$`}, not: []string{`s3cr3t`}},
		{name: "config create", stdin: "key=value\n", args: []string{"config", "create", "app.conf", "-"}},
		{name: "config inspect", args: []string{"config", "inspect", "--pretty", "app.conf"}, want: []string{`key=value`}},
		{name: "config ls", args: []string{"config", "ls"}, want: []string{`app\.conf`}},

		{name: "service create waits until converged", timeout: conv,
			args: []string{"service", "create", "--name", "web", "--replicas", "3", "--publish", fmt.Sprintf("%d:80", webPort),
				"--secret", "dbpass", "--config", "source=app.conf,target=/app.conf", "--update-delay", "0s", "--update-monitor", "1s", hello},
			want: []string{`verify: Service \S+ converged`, `3 out of 3 tasks`}},
		{name: "service ls", args: []string{"service", "ls"}, want: []string{`web +replicated +3/3 +` + regexp.QuoteMeta(hello) + ` +\*:` + strconv.Itoa(webPort) + `->80/tcp`}},
		{name: "service ps", args: []string{"service", "ps", "web"}, want: []string{`web\.1 .* Running +Running`, `web\.2 `, `web\.3 `}},
		{name: "service inspect", args: []string{"service", "inspect", "--format", "{{.Spec.Name}} {{.Spec.Mode.Replicated.Replicas}} {{(index .Spec.TaskTemplate.ContainerSpec.Secrets 0).SecretName}}", "web"},
			want: []string{`^web 3 dbpass\n$`}},
		{name: "service inspect --pretty", args: []string{"service", "inspect", "--pretty", "web"}, want: []string{`Replicas:\s+3`, `Image:\s+` + regexp.QuoteMeta(hello)}},
		{name: "secret in use", args: []string{"secret", "rm", "dbpass"}, code: 1, want: []string{`in use by service web`}},
		{name: "service ps running", args: []string{"service", "ps", "--filter", "desired-state=running", "--format", "{{.Name}} {{.CurrentState}}", "web"},
			want: []string{`(?m)^web\.1 Running`}, not: []string{`Shutdown`}},
		{name: "node ps", args: []string{"node", "ps", "--format", "{{.Name}}", "w1", "w2"}, want: []string{`web\.[123]`}},
		{name: "replicated job", timeout: conv, args: []string{"service", "create", "--name", "job1", "--mode", "replicated-job", "--replicas", "2", "/bin/true"},
			want: []string{`job complete`}},
		{name: "job listed", args: []string{"service", "ls", "--filter", "mode=replicated-job", "--format", "{{.Name}} {{.Mode}} {{.Replicas}}"},
			want: []string{`^job1 replicated job 0/0 \(2/2 completed\)\n$`}},
		{name: "job removed", args: []string{"service", "rm", "job1"}, want: []string{`^job1\n$`}},
	} {
		d.step(s)
	}
	expectVersion("v1")

	for _, s := range []dockerStep{
		{name: "service scale", timeout: conv, args: []string{"service", "scale", "web=4"}, want: []string{`web scaled to 4`, `converged`}},
		{name: "scaled", args: []string{"service", "ls", "--filter", "name=web", "--format", "{{.Replicas}}"}, want: []string{`^4/4\n$`}},
		{name: "rolling update", timeout: conv, args: []string{"service", "update", "--env-add", "HELLO_VERSION=v2", "web"}, want: []string{`converged`}},
		{name: "updated spec", args: []string{"service", "inspect", "--format", "{{json .Spec.TaskTemplate.ContainerSpec.Env}} {{.UpdateStatus.State}}", "web"},
			want: []string{`^\["HELLO_VERSION=v2"\] completed\n$`}},
	} {
		d.step(s)
	}
	expectVersion("v2")
	d.step(dockerStep{name: "rollback", timeout: conv, args: []string{"service", "rollback", "web"}, want: []string{`rollback`, `converged`}})
	expectVersion("v1")
	// The CLI returns once the tasks are stable for the update monitor
	// period; the rollback completes after its own monitor period.
	eventually(t, 20*time.Second, "the rollback completed", func() (bool, string) {
		out, errOut, _ := d.run(10*time.Second, "", "service", "inspect", "--format", "{{.UpdateStatus.State}} {{json .Spec.TaskTemplate.ContainerSpec.Env}}", "web")
		return out == "rollback_completed null\n", out + errOut
	})
	d.step(dockerStep{name: "service logs", args: []string{"service", "logs", "web"}, want: []string{`web\.[1-4]\.[a-z0-9]+@w[12] +\| .*hello listening`}})
	d.step(dockerStep{name: "logs --timestamps of a process service", args: []string{"service", "logs", "--timestamps", "web"}, code: 1,
		want: []string{`service web runs on the process runtime, which keeps no times with its tasks' output`}})
	d.step(dockerStep{name: "task logs", args: []string{"service", "logs", "--raw", "--tail", "1", "web"}, want: []string{`msg=`}, not: []string{`\| `}})
	// Following: lines of the tasks running now come, and the stream stays
	// open (it ends with the command's deadline).
	out, _, code := d.run(4*time.Second, "", "service", "logs", "-f", "web")
	if code == 0 || !strings.Contains(out, "hello listening") {
		t.Fatalf("service logs -f: exit %d (want killed at its deadline), output:\n%s", code, out)
	}

	// Bad input: Docker-shaped errors that change nothing.
	compose := filepath.Join(t.TempDir(), "compose.yml")
	if err := os.WriteFile(compose, []byte("services:\n  api:\n    image: shoal/hello:v1\n    hostname: h\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, s := range []dockerStep{
		{name: "unsupported field", args: []string{"service", "create", "--name", "bad", "--hostname", "h", hello}, code: 1,
			want: []string{`Shoal does not support ContainerSpec.Hostname \(--hostname; compose hostname\)`}},
		{name: "container endpoints", args: []string{"run", "--rm", "alpine"}, code: 125, want: []string{`Shoal runs containers only as services: use docker service create`}},
		{name: "docker ps", args: []string{"ps"}, code: 1, want: []string{`Shoal runs containers only as services`}},
		{name: "unknown filter", args: []string{"service", "ls", "--filter", "nosuch=1"}, code: 1, want: []string{`invalid filter 'nosuch'`}},
		{name: "unknown service", args: []string{"service", "inspect", "nosuch"}, code: 1, want: []string{`no such service: nosuch`}},
		{name: "network create bridge", args: []string{"network", "create", "-d", "bridge", "mynet"}, code: 1, want: []string{`driver "bridge" is not supported`}},
		{name: "network create attachable", args: []string{"network", "create", "-d", "overlay", "--attachable", "mynet"}, code: 1, want: []string{`Shoal does not support Attachable`}},
		{name: "stack deploy refused", args: []string{"stack", "deploy", "-c", compose, "demo"}, code: 1, want: []string{`hostname`, `Shoal does not support ContainerSpec.Hostname`}},
		{name: "stack ls", args: []string{"stack", "ls"}, want: []string{`^NAME +SERVICES\n$`}},
		// As Docker's, the deploy made the stack's network before a service
		// was refused; stack rm removes it.
		{name: "the stack's network", args: []string{"network", "ls", "--format", "{{.Name}} {{.Driver}} {{.Scope}}"}, want: []string{`^demo_default overlay swarm\nshoal overlay swarm\n$`}},
		{name: "stack rm of the failed deploy", args: []string{"stack", "rm", "demo"}, want: []string{`Removing network demo_default`}},
		{name: "no network left", args: []string{"network", "ls", "--format", "{{.Name}}"}, want: []string{`^shoal\n$`}},
		{name: "nothing created", args: []string{"service", "ls", "--format", "{{.Name}}"}, want: []string{`^web\n$`}},
	} {
		d.step(s)
	}
	raw := rawDocker(t, filepath.Join(base, "m1", "docker.sock"))
	for _, c := range []struct {
		name, method, path, body string
		code                     int
		want                     string
	}{
		{"ping has the swarm headers", "HEAD", "/_ping", "", 200, ""},
		{"malformed JSON", "POST", "/v1.50/services/create", `{"Name": "x",`, 400, "invalid JSON"},
		{"unknown field", "POST", "/v1.50/services/create", `{"Name":"x","Bogus":1,"TaskTemplate":{"ContainerSpec":{"Image":"/bin/true"}}}`, 400, `Bogus`},
		{"stale version", "POST", "/v1.50/services/web/update?version=1", `{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"/bin/true"}}}`, 409, "changed by someone else"},
		{"no version", "POST", "/v1.50/services/web/update", `{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"/bin/true"}}}`, 400, "version=N"},
		{"too new an API version", "GET", "/v9.99/services", "", 400, "not supported"},
		{"unknown node", "GET", "/v1.50/nodes/nosuch", "", 404, "no node"},
		{"secret update with a stale version", "POST", "/v1.50/secrets/dbpass/update?version=1", `{"Name":"dbpass","Data":"b3RoZXI="}`, 409, "changed by someone else"},
	} {
		resp, body := raw(c.method, c.path, c.body)
		if resp.StatusCode != c.code || !strings.Contains(body, c.want) {
			t.Fatalf("%s: %s %s: %d %s, want %d with %q", c.name, c.method, c.path, resp.StatusCode, body, c.code, c.want)
		}
		if c.code != 200 && resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("%s: Content-Type %q, want exactly application/json", c.name, resp.Header.Get("Content-Type"))
		}
		if c.path == "/_ping" && (resp.Header.Get("Api-Version") != "1.51" || resp.Header.Get("Swarm") != "active/manager" || resp.Header.Get("Ostype") == "") {
			t.Fatalf("ping headers: %v", resp.Header)
		}
	}
	d.step(dockerStep{name: "web unchanged by bad requests", args: []string{"service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}} {{.Spec.Mode.Replicated.Replicas}}", "web"},
		want: []string{`^` + regexp.QuoteMeta(hello) + ` 4\n$`}})

	// TLS: a node's certificate and no certificate are refused with
	// Docker-shaped errors; the admin certificate works through a follower.
	workerCerts := splitNodeCerts(t, filepath.Join(base, "w1"))
	wd := &dockerCLI{t: t, bin: bin, env: dockerEnv(t, "tcp://"+net.JoinHostPort(ips[1], strconv.Itoa(dport)), workerCerts)}
	wd.step(dockerStep{name: "worker certificate", args: []string{"node", "ls"}, code: 1, want: []string{`admin client certificates only, not a worker's`}})
	noCert := t.TempDir()
	data, _ := os.ReadFile(filepath.Join(certs, "ca.pem"))
	_ = os.WriteFile(filepath.Join(noCert, "ca.pem"), data, 0o644)
	status, body := tlsNoClientCert(t, filepath.Join(noCert, "ca.pem"), net.JoinHostPort(ips[1], strconv.Itoa(dport)))
	if status != http.StatusUnauthorized || !strings.Contains(body, `"message"`) {
		t.Fatalf("no client certificate: %d %s", status, body)
	}
	// Through a follower (whichever manager does not lead now), then kill
	// the leader: the follower's API keeps working once a new one leads.
	var leader string
	eventually(t, 20*time.Second, "a leader in docker node ls", func() (bool, string) {
		out, errOut, code := d.run(10*time.Second, "", "node", "ls")
		leader = leaderHostname(out)
		return code == 0 && leader != "", out + errOut
	})
	fi := 0
	for names[fi] == leader {
		fi++
	}
	follower := &dockerCLI{t: t, bin: bin, env: dockerEnv(t, "tcp://"+net.JoinHostPort(ips[fi], strconv.Itoa(dport)), certs)}
	follower.step(dockerStep{name: "follower node ls", args: []string{"node", "ls"}, want: []string{leader + ` +Ready +Active +Leader`, `\* +` + names[fi] + ` `}})
	follower.step(dockerStep{name: "write through a follower", timeout: conv, args: []string{"service", "scale", "web=2"}, want: []string{`converged`}})
	nodes[leader].kill()
	eventually(t, 30*time.Second, "a new leader, seen through the follower's docker API", func() (bool, string) {
		out, errOut, code := follower.run(10*time.Second, "", "node", "ls")
		now := leaderHostname(out)
		return code == 0 && now != "" && now != leader, out + errOut
	})
	follower.step(dockerStep{name: "scale after the leader died", timeout: conv, args: []string{"service", "scale", "web=3"}, want: []string{`converged`}})
	eventually(t, 20*time.Second, "web answering on the survivors", func() (bool, string) {
		for i, ip := range ips {
			if names[i] == leader {
				continue
			}
			if body, err := web(ip); err != nil || !strings.Contains(body, "hello from web.") {
				return false, fmt.Sprintf("%s: %q %v", ip, body, err)
			}
		}
		return true, ""
	})
	for _, s := range []dockerStep{
		{name: "service rm", args: []string{"service", "rm", "web"}, want: []string{`^web\n$`}},
		{name: "nothing left", args: []string{"service", "ls", "-q"}, want: []string{`^$`}},
	} {
		follower.step(s)
	}
	// Shoal refuses to remove a secret or config while tasks that use it
	// still run (they stop shortly after the service is removed).
	for _, what := range []string{"secret dbpass", "config app.conf"} {
		kind, name, _ := strings.Cut(what, " ")
		eventually(t, 30*time.Second, "docker "+kind+" rm "+name, func() (bool, string) {
			out, errOut, code := follower.run(10*time.Second, "", kind, "rm", name)
			return code == 0 && out == name+"\n", out + errOut
		})
		follower.step(dockerStep{name: kind + "s left", args: []string{kind, "ls", "-q"}, want: []string{`^$`}})
	}
}

// rawDocker returns a function making raw Engine API requests on a unix
// socket, for what the CLI never sends.
func rawDocker(t *testing.T, sock string) func(method, path, body string) (*http.Response, string) {
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	return func(method, path, body string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, "http://docker"+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var e struct{ Message string }
		if resp.StatusCode >= 400 {
			if err := json.Unmarshal(b, &e); err != nil || e.Message == "" {
				t.Fatalf("%s %s: error body %q is not {\"message\": ...}", method, path, b)
			}
		}
		return resp, string(b)
	}
}

// splitNodeCerts writes a node's certificate and key as the docker CLI
// reads them (ca.pem, cert.pem, key.pem) into a new directory.
func splitNodeCerts(t *testing.T, dataDir string) string {
	t.Helper()
	dir := t.TempDir()
	ca, err := os.ReadFile(filepath.Join(dataDir, "certs", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := os.ReadFile(filepath.Join(dataDir, "certs", "node.pem"))
	if err != nil {
		t.Fatal(err)
	}
	var certs, keys []byte
	for rest := bundle; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			certs = append(certs, pem.EncodeToMemory(b)...)
		} else {
			keys = append(keys, pem.EncodeToMemory(b)...)
		}
	}
	for name, data := range map[string][]byte{"ca.pem": ca, "cert.pem": certs, "key.pem": keys} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// tlsNoClientCert makes a request to the docker API over TLS without a
// client certificate, verifying the server against caFile.
func tlsNoClientCert(t *testing.T, caFile, addr string) (int, string) {
	t.Helper()
	data, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(data)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Get("https://" + addr + "/v1.50/nodes")
	if err != nil {
		t.Fatalf("TLS request without a client certificate: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
