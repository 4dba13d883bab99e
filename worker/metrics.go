package worker

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shoal-cluster/shoal/internal/metrics"
	pb "github.com/shoal-cluster/shoal/proto"
)

// agentMetrics are a worker's Prometheus metrics: its tasks by runtime and
// state, read when scraped, and the errors its runtimes returned.
type agentMetrics struct {
	a             *Agent
	tasks         *prometheus.Desc
	taskCPU       *prometheus.Desc
	taskMemory    *prometheus.Desc
	runtimeErrors *prometheus.CounterVec
}

func newAgentMetrics(a *Agent) *agentMetrics {
	return &agentMetrics{
		a: a,
		tasks: prometheus.NewDesc("shoal_worker_tasks", "Tasks assigned to this worker, by runtime and observed state.",
			[]string{"runtime", "state"}, nil),
		taskCPU: prometheus.NewDesc("shoal_worker_task_cpu_seconds_total", "CPU time a running task has used, as last sampled (before the last heartbeat).",
			[]string{"service", "task_id"}, nil),
		taskMemory: prometheus.NewDesc("shoal_worker_task_memory_bytes", "Memory a running task uses less inactive page cache, as last sampled.",
			[]string{"service", "task_id"}, nil),
		runtimeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_worker_runtime_errors_total",
			Help: "Errors a runtime returned while preparing or starting a task, by runtime and stage.",
		}, []string{"runtime", "stage"}),
	}
}

// Metrics is the worker's Prometheus collector (`--metrics-addr`).
func (a *Agent) Metrics() prometheus.Collector {
	return metrics.Join(a.metrics, a.mesh.Collector())
}

// Describe implements prometheus.Collector.
func (m *agentMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.tasks
	ch <- m.taskCPU
	ch <- m.taskMemory
	m.runtimeErrors.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *agentMetrics) Collect(ch chan<- prometheus.Metric) {
	type key struct{ runtime, state string }
	counts := map[key]int{}
	usage := m.a.lastUsage()
	services := make(map[string]string, len(usage))
	m.a.mu.Lock()
	for _, t := range m.a.tasks {
		counts[key{taskRuntime(t), stateLabel(t.GetStatus().GetState())}]++
	}
	for _, u := range usage {
		if t, ok := m.a.tasks[u.GetTaskId()]; ok {
			services[u.GetTaskId()] = t.GetServiceName()
		}
	}
	m.a.mu.Unlock()
	for _, u := range usage {
		svc, ok := services[u.GetTaskId()]
		if !ok {
			continue // removed since
		}
		ch <- prometheus.MustNewConstMetric(m.taskCPU, prometheus.CounterValue, float64(u.GetCpuTotal())/1e9, svc, u.GetTaskId())
		ch <- prometheus.MustNewConstMetric(m.taskMemory, prometheus.GaugeValue, float64(u.GetMemoryBytes()), svc, u.GetTaskId())
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(m.tasks, prometheus.GaugeValue, float64(n), k.runtime, k.state)
	}
	m.runtimeErrors.Collect(ch)
}

// runtimeError counts an error from a runtime.
func (m *agentMetrics) runtimeError(rt Runtime, stage string) {
	if m == nil {
		return // an agent made by a unit test
	}
	m.runtimeErrors.WithLabelValues(rt.Name(), stage).Inc()
}

// taskRuntime is the runtime a task names, "process" by default.
func taskRuntime(t *pb.Task) string {
	if r := t.GetSpec().GetRuntime(); r != "" {
		return r
	}
	return "process"
}

// stateLabel is a task state as a metric label: running, failed, ...
func stateLabel(s pb.TaskState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "TASK_STATE_"))
}
