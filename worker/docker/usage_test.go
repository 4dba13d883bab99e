package docker

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/shoal-cluster/shoal/internal/poll"
	"github.com/shoal-cluster/shoal/worker"
)

// TestStatsUsage converts the Engine's one-shot stats as cgroup v1 and v2
// hosts report them.
func TestStatsUsage(t *testing.T) {
	tests := []struct {
		name, body string
		want       worker.Usage
	}{
		{"cgroup v1", `{"cpu_stats":{"cpu_usage":{"total_usage":2500000000}},"memory_stats":{"usage":10485760,"limit":9223372036854771712,"stats":{"total_inactive_file":1048576,"cache":2097152}}}`,
			worker.Usage{CPUTotal: 2500000000, MemoryBytes: 9437184}},
		{"cgroup v2", `{"cpu_stats":{"cpu_usage":{"total_usage":1500000000}},"memory_stats":{"usage":20971520,"limit":67108864,"stats":{"inactive_file":4194304,"anon":16777216}}}`,
			worker.Usage{CPUTotal: 1500000000, MemoryBytes: 16777216}},
		{"no memory stats", `{"cpu_stats":{"cpu_usage":{"total_usage":7}},"memory_stats":{}}`, worker.Usage{CPUTotal: 7}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var st container.StatsResponse
			if err := json.Unmarshal([]byte(tt.body), &st); err != nil {
				t.Fatal(err)
			}
			if got := statsUsage(st); got != tt.want {
				t.Errorf("statsUsage = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestUsageFromEngine reads a running container's use from the Engine's
// one-shot stats: CPU time that grows, and memory in use.
func TestUsageFromEngine(t *testing.T) {
	cli := engine(t)
	r := newRuntime(t, cli, "node-"+randomID())
	ctx := ctxT(t)
	id := "task" + randomID()
	if err := r.Prepare(ctx, helloTask(id, "shoal/hello:v1"), worker.TaskFiles{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	var first worker.Usage
	poll.Until(t, 20*time.Second, "the container's figures", func() (bool, string) {
		u, err := r.Usage(ctx, id)
		if err != nil {
			return false, err.Error()
		}
		first = u
		return u.CPUTotal > 0 && u.MemoryBytes > 0, fmt.Sprintf("%+v", u)
	})
	if _, err := r.Usage(ctx, "task-unknown"); err == nil {
		t.Fatal("usage of an unknown task succeeded")
	}
	t.Logf("container uses %+v", first)
}
