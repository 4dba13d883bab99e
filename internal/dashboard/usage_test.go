package dashboard

import (
	"reflect"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
)

func TestAddUsage(t *testing.T) {
	stat := func(id string, nanoCores, window, mem, reserve, limit int64) *pb.TaskStat {
		return &pb.TaskStat{TaskId: id, CpuReservation: reserve, MemoryLimit: limit,
			Usage: &pb.TaskUsage{TaskId: id, CpuNanoCores: nanoCores, CpuWindow: window, MemoryBytes: mem}}
	}
	cases := []struct {
		name string
		stat *pb.TaskStat
		want *UsageView
	}{
		{"no sample", &pb.TaskStat{TaskId: "t"}, nil},
		{"first sample: memory only", stat("t", 0, 0, 64<<20, 0, 0), &UsageView{MemoryMiB: 64}},
		{"half a core of one reserved, a quarter of the limit", stat("t", 5e8, 1e9, 32<<20, 1e9, 128<<20),
			&UsageView{CPUPercent: 50, CPUOfReservation: 50, MemoryMiB: 32, MemoryOfLimit: 25}},
		{"two cores, no reservation", stat("t", 2e9, 1e9, 1<<20, 0, 0), &UsageView{CPUPercent: 200, MemoryMiB: 1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := &State{Tasks: []TaskView{{ID: "t"}, {ID: "other"}}}
			addUsage(s, []*pb.TaskStat{c.stat})
			if !reflect.DeepEqual(s.Tasks[0].Usage, c.want) {
				t.Errorf("usage %+v, want %+v", s.Tasks[0].Usage, c.want)
			}
			if s.Tasks[1].Usage != nil {
				t.Errorf("a task without figures got %+v", s.Tasks[1].Usage)
			}
		})
	}
}
