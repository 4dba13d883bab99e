package worker

import (
	"context"
	"sort"
	"sync"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
)

// usageSampler measures the CPU and memory use of the agent's running
// tasks before each heartbeat. It keeps each task's previous sample so
// that the CPU rate is computed here, between two of the worker's own
// readings: a new leader has rates from a worker's first heartbeat.
type usageSampler struct {
	mu   sync.Mutex
	prev map[string]*pb.TaskUsage // last sample by task ID
}

// sampleBound caps one round of sampling (the Docker Engine may be slow):
// what is not read by then is left out of this beat.
const sampleBound = 500 * time.Millisecond

// sampleUsage reads every running task's use through its runtime. Tasks
// whose runtime cannot measure them are left out (the leader then treats
// them as having no figures, not as idle).
func (a *Agent) sampleUsage(ctx context.Context, bound time.Duration) []*pb.TaskUsage {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	type running struct {
		id    string
		rt    UsageReader
		limit int64
	}
	var tasks []running
	a.mu.Lock()
	for id, t := range a.tasks {
		if t.GetStatus().GetState() != pb.TaskState_TASK_STATE_RUNNING {
			continue
		}
		rt, err := a.runtimeFor(t)
		if err != nil {
			continue
		}
		if ur, ok := rt.(UsageReader); ok {
			tasks = append(tasks, running{id, ur, t.GetSpec().GetResources().GetLimits().GetMemoryBytes()})
		}
	}
	a.mu.Unlock()
	sort.Slice(tasks, func(i, j int) bool { return tasks[i].id < tasks[j].id })

	s := &a.usage
	s.mu.Lock()
	defer s.mu.Unlock()
	next := make(map[string]*pb.TaskUsage, len(tasks))
	out := make([]*pb.TaskUsage, 0, len(tasks))
	for _, t := range tasks {
		if ctx.Err() != nil {
			break
		}
		u, err := t.rt.Usage(ctx, t.id)
		if err != nil {
			continue
		}
		now := time.Now()
		limit := t.limit
		if limit == 0 {
			limit = u.MemoryLimit
		}
		sample := &pb.TaskUsage{TaskId: t.id, SampledAt: now.UnixNano(), CpuTotal: u.CPUTotal, MemoryBytes: u.MemoryBytes, MemoryLimit: limit}
		if p := s.prev[t.id]; p != nil && u.CPUTotal >= p.GetCpuTotal() {
			if w := now.UnixNano() - p.GetSampledAt(); w > 0 {
				sample.CpuWindow = w
				sample.CpuNanoCores = int64(float64(u.CPUTotal-p.GetCpuTotal()) * 1e9 / float64(w))
			}
		}
		next[t.id] = sample
		out = append(out, sample)
	}
	s.prev = next
	return out
}

// lastUsage is the latest sample of every task measured (for metrics).
func (a *Agent) lastUsage() []*pb.TaskUsage {
	a.usage.mu.Lock()
	defer a.usage.mu.Unlock()
	out := make([]*pb.TaskUsage, 0, len(a.usage.prev))
	for _, u := range a.usage.prev {
		out = append(out, u)
	}
	return out
}
