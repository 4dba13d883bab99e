package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"
)

func ok(target string, start, end int) probeResult {
	return probeResult{Target: target, Start: ms(start), End: ms(end), OK: true}
}

func fail(target string, start, end int) probeResult {
	return probeResult{Target: target, Start: ms(start), End: ms(end)}
}

// steady is a success every 20 ms on target from `from` to `to` ms.
func steady(target string, from, to int) []probeResult {
	var out []probeResult
	for t := from; t <= to; t += 20 {
		out = append(out, ok(target, t, t+2))
	}
	return out
}

func TestTallyProbes(t *testing.T) {
	cases := []struct {
		name    string
		results []probeResult
		excl    []exclusion
		end     int
		want    map[string]targetFigures
	}{
		{"steady successes: the outage is the spacing", steady("m1", 0, 998), nil, 1000,
			map[string]targetFigures{"m1": {Sent: 50, Outage: ms(20)}}},
		{"failures in a row make the outage between the successes around them", append(append(
			steady("w1", 0, 480),
			fail("w1", 500, 502), fail("w1", 520, 2520), fail("w1", 540, 542)),
			steady("w1", 3000, 3980)...), nil, 4000,
			map[string]targetFigures{"w1": {Sent: 25 + 3 + 50, Failed: 3, Outage: ms(3002 - 482)}}},
		{"a request hanging does not hide the others' successes", append(
			steady("w1", 0, 980), fail("w1", 100, 2100)), nil, 1000,
			map[string]targetFigures{"w1": {Sent: 51, Failed: 1, Outage: ms(20)}}},
		{"no success at all: the whole window", []probeResult{fail("m2", 0, 2000), fail("m2", 20, 2020)}, nil, 3000,
			map[string]targetFigures{"m2": {Sent: 2, Failed: 2, Outage: ms(3000)}}},
		{"the end of the window counts: successes that stopped", steady("m3", 0, 480), nil, 2000,
			map[string]targetFigures{"m3": {Sent: 25, Outage: ms(2000 - 482)}}},
		{"failures during an exclusion do not count, nor does its time", append(append(
			steady("m1", 0, 980),
			fail("m1", 1000, 1001), fail("m1", 1020, 3020), fail("m1", 4990, 4995)),
			steady("m1", 5000, 5980)...),
			[]exclusion{{Target: "m1", From: ms(990), To: ms(5002)}}, 6000,
			map[string]targetFigures{"m1": {Sent: 50 + 50, Outage: ms(20)}}},
		{"a failure overlapping the exclusion's start does not count", append(
			steady("m1", 0, 980), fail("m1", 985, 1500), ok("m1", 3000, 3001)),
			[]exclusion{{Target: "m1", From: ms(990), To: ms(3001)}}, 3001,
			map[string]targetFigures{"m1": {Sent: 51, Outage: ms(20)}}},
		{"failures after the node answered again count", append(append(
			steady("m1", 0, 980), ok("m1", 3000, 3001), fail("m1", 3020, 3021), fail("m1", 3040, 5040)),
			steady("m1", 5500, 5980)...),
			[]exclusion{{Target: "m1", From: ms(990), To: ms(3001)}}, 6000,
			map[string]targetFigures{"m1": {Sent: 50 + 1 + 2 + 25, Failed: 2, Outage: ms(5502 - 3001)}}},
		{"an exclusion still open at the end covers the tail", steady("w2", 0, 980),
			[]exclusion{{Target: "w2", From: ms(1000), To: ms(4000)}}, 4000,
			map[string]targetFigures{"w2": {Sent: 50, Outage: ms(20)}}},
		{"targets are independent", append(steady("m1", 0, 980), fail("w1", 0, 2000), ok("w1", 1500, 1502)),
			[]exclusion{{Target: "m1", From: 0, To: ms(1000)}}, 1000,
			map[string]targetFigures{"m1": {Sent: 50, Outage: 0}, "w1": {Sent: 2, Failed: 1, Outage: ms(1000)}}},
		{"overlapping exclusions are not subtracted twice", append(steady("m1", 0, 980), ok("m1", 4000, 4001)),
			[]exclusion{{Target: "m1", From: ms(1000), To: ms(3000)}, {Target: "m1", From: ms(2000), To: ms(3500)}}, 4001,
			map[string]targetFigures{"m1": {Sent: 51, Outage: ms(4001 - 982 - 2500)}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := tallyProbes(tc.results, tc.excl, ms(tc.end)).byTarget
			if len(got) != len(tc.want) {
				t.Fatalf("got %d targets %v, want %v", len(got), got, tc.want)
			}
			for target, want := range tc.want {
				if got[target] != want {
					t.Errorf("%s: got %+v, want %+v", target, got[target], want)
				}
			}
		})
	}
}

func TestExcludedWithin(t *testing.T) {
	ex := []exclusion{{From: ms(100), To: ms(200)}, {From: ms(150), To: ms(300)}, {From: ms(500), To: ms(600)}}
	cases := []struct {
		from, to int
		want     int
	}{
		{0, 1000, 300}, {0, 100, 0}, {120, 160, 40}, {250, 550, 100}, {300, 500, 0}, {590, 700, 10},
	}
	for _, tc := range cases {
		if got := excludedWithin(ex, ms(tc.from), ms(tc.to)); got != ms(tc.want) {
			t.Errorf("excludedWithin(%d, %d) = %s, want %s", tc.from, tc.to, got, ms(tc.want))
		}
	}
}

func TestSummarize(t *testing.T) {
	var f planeFigures
	f.summarize(tally{byTarget: map[string]targetFigures{
		"m1": {Sent: 100, Outage: ms(30)},
		"w1": {Sent: 90, Failed: 3, Outage: ms(2100)},
		"w2": {Sent: 80, Failed: 1, Outage: ms(500)},
	}, kinds: map[string]int{"timeout": 3, "closed": 1}})
	if f.Sent != 270 || f.Failed != 4 || f.Outage != ms(2100) || f.OutageAt != "w1" || f.FailedBy["w1"] != 3 || f.FailedBy["w2"] != 1 || len(f.FailedBy) != 2 || f.FailKinds["timeout"] != 3 {
		t.Fatalf("summarize: %+v", f)
	}
}

func TestEvaluate(t *testing.T) {
	leaderLimits := dataPlaneLimits[faultKillLeaderSilent]
	clean := planeFigures{Target: "m1", Sent: 5000, Failed: 4, Outage: ms(300), Writes: 10, MaxWrite: ms(400),
		WebBefore: map[string]int{"w1": 2, "w2": 2, "w3": 2}}
	cases := []struct {
		name   string
		lim    planeLimits
		change func(*planeFigures)
		want   []string // substrings, one per anomaly, in order
	}{
		{"a clean leader fault", leaderLimits, func(*planeFigures) {}, nil},
		{"a worker seen Down and tasks replaced", leaderLimits, func(f *planeFigures) {
			f.WorkersDown = []string{"w1", "w3"}
			f.ReplacedOn = map[string]int{"w1": 2, "w3": 1}
		}, []string{"worker(s) w1, w3 seen Down", "3 web task(s) replaced (w1 ×2, w3 ×1)"}},
		{"too many failed requests", leaderLimits, func(f *planeFigures) {
			f.Failed = 5
			f.FailedBy = map[string]int{"w2": 5}
			f.FailKinds = map[string]int{"timeout": 4, "closed": 1}
		}, []string{"5 of 5000 requests failed (0.10%, limit 0.1%): w2 ×5; closed ×1, timeout ×4"}},
		{"just under the failure limit", leaderLimits, func(f *planeFigures) { f.Failed = 4 }, nil},
		{"no request counted", leaderLimits, func(f *planeFigures) { f.Sent, f.Failed = 0, 0 }, []string{"no request"}},
		{"a slow write through a survivor", leaderLimits, func(f *planeFigures) { f.MaxWrite = ms(2000) }, []string{"took 2.0s (limit 2s)"}},
		{"a failed write through a survivor", leaderLimits, func(f *planeFigures) { f.WriteErrs = []string{"through m2: deadline exceeded"} },
			[]string{"a write through a surviving manager failed: through m2"}},
		{"slow-link writes are only reported", dataPlaneLimits[faultSlowLink], func(f *planeFigures) {
			f.MaxWrite = 9 * time.Second
			f.WriteErrs = []string{"through m1: deadline exceeded"}
		}, nil},
		{"the leader faults enforce no outage", leaderLimits, func(f *planeFigures) { f.Outage = 5 * time.Second }, nil},
		{"a blackholed worker Down and replaced, mesh fine", dataPlaneLimits[faultBlackholeWorker], func(f *planeFigures) {
			f.Target = "w2"
			f.WorkersDown = []string{"w2"}
			f.ReplacedOn = map[string]int{"w2": 2}
			f.Failed, f.Outage = 49, ms(900)
		}, nil},
		{"a blackholed worker never Down", dataPlaneLimits[faultBlackholeWorker], func(f *planeFigures) { f.Target = "w2" },
			[]string{"worker w2, cut off from the managers, was never seen Down", "2 of the 2 web task(s) on w2 were not replaced"}},
		{"a blackholed worker, others Down too, mesh failing", dataPlaneLimits[faultBlackholeWorker], func(f *planeFigures) {
			f.Target = "w2"
			f.WorkersDown = []string{"w1", "w2"}
			f.ReplacedOn = map[string]int{"w1": 2, "w2": 1}
			f.Failed, f.Outage, f.OutageAt = 50, ms(1000), "m3"
			f.FailedBy = map[string]int{"m3": 50}
		}, []string{"worker(s) w1 seen Down, although only w2 was cut off", "1 of the 2 web task(s) on w2 were not replaced",
			"replaced on nodes the fault did not hit (w1 ×2)", "50 of 5000 requests failed (1.00%, limit 1%): m3 ×50", "requests to m3 saw nothing succeed for 1.0s (limit 1s)"}},
		{"a killed worker is only reported", dataPlaneLimits[faultKillWorker], func(f *planeFigures) {
			f.WorkersDown = []string{"w1"}
			f.ReplacedOn = map[string]int{"w1": 2}
			f.Failed, f.Outage, f.MaxWrite = 2000, 20*time.Second, 10*time.Second
		}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := clean
			f.WebBefore = map[string]int{"w1": 2, "w2": 2, "w3": 2}
			tc.change(&f)
			got := evaluate(tc.lim, f)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d anomalies %q, want %d %q", len(got), got, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("anomaly %d: got %q, want it to contain %q", i, got[i], w)
				}
			}
		})
	}
}

// Every fault kind has a row in the thresholds table and a --faults name.
func TestEveryFaultHasLimitsAndAName(t *testing.T) {
	for _, k := range allFaults {
		if _, ok := dataPlaneLimits[k]; !ok {
			t.Errorf("fault %q has no data-plane limits", k)
		}
		named := false
		for _, kk := range faultFlags {
			named = named || kk == k
		}
		if !named {
			t.Errorf("fault %q has no --faults name", k)
		}
	}
	plan := schedule(1, 2*len(allFaults), allFaults)
	for b := range 2 {
		block := slices.Clone(plan[b*len(allFaults) : (b+1)*len(allFaults)])
		slices.Sort(block)
		want := slices.Clone(allFaults)
		slices.Sort(want)
		if !slices.Equal(block, want) {
			t.Errorf("block %d of the schedule is %v, want each kind once", b, block)
		}
	}
}

func TestPlaneTable(t *testing.T) {
	tallies := map[faultKind]*kindTally{}
	for _, r := range []struct {
		kind faultKind
		f    planeFigures
		anom int
	}{
		{faultKillLeaderSilent, planeFigures{Sent: 4000, Failed: 400, Outage: 17 * time.Second, Writes: 8, MaxWrite: 3 * time.Second, WorkersDown: []string{"w1"}, ReplacedOn: map[string]int{"w1": 2}}, 3},
		{faultKillLeaderSilent, planeFigures{Sent: 6000, Failed: 0, Outage: ms(100), Writes: 8, MaxWrite: ms(200)}, 0},
		{faultKillWorker, planeFigures{Sent: 3000}, 0},
	} {
		if tallies[r.kind] == nil {
			tallies[r.kind] = &kindTally{}
		}
		tallies[r.kind].add(r.f, r.anom)
	}
	var md bytes.Buffer
	writePlaneTable(&md, allFaults, tallies, true)
	want := "| fault | rounds | requests | failed | failed % | longest outage | max write | write errors | rounds with a worker Down | rounds with tasks replaced | rounds failing (e) |\n" +
		"|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n" +
		"| kill -9 worker | 1 | 3000 | 0 | 0.00% | 0.0s | - | 0 | 0 | 0 | 0 |\n" +
		"| kill -9 leader silent | 2 | 10000 | 400 | 4.00% | 17.0s | 3.00s | 0 | 1 | 1 | 1 |\n"
	if md.String() != want {
		t.Fatalf("markdown table:\n%s\nwant:\n%s", md.String(), want)
	}
	var text bytes.Buffer
	writePlaneTable(&text, allFaults, tallies, false)
	if lines := strings.Split(strings.TrimSpace(text.String()), "\n"); len(lines) != 3 || !strings.HasPrefix(lines[2], "kill -9 leader silent") {
		t.Fatalf("text table:\n%s", text.String())
	}
}

func TestTallyFailureKinds(t *testing.T) {
	results := []probeResult{
		ok("m1", 0, 1),
		{Target: "m1", Start: ms(10), End: ms(2010), Fail: "timeout"},
		{Target: "w1", Start: ms(10), End: ms(11), Fail: "closed"},
		{Target: "w1", Start: ms(20), End: ms(21), Fail: "closed"},
		{Target: "w2", Start: ms(20), End: ms(21), Fail: "refused"}, // excluded
	}
	got := tallyProbes(results, []exclusion{{Target: "w2", From: 0, To: ms(100)}}, ms(3000)).kinds
	if len(got) != 2 || got["timeout"] != 1 || got["closed"] != 2 {
		t.Fatalf("failure kinds: %v", got)
	}
}
