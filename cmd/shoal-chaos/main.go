// Command shoal-chaos is Shoal's fault-injection suite (`make chaos`). It
// runs a real cluster — managers and workers as separate `shoal`
// processes, each in a network namespace of its own wired to a bridge the
// suite creates — and, in a seeded loop of rounds, injects one fault per
// round while a client creates, scales, updates, removes and inspects
// services: kill -9 of the leader (also with its address gone silent
// first: no reset), of a follower or of a worker; the leader or a
// follower cut off by iptables DROP rules; a worker cut off from the
// managers only; the leader paused with SIGSTOP (a long GC pause, or a
// 10 s freeze); the leader's Raft log writes slowed (a slow disk, built
// into the daemon with the faultinject tag) or its link made slow and
// lossy (tc tbf); every node killed and restarted. After each round, with
// the fault healed, it checks that
//
//	(a) the history of control-API calls is linearizable (porcupine);
//	(b) every acknowledged change is present;
//	(c) each service converges to its replica count and version, with no
//	    slot running twice, in the store or among the processes;
//	(d) no task process or supervisor runs that the store does not account
//	    for, and nothing is left once the services and nodes are gone;
//	(e) the data plane held: a steady published service (web, 6 replicas,
//	    port 8080 on every node) answered requests sent to every node
//	    throughout the round, no worker was declared Down and no task
//	    replaced because of a manager's fault, and writes through the
//	    surviving managers committed promptly (dataPlaneLimits, per fault);
//	(f) a replicated job run across the fault finished with every slot
//	    completed exactly once (job.go).
//
// It prints a summary table and exits 1 on any anomaly. It needs root (ip
// netns, veth, iptables, tc) and removes everything it created, also when
// interrupted.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/shoal-cluster/shoal/internal/faultreport"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker/process/supervise"
)

// options are the suite's flags.
type options struct {
	seed       uint64
	rounds     int
	managers   int
	workers    int
	services   int
	faults     []faultKind
	race       bool
	keep       bool
	report     string // where to write the per-fault data-plane table as Markdown
	roundsJSON string // where to write each round's data-plane figures as JSON
	registry   string // the registry workload: auto, on or off
}

func main() {
	var o options
	fs := flag.NewFlagSet("shoal-chaos", flag.ContinueOnError)
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the fault schedule and the client's choices")
	fs.IntVar(&o.rounds, "rounds", 10, "rounds to run, one fault each")
	fs.IntVar(&o.managers, "managers", 3, "managers (3 or 5)")
	fs.IntVar(&o.workers, "workers", 3, "workers")
	fs.IntVar(&o.services, "services", 3, "service names the client works on (one writer each)")
	faults := fs.String("faults", "all", "faults to inject, comma-separated: kill-leader, kill-leader-silent, kill-follower, kill-worker, blackhole-leader (or partition), blackhole-follower, blackhole-worker, pause, freeze-leader, slow-disk, slow-link, restart-all")
	fs.BoolVar(&o.race, "race", false, "build the daemons with the race detector (slower)")
	fs.BoolVar(&o.keep, "keep", false, "keep the suite's directory (node logs, data) even when every check passes")
	fs.StringVar(&o.report, "report", "", "write the per-fault data-plane table to this file as Markdown (for docs/benchmarks.md)")
	fs.StringVar(&o.roundsJSON, "rounds-json", "", "write each round's data-plane figures to this file as JSON (make bench reads it)")
	fs.StringVar(&o.registry, "registry", "auto", "each round runs a service from a new registry image: on, off, or auto (when the Docker Engine answers and docker-registry is installed; required with SHOAL_REQUIRE_DOCKER=1)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	var err error
	if o.faults, err = parseFaults(*faults); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(2)
	}
	if o.managers != 3 && o.managers != 5 {
		fmt.Fprintln(os.Stderr, "Error: --managers must be 3 or 5")
		os.Exit(2)
	}
	if o.registry != "auto" && o.registry != "on" && o.registry != "off" {
		fmt.Fprintln(os.Stderr, "Error: --registry must be auto, on or off")
		os.Exit(2)
	}
	if o.rounds < 1 || o.workers < 1 || o.services < 1 {
		fmt.Fprintln(os.Stderr, "Error: --rounds, --workers and --services must be at least 1")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code := run(ctx, o)
	os.Exit(code)
}

// faultKind is one kind of injected fault.
type faultKind string

const (
	faultKillLeader        faultKind = "kill -9 leader"
	faultKillLeaderSilent  faultKind = "kill -9 leader silent"
	faultKillFollower      faultKind = "kill -9 follower"
	faultKillWorker        faultKind = "kill -9 worker"
	faultPartition         faultKind = "blackhole leader"
	faultBlackholeFollower faultKind = "blackhole follower"
	faultBlackholeWorker   faultKind = "blackhole worker"
	faultPause             faultKind = "SIGSTOP leader"
	faultFreezeLeader      faultKind = "freeze leader 10s"
	faultSlowDisk          faultKind = "slow disk on leader"
	faultSlowLink          faultKind = "slow link on leader"
	faultRestartAll        faultKind = "restart every node"
)

var allFaults = []faultKind{faultKillLeader, faultKillFollower, faultKillWorker, faultPartition, faultPause, faultSlowDisk, faultRestartAll,
	faultKillLeaderSilent, faultFreezeLeader, faultBlackholeFollower, faultBlackholeWorker, faultSlowLink}

// faultFlags are the names --faults takes ("partition" is the old name of
// blackhole-leader).
var faultFlags = map[string]faultKind{
	"kill-leader": faultKillLeader, "kill-leader-silent": faultKillLeaderSilent, "kill-follower": faultKillFollower, "kill-worker": faultKillWorker,
	"blackhole-leader": faultPartition, "partition": faultPartition, "blackhole-follower": faultBlackholeFollower, "blackhole-worker": faultBlackholeWorker,
	"pause": faultPause, "freeze-leader": faultFreezeLeader, "slow-disk": faultSlowDisk, "slow-link": faultSlowLink, "restart-all": faultRestartAll,
}

// parseFaults reads --faults: a comma-separated list, or "all".
func parseFaults(v string) ([]faultKind, error) {
	if v == "" || v == "all" {
		return allFaults, nil
	}
	var out []faultKind
	for _, name := range strings.Split(v, ",") {
		k, ok := faultFlags[strings.TrimSpace(name)]
		if !ok {
			names := slices.Sorted(maps.Keys(faultFlags))
			return nil, fmt.Errorf("unknown fault %q in --faults: use all or a comma-separated list of %s", name, strings.Join(names, ", "))
		}
		out = append(out, k)
	}
	return out, nil
}

// schedule lists each round's fault: every block of len(kinds) rounds has
// each kind once, in a seeded order.
func schedule(seed uint64, rounds int, kinds []faultKind) []faultKind {
	rng := rand.New(rand.NewPCG(seed, 0))
	var out []faultKind
	for len(out) < rounds {
		block := append([]faultKind{}, kinds...)
		rng.Shuffle(len(block), func(i, j int) { block[i], block[j] = block[j], block[i] })
		out = append(out, block...)
	}
	return out[:rounds]
}

// suite is one run: the cluster, the schedule and the tallies.
type suite struct {
	o        options
	dir      string
	hello    string
	c        *cluster
	states   map[string]svcState // each name's state after the last round
	web      svcState            // the steady web service (absent before it is created and after teardown)
	webForce uint64              // its force_update counter (rebalanceWeb)
	names    map[string]string   // node ID -> hostname
	specs    map[string]*pb.Node // hostname -> the node as read once the cluster formed
	images   *registryWorkload   // the registry workload, nil when off

	faults    map[faultKind]int
	ops       map[opKind]int
	unknown   int
	docker    int // calls answered through the Docker Engine API
	skipped   int
	anomalies map[string][]string // by invariant

	lastConverge string // what the last convergence check saw, for the round's line
	statesStale  bool   // the last round ended before reading the services back: states is not what the cluster holds

	plane map[faultKind]*kindTally // data-plane figures by fault kind
	// roundFigures are each round's data-plane figures, for -rounds-json.
	roundFigures []faultreport.Round
}

func run(ctx context.Context, o options) int {
	if err := checkPrivileges(); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		return 2
	}
	sweepStale(ctx)
	dir, err := os.MkdirTemp("", "shoal-chaos-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		return 1
	}
	s := &suite{o: o, dir: dir, states: map[string]svcState{}, faults: map[faultKind]int{}, ops: map[opKind]int{},
		anomalies: map[string][]string{}, plane: map[faultKind]*kindTally{}}
	for i := range o.services {
		s.states[fmt.Sprintf("chaos-%c", 'a'+i)] = svcState{}
	}
	start := time.Now()
	err = s.run(ctx)
	if err != nil {
		s.anomalies["suite"] = append(s.anomalies["suite"], err.Error())
	}
	s.summary(time.Since(start))
	failed := false
	for _, a := range s.anomalies {
		failed = failed || len(a) > 0
	}
	if failed || o.keep {
		fmt.Printf("node logs and data are in %s\n", dir)
	} else {
		os.RemoveAll(dir)
	}
	if failed {
		return 1
	}
	return 0
}

// run builds the binaries and the network, forms the cluster, runs the
// rounds and the final teardown checks. Whatever happens, it stops every
// process and removes the network.
func (s *suite) run(ctx context.Context) error {
	bin := filepath.Join(s.dir, "bin")
	shoal, err := build(ctx, bin, s.o.race)
	if err != nil {
		return err
	}
	s.hello = filepath.Join(bin, "hello")
	netw, err := newNetwork(ctx)
	if err != nil {
		return err
	}
	defer netw.remove()
	fmt.Printf("== chaos: seed %d, %d rounds, %d managers, %d workers, network %s.0/24, dir %s\n",
		s.o.seed, s.o.rounds, s.o.managers, s.o.workers, netw.subnet, s.dir)
	c, err := newCluster(ctx, netw, shoal, s.dir, s.o.managers, s.o.workers)
	s.c = c
	defer s.killEverything()
	if err != nil {
		return fmt.Errorf("form the cluster: %w", err)
	}
	fmt.Printf("== cluster formed: %d nodes\n", len(c.nodes()))
	if err := s.startWeb(ctx); err != nil {
		return err
	}
	if err := s.startRegistry(ctx, s.o.registry, bin); err != nil {
		return err
	}
	defer s.stopRegistry()
	plan := schedule(s.o.seed, s.o.rounds, s.o.faults)
	for i, kind := range plan {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := s.round(ctx, i, kind); err != nil {
			return fmt.Errorf("round %d (%s): %w", i+1, kind, err)
		}
	}
	s.stopRegistry() // before teardown looks for processes left running
	return s.teardown(ctx)
}

// build compiles the daemon with the faultinject tag and the sample app.
func build(ctx context.Context, bin string, race bool) (string, error) {
	shoal := filepath.Join(bin, "shoal")
	args := []string{"build", "-tags", "faultinject", "-o", shoal}
	if race {
		args = append(args, "-race")
	}
	steps := []*exec.Cmd{
		exec.CommandContext(ctx, "go", append(args, "github.com/shoal-cluster/shoal/cmd/shoal")...),
		exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(bin, supervise.Binary), "github.com/shoal-cluster/shoal/cmd/shoal-supervise"),
		exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(bin, "hello"), "github.com/shoal-cluster/shoal/cmd/hello"),
	}
	for _, cmd := range steps {
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+map[bool]string{true: "1", false: "0"}[race])
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, out)
		}
	}
	return shoal, nil
}

// round runs the client with one fault injected and healed, then checks
// the invariants. Throughout, the data plane is measured: requests to
// every node's published web port, workers seen Down, and writes through
// the managers the fault spares.
func (s *suite) round(ctx context.Context, i int, kind faultKind) error {
	rng := rand.New(rand.NewPCG(s.o.seed, uint64(i)+1))
	if err := s.rebalanceWeb(ctx); err != nil {
		return err
	}
	if s.statesStale {
		// The last round stopped at an availability anomaly, before its
		// final reads: its writes (and any landing late) moved the
		// services on. Seeding this round with the old states would make
		// its history look non-linearizable.
		states, err := newWorkload(s.c, s.hello).readStates(ctx, sortedNames(s.states))
		if err != nil {
			return fmt.Errorf("read the services back after the last round's availability anomaly: %w", err)
		}
		s.states, s.statesStale = states, false
	}
	roundStart := time.Now()
	w := newWorkload(s.c, s.hello)
	w.seed(s.states)
	wctx, stopLoad := context.WithCancel(ctx)
	loadDone := make(chan struct{})
	// The workload draws from its own generator: sharing the round's with
	// the fault's choices would make neither reproducible from the seed.
	wrng := rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))
	go func() { w.run(wctx, wrng, s.states, 2); close(loadDone) }()
	defer func() { stopLoad(); <-loadDone }()
	probes := startProber(ctx, s.c.nodes())
	downs := watchDown(ctx, s.c)
	var writes *writer
	defer func() { probes.stop(); downs.stop(); writes.stop() }()

	job, err := s.startJob(ctx, i)
	if err != nil {
		return err
	}
	jobChecked := false
	defer func() {
		if !jobChecked {
			_ = s.removeJob(ctx, job) // the round ended early: do not leave it to the next
		}
	}()
	img, err := s.startImage(ctx, i)
	if err != nil {
		return err
	}
	auto, err := s.startAuto(ctx, i)
	if err != nil {
		return err
	}
	autoChecked := false
	defer func() {
		if !autoChecked {
			_ = s.finishAuto(ctx, auto)
		}
	}()
	imgChecked := false
	defer func() {
		if !imgChecked && img != nil {
			_ = s.removeService(ctx, img.name)
		}
	}()
	sleep(ctx, time.Duration(800+rng.IntN(700))*time.Millisecond)
	before, err := s.webTasks(ctx)
	if err != nil {
		return fmt.Errorf("read the web tasks before the fault: %w", err)
	}
	f, err := s.inject(ctx, kind, rng, probes)
	if err != nil {
		return fmt.Errorf("inject: %w", err)
	}
	s.faults[kind]++
	if len(f.survivors) > 0 {
		writes = startWrites(ctx, s.c, f.survivors, s.writeTarget(f.target))
	}
	sleep(ctx, holdFor(kind, rng))
	writes.halt()
	if err := f.heal(); err != nil {
		return fmt.Errorf("heal: %w", err)
	}
	probes.readmit(f.excluded...)
	healed := time.Now()
	// The requests go on while the round's checks run, until the data
	// plane is quiet again once the checks are done, or planeTail after
	// the heal if they take longer (a convergence check running out must
	// not dilute the figures with a minute of steady traffic).
	checksDone, planeClosed := make(chan struct{}), make(chan struct{})
	var planeErr error
	go func() {
		defer close(planeClosed)
		select {
		case <-checksDone:
		case <-time.After(time.Until(healed.Add(planeTail))):
		case <-ctx.Done():
		}
		planeErr = waitFor(ctx, quietWait, "every node's published port to answer steadily", func(context.Context) error { return probes.quiet() })
		probes.stop()
	}()
	defer func() {
		select {
		case <-checksDone:
		default:
			close(checksDone)
		}
		<-planeClosed
	}()
	sleep(ctx, 2*time.Second)
	stopLoad()
	<-loadDone
	if ctx.Err() != nil {
		return ctx.Err()
	}

	target := f.target
	var found []string
	add := func(inv string, lines ...string) {
		for _, l := range lines {
			s.anomalies[inv] = append(s.anomalies[inv], fmt.Sprintf("round %d (%s): %s", i+1, kind, l))
			found = append(found, inv+": "+l)
		}
	}
	// finish closes the data-plane measurement, checks it and reports the
	// round, whatever the other checks found.
	finish := func() error {
		close(checksDone)
		<-planeClosed
		var problems []string
		if planeErr != nil {
			problems = append(problems, "the data plane did not settle after the round: "+planeErr.Error())
		}
		fig, more := s.closePlane(ctx, f.target, before, probes, downs, writes)
		problems = append(problems, more...)
		add("(e) data plane", problems...)
		lines := evaluate(dataPlaneLimits[kind], fig)
		add("(e) data plane", lines...)
		if s.plane[kind] == nil {
			s.plane[kind] = &kindTally{}
		}
		s.plane[kind].add(fig, len(problems)+len(lines))
		s.roundFigures = append(s.roundFigures, roundFigures(kind, fig, len(problems)+len(lines)))
		return s.report(i, kind, target, w, time.Since(roundStart), found, &fig)
	}
	if err := s.c.waitReady(ctx, len(s.c.nodes()), 90*time.Second); err != nil {
		add("availability", "the cluster did not recover: "+err.Error())
		s.statesStale = true
		return finish()
	}
	if l, err := s.c.leader(ctx); err == nil {
		target += " leader:" + l.name
	}
	final, err := w.readStates(ctx, sortedNames(s.states))
	if err != nil {
		add("availability", err.Error())
		s.statesStale = true
		return finish()
	}
	if msg := checkLinearizable(w.history, time.Minute, filepath.Join(s.dir, fmt.Sprintf("round-%d-history.html", i+1))); msg != "" {
		add("(a) linearizable", msg)
	}
	lost, skipped := checkAcknowledged(w.history, final)
	add("(b) acknowledged", lost...)
	s.skipped += skipped
	add("(f) job", s.finishJob(ctx, job)...)
	jobChecked = true
	add("(g) registry image", s.finishImage(ctx, img)...)
	imgChecked = true
	add("(h) autoscale bounds", s.finishAuto(ctx, auto)...)
	autoChecked = true
	if problems := s.waitConverged(ctx, s.withWeb(final), 90*time.Second); len(problems) > 0 {
		add("(c,d) converged", problems...)
	}
	// No client has run since the final read: the services must not have
	// changed, but for a call that timed out landing late.
	later, err := w.readStates(ctx, sortedNames(s.states))
	if err != nil {
		add("availability", err.Error())
		s.statesStale = true
		return finish()
	}
	for _, name := range sortedNames(final) {
		if !explainedLater(w.history, name, final[name], later[name]) {
			add("(b) acknowledged", fmt.Sprintf("service %s changed from %s to %s while no client was running (after the final read, during the convergence check)",
				name, final[name], later[name]))
		}
	}
	s.states = later
	err = finish()
	if len(found) > 0 {
		dumpHistory(filepath.Join(s.dir, fmt.Sprintf("round-%d-history.txt", i+1)), w.history)
	}
	return err
}

// closePlane collects a round's data-plane figures once the requests
// stopped, and compares the web tasks with those before the fault.
func (s *suite) closePlane(ctx context.Context, target string, before map[string]webTask, probes *prober, downs *downWatcher, writes *writer) (planeFigures, []string) {
	var problems []string
	fig := planeFigures{Target: target, WebBefore: map[string]int{}, ReplacedOn: map[string]int{}}
	after, err := s.webTasks(ctx)
	if err != nil {
		problems = append(problems, "cannot compare the web tasks after the round: "+err.Error())
	}
	for id, t := range before {
		fig.WebBefore[t.node]++
		if _, ok := after[id]; !ok && err == nil {
			fig.ReplacedOn[t.node]++
		}
	}
	results, excl, end := probes.stop()
	fig.summarize(tallyProbes(results, excl, end))
	if fig.FailKinds["other"] > 0 {
		fig.OtherFailure = probes.otherFailure()
	}
	fig.Window = end
	fig.WorkersDown = downs.stop()
	fig.Writes, fig.WriteErrs, fig.MaxWrite = writes.stop()
	return fig, problems
}

// report adds a round's calls to the tallies and prints its line.
func (s *suite) report(i int, kind faultKind, target string, w *workload, took time.Duration, found []string, fig *planeFigures) error {
	total := 0
	for k, n := range w.counts {
		s.ops[k] += n
		total += n
	}
	s.unknown += w.unknown
	s.docker += w.docker
	for _, e := range w.errs {
		found = append(found, "unexpected error: "+e)
		s.anomalies["unexpected errors"] = append(s.anomalies["unexpected errors"], fmt.Sprintf("round %d (%s): %s", i+1, kind, e))
	}
	verdict := "ok"
	if len(found) > 0 {
		verdict = fmt.Sprintf("%d ANOMALIES", len(found))
	}
	fmt.Printf("%s round %3d/%d  %-21s %-14s %4d calls (%3d unknown)  %-28s %6s  %s  %s\n", time.Now().Format("15:04:05"), i+1, s.o.rounds, kind, target, total, w.unknown,
		s.lastConverge, took.Round(100*time.Millisecond), fig.line(), verdict)
	s.lastConverge = ""
	for _, f := range found {
		fmt.Printf("    %s\n", f)
	}
	return nil
}

// injected is a fault in place.
type injected struct {
	target    string       // the node it hit ("all" for restart-all)
	excluded  []*node      // nodes it makes unreachable from the host on purpose
	survivors []*node      // managers the writes go through while it lasts
	heal      func() error // undoes it
}

// holdFor is how long a fault lasts: long enough for the ones that cut
// off or freeze the leader that a new leader is elected and the old one's
// sessions time out. A leader killed silently stays gone past gRPC's 20 s
// connect timeout, as a dead machine does: a dial to its address that
// nothing bounds runs out while it is still gone (with a shorter hold the
// restart completes such a dial and hides how long it would have hung).
func holdFor(kind faultKind, rng *rand.Rand) time.Duration {
	switch kind {
	case faultKillLeaderSilent:
		return 22 * time.Second
	case faultPartition, faultBlackholeFollower:
		return time.Duration(5000+rng.IntN(3000)) * time.Millisecond
	case faultFreezeLeader, faultBlackholeWorker:
		return 10 * time.Second
	case faultSlowLink:
		return 8 * time.Second
	default:
		return time.Duration(2000+rng.IntN(2000)) * time.Millisecond
	}
}

// writeTarget is the worker the writes label: one the fault did not hit.
func (s *suite) writeTarget(hit string) *pb.Node {
	for _, w := range s.c.workers {
		if w.name != hit {
			return s.specs[w.name]
		}
	}
	return s.specs[s.c.workers[0].name]
}

// inject starts a fault and returns it. Nodes it makes unreachable from
// the host leave the data-plane count just before it starts.
func (s *suite) inject(ctx context.Context, kind faultKind, rng *rand.Rand, probes *prober) (*injected, error) {
	c := s.c
	leader, err := c.leader(ctx)
	if err != nil {
		return nil, err
	}
	except := func(n *node) []*node {
		var out []*node
		for _, m := range c.managers {
			if m != n {
				out = append(out, m)
			}
		}
		return out
	}
	restart := func(n *node) func() error { return func() error { return n.restart(c.bin) } }
	off := func(n *node) *injected {
		probes.exclude(n)
		return &injected{target: n.name, excluded: []*node{n}, survivors: except(n)}
	}
	switch kind {
	case faultKillLeader:
		f := off(leader)
		leader.kill()
		f.heal = restart(leader)
		return f, nil
	case faultKillLeaderSilent:
		// Silent first, then killed: not even the kernel's resets and FINs
		// of the dying process's connections get out.
		f := off(leader)
		if err := isolate(ctx, leader.ns); err != nil {
			return nil, err
		}
		leader.kill()
		f.heal = func() error {
			if err := reconnect(context.Background(), leader.ns); err != nil {
				return err
			}
			return leader.restart(c.bin)
		}
		return f, nil
	case faultKillFollower, faultBlackholeFollower:
		followers := except(leader)
		n := followers[rng.IntN(len(followers))]
		f := off(n)
		if kind == faultKillFollower {
			n.kill()
			f.heal = restart(n)
			return f, nil
		}
		if err := isolate(ctx, n.ns); err != nil {
			return nil, err
		}
		f.heal = func() error { return reconnect(context.Background(), n.ns) }
		return f, nil
	case faultKillWorker:
		w := c.workers[rng.IntN(len(c.workers))]
		f := off(w)
		f.survivors = c.managers
		w.kill()
		f.heal = restart(w)
		return f, nil
	case faultBlackholeWorker:
		// Cut off from the managers only: the host and the other workers
		// still reach it, so it stays in the data-plane count.
		w := c.workers[rng.IntN(len(c.workers))]
		var ips []string
		for _, m := range c.managers {
			ips = append(ips, m.ip)
		}
		if err := blackholeFrom(ctx, w.ns, ips); err != nil {
			return nil, err
		}
		return &injected{target: w.name, survivors: c.managers, heal: func() error { return unblackhole(context.Background(), w.ns, ips) }}, nil
	case faultPartition:
		f := off(leader)
		if err := isolate(ctx, leader.ns); err != nil {
			return nil, err
		}
		f.heal = func() error { return reconnect(context.Background(), leader.ns) }
		return f, nil
	case faultPause, faultFreezeLeader:
		// A stopped process answers nothing on any of its ports: out of
		// the count, like a dead one.
		f := off(leader)
		if err := leader.pause(); err != nil {
			return nil, err
		}
		f.heal = leader.resume
		return f, nil
	case faultSlowDisk:
		if err := leader.setDiskDelay(time.Duration(100+rng.IntN(200)) * time.Millisecond); err != nil {
			return nil, err
		}
		return &injected{target: leader.name, survivors: c.managers, heal: func() error { return leader.setDiskDelay(0) }}, nil
	case faultSlowLink:
		// The leader's own published port is left out of the count while
		// its link is slow: the link's loss alone times out a request to
		// it now and then. The other nodes' ports are what the fault
		// must not touch.
		probes.exclude(leader)
		if err := slowLink(ctx, leader.ns); err != nil {
			return nil, err
		}
		return &injected{target: leader.name, excluded: []*node{leader}, survivors: c.managers, heal: func() error { return fastLink(context.Background(), leader.ns) }}, nil
	case faultRestartAll:
		all := c.nodes()
		probes.exclude(all...)
		for _, n := range all {
			n.kill()
		}
		return &injected{target: "all", excluded: all, heal: func() error {
			for _, n := range all {
				if err := n.restart(c.bin); err != nil {
					return err
				}
			}
			return nil
		}}, nil
	}
	return nil, fmt.Errorf("unknown fault %q", kind)
}

// waitConverged polls until the store and the machine agree with the
// services' final states (checkPlacement finds nothing), and returns what
// was still wrong at the deadline.
func (s *suite) waitConverged(ctx context.Context, want map[string]svcState, timeout time.Duration) []string {
	var problems []string
	start := time.Now()
	err := waitFor(ctx, timeout, "convergence", func(ctx context.Context) error {
		tasks, err := s.runningTasks(ctx)
		if err != nil {
			if len(problems) == 0 {
				problems = []string{"no manager answered ListTasks: " + err.Error()}
			}
			return err
		}
		m := scanProcesses(s.dir, s.hello, s.daemonPIDs())
		problems = checkPlacement(want, tasks, m.tasks, m.supervisors)
		if len(problems) > 0 {
			return errors.New(problems[0])
		}
		s.lastConverge = fmt.Sprintf("%d tasks converged in %s", len(tasks), time.Since(start).Round(100*time.Millisecond))
		return nil
	})
	if err != nil && len(problems) == 0 {
		problems = []string{err.Error()}
	}
	if err == nil {
		return nil
	}
	return problems
}

// runningTasks lists the tasks the store says are running.
func (s *suite) runningTasks(ctx context.Context) ([]taskFact, error) {
	var last error
	for _, m := range s.c.managers {
		cl, err := s.c.control(m)
		if err != nil {
			return nil, err
		}
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		resp, err := cl.ListTasks(cctx, &pb.ListTasksRequest{RunningOnly: true})
		cancel()
		if err != nil {
			last = err
			continue
		}
		var out []taskFact
		for _, t := range resp.GetTasks() {
			if t.GetStatus().GetState() != pb.TaskState_TASK_STATE_RUNNING {
				continue
			}
			f := taskFact{ID: t.GetId(), Service: t.GetServiceName(), Slot: t.GetSlot(), Node: t.GetNodeId()}
			for _, kv := range t.GetSpec().GetContainer().GetEnv() {
				if v, ok := strings.CutPrefix(kv, versionEnv+"="); ok {
					f.Version = v
				}
			}
			out = append(out, f)
		}
		return out, nil
	}
	return nil, last
}

func (s *suite) daemonPIDs() map[int]bool {
	pids := map[int]bool{}
	for _, n := range s.c.nodes() {
		n.mu.Lock()
		if n.cmd != nil && n.cmd.Process != nil {
			pids[n.cmd.Process.Pid] = true
		}
		n.mu.Unlock()
	}
	return pids
}

// teardown removes every service, checks that their processes are gone,
// stops every node and checks that nothing of the suite's still runs.
func (s *suite) teardown(ctx context.Context) error {
	fmt.Println("== teardown: removing every service, then stopping every node")
	for _, name := range sortedNames(s.states) {
		err := waitFor(ctx, 30*time.Second, "removing "+name, func(ctx context.Context) error {
			cl, err := s.c.control(s.c.managers[0])
			if err != nil {
				return err
			}
			cctx, cancel := context.WithTimeout(ctx, opTimeout)
			defer cancel()
			_, err = cl.RemoveService(cctx, &pb.RemoveServiceRequest{Ref: name})
			if err != nil && !strings.Contains(err.Error(), "no service") {
				return err
			}
			return nil
		})
		if err != nil {
			return err
		}
		s.states[name] = svcState{}
	}
	if err := s.removeWeb(ctx); err != nil {
		return err
	}
	if problems := s.waitConverged(ctx, s.withWeb(s.states), 60*time.Second); len(problems) > 0 {
		for _, p := range problems {
			s.anomalies["(d) orphans"] = append(s.anomalies["(d) orphans"], "after every service was removed: "+p)
		}
	}
	s.c.shutdown()
	s.anomalies["daemon logs"] = append(s.anomalies["daemon logs"], scanLogs(filepath.Join(s.dir, "logs"))...)
	m := scanProcesses(s.dir, s.hello, nil)
	for _, p := range m.tasks {
		s.anomalies["(d) orphans"] = append(s.anomalies["(d) orphans"], fmt.Sprintf("task process pid %d (%s.%d) outlived its node", p.PID, p.Service, p.Slot))
	}
	for _, p := range m.supervisors {
		s.anomalies["(d) orphans"] = append(s.anomalies["(d) orphans"], fmt.Sprintf("supervisor pid %d (task %s) outlived its node", p.PID, p.TaskID))
	}
	for _, pid := range m.other {
		s.anomalies["(d) orphans"] = append(s.anomalies["(d) orphans"], fmt.Sprintf("process %d of the suite's cluster still runs after every node stopped", pid))
	}
	return nil
}

// killEverything stops the nodes and anything left of the suite's
// processes (on failure or interrupt; after a clean teardown there is
// nothing left to kill).
func (s *suite) killEverything() {
	if s.c != nil {
		for _, n := range s.c.nodes() {
			n.kill()
		}
		s.c.closeConns()
	}
	m := scanProcesses(s.dir, s.hello, nil)
	for _, p := range m.tasks {
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
	}
	for _, p := range m.supervisors {
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
	}
	for _, pid := range m.other {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// sweepStale removes namespaces and links an earlier run left behind when
// it was killed before it could clean up (their pid no longer runs).
func sweepStale(ctx context.Context) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], "shc") {
			continue
		}
		tag, _, _ := strings.Cut(f[0], "-")
		pid, err := strconv.Atoi(strings.TrimPrefix(tag, "shc"))
		if err != nil {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue
		}
		_ = runCmd(ctx, "ip", "netns", "del", f[0])
		_ = runCmd(ctx, "ip", "link", "del", tag)
	}
}

// summary prints the table of rounds, faults, calls and anomalies.
func (s *suite) summary(took time.Duration) {
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "seed\t%d\t\n", s.o.seed)
	fmt.Fprintf(tw, "rounds\t%d\t\n", s.o.rounds)
	fmt.Fprintf(tw, "time\t%s\t\n", took.Round(time.Second))
	for _, k := range allFaults {
		fmt.Fprintf(tw, "fault: %s\t%d\t\n", k, s.faults[k])
	}
	total := 0
	for _, k := range []opKind{opCreate, opScale, opUpdate, opRemove, opInspect} {
		fmt.Fprintf(tw, "calls: %s\t%d\t\n", opNames[k], s.ops[k])
		total += s.ops[k]
	}
	fmt.Fprintf(tw, "calls: total\t%d\t\n", total)
	fmt.Fprintf(tw, "calls: outcome unknown\t%d\t\n", s.unknown)
	fmt.Fprintf(tw, "calls: answered through the docker API\t%d\t\n", s.docker)
	if s.skipped > 0 {
		fmt.Fprintf(tw, "(b) names left to (a): too many unknown outcomes\t%d\t\n", s.skipped)
	}
	invs := []string{"(a) linearizable", "(b) acknowledged", "(c,d) converged", "(d) orphans", "(e) data plane", "(f) job", "(g) registry image", "(h) autoscale bounds", "availability", "daemon logs", "unexpected errors", "suite"}
	n := 0
	for _, inv := range invs {
		fmt.Fprintf(tw, "anomalies: %s\t%d\t\n", inv, len(s.anomalies[inv]))
		n += len(s.anomalies[inv])
	}
	fmt.Fprintf(tw, "anomalies: total\t%d\t\n", n)
	tw.Flush()
	if len(s.plane) > 0 {
		fmt.Println("\ndata plane by fault (requests to every node's published port; writes through the surviving managers):")
		writePlaneTable(os.Stdout, allFaults, s.plane, false)
	}
	if s.o.roundsJSON != "" {
		if err := faultreport.Write(s.o.roundsJSON, s.roundFigures); err != nil {
			fmt.Fprintln(os.Stderr, "Error:", err)
		}
	}
	if s.o.report != "" {
		if err := s.writeReport(s.o.report, took); err != nil {
			fmt.Fprintln(os.Stderr, "Error:", err)
		} else {
			fmt.Printf("the data-plane table is in %s\n", s.o.report)
		}
	}
	if n > 0 {
		keys := make([]string, 0, len(s.anomalies))
		for k := range s.anomalies {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Println("\nANOMALIES:")
		for _, k := range keys {
			for _, a := range s.anomalies[k] {
				fmt.Printf("  %s: %s\n", k, a)
			}
		}
	}
}

// writeReport writes the per-fault data-plane table as Markdown, with a
// line saying how it was made.
func (s *suite) writeReport(path string, took time.Duration) error {
	var b strings.Builder
	names := make([]string, 0, len(s.o.faults))
	for _, k := range s.o.faults {
		for flag, kk := range faultFlags {
			if kk == k && flag != "partition" {
				names = append(names, flag)
			}
		}
	}
	fmt.Fprintf(&b, "`shoal-chaos -seed %d -rounds %d -faults %s` (%d managers, %d workers, %s): requests every %s to every node's published port, a new connection each, %s timeout; writes through the surviving managers from 1 s after the fault.\n\n",
		s.o.seed, s.o.rounds, strings.Join(names, ","), s.o.managers, s.o.workers, took.Round(time.Second), probeInterval, probeTimeout)
	writePlaneTable(&b, allFaults, s.plane, true)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write the data-plane report: %w", err)
	}
	return nil
}

// dumpHistory writes a round's calls, by start time, for a reader
// investigating an anomaly.
func dumpHistory(path string, history []record) {
	sorted := slices.Clone(history)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Call < sorted[j].Call })
	var b strings.Builder
	for _, r := range sorted {
		ret := "     ?"
		if r.Output.Outcome != outUnknown {
			ret = fmt.Sprintf("%6d", r.Return.Milliseconds())
		}
		fmt.Fprintf(&b, "%6d %s ms  client %2d  %s\n", r.Call.Milliseconds(), ret, r.Client, serviceModel.DescribeOperation(r.Input, r.Output))
	}
	_ = os.WriteFile(path, []byte(b.String()), 0o644)
}

// logAlarms are lines no daemon log may hold: a data race (daemons built
// with -race) or a panic.
var logAlarms = []string{"WARNING: DATA RACE", "panic: ", "fatal error: "}

// scanLogs reports every node log that holds a logAlarms line.
func scanLogs(dir string) []string {
	var out []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		for _, alarm := range logAlarms {
			if n := strings.Count(string(data), alarm); n > 0 {
				out = append(out, fmt.Sprintf("%s: %d × %q", e.Name(), n, alarm))
			}
		}
	}
	return out
}
