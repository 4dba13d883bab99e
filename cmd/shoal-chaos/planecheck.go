package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/shoal-cluster/shoal/internal/faultreport"
)

// probeResult is one HTTP request of the data-plane check, its times
// relative to the start of the round's measurement window.
type probeResult struct {
	Target string // the node whose published port was asked
	Start  time.Duration
	End    time.Duration
	OK     bool
	Fail   string // a failure's kind (failureKind)
}

// exclusion is a time during which a target is unreachable from the host
// on purpose (killed, isolated, frozen): from just before the fault until
// the node answered again after the heal.
type exclusion struct {
	Target string
	From   time.Duration
	To     time.Duration
}

// targetFigures are one target's data-plane figures over a window.
type targetFigures struct {
	Sent   int           // requests that count: every success, and every failure outside an exclusion
	Failed int           // failures outside an exclusion
	Outage time.Duration // the longest time outside exclusions with no successful completion
}

// tally is a window's figures: per target, and the kinds of the failures
// that count.
type tally struct {
	byTarget map[string]targetFigures
	kinds    map[string]int
}

// tallyProbes computes each target's figures over the window [0, end]. A
// success always counts; a failure counts unless its request overlapped an
// exclusion of its target. The outage is the longest stretch between two
// successful completions (the window's edges count as completions), minus
// the time the target was excluded: how long a client of that node saw
// nothing succeed while it was meant to answer.
func tallyProbes(results []probeResult, excl []exclusion, end time.Duration) tally {
	exclBy := map[string][]exclusion{}
	for _, e := range excl {
		exclBy[e.Target] = append(exclBy[e.Target], e)
	}
	succBy := map[string][]time.Duration{}
	out := map[string]targetFigures{}
	kinds := map[string]int{}
	for _, r := range results {
		f := out[r.Target]
		switch {
		case r.OK:
			f.Sent++
			succBy[r.Target] = append(succBy[r.Target], r.End)
		case !overlapsAny(exclBy[r.Target], r.Start, r.End):
			f.Sent++
			f.Failed++
			kinds[r.Fail]++
		}
		out[r.Target] = f
	}
	for target, f := range out {
		succ := succBy[target]
		slices.Sort(succ)
		last := time.Duration(0)
		for _, t := range append(succ, end) {
			if t > end {
				t = end
			}
			if gap := t - last - excludedWithin(exclBy[target], last, t); gap > f.Outage {
				f.Outage = gap
			}
			if t > last {
				last = t
			}
		}
		out[target] = f
	}
	return tally{byTarget: out, kinds: kinds}
}

// overlapsAny reports whether [from, to] meets one of the exclusions.
func overlapsAny(excl []exclusion, from, to time.Duration) bool {
	for _, e := range excl {
		if from <= e.To && to >= e.From {
			return true
		}
	}
	return false
}

// excludedWithin is how much of (from, to] the exclusions cover (they may
// overlap each other).
func excludedWithin(excl []exclusion, from, to time.Duration) time.Duration {
	type span struct{ a, b time.Duration }
	var spans []span
	for _, e := range excl {
		a, b := max(e.From, from), min(e.To, to)
		if b > a {
			spans = append(spans, span{a, b})
		}
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].a < spans[j].a })
	var total, reach time.Duration
	reach = from
	for _, s := range spans {
		if s.b <= reach {
			continue
		}
		total += s.b - max(s.a, reach)
		reach = s.b
	}
	return total
}

// planeFigures are one round's data-plane and control-plane side effects.
type planeFigures struct {
	Target       string // the node the fault hit ("all" for restart-all)
	Sent, Failed int
	FailedBy     map[string]int // failed requests per target node
	FailKinds    map[string]int // failed requests per kind of failure
	OtherFailure string         // how a failure of no known kind read
	Outage       time.Duration  // the longest outage of any target
	OutageAt     string         // the target that saw it
	Window       time.Duration  // how long the requests ran

	Writes    int           // writes through surviving managers during the fault
	WriteErrs []string      // the ones that failed
	MaxWrite  time.Duration // the slowest of them

	WorkersDown []string // workers some manager reported Down during the round

	WebBefore  map[string]int // running web tasks per node just before the fault
	ReplacedOn map[string]int // of those, per node, the ones no longer running after the round
}

// summarize fills the request figures from a window's tally.
func (f *planeFigures) summarize(t tally) {
	byTarget := t.byTarget
	f.FailKinds = t.kinds
	f.FailedBy = map[string]int{}
	for _, t := range slices.Sorted(maps.Keys(byTarget)) {
		tf := byTarget[t]
		f.Sent += tf.Sent
		f.Failed += tf.Failed
		if tf.Failed > 0 {
			f.FailedBy[t] = tf.Failed
		}
		if tf.Outage > f.Outage {
			f.Outage, f.OutageAt = tf.Outage, t
		}
	}
}

// replaced is how many web tasks running before the fault were not
// running after the round.
func (f *planeFigures) replaced() int {
	n := 0
	for _, c := range f.ReplacedOn {
		n += c
	}
	return n
}

// failedPct is the failed share of the counted requests, in percent.
func (f *planeFigures) failedPct() float64 {
	if f.Sent == 0 {
		return 0
	}
	return 100 * float64(f.Failed) / float64(f.Sent)
}

// line is the round's data-plane figures for its report line.
func (f *planeFigures) line() string {
	s := fmt.Sprintf("http %d req %d failed", f.Sent, f.Failed)
	if f.Failed > 0 {
		s += fmt.Sprintf(" (%s; %s)", perNode(f.FailedBy), perNode(f.FailKinds))
	}
	s += fmt.Sprintf(", outage %.1fs", f.Outage.Seconds())
	if f.Outage >= time.Second {
		s += " on " + f.OutageAt
	}
	s += fmt.Sprintf(", write %.1fs", f.MaxWrite.Seconds())
	if len(f.WriteErrs) > 0 {
		s += fmt.Sprintf(" (%d failed)", len(f.WriteErrs))
	}
	if len(f.WorkersDown) > 0 {
		s += ", down " + strings.Join(f.WorkersDown, ",")
	}
	if n := f.replaced(); n > 0 {
		s += fmt.Sprintf(", %d web replaced", n)
	}
	return s
}

// downRule says what the round may see of workers going Down.
type downRule int

const (
	downIgnored downRule = iota // report only
	downNone                    // no worker may be seen Down
	downTarget                  // the fault's target worker must be seen Down, no other
)

// replaceRule says what may happen to the web tasks running before the fault.
type replaceRule int

const (
	replaceIgnored replaceRule = iota // report only
	replaceNone                       // none may be replaced
	replaceTarget                     // those on the fault's target must be replaced, no other
)

// planeLimits are the data-plane thresholds of one fault kind; a zero
// limit is not enforced (the figure is still reported).
type planeLimits struct {
	down       downRule
	replace    replaceRule
	maxFailed  float64       // failed requests must stay under this share, in percent
	maxOutage  time.Duration // the longest outage must stay under this
	maxWrite   time.Duration // every write through a survivor must succeed within this
	writesNote string        // why writes are not enforced, for the reader
}

// dataPlaneLimits is the (e) invariant, per fault kind. The cluster's own
// managers going away (killed, silent, frozen, cut off, slow) must not
// touch the workers: no worker Down, no task replaced, next to no failed
// request through the routing mesh, and writes through the surviving
// managers still commit promptly. A worker cut off from the managers
// must be declared Down and its tasks replaced, without the mesh losing
// requests. A killed worker and a restart of everything are only reported.
var dataPlaneLimits = map[faultKind]planeLimits{
	faultKillLeader:        {down: downNone, replace: replaceNone, maxFailed: 0.1, maxWrite: 2 * time.Second},
	faultKillLeaderSilent:  {down: downNone, replace: replaceNone, maxFailed: 0.1, maxWrite: 2 * time.Second},
	faultPartition:         {down: downNone, replace: replaceNone, maxFailed: 0.1, maxWrite: 2 * time.Second},
	faultFreezeLeader:      {down: downNone, replace: replaceNone, maxFailed: 0.1, maxWrite: 2 * time.Second},
	faultBlackholeFollower: {down: downNone, replace: replaceNone, maxFailed: 0.1, maxWrite: 2 * time.Second},
	faultPause:             {down: downNone, replace: replaceNone, maxFailed: 0.1, maxWrite: 2 * time.Second},
	// A slow disk on the leader slows every write by design (each log
	// write sleeps 100-300 ms): measured, not enforced.
	faultSlowDisk:        {down: downNone, replace: replaceNone, maxFailed: 0.1, writesNote: "measured, not enforced"},
	faultSlowLink:        {down: downNone, replace: replaceNone, maxFailed: 0.1, writesNote: "measured, not enforced"},
	faultKillFollower:    {down: downNone, replace: replaceNone, maxFailed: 0.1, maxWrite: 2 * time.Second},
	faultBlackholeWorker: {down: downTarget, replace: replaceTarget, maxFailed: 1, maxOutage: time.Second},
	faultKillWorker:      {},
	faultRestartAll:      {},
}

// evaluate checks a round's figures against its kind's limits and returns
// one line per violation.
func evaluate(lim planeLimits, f planeFigures) []string {
	var out []string
	switch lim.down {
	case downNone:
		if len(f.WorkersDown) > 0 {
			out = append(out, fmt.Sprintf("worker(s) %s seen Down", strings.Join(f.WorkersDown, ", ")))
		}
	case downTarget:
		if !slices.Contains(f.WorkersDown, f.Target) {
			out = append(out, fmt.Sprintf("worker %s, cut off from the managers, was never seen Down", f.Target))
		}
		var others []string
		for _, w := range f.WorkersDown {
			if w != f.Target {
				others = append(others, w)
			}
		}
		if len(others) > 0 {
			out = append(out, fmt.Sprintf("worker(s) %s seen Down, although only %s was cut off", strings.Join(others, ", "), f.Target))
		}
	}
	switch lim.replace {
	case replaceNone:
		if n := f.replaced(); n > 0 {
			out = append(out, fmt.Sprintf("%d web task(s) replaced (%s)", n, perNode(f.ReplacedOn)))
		}
	case replaceTarget:
		if had := f.WebBefore[f.Target]; f.ReplacedOn[f.Target] < had {
			out = append(out, fmt.Sprintf("%d of the %d web task(s) on %s were not replaced", had-f.ReplacedOn[f.Target], had, f.Target))
		}
		others := map[string]int{}
		for n, c := range f.ReplacedOn {
			if n != f.Target && c > 0 {
				others[n] = c
			}
		}
		if len(others) > 0 {
			out = append(out, fmt.Sprintf("web task(s) replaced on nodes the fault did not hit (%s)", perNode(others)))
		}
	}
	if lim.maxFailed > 0 {
		switch {
		case f.Sent == 0:
			out = append(out, "no request through the routing mesh counted")
		case f.failedPct() >= lim.maxFailed:
			line := fmt.Sprintf("%d of %d requests failed (%.2f%%, limit %.2g%%): %s; %s", f.Failed, f.Sent, f.failedPct(), lim.maxFailed, perNode(f.FailedBy), perNode(f.FailKinds))
			if f.OtherFailure != "" {
				line += " (other: " + f.OtherFailure + ")"
			}
			out = append(out, line)
		}
	}
	if lim.maxOutage > 0 && f.Outage >= lim.maxOutage {
		out = append(out, fmt.Sprintf("requests to %s saw nothing succeed for %.1fs (limit %s)", f.OutageAt, f.Outage.Seconds(), lim.maxOutage))
	}
	if lim.maxWrite > 0 {
		if f.MaxWrite >= lim.maxWrite {
			out = append(out, fmt.Sprintf("a write through a surviving manager took %.1fs (limit %s)", f.MaxWrite.Seconds(), lim.maxWrite))
		}
		for _, e := range f.WriteErrs {
			out = append(out, "a write through a surviving manager failed: "+e)
		}
	}
	return out
}

// perNode renders counts by node: "w1 ×2, w3 ×1".
func perNode(m map[string]int) string {
	var parts []string
	for _, n := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s ×%d", n, m[n]))
	}
	return strings.Join(parts, ", ")
}

// kindTally sums the rounds of one fault kind.
type kindTally struct {
	Rounds, Sent, Failed, Writes, WriteErrs int
	Outage, MaxWrite                        time.Duration
	RoundsDown, RoundsReplaced, Anomalous   int
}

func (t *kindTally) add(f planeFigures, anomalies int) {
	t.Rounds++
	t.Sent += f.Sent
	t.Failed += f.Failed
	t.Writes += f.Writes
	t.WriteErrs += len(f.WriteErrs)
	t.Outage = max(t.Outage, f.Outage)
	t.MaxWrite = max(t.MaxWrite, f.MaxWrite)
	if len(f.WorkersDown) > 0 {
		t.RoundsDown++
	}
	if f.replaced() > 0 {
		t.RoundsReplaced++
	}
	if anomalies > 0 {
		t.Anomalous++
	}
}

// writePlaneTable writes the per-fault-kind table, as Markdown when md is
// set (for docs/benchmarks.md), else as aligned text.
func writePlaneTable(w io.Writer, kinds []faultKind, tallies map[faultKind]*kindTally, md bool) {
	head := []string{"fault", "rounds", "requests", "failed", "failed %", "longest outage", "max write", "write errors", "rounds with a worker Down", "rounds with tasks replaced", "rounds failing (e)"}
	var rows [][]string
	for _, k := range kinds {
		t := tallies[k]
		if t == nil || t.Rounds == 0 {
			continue
		}
		pct := 0.0
		if t.Sent > 0 {
			pct = 100 * float64(t.Failed) / float64(t.Sent)
		}
		write := fmt.Sprintf("%.2fs", t.MaxWrite.Seconds())
		if t.Writes == 0 {
			write = "-"
		}
		rows = append(rows, []string{string(k), fmt.Sprint(t.Rounds), fmt.Sprint(t.Sent), fmt.Sprint(t.Failed), fmt.Sprintf("%.2f%%", pct),
			fmt.Sprintf("%.1fs", t.Outage.Seconds()), write, fmt.Sprint(t.WriteErrs), fmt.Sprint(t.RoundsDown), fmt.Sprint(t.RoundsReplaced), fmt.Sprint(t.Anomalous)})
	}
	if md {
		fmt.Fprintf(w, "| %s |\n", strings.Join(head, " | "))
		seps := make([]string, len(head))
		for i := range seps {
			seps[i] = "---:"
		}
		seps[0] = "---"
		fmt.Fprintf(w, "|%s|\n", strings.Join(seps, "|"))
		for _, r := range rows {
			fmt.Fprintf(w, "| %s |\n", strings.Join(r, " | "))
		}
		return
	}
	widths := make([]int, len(head))
	for i, h := range head {
		widths[i] = len(h)
	}
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], len([]rune(c)))
		}
	}
	pr := func(r []string) {
		var b strings.Builder
		for i, c := range r {
			pad := strings.Repeat(" ", widths[i]-len([]rune(c)))
			if i == 0 {
				b.WriteString(c + pad)
			} else {
				b.WriteString("  " + pad + c)
			}
		}
		fmt.Fprintln(w, b.String())
	}
	pr(head)
	for _, r := range rows {
		pr(r)
	}
}

// roundFigures turns a round's figures into their -rounds-json form.
func roundFigures(kind faultKind, f planeFigures, anomalies int) faultreport.Round {
	return faultreport.Round{
		Fault: string(kind), Requests: f.Sent, Failed: f.Failed, LongestOutage: f.Outage.Seconds(),
		Writes: f.Writes, WriteErrors: len(f.WriteErrs), MaxWrite: f.MaxWrite.Seconds(),
		WorkersDown: len(f.WorkersDown), Replaced: f.replaced(), Anomalies: anomalies,
	}
}
