package usage

import (
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/clock"
	pb "github.com/shoal-cluster/shoal/proto"
)

func TestTable(t *testing.T) {
	clk := clock.NewFake(time.Unix(1000, 0))
	tb := New(clk)
	u := func(id string) *pb.TaskUsage { return &pb.TaskUsage{TaskId: id, CpuWindow: 1} }
	steps := []struct {
		name string
		do   func()
		want []string // task IDs held
	}{
		{"a node's beat", func() { tb.Record("n1", []*pb.TaskUsage{u("a"), u("b")}) }, []string{"a", "b"}},
		{"another node's", func() { tb.Record("n2", []*pb.TaskUsage{u("c")}) }, []string{"a", "b", "c"}},
		{"a beat replaces the node's set", func() { tb.Record("n1", []*pb.TaskUsage{u("b")}) }, []string{"b", "c"}},
		{"an empty beat clears it", func() { tb.Record("n1", nil) }, []string{"c"}},
		{"a node down is forgotten", func() { tb.ForgetNode("n2") }, nil},
		{"a new term starts empty", func() { tb.Record("n1", []*pb.TaskUsage{u("a")}); tb.Reset() }, nil},
	}
	for _, s := range steps {
		clk.Advance(time.Second)
		s.do()
		snap := tb.Snapshot()
		if len(snap) != len(s.want) {
			t.Fatalf("%s: holds %v, want %v", s.name, snap, s.want)
		}
		for _, id := range s.want {
			got, ok := tb.Get(id)
			if !ok || got.Usage.GetTaskId() != id {
				t.Fatalf("%s: task %s missing", s.name, id)
			}
		}
	}
	tb.Record("n1", []*pb.TaskUsage{u("a")})
	if got, _ := tb.Get("a"); !got.At.Equal(clk.Now()) || got.NodeID != "n1" {
		t.Fatalf("sample stamped %v by %q, want now by n1", got.At, got.NodeID)
	}
}
