package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
)

func TestCheckJob(t *testing.T) {
	complete := func(slot uint64) *pb.Task {
		return &pb.Task{Id: "c" + string(rune('0'+slot)), Slot: slot, DesiredState: pb.TaskState_TASK_STATE_COMPLETE,
			Status: &pb.TaskStatus{State: pb.TaskState_TASK_STATE_COMPLETE}}
	}
	lost := func(slot uint64) *pb.Task {
		return &pb.Task{Slot: slot, DesiredState: pb.TaskState_TASK_STATE_SHUTDOWN,
			Status: &pb.TaskStatus{State: pb.TaskState_TASK_STATE_FAILED, NodeLost: true}}
	}
	all := func() ([]*pb.Task, map[uint64]int) {
		var ts []*pb.Task
		runs := map[uint64]int{}
		for slot := uint64(1); slot <= jobCompletions; slot++ {
			ts = append(ts, complete(slot))
			runs[slot] = 1
		}
		return ts, runs
	}
	cases := []struct {
		name   string
		change func(ts []*pb.Task, runs map[uint64]int) []*pb.Task
		want   string // "" for no problem
	}{
		{"every slot once", func(ts []*pb.Task, _ map[uint64]int) []*pb.Task { return ts }, ""},
		{"a slot completed twice in the store", func(ts []*pb.Task, _ map[uint64]int) []*pb.Task { return append(ts, complete(3)) },
			"job slot 3 completed 2 times in the store"},
		{"a slot never completed", func(ts []*pb.Task, _ map[uint64]int) []*pb.Task { return ts[1:] }, "job slot 1 never completed"},
		{"a slot ran twice unexplained", func(ts []*pb.Task, runs map[uint64]int) []*pb.Task { runs[2] = 2; return ts },
			"job slot 2 ran to completion 2 times, and no task of it was lost"},
		{"a slot ran twice after a lost task", func(ts []*pb.Task, runs map[uint64]int) []*pb.Task { runs[2] = 2; return append(ts, lost(2)) }, ""},
		{"a completion with no run", func(ts []*pb.Task, runs map[uint64]int) []*pb.Task { delete(runs, 4); return ts },
			"job slot 4 is complete in the store but no task recorded a run"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts, runs := all()
			ts = tc.change(ts, runs)
			problems := checkJob(ts, runs)
			got := strings.Join(problems, "\n")
			if tc.want == "" && len(problems) > 0 || tc.want != "" && !strings.Contains(got, tc.want) {
				t.Fatalf("problems:\n%s\nwant %q", got, tc.want)
			}
		})
	}
}

func TestRunsIn(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"done-1.abc", "done-1.def", "done-12.x", "other"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if got := runsIn(dir); got[1] != 2 || got[12] != 1 || len(got) != 2 {
		t.Fatalf("runsIn = %v", got)
	}
}
