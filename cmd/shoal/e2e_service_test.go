package main

// The user journeys "Running a service" and "Bad input" with real
// processes: one manager and two workers as separate `shoal` processes on
// 127.0.0.21-23, and the sample hello app run by the process runtime.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// svcTask is the part of a task `service ps --format json` prints that the
// journey looks at.
type svcTask struct {
	ID           string `json:"id"`
	Slot         uint64 `json:"slot,string"`
	NodeID       string `json:"node_id"`
	SpecVersion  uint64 `json:"spec_version,string"`
	DesiredState string `json:"desired_state"`
	Spec         struct {
		Container struct {
			Env []string `json:"env"`
		} `json:"container"`
	} `json:"spec"`
	Status struct {
		State  string `json:"state"`
		Health string `json:"health"`
		Err    string `json:"err"`
		Ports  []struct {
			TargetPort uint32 `json:"target_port"`
			HostIP     string `json:"host_ip"`
			HostPort   uint32 `json:"host_port"`
		} `json:"ports"`
	} `json:"status"`
}

func (t svcTask) running() bool {
	return t.DesiredState == "TASK_STATE_RUNNING" && t.Status.State == "TASK_STATE_RUNNING"
}

// url is where the task's first port answers.
func (t svcTask) url(path string) string {
	if len(t.Status.Ports) == 0 {
		return ""
	}
	p := t.Status.Ports[0]
	return "http://" + net.JoinHostPort(p.HostIP, strconv.Itoa(int(p.HostPort))) + path
}

// svcJourney is a cluster of one manager and two workers, and what the
// journey needs to talk to it.
type svcJourney struct {
	t       *testing.T
	base    string // every process of the test has it on its command line
	hello   string // the hello binary
	manager *node
	nodes   map[string]string // node ID -> hostname
	http    *http.Client
	metrics map[string]string // hostname -> metrics address, with withMetrics
}

// cliWithin is cli with a longer deadline, for commands that wait for a
// service to converge.
func cliWithin(t *testing.T, d time.Duration, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := cliCommand(ctx, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("shoal %v did not return within %s; stdout:\n%s\nstderr:\n%s", args, d, out.String(), errb.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run shoal %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// svc runs `shoal service SUB --host MANAGER ARGS...`. --host goes before
// the other arguments: everything after IMAGE belongs to the task.
func (j *svcJourney) svc(sub string, args ...string) (string, string, int) {
	j.t.Helper()
	return cli(j.t, append([]string{"service", sub, "--host", j.manager.addr()}, args...)...)
}

// converge runs a command that shows progress until the service converges,
// with the CLI's own --timeout inside the test's deadline.
func (j *svcJourney) converge(sub string, args ...string) (string, string, int) {
	j.t.Helper()
	return cliWithin(j.t, 90*time.Second, append([]string{"service", sub, "--host", j.manager.addr(), "--timeout", "75s"}, args...)...)
}

// mustOK fails unless a command exited 0.
func (j *svcJourney) mustOK(what, out, errOut string, code int) {
	j.t.Helper()
	if code != 0 {
		j.t.Fatalf("%s: exit %d\nstdout:\n%s\nstderr:\n%s", what, code, out, errOut)
	}
}

// tasks returns the tasks of web from `service ps web --format json`.
func (j *svcJourney) tasks(service string) []svcTask {
	j.t.Helper()
	out, errOut, code := j.svc("ps", "--format", "json", service)
	j.mustOK("service ps --format json", out, errOut, code)
	var tasks []svcTask
	if err := json.Unmarshal([]byte(out), &tasks); err != nil {
		j.t.Fatalf("service ps --format json: %v\n%s", err, out)
	}
	return tasks
}

// runningTasks returns the running tasks of a service, by slot.
func (j *svcJourney) runningTasks(service string) []svcTask {
	j.t.Helper()
	var out []svcTask
	for _, t := range j.tasks(service) {
		if t.running() {
			out = append(out, t)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Slot < out[b].Slot })
	return out
}

// get fetches a URL; err is set when nothing answered.
func (j *svcJourney) get(url string) (int, string, error) {
	resp, err := j.http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(body)), err
}

// expectAnswers checks that want tasks run, in slots 1..want, and that each
// answers "hello from web.SLOT (version)" on its host port and is healthy.
func (j *svcJourney) expectAnswers(want int, version string) []svcTask {
	j.t.Helper()
	tasks := j.runningTasks("web")
	if len(tasks) != want {
		j.t.Fatalf("want %d running tasks, got %d: %+v", want, len(tasks), tasks)
	}
	for i, task := range tasks {
		if task.Slot != uint64(i+1) {
			j.t.Fatalf("running tasks are in slots %v, want 1..%d", slots(tasks), want)
		}
		if task.Status.Health != "HEALTH_STATE_HEALTHY" {
			j.t.Fatalf("task %s (web.%d) runs but is %q", task.ID, task.Slot, task.Status.Health)
		}
		if len(task.Status.Ports) != 1 || task.Status.Ports[0].TargetPort != 80 || task.Status.Ports[0].HostPort == 0 {
			j.t.Fatalf("task web.%d: want one port binding for target 80, got %+v", task.Slot, task.Status.Ports)
		}
		host := j.nodes[task.NodeID]
		if wantIP := map[string]string{"w1": "127.0.0.22", "w2": "127.0.0.23"}[host]; task.Status.Ports[0].HostIP != wantIP {
			j.t.Fatalf("task web.%d on %s is bound on %s, want the node's address %s", task.Slot, host, task.Status.Ports[0].HostIP, wantIP)
		}
		code, body, err := j.get(task.url("/"))
		wantBody := fmt.Sprintf("hello from web.%d (%s)", task.Slot, version)
		if err != nil || code != http.StatusOK || body != wantBody {
			j.t.Fatalf("GET %s (task web.%d on %s): %d %q %v; want 200 %q", task.url("/"), task.Slot, host, code, body, err, wantBody)
		}
		if code, body, err := j.get(task.url("/healthz")); err != nil || code != http.StatusOK {
			j.t.Fatalf("GET %s: %d %q %v; want 200", task.url("/healthz"), code, body, err)
		}
	}
	return tasks
}

func slots(tasks []svcTask) []uint64 {
	var out []uint64
	for _, t := range tasks {
		out = append(out, t.Slot)
	}
	return out
}

// inspectWeb returns `service inspect web` decoded.
func (j *svcJourney) inspectWeb() (map[string]any, string) {
	j.t.Helper()
	out, errOut, code := j.svc("inspect", "web")
	j.mustOK("service inspect web", out, errOut, code)
	var services []map[string]any
	if err := json.Unmarshal([]byte(out), &services); err != nil || len(services) != 1 {
		j.t.Fatalf("service inspect web: want a JSON array of one service (%v):\n%s", err, out)
	}
	return services[0], out
}

// dig returns the value at a path of keys in decoded JSON, or nil.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, _ := v.(map[string]any)
		v = m[k]
	}
	return v
}

// updateState is the service's update_status.state.
func updateState(svc map[string]any) string {
	s, _ := dig(svc, "update_status", "state").(string)
	return s
}

// parseTable splits a table of the CLI into rows of cells by header, using
// the columns' start positions (headers are separated by 3 spaces; a header
// may contain one, as "DESIRED STATE").
func parseTable(t *testing.T, out string) []map[string]string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 || lines[0] == "" {
		t.Fatalf("no table in %q", out)
	}
	type col struct {
		name  string
		start int
	}
	var cols []col
	for _, loc := range regexp.MustCompile(`\S+( \S+)*`).FindAllStringIndex(lines[0], -1) {
		// ASCII header: byte offsets are rune offsets.
		cols = append(cols, col{lines[0][loc[0]:loc[1]], loc[0]})
	}
	var rows []map[string]string
	for _, l := range lines[1:] {
		r := []rune(l)
		row := map[string]string{}
		for i, c := range cols {
			end := len(r)
			if i+1 < len(cols) && cols[i+1].start < end {
				end = cols[i+1].start
			}
			if c.start < len(r) {
				row[c.name] = strings.TrimSpace(string(r[c.start:end]))
			} else {
				row[c.name] = ""
			}
		}
		rows = append(rows, row)
	}
	return rows
}

// processesUnder lists the processes whose command line mentions dir.
func processesUnder(dir string) map[int]string {
	out := map[int]string{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cmd := strings.TrimSpace(strings.ReplaceAll(string(data), "\x00", " "))
		if strings.Contains(cmd, dir) {
			out[pid] = cmd
		}
	}
	return out
}

// helloProcesses counts running hello processes of the test.
func (j *svcJourney) helloProcesses() map[int]string {
	out := map[int]string{}
	for pid, cmd := range processesUnder(j.base) {
		if strings.HasPrefix(cmd, j.hello) {
			out[pid] = cmd
		}
	}
	return out
}

// startServiceCluster builds hello, forms the cluster and arranges that no
// process outlives the test, whatever happens.
func startServiceCluster(t *testing.T) *svcJourney { return startServiceClusterWith(t, false) }

// startServiceClusterWith starts the journey's cluster; withMetrics gives
// every node --metrics-addr (on its own IP and a free port), listed in
// j.metrics by hostname, and runs w2's mesh on the user-space proxy.
func startServiceClusterWith(t *testing.T, withMetrics bool) *svcJourney {
	base, err := os.MkdirTemp("", "shoal-e2e-svc-")
	if err != nil {
		t.Fatal(err)
	}
	j := &svcJourney{t: t, base: base, hello: filepath.Join(base, "bin", "hello"), nodes: map[string]string{},
		http: &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	// Cleanups run last-registered first: this one runs after the daemons
	// are killed. Task supervisors outlive their worker on purpose; whatever
	// of the test still runs now is killed.
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for len(processesUnder(base)) > 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if left := processesUnder(base); len(left) > 0 {
			if !t.Failed() {
				t.Errorf("processes left running after the test: %v", left)
			} else {
				t.Logf("killing %d processes left running: %v", len(left), left)
			}
			for pid := range left {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			deadline := time.Now().Add(5 * time.Second)
			for len(processesUnder(base)) > 0 && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
		}
		os.RemoveAll(base)
	})

	built := make(chan error, 1)
	go func() {
		build := exec.Command("go", "build", "-o", j.hello, "../hello")
		out, err := build.CombinedOutput()
		if err != nil {
			err = fmt.Errorf("build hello: %v\n%s", err, out)
		}
		built <- err
	}()

	ips := []string{"127.0.0.21", "127.0.0.22", "127.0.0.23"}
	port := freePort(t, ips...)
	j.metrics = map[string]string{}
	metricsArgs := func(ip, name string) []string {
		if !withMetrics {
			return nil
		}
		j.metrics[name] = net.JoinHostPort(ip, strconv.Itoa(freePort(t, ip)))
		args := []string{"--metrics-addr", j.metrics[name]}
		if name == "w2" {
			// One node on the user-space proxy, whose counters the
			// metrics test reads.
			args = append(args, "--mesh-datapath", "userspace")
		}
		return args
	}
	mdir := filepath.Join(base, "m1")
	j.manager = startDaemon(t, ips[0], port, mdir, append([]string{"init", "--data-dir", mdir, "--advertise", fmt.Sprintf("%s:%d", ips[0], port),
		"--hostname", "m1", "--gossip-fast", "--heartbeat-period", "500ms"}, metricsArgs(ips[0], "m1")...)...)
	var token string
	eventually(t, 20*time.Second, "the worker token", func() (bool, string) {
		out, errOut, code := cli(t, "cluster", "join-token", "-q", "worker", "--host", j.manager.addr(), "--timeout", "2s")
		token = strings.TrimSpace(out)
		return code == 0 && strings.HasPrefix(token, "SHOAL-1-"), errOut
	})
	for i, name := range []string{"w1", "w2"} {
		dir := filepath.Join(base, name)
		startDaemon(t, ips[i+1], port, dir, append([]string{"join", "--data-dir", dir, "--advertise", fmt.Sprintf("%s:%d", ips[i+1], port),
			"--hostname", name, "--gossip-fast", "--token", token, j.manager.addr()}, metricsArgs(ips[i+1], name)...)...)
	}
	// Both workers Ready and offering the process runtime, so that the
	// scheduler sees both when the service is created.
	eventually(t, 30*time.Second, "two Ready workers with the process runtime", func() (bool, string) {
		out, errOut, code := cli(t, "node", "inspect", "--host", j.manager.addr(), "--timeout", "2s", "w1", "w2")
		if code != 0 {
			return false, errOut
		}
		var nodes []struct {
			ID          string `json:"id"`
			Description struct {
				Hostname string   `json:"hostname"`
				Runtimes []string `json:"runtimes"`
			} `json:"description"`
			Status struct {
				State string `json:"state"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(out), &nodes); err != nil {
			return false, err.Error()
		}
		ready := 0
		for _, n := range nodes {
			if n.Status.State == "NODE_STATE_READY" && slices.Contains(n.Description.Runtimes, "process") {
				ready++
				j.nodes[n.ID] = n.Description.Hostname
			}
		}
		return ready == 2, out
	})
	select {
	case err := <-built:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("building hello took over 2 minutes")
	}

	// This cleanup runs first, while the daemons still run: remove every
	// service and wait for their processes to stop.
	t.Cleanup(func() {
		ids, _, code := cli(t, "service", "ls", "-q", "--host", j.manager.addr(), "--timeout", "5s")
		if code != 0 || strings.TrimSpace(ids) == "" {
			return
		}
		cli(t, append([]string{"service", "rm", "--host", j.manager.addr(), "--timeout", "5s"}, strings.Fields(ids)...)...)
		deadline := time.Now().Add(15 * time.Second)
		for len(j.helloProcesses()) > 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
	})
	return j
}

func TestServiceJourneyProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	start := time.Now()
	step := func(name string) { t.Logf("%6.1fs %s", time.Since(start).Seconds(), name) }
	j := startServiceCluster(t)

	step("service create")
	// Short update and rollback monitors (default 5s per task) keep the
	// three rollouts of 5 tasks below the journey's time budget.
	out, errOut, code := j.converge("create", "--name", "web", "--replicas", "3", "--publish", "8080:80", "--runtime", "process",
		"--health-http", "/healthz", "--health-interval", "300ms", "--env", "HELLO_VERSION=v1",
		"--update-monitor", "500ms", "--rollback-monitor", "500ms", j.hello)
	j.mustOK("service create", out, errOut, code)
	id := strings.SplitN(out, "\n", 2)[0]
	if !regexp.MustCompile(`^[a-z0-9]{20,}$`).MatchString(id) {
		t.Fatalf("service create: the first line should be the service ID, got %q", id)
	}
	for _, want := range []string{"overall progress: 3 out of 3 tasks", "1/3: running", "3/3: running", "verify: Service converged"} {
		if !strings.Contains(out, want) {
			t.Fatalf("service create: no %q in its progress:\n%s", want, out)
		}
	}

	step("service ls")
	out, errOut, code = j.svc("ls")
	j.mustOK("service ls", out, errOut, code)
	rows := parseTable(t, out)
	if len(rows) != 1 {
		t.Fatalf("service ls: want one service:\n%s", out)
	}
	want := map[string]string{"ID": id[:12], "NAME": "web", "MODE": "replicated", "REPLICAS": "3/3", "IMAGE": j.hello, "PORTS": "*:8080->80/tcp"}
	for k, v := range want {
		if rows[0][k] != v {
			t.Fatalf("service ls: %s is %q, want %q:\n%s", k, rows[0][k], v, out)
		}
	}
	out, errOut, code = j.svc("ls", "--format", "json")
	j.mustOK("service ls --format json", out, errOut, code)
	var listed []struct {
		ID   string `json:"id"`
		Spec struct {
			Annotations struct {
				Name string `json:"name"`
			} `json:"annotations"`
		} `json:"spec"`
		Counts struct {
			Running uint64 `json:"running,string"`
			Desired uint64 `json:"desired,string"`
		} `json:"task_counts"`
	}
	if err := json.Unmarshal([]byte(out), &listed); err != nil {
		t.Fatalf("service ls --format json does not parse: %v\n%s", err, out)
	}
	if len(listed) != 1 || listed[0].ID != id || listed[0].Spec.Annotations.Name != "web" || listed[0].Counts.Running != 3 || listed[0].Counts.Desired != 3 {
		t.Fatalf("service ls --format json: %+v\n%s", listed, out)
	}

	step("service ps")
	out, errOut, code = j.svc("ps", "web")
	j.mustOK("service ps web", out, errOut, code)
	perNode := map[string]int{}
	names := map[string]bool{}
	for _, r := range parseTable(t, out) {
		if strings.HasPrefix(r["NAME"], `\_ `) {
			// An earlier task of the slot; the end of the journey checks
			// why it ended.
			if r["DESIRED STATE"] != "Shutdown" {
				t.Fatalf("service ps web: an earlier task of a slot is meant to run:\n%s", out)
			}
			continue
		}
		if r["DESIRED STATE"] != "Running" || !strings.HasPrefix(r["CURRENT STATE"], "Running ") {
			t.Fatalf("service ps web: a task is not running:\n%s", out)
		}
		if !regexp.MustCompile(`^web\.[123]$`).MatchString(r["NAME"]) || names[r["NAME"]] || r["IMAGE"] != j.hello || r["ERROR"] != "" ||
			!regexp.MustCompile(`^[a-z0-9]{12}$`).MatchString(r["ID"]) || !regexp.MustCompile(`^127\.0\.0\.2[23]:\d+->80/tcp$`).MatchString(r["PORTS"]) {
			t.Fatalf("service ps web: unexpected row %v:\n%s", r, out)
		}
		names[r["NAME"]] = true
		perNode[r["NODE"]]++
	}
	if len(names) != 3 || len(perNode) != 2 || perNode["w1"]+perNode["w2"] != 3 || min(perNode["w1"], perNode["w2"]) != 1 {
		t.Fatalf("service ps web: want 3 running tasks spread 2/1 over w1 and w2, got %v:\n%s", perNode, out)
	}

	step("each task answers on its host port")
	j.expectAnswers(3, "v1")

	step("service scale web=5")
	out, errOut, code = j.converge("scale", "web=5")
	j.mustOK("service scale web=5", out, errOut, code)
	if !strings.HasPrefix(out, "web scaled to 5\n") || !strings.Contains(out, "overall progress: 5 out of 5 tasks") || !strings.Contains(out, "verify: Service converged") {
		t.Fatalf("service scale web=5:\n%s", out)
	}
	out, _, _ = j.svc("ps", "--filter", "desired-state=running", "web")
	if rows := parseTable(t, out); len(rows) != 5 {
		t.Fatalf("service ps web after scale: want 5 running tasks:\n%s", out)
	}
	for _, r := range parseTable(t, out) {
		if !strings.HasPrefix(r["CURRENT STATE"], "Running ") || (r["NODE"] != "w1" && r["NODE"] != "w2") {
			t.Fatalf("service ps web after scale: %v:\n%s", r, out)
		}
	}
	j.expectAnswers(5, "v1")

	step("service update --env-add HELLO_VERSION=v2")
	out, errOut, code = j.converge("update", "--env-add", "HELLO_VERSION=v2", "web")
	j.mustOK("service update", out, errOut, code)
	for _, w := range []string{"web\n", "update: updating", "update: completed", "overall progress: 5 out of 5 tasks", "verify: Service converged"} {
		if !strings.Contains(out, w) {
			t.Fatalf("service update: no %q in:\n%s", w, out)
		}
	}
	if svc, raw := j.inspectWeb(); updateState(svc) != "UPDATE_STATE_COMPLETED" {
		t.Fatalf("after service update, update_status is not completed:\n%s", raw)
	}
	j.expectAnswers(5, "v2")

	step("service rollback")
	out, errOut, code = j.converge("rollback", "web")
	j.mustOK("service rollback", out, errOut, code)
	for _, w := range []string{"web\n", "overall progress: rolling back update: 5 out of 5 tasks", "update: rollback_completed", "verify: Service converged"} {
		if !strings.Contains(out, w) {
			t.Fatalf("service rollback: no %q in:\n%s", w, out)
		}
	}
	v1Tasks := j.expectAnswers(5, "v1")

	step("service logs")
	out, errOut, code = j.svc("logs", "web")
	j.mustOK("service logs web", out, errOut, code)
	logLine := regexp.MustCompile(`(?m)^web\.(\d+)\.([a-z0-9]{12})@(w[12]) +\| .*msg="hello listening".*name=web\.(\d+) version=(v[12])`)
	listening := map[string]string{} // "web.N.shortid@node" -> version
	for _, m := range logLine.FindAllStringSubmatch(out, -1) {
		if m[1] != m[4] {
			t.Fatalf("service logs: line of web.%s says it is web.%s:\n%s", m[1], m[4], out)
		}
		listening[fmt.Sprintf("web.%s.%s@%s", m[1], m[2], m[3])] = m[5]
	}
	for _, task := range v1Tasks {
		key := fmt.Sprintf("web.%d.%s@%s", task.Slot, task.ID[:12], j.nodes[task.NodeID])
		if listening[key] != "v1" {
			t.Fatalf("service logs: no \"hello listening\" line of %s with version v1:\n%s", key, out)
		}
	}

	step("service inspect")
	svc, raw := j.inspectWeb()
	if updateState(svc) != "UPDATE_STATE_ROLLBACK_COMPLETED" {
		t.Fatalf("service inspect: want update_status rollback completed:\n%s", raw)
	}
	out, errOut, code = j.svc("inspect", "--pretty", "web")
	j.mustOK("service inspect --pretty web", out, errOut, code)
	for _, w := range []string{"Name:", "web", "UpdateStatus:", "State:", "rollback_completed", "Replicas:", "HELLO_VERSION=v1", "HTTP GET:", "/healthz", "PublishedPort = 8080"} {
		if !strings.Contains(out, w) {
			t.Fatalf("service inspect --pretty: no %q in:\n%s", w, out)
		}
	}

	step("bad input")
	lsBefore, _, _ := j.svc("ls")
	_, inspectBefore := j.inspectWeb()
	badInput := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"a taken name", []string{"create", "--name", "web", j.hello}, 1, `a service named "web" already exists`},
		{"negative replicas", []string{"create", "--name", "web2", "--replicas", "-1", j.hello}, 2, "--replicas -1"},
		{"malformed constraint", []string{"create", "--name", "web2", "--constraint", "node.role=worker", j.hello}, 2, "use KEY==VALUE or KEY!=VALUE"},
		{"a published port taken", []string{"create", "--name", "web2", "--publish", "8080:80", j.hello}, 1, "port 8080 is already published by service web"},
		{"a relative executable", []string{"create", "--name", "web2", "--runtime", "process", "bin/hello"}, 2, "give its absolute path"},
		{"scale an unknown service", []string{"scale", "nosuch=2"}, 1, `no service "nosuch"`},
		{"rm an unknown service", []string{"rm", "nosuch"}, 1, `no service "nosuch"`},
	}
	for _, tc := range badInput {
		out, errOut, code := j.svc(tc.args[0], tc.args[1:]...)
		if code != tc.wantCode || !strings.Contains(errOut, tc.wantErr) {
			t.Errorf("%s: shoal service %v: exit %d, stderr %q, stdout %q; want exit %d and %q", tc.name, tc.args, code, errOut, out, tc.wantCode, tc.wantErr)
			continue
		}
		if n := strings.Count(errOut, "Error: "); n != 1 || strings.Count(strings.TrimSpace(strings.Split(errOut, "\nSee '")[0]), "\n") != 0 {
			t.Errorf("%s: want one error line, got:\n%s", tc.name, errOut)
		}
		if out != "" {
			t.Errorf("%s: a refused command printed %q", tc.name, out)
		}
	}
	if lsAfter, _, _ := j.svc("ls"); lsAfter != lsBefore {
		t.Fatalf("bad input changed service ls:\nbefore:\n%s\nafter:\n%s", lsBefore, lsAfter)
	}
	if _, inspectAfter := j.inspectWeb(); inspectAfter != inspectBefore {
		t.Fatalf("bad input changed service web:\nbefore:\n%s\nafter:\n%s", inspectBefore, inspectAfter)
	}
	j.expectAnswers(5, "v1")

	step("a failing update rolls back by itself")
	before := map[uint64]string{}
	for _, task := range j.runningTasks("web") {
		before[task.Slot] = task.ID
	}
	out, errOut, code = j.converge("update", "--env-add", "HELLO_UNHEALTHY=1", "--update-failure-action", "rollback", "--update-monitor", "1s", "web")
	// The CLI documents a failed update as an error (exit 1) that says it
	// was rolled back.
	if code != 1 || !strings.Contains(errOut, "Error: the update of service web failed and was rolled back") || strings.Count(errOut, "Error: ") != 1 {
		t.Fatalf("failing update: exit %d; want 1 and an error saying it was rolled back\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, w := range []string{"update: rollback_started", "rolling back automatically", "update: rollback_completed"} {
		if !strings.Contains(out, w) {
			t.Fatalf("failing update: no %q in its progress:\n%s", w, out)
		}
	}
	svc, raw = j.inspectWeb()
	if updateState(svc) != "UPDATE_STATE_ROLLBACK_COMPLETED" {
		t.Fatalf("after the failing update: want update_status rollback completed:\n%s", raw)
	}
	if env := fmt.Sprint(dig(svc, "spec", "task", "container", "env")); !strings.Contains(env, "HELLO_VERSION=v1") || strings.Contains(env, "HELLO_UNHEALTHY") {
		t.Fatalf("after the rollback the spec's env is %s, want HELLO_VERSION=v1 alone", env)
	}
	// The rollback is done only once every task answers v1 and is healthy.
	after := j.expectAnswers(5, "v1")
	touched := map[uint64]bool{}
	var failed []string
	for _, task := range j.tasks("web") {
		if slices.Contains(task.Spec.Container.Env, "HELLO_UNHEALTHY=1") {
			touched[task.Slot] = true
			if task.Status.State == "TASK_STATE_FAILED" {
				failed = append(failed, fmt.Sprintf("web.%d %s %q", task.Slot, task.ID[:12], task.Status.Err))
			}
		}
	}
	// One task at a time and no failure allowed (the default ratio 0): the
	// first task of the new spec to fail triggers the rollback. (Its
	// replacement, created by the restart policy, may exist, but must not
	// have run and failed too.)
	if len(failed) != 1 || !touched[1] || len(touched) != 1 {
		t.Errorf("the failing update should roll back when its first task (web.1) fails; it reached slots %v and %d tasks failed: %s",
			slices.Sorted(maps.Keys(touched)), len(failed), strings.Join(failed, "; "))
	}
	// Slots that never ran the failing spec keep their task: rolling back
	// replaces only the tasks that differ from the restored spec.
	var restarted []string
	for _, task := range after {
		if !touched[task.Slot] && before[task.Slot] != task.ID {
			restarted = append(restarted, fmt.Sprintf("web.%d (%s -> %s)", task.Slot, before[task.Slot][:12], task.ID[:12]))
		}
	}
	if len(restarted) > 0 {
		t.Errorf("the automatic rollback replaced tasks that never ran the failed spec (they already ran the restored one): %s", strings.Join(restarted, ", "))
	}

	step("no task failed but those of the failing update")
	// Every task of the journey started and ran until replaced, except
	// those running the unhealthy spec on purpose.
	logs, _, _ := j.svc("logs", "web")
	for _, task := range j.tasks("web") {
		if task.Status.State != "TASK_STATE_FAILED" && task.Status.State != "TASK_STATE_REJECTED" || slices.Contains(task.Spec.Container.Env, "HELLO_UNHEALTHY=1") {
			continue
		}
		var lines []string
		for _, l := range strings.Split(logs, "\n") {
			if strings.Contains(l, "."+task.ID[:12]+"@") {
				lines = append(lines, l)
			}
		}
		t.Errorf("task web.%d %s on %s failed: %q; its output:\n%s", task.Slot, task.ID[:12], j.nodes[task.NodeID], task.Status.Err, strings.Join(lines, "\n"))
	}

	step("service rm")
	var ports []string
	for _, task := range after {
		ports = append(ports, task.url("/"))
	}
	out, errOut, code = j.svc("rm", "web")
	if code != 0 || out != "web\n" {
		t.Fatalf("service rm web: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	eventually(t, 20*time.Second, "the tasks of web stopped", func() (bool, string) {
		if procs := j.helloProcesses(); len(procs) > 0 {
			return false, fmt.Sprintf("hello processes still running: %v", procs)
		}
		for _, u := range ports {
			if _, _, err := j.get(u); err == nil {
				return false, u + " still answers"
			}
		}
		return true, ""
	})
	out, errOut, code = j.svc("ls")
	j.mustOK("service ls", out, errOut, code)
	if strings.TrimSpace(out) != "ID   NAME   MODE   REPLICAS   IMAGE   PORTS" {
		t.Fatalf("service ls after rm: want no services:\n%s", out)
	}
	if out, errOut, code := j.svc("ps", "web"); code != 1 || !strings.Contains(errOut, `no service "web"`) {
		t.Fatalf("service ps web after rm: exit %d %q %q", code, out, errOut)
	}
	step("done")
}
