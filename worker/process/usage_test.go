package process

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/process/supervise"
)

// TestCgroupUsage reads fixture cgroup files of both versions, as the
// kernel lays them out.
func TestCgroupUsage(t *testing.T) {
	dir := func(p string) string { return filepath.Join("testdata", "cgroup", p) }
	tests := []struct {
		name    string
		plan    supervise.CgroupPlan
		want    worker.Usage
		wantErr bool
	}{
		{
			name: "v1 with cpuacct apart from cpu",
			plan: supervise.CgroupPlan{Version: 1, MemoryBytes: 64 << 20, Entries: []supervise.CgroupEntry{
				{Controller: "memory", Dir: dir("v1/memory")},
				{Controller: "cpu", Dir: dir("v1/memory")}, // no cpuacct.usage here
				{Controller: "cpuacct", Dir: dir("v1/cpuacct")},
			}},
			want: worker.Usage{CPUTotal: 2500000000, MemoryBytes: 10485760 - 1048576, MemoryLimit: 64 << 20},
		},
		{
			name: "v1 with cpu and cpuacct mounted together",
			plan: supervise.CgroupPlan{Version: 1, Entries: []supervise.CgroupEntry{
				{Controller: "memory", Dir: dir("v1/memory")},
				{Controller: "cpu", Dir: dir("v1/cpu-cpuacct")},
			}},
			want: worker.Usage{CPUTotal: 2600000000, MemoryBytes: 10485760 - 1048576},
		},
		{
			name:    "v1 without CPU accounting",
			plan:    supervise.CgroupPlan{Version: 1, Entries: []supervise.CgroupEntry{{Controller: "memory", Dir: dir("v1/memory")}}},
			wantErr: true,
		},
		{
			name: "v2",
			plan: supervise.CgroupPlan{Version: 2, MemoryBytes: 32 << 20, Entries: []supervise.CgroupEntry{{Dir: dir("v2")}}},
			want: worker.Usage{CPUTotal: 1500000000, MemoryBytes: 20971520 - 4194304, MemoryLimit: 32 << 20},
		},
		{
			name:    "v2 cpu.stat without usage_usec",
			plan:    supervise.CgroupPlan{Version: 2, Entries: []supervise.CgroupEntry{{Dir: dir("v2-bad")}}},
			wantErr: true,
		},
		{
			name:    "v2 cgroup gone",
			plan:    supervise.CgroupPlan{Version: 2, Entries: []supervise.CgroupEntry{{Dir: dir("nonexistent")}}},
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := usage(&tt.plan)
			if (err != nil) != tt.wantErr {
				t.Fatalf("usage() error = %v, want error %v", err, tt.wantErr)
			}
			if !tt.wantErr && got != tt.want {
				t.Errorf("usage() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// BenchmarkUsage100Tasks is one heartbeat's sampling on a worker with 100
// tasks: each task's cgroup.json and its cgroup v1 files (fixtures on the
// page cache, as the kernel's are in memory).
func BenchmarkUsage100Tasks(b *testing.B) {
	r := &Runtime{dir: b.TempDir()}
	abs := func(p string) string {
		a, err := filepath.Abs(filepath.Join("testdata", "cgroup", p))
		if err != nil {
			b.Fatal(err)
		}
		return a
	}
	plan := supervise.CgroupPlan{Version: 1, MemoryBytes: 64 << 20, Entries: []supervise.CgroupEntry{
		{Controller: "memory", Dir: abs("v1/memory")},
		{Controller: "cpu", Dir: abs("v1/memory")},
		{Controller: "cpuacct", Dir: abs("v1/cpuacct")},
	}}
	var ids []string
	for i := range 100 {
		id := fmt.Sprintf("task%021d", i)
		dir := filepath.Join(r.dir, id)
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		if err := supervise.WriteJSONAtomic(dir, supervise.CgroupFile, &plan, 0o644); err != nil {
			b.Fatal(err)
		}
		ids = append(ids, id)
	}
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		for _, id := range ids {
			if _, err := r.Usage(ctx, id); err != nil {
				b.Fatal(err)
			}
		}
	}
}
