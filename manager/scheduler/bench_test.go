package scheduler

import (
	"fmt"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
)

// benchSchedule measures the placement decision alone: ntasks pending
// tasks (100 per service, with reservations and a constraint) placed on
// nnodes Ready nodes in passes of defaultMaxBatch, as the scheduler does.
func benchSchedule(b *testing.B, ntasks, nnodes int, opts ...func(*pb.Task)) {
	nodes := make([]*pb.Node, nnodes)
	for i := range nodes {
		nodes[i] = benchNode(i)
	}
	ts := make([]*pb.Task, ntasks)
	for i := range ts {
		ts[i] = benchTask(fmt.Sprintf("task-%07d", i), i/100, uint64(i%100+1))
		for _, o := range opts {
			o(ts[i])
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		c := modelOf(nodes)
		b.StartTimer()
		placed := 0
		for off := 0; off < len(ts); off += defaultMaxBatch {
			for _, d := range c.schedule(ts[off:min(off+defaultMaxBatch, len(ts))]) {
				if d.node != "" {
					placed++
				}
			}
		}
		if placed != ntasks {
			b.Fatalf("placed %d of %d tasks", placed, ntasks)
		}
	}
	b.ReportMetric(float64(ntasks)*float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
}

func BenchmarkSchedule10kTasks1kNodes(b *testing.B)  { benchSchedule(b, 10_000, 1_000) }
func BenchmarkSchedule100kTasks1kNodes(b *testing.B) { benchSchedule(b, 100_000, 1_000) }

// With a spread preference over the nodes' three zones.
func BenchmarkSchedule100kTasks1kNodesSpreadZone(b *testing.B) {
	benchSchedule(b, 100_000, 1_000, spread("node.labels.zone"))
}

// TestThroughput runs the end-to-end measurement on a small cluster.
func TestThroughput(t *testing.T) {
	perSec, err := Throughput(2000, 50)
	if err != nil {
		t.Fatalf("Throughput: %v", err)
	}
	if perSec <= 0 {
		t.Fatalf("Throughput = %v tasks/s", perSec)
	}
	t.Logf("2,000 tasks on 50 nodes: %.0f tasks/s", perSec)
}
