package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape reads a node's /metrics.
func scrape(t *testing.T, addr string) (string, error) {
	t.Helper()
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return string(b), err
}

// metricValue sums the samples of a metric whose labels include want.
func metricValue(t *testing.T, text, name string, want map[string]string) float64 {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse metrics: %v", err)
	}
	fam, ok := fams[name]
	if !ok {
		return 0
	}
	sum := 0.0
	for _, m := range fam.GetMetric() {
		if !hasLabels(m, want) {
			continue
		}
		switch {
		case m.GetGauge() != nil:
			sum += m.GetGauge().GetValue()
		case m.GetCounter() != nil:
			sum += m.GetCounter().GetValue()
		case m.GetHistogram() != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	got := map[string]string{}
	for _, l := range m.GetLabel() {
		got[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// promtoolCheck runs `promtool check metrics` (Debian's prometheus
// package, installed by scripts/test-deps.sh) on a scrape.
func promtoolCheck(t *testing.T, node, text string) {
	t.Helper()
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("promtool check metrics on %s's output: %v\n%s", node, err, out.String())
	}
}

// TestMetrics scrapes a manager and two workers started with
// --metrics-addr: the output passes promtool, and the figures move when a
// service starts and scales.
func TestMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Fatal("promtool is not installed: run scripts/test-deps.sh (make test does)")
	}
	j := startServiceClusterWith(t, true)
	for _, name := range []string{"m1", "w1", "w2"} {
		text, err := scrape(t, j.metrics[name])
		if err != nil {
			t.Fatalf("scrape %s: %v", name, err)
		}
		promtoolCheck(t, name, text)
		if metricValue(t, text, "go_goroutines", nil) == 0 {
			t.Errorf("%s: no Go runtime metrics", name)
		}
	}
	m1, _ := scrape(t, j.metrics["m1"])
	if metricValue(t, m1, "shoal_raft_state", map[string]string{"state": "leader"}) != 1 {
		t.Fatalf("the only manager does not report itself leader:\n%s", m1)
	}
	if n := metricValue(t, m1, "shoal_nodes", map[string]string{"state": "ready", "role": "worker"}); n != 2 {
		t.Fatalf("shoal_nodes{state=ready,role=worker} = %v, want 2", n)
	}
	placedBefore := metricValue(t, m1, "shoal_scheduler_placements_total", nil)

	out, errOut, code := j.converge("create", "--name", "web", "--replicas", "3", "--publish", "8080:80", "--runtime", "process", j.hello)
	j.mustOK("service create", out, errOut, code)
	// running tasks as the manager's store and the workers see them
	running := func() (float64, float64, string) {
		m, err := scrape(t, j.metrics["m1"])
		if err != nil {
			return 0, 0, err.Error()
		}
		stored := metricValue(t, m, "shoal_tasks", map[string]string{"service": "web", "state": "running"})
		onWorkers := 0.0
		for _, w := range []string{"w1", "w2"} {
			text, err := scrape(t, j.metrics[w])
			if err != nil {
				return 0, 0, err.Error()
			}
			onWorkers += metricValue(t, text, "shoal_worker_tasks", map[string]string{"runtime": "process", "state": "running"})
		}
		return stored, onWorkers, fmt.Sprintf("store %v, workers %v", stored, onWorkers)
	}
	eventually(t, 20*time.Second, "3 running tasks in the metrics", func() (bool, string) {
		s, w, why := running()
		return s == 3 && w == 3, why
	})
	out, errOut, code = j.converge("scale", "web=5")
	j.mustOK("service scale", out, errOut, code)
	eventually(t, 20*time.Second, "5 running tasks in the metrics", func() (bool, string) {
		s, w, why := running()
		return s == 5 && w == 5, why
	})
	// The mesh: requests to w2's published port go through its user-space
	// proxy and show in its counters.
	w2IP, _, _ := net.SplitHostPort(j.metrics["w2"])
	for range 10 {
		if code, _, err := j.get("http://" + net.JoinHostPort(w2IP, "8080") + "/"); err != nil || code != http.StatusOK {
			t.Fatalf("GET through w2's published port: %d, %v", code, err)
		}
	}
	w2, err := scrape(t, j.metrics["w2"])
	if err != nil {
		t.Fatal(err)
	}
	promtoolCheck(t, "w2", w2)
	if n := metricValue(t, w2, "shoal_mesh_datapath", map[string]string{"datapath": "userspace"}); n != 1 {
		t.Errorf("w2 runs its mesh on the user-space proxy, but shoal_mesh_datapath says otherwise:\n%s", w2)
	}
	labels := map[string]string{"service": "web", "protocol": "tcp"}
	if n := metricValue(t, w2, "shoal_mesh_connections_total", labels); n < 10 {
		t.Errorf("shoal_mesh_connections_total{service=web} on w2 = %v after 10 requests", n)
	}
	if n := metricValue(t, w2, "shoal_mesh_sent_bytes_total", labels); n == 0 {
		t.Errorf("shoal_mesh_sent_bytes_total{service=web} on w2 is 0 after 10 answered requests")
	}

	m1, _ = scrape(t, j.metrics["m1"])
	if placed := metricValue(t, m1, "shoal_scheduler_placements_total", nil) - placedBefore; placed < 5 {
		t.Errorf("placements moved by %v, want at least 5", placed)
	}
	if n := metricValue(t, m1, "shoal_raft_apply_duration_seconds", map[string]string{"outcome": "committed"}); n == 0 {
		t.Errorf("no committed writes in shoal_raft_apply_duration_seconds")
	}
	if n := metricValue(t, m1, "shoal_dispatcher_sessions", nil); n != 2 {
		t.Errorf("shoal_dispatcher_sessions = %v, want 2", n)
	}
	promtoolCheck(t, "m1", m1)

	// Every running task's memory (and CPU time) as last sampled, on its
	// worker, in a format promtool accepts.
	eventually(t, 20*time.Second, "the tasks' memory in the workers' metrics", func() (bool, string) {
		tasks, mem := 0, 0.0
		for _, w := range []string{"w1", "w2"} {
			text, err := scrape(t, j.metrics[w])
			if err != nil {
				return false, err.Error()
			}
			tasks += strings.Count(text, `shoal_worker_task_memory_bytes{service="web"`)
			mem += metricValue(t, text, "shoal_worker_task_memory_bytes", map[string]string{"service": "web"})
		}
		return tasks == 5 && mem > 0, fmt.Sprintf("%d tasks, %v bytes", tasks, mem)
	})
	for _, w := range []string{"w1", "w2"} {
		text, err := scrape(t, j.metrics[w])
		if err != nil {
			t.Fatal(err)
		}
		promtoolCheck(t, w, text)
	}
}
