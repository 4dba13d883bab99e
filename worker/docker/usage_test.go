package docker

import (
	"encoding/json"
	"testing"

	"github.com/moby/moby/api/types/container"
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
