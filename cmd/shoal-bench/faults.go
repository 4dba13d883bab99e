package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/shoal-cluster/shoal/internal/faultreport"
)

// faultKinds are the faults the faults benchmark injects, by the chaos
// suite's names: the leader's and a follower's death on a real network and
// a worker cut off from the managers.
const faultKinds = "kill-leader,kill-leader-silent,blackhole-leader,freeze-leader,blackhole-follower,blackhole-worker,slow-link"

// faultRounds is how many rounds of each kind a full run makes.
const faultRounds = 3

// runFaults runs the chaos suite's data-plane rounds (it needs root for its
// network namespaces) and turns each round's figures into series: failed
// requests, the longest outage and the slowest write, per fault kind.
func runFaults(ctx context.Context, e *env) ([]series, error) {
	if os.Geteuid() != 0 {
		e.notef("faults: not run; it makes network namespaces and iptables rules, which needs root")
		return nil, nil
	}
	if e.moduleRoot == "" {
		return nil, fmt.Errorf("faults: run shoal-bench from the module (it runs ./cmd/shoal-chaos)")
	}
	kinds := 7
	rounds := faultRounds * kinds
	if e.opts.quick {
		rounds = kinds
	}
	dir, err := os.MkdirTemp(e.tmp, "faults-")
	if err != nil {
		return nil, err
	}
	report, figures := filepath.Join(dir, "faults.md"), filepath.Join(dir, "rounds.json")
	args := []string{"run", "./cmd/shoal-chaos", "-seed", "1", "-rounds", strconv.Itoa(rounds), "-faults", faultKinds,
		"-report", report, "-rounds-json", figures}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = e.moduleRoot
	log, err := os.Create(filepath.Join(dir, "chaos.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	e.log.Info("faults: running the chaos suite's data-plane rounds", "rounds", rounds, "log", log.Name())
	runErr := cmd.Run()
	rs, err := faultreport.Read(figures)
	if err != nil {
		return nil, fmt.Errorf("faults: shoal-chaos wrote no figures (%v; see %s): %w", runErr, log.Name(), err)
	}
	anomalies := 0
	byFault := map[string]*[3]series{}
	var order []string
	for _, r := range rs {
		s, ok := byFault[r.Fault]
		if !ok {
			s = &[3]series{
				{name: "faults: " + r.Fault + ": failed requests", unit: "%"},
				{name: "faults: " + r.Fault + ": longest outage seen by a client", unit: "ms"},
				{name: "faults: " + r.Fault + ": slowest write through a survivor", unit: "ms"},
			}
			byFault[r.Fault] = s
			order = append(order, r.Fault)
		}
		if r.Requests > 0 {
			s[0].samples = append(s[0].samples, 100*float64(r.Failed)/float64(r.Requests))
		}
		s[1].samples = append(s[1].samples, 1000*r.LongestOutage)
		if r.Writes > 0 {
			s[2].samples = append(s[2].samples, 1000*r.MaxWrite)
		}
		anomalies += r.Anomalies
	}
	var out []series
	for _, f := range order {
		out = append(out, byFault[f][:]...)
	}
	if md, err := os.ReadFile(report); err == nil {
		e.section("Faults: what clients see", string(md))
	}
	if runErr != nil {
		e.notef("faults: the chaos suite found %d data-plane anomalies or failed (%v); its log was %s", anomalies, runErr, log.Name())
	}
	return out, nil
}
