package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func st(replicas uint64, version string) svcState {
	return svcState{Exists: true, Replicas: replicas, Version: version}
}

func write(client int, kind opKind, name string, s svcState, out outcome, call, ret int) record {
	return record{Client: client, Input: opInput{Kind: kind, Name: name, State: s}, Output: opOutput{Outcome: out}, Call: ms(call), Return: ms(ret)}
}

func read(client int, name string, s svcState, call, ret int) record {
	out := opOutput{Outcome: outOK, State: s}
	if !s.Exists {
		out = opOutput{Outcome: outNotFound}
	}
	return record{Client: client, Input: opInput{Kind: opInspect, Name: name}, Output: out, Call: ms(call), Return: ms(ret)}
}

func TestCheckLinearizable(t *testing.T) {
	cases := []struct {
		name    string
		history []record
		ok      bool
	}{
		{"sequential create, scale, read", []record{
			write(0, opCreate, "a", st(2, "v1"), outOK, 0, 10),
			write(0, opScale, "a", st(3, "v1"), outOK, 20, 30),
			read(1, "a", st(3, "v1"), 40, 50),
		}, true},
		{"a read concurrent with a write may see either", []record{
			write(0, opCreate, "a", st(2, "v1"), outOK, 0, 10),
			write(0, opUpdate, "a", st(2, "v2"), outOK, 20, 60),
			read(1, "a", st(2, "v1"), 25, 30),
			read(2, "a", st(2, "v2"), 30, 40),
		}, true},
		{"a stale read after an acknowledged update", []record{
			write(0, opCreate, "a", st(2, "v1"), outOK, 0, 10),
			write(0, opUpdate, "a", st(2, "v2"), outOK, 20, 30),
			read(1, "a", st(2, "v1"), 40, 50),
		}, false},
		{"reads going back in time", []record{
			write(0, opCreate, "a", st(1, "v1"), outOK, 0, 10),
			write(0, opScale, "a", st(2, "v1"), outOK, 20, 100),
			read(1, "a", st(2, "v1"), 30, 40),
			read(2, "a", st(1, "v1"), 50, 60),
		}, false},
		{"a write of unknown outcome may show up later", []record{
			write(0, opCreate, "a", st(1, "v1"), outOK, 0, 10),
			write(0, opScale, "a", st(3, "v1"), outUnknown, 20, 0),
			read(1, "a", st(1, "v1"), 40, 50),
			read(1, "a", st(3, "v1"), 60, 70),
		}, true},
		{"create refused although the name was free", []record{
			write(0, opCreate, "a", st(1, "v1"), outExists, 0, 10),
		}, false},
		{"remove said not found although the service existed", []record{
			write(0, opCreate, "a", st(1, "v1"), outOK, 0, 10),
			write(0, opRemove, "a", svcState{}, outNotFound, 20, 30),
		}, false},
		{"a seed sets the starting state", []record{
			{Client: -1, Input: opInput{Kind: opSeed, Name: "a", State: st(4, "v7")}},
			read(1, "a", st(4, "v7"), 10, 20),
			write(0, opCreate, "a", st(1, "v1"), outExists, 30, 40),
		}, true},
		{"names are independent", []record{
			write(0, opCreate, "a", st(1, "v1"), outOK, 0, 10),
			read(1, "b", svcState{}, 20, 30),
			write(2, opRemove, "b", svcState{}, outNotFound, 40, 50),
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			msg := checkLinearizable(tc.history, 10*time.Second, "")
			if (msg == "") != tc.ok {
				t.Fatalf("linearizable = %v (%q), want %v", msg == "", msg, tc.ok)
			}
		})
	}
}

func TestCheckAcknowledged(t *testing.T) {
	history := []record{
		write(0, opCreate, "a", st(2, "v1"), outOK, 0, 10),
		write(0, opScale, "a", st(3, "v1"), outOK, 20, 30),
		write(1, opCreate, "b", st(1, "v1"), outOK, 0, 10),
		write(1, opUpdate, "b", st(1, "v2"), outUnknown, 20, 0),
		write(1, opRemove, "c", svcState{}, outNotFound, 0, 10),
		// d: a remove that timed out lands after two acknowledged updates
		// (a manager frozen with it resumed and applied it).
		write(2, opCreate, "d", st(1, "v1"), outOK, 0, 10),
		write(2, opRemove, "d", svcState{}, outUnknown, 20, 0),
		write(2, opUpdate, "d", st(1, "v2"), outOK, 30, 40),
		write(2, opUpdate, "d", st(1, "v3"), outOK, 50, 60),
	}
	cases := []struct {
		name  string
		final map[string]svcState
		bad   []string
	}{
		{"every change present", map[string]svcState{"a": st(3, "v1"), "b": st(1, "v1"), "d": st(1, "v3")}, nil},
		{"the unknown remove landed late", map[string]svcState{"a": st(3, "v1"), "b": st(1, "v1")}, nil},
		{"an acknowledged update lost", map[string]svcState{"a": st(3, "v1"), "b": st(1, "v1"), "d": st(1, "v2")}, []string{"service d"}},
		{"the unknown update applied", map[string]svcState{"a": st(3, "v1"), "b": st(1, "v2"), "d": st(1, "v3")}, nil},
		{"an acknowledged scale lost", map[string]svcState{"a": st(2, "v1"), "b": st(1, "v1"), "d": st(1, "v3")}, []string{"service a"}},
		{"an acknowledged create lost", map[string]svcState{"a": st(3, "v1"), "d": st(1, "v3")}, []string{"service b"}},
		{"a refused remove created something", map[string]svcState{"a": st(3, "v1"), "b": st(1, "v1"), "c": st(1, "v1"), "d": st(1, "v3")}, []string{"service c"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, skipped := checkAcknowledged(history, tc.final)
			if skipped != 0 || len(got) != len(tc.bad) {
				t.Fatalf("anomalies %q (skipped %d), want %d", got, skipped, len(tc.bad))
			}
			for i, want := range tc.bad {
				if !strings.HasPrefix(got[i], want) {
					t.Fatalf("anomaly %q, want one about %s", got[i], want)
				}
			}
		})
	}
}

func TestCheckPlacement(t *testing.T) {
	services := map[string]svcState{"a": st(2, "v1"), "gone": {}}
	tasks := []taskFact{
		{ID: "t1", Service: "a", Slot: 1, Node: "w1", Version: "v1"},
		{ID: "t2", Service: "a", Slot: 2, Node: "w2", Version: "v1"},
	}
	procs := []procFact{
		{PID: 11, TaskID: "t1", Service: "a", Slot: 1, Version: "v1"},
		{PID: 12, TaskID: "t2", Service: "a", Slot: 2, Version: "v1"},
	}
	sups := []supervisorFact{{PID: 21, TaskID: "t1"}, {PID: 22, TaskID: "t2"}}
	if got := checkPlacement(services, tasks, procs, sups); len(got) != 0 {
		t.Fatalf("a converged cluster has problems: %q", got)
	}
	// A scale-down keeps whichever slots cost least to keep: slot 2 alone
	// is one replica.
	if got := checkPlacement(map[string]svcState{"a": st(1, "v1")}, tasks[1:], procs[1:], sups[1:]); len(got) != 0 {
		t.Fatalf("one replica in slot 2 has problems: %q", got)
	}
	cases := []struct {
		name  string
		tasks []taskFact
		procs []procFact
		sups  []supervisorFact
		want  string
	}{
		{"a slot running twice in the store",
			append(slices.Clone(tasks), taskFact{ID: "t3", Service: "a", Slot: 2, Node: "w3", Version: "v1"}),
			append(slices.Clone(procs), procFact{PID: 13, TaskID: "t3", Service: "a", Slot: 2, Version: "v1"}),
			sups, "slot 2 runs twice in the store"},
		{"a slot running twice on the machines", tasks,
			append(slices.Clone(procs), procFact{PID: 13, TaskID: "t9", Service: "a", Slot: 1, Version: "v1"}),
			sups, "slot a.1 runs 2 processes"},
		{"an orphaned task process", tasks,
			append(slices.Clone(procs), procFact{PID: 13, TaskID: "t9", Service: "gone", Slot: 1, Version: "v1"}),
			sups, "orphaned task process pid 13"},
		{"an orphaned supervisor", tasks, procs,
			append(slices.Clone(sups), supervisorFact{PID: 23, TaskID: "t9"}), "orphaned supervisor pid 23"},
		{"a missing replica", tasks[:1], procs[:1], sups[:1], "runs tasks in 1 slots [1], want 2 replicas"},
		{"a task the store runs without a process", tasks, procs[:1], sups, "no process runs it"},
		{"an old version still running",
			[]taskFact{tasks[0], {ID: "t2", Service: "a", Slot: 2, Node: "w2", Version: "v0"}}, procs, sups, "runs version v0, want v1"},
		{"a removed service still running",
			append(slices.Clone(tasks), taskFact{ID: "t4", Service: "gone", Slot: 1, Node: "w1", Version: "v1"}),
			append(slices.Clone(procs), procFact{PID: 14, TaskID: "t4", Service: "gone", Slot: 1, Version: "v1"}),
			sups, "service gone was removed"},
		{"too many replicas",
			append(slices.Clone(tasks), taskFact{ID: "t5", Service: "a", Slot: 3, Node: "w1", Version: "v1"}),
			append(slices.Clone(procs), procFact{PID: 15, TaskID: "t5", Service: "a", Slot: 3, Version: "v1"}),
			sups, "runs tasks in 3 slots [1 2 3], want 2 replicas"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := checkPlacement(services, tc.tasks, tc.procs, tc.sups)
			if !slices.ContainsFunc(got, func(p string) bool { return strings.Contains(p, tc.want) }) {
				t.Fatalf("problems %q, want one saying %q", got, tc.want)
			}
		})
	}
}

func TestSchedule(t *testing.T) {
	plan := schedule(7, 2*len(allFaults)+3, allFaults)
	if !slices.Equal(plan, schedule(7, 2*len(allFaults)+3, allFaults)) {
		t.Fatal("the same seed gave two schedules")
	}
	if slices.Equal(plan, schedule(8, 2*len(allFaults)+3, allFaults)) {
		t.Fatal("two seeds gave the same schedule")
	}
	for b := range 2 {
		block := slices.Clone(plan[b*len(allFaults) : (b+1)*len(allFaults)])
		slices.Sort(block)
		want := slices.Clone(allFaults)
		slices.Sort(want)
		if !slices.Equal(block, want) {
			t.Fatalf("block %d does not hold every fault once: %v", b, block)
		}
	}
}

func TestParseFaults(t *testing.T) {
	got, err := parseFaults("pause, kill-leader")
	if err != nil || !slices.Equal(got, []faultKind{faultPause, faultKillLeader}) {
		t.Fatalf("parseFaults = %v, %v", got, err)
	}
	if _, err := parseFaults("pause,meteor"); err == nil || !strings.Contains(err.Error(), `"meteor"`) {
		t.Fatalf("an unknown fault: %v", err)
	}
}

func TestExplainedLater(t *testing.T) {
	history := []record{
		write(0, opCreate, "a", st(1, "v1"), outOK, 0, 10),
		write(0, opScale, "a", st(4, "v1"), outUnknown, 20, 0),
		write(1, opRemove, "b", svcState{}, outUnknown, 20, 0),
	}
	cases := []struct {
		name         string
		svc          string
		final, later svcState
		ok           bool
	}{
		{"unchanged", "a", st(1, "v1"), st(1, "v1"), true},
		{"a timed-out scale landed late", "a", st(1, "v1"), st(4, "v1"), true},
		{"a change no call explains", "a", st(1, "v1"), st(2, "v1"), false},
		{"a timed-out remove landed late", "b", st(1, "v1"), svcState{}, true},
		{"gone with no remove in flight", "a", st(1, "v1"), svcState{}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := explainedLater(history, tc.svc, tc.final, tc.later); got != tc.ok {
				t.Fatalf("explainedLater = %v, want %v", got, tc.ok)
			}
		})
	}
}

func TestScanLogs(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"m1.log": "time=... level=INFO msg=ok\n",
		"m2.log": "==================\nWARNING: DATA RACE\nRead at ...\n",
		"w1.log": "panic: runtime error: index out of range\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got := scanLogs(dir)
	if len(got) != 2 || !strings.HasPrefix(got[0], "m2.log") || !strings.HasPrefix(got[1], "w1.log") {
		t.Fatalf("scanLogs = %q, want the race in m2.log and the panic in w1.log", got)
	}
}
