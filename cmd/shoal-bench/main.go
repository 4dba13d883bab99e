// Command shoal-bench measures a real Shoal cluster: it builds the shoal
// binary, starts managers as separate processes on 127.0.0.1, .2 and .3,
// drives them over gRPC and prints a table of min/median/max figures. A
// full run also writes docs/benchmarks.md.
//
//	go run ./cmd/shoal-bench            # full run, writes docs/benchmarks.md
//	go run ./cmd/shoal-bench --quick    # fewer and shorter runs, prints only
//	go run ./cmd/shoal-bench -only failover -runs 3
//
// Each benchmark is an entry in benchmarks(): a name and a function that
// returns one or more series of samples (one sample per run). Add new
// benchmarks there.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// series is one measured quantity: one sample per run.
type series struct {
	name    string
	unit    string
	samples []float64
}

// bench is one named benchmark. run starts whatever it needs through env
// (clusters are torn down by env on exit too) and returns its series.
type bench struct {
	name string
	desc string
	run  func(ctx context.Context, e *env) ([]series, error)
	// outside names the part of the benchmark's own work that runs in
	// processes it does not reap (tasks' supervisors and containers,
	// dockerd): the machine's load is then checked in the second before
	// it starts, as during the run that work would count as another's.
	outside string
}

// benchmarks lists every benchmark in the order they run.
func benchmarks() []bench {
	return []bench{
		{
			name: "writes-1",
			desc: "committed UpdateNode writes sent to the leader by 1 client",
			run: func(ctx context.Context, e *env) ([]series, error) {
				return runWrites(ctx, e, "writes-1", writeConfig{clients: 1})
			},
		},
		{
			name: "writes-64",
			desc: "committed UpdateNode writes sent to the leader by 64 concurrent clients",
			run: func(ctx context.Context, e *env) ([]series, error) {
				return runWrites(ctx, e, "writes-64", writeConfig{clients: 64})
			},
		},
		{
			name: "writes-forwarded-1",
			desc: "UpdateNode writes sent to a follower (forwarded to the leader) by 1 client",
			run: func(ctx context.Context, e *env) ([]series, error) {
				return runWrites(ctx, e, "writes-forwarded-1", writeConfig{clients: 1, viaFollower: true})
			},
		},
		{
			name: "failover",
			desc: "kill -9 the leader; time to the first committed write through a survivor and to a new leader in ListNodes",
			run:  runFailover,
		},
		{
			name: "assign",
			desc: "in-process manager + worker: a task written ASSIGNED to the store → RUNNING (process runtime, /bin/sleep), then desired SHUTDOWN → SHUTDOWN",
			run:  runAssign,
		},
		{
			name:    "runtimes",
			desc:    "the container (runc on OverlayFS), docker and process runtimes on the same program, shoal/hello, through the runtime API: Prepare+Start of one task → running, its Stop, resident memory per running task, 20 tasks started at once → all running (needs root, runc and the Docker Engine)",
			run:     runRuntimes,
			outside: "its tasks' supervisors, runc, containers and programs, and dockerd and containerd for the docker runtime",
		},
		{
			name:    "runtimes-service",
			desc:    "1 manager + 1 worker process (needs root, runc and the Docker Engine): services of shoal/hello placed on the worker, from the CreateService call until the managers' event stream reports all replicas RUNNING, one replica at a time and 20 at once, on the container, docker and process runtimes",
			run:     runRuntimesService,
			outside: "its tasks' supervisors, runc, containers and programs, and dockerd and containerd for the docker runtime",
		},
		{
			name: "dead-worker",
			desc: "1 manager + 1 worker process, heartbeat period 1s: kill -9 the worker → Down in ListNodes, with default and --gossip-fast gossip",
			run:  runDeadWorker,
		},
		{
			name: "heartbeat-load",
			desc: "leader CPU and RSS with 0 to 1000 simulated workers holding sessions and heartbeating every 1s",
			run:  runHeartbeatLoad,
		},
		{
			name: "schedule",
			desc: "scheduler throughput on a real single-manager store: 10k and 100k pending tasks placed on 1000 simulated nodes; peak memory",
			run:  runSchedule,
		},
		{
			name: "converge",
			desc: "in-process manager + 100 simulated workers over gRPC: a 1000-replica service created → all running, scaled to 2000, rolling-updated; manager memory",
			run:  runConverge,
		},
		{
			name: "mesh",
			desc: "routing mesh on loopback: 16 HTTP clients (Go) against 3 backends directly and through a node's proxy, keep-alive and a new connection per request",
			run:  runMesh,
		},
		{
			name: "mesh-wrk",
			desc: "routing mesh on loopback with wrk (16 connections, 2 threads): one backend directly, and the published port in front of three backends on the kernel (nftables) and user-space datapaths, keep-alive and a new connection per request",
			run:  runMeshWrk,
		},
		{
			name: "mesh-change",
			desc: "routing mesh endpoint changes, with a manager and a worker in process: kill -9 of a task → its endpoint gone from the worker's datapath (and from the manager's), and its replacement's RUNNING commit → endpoint added",
			run:  runEndpointChange,
		},
		{
			name: "autoscale",
			desc: "in-process manager + worker (process runtime, cgroups; needs root): reading the CPU and memory of 100 running tasks, as a worker does before each heartbeat; then a service of CPU burners (0.1 CPU each, target 50%, 1 to 4 tasks, Kubernetes' default 15s sync): load start → first committed scale-up, and the peak replicas over the next 30s",
			run:  runAutoscale,
		},
		{
			name:    "registry",
			desc:    "1 manager + 3 worker processes on this machine's Docker Engine and Debian's docker-registry on loopback: a 6-replica service created from an image no node has (pushed per run) → 6 running, the manager pinning its digest; the workers share the Engine, which pulls once",
			run:     runRegistry,
			outside: "dockerd and containerd, which pull the image and run the containers",
		},
		{
			name: "faults",
			desc: "what clients see while nodes fail on a real network (needs root): `shoal-chaos` with 3 managers and 3 workers, each in a network namespace of its own, `hello` with 6 replicas published on port 8080 of every node, one request every 20 ms to every live node on a new connection and a write through every surviving manager each second; per round, the failed requests, the longest time a client saw nothing succeed, and the slowest write, for each fault kind (" + faultKinds + ")",
			run:  runFaults,
		},
	}
}

// options are the command-line settings.
type options struct {
	quick       bool
	only        string
	out         string
	outSet      bool
	keep        bool
	bin         string
	election    time.Duration
	runs        int
	failRuns    int
	duration    time.Duration
	warmup      time.Duration
	logLevel    string
	list        bool
	commandLine string
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("shoal-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&o.quick, "quick", false, "fewer and shorter runs (under two minutes); does not write the docs unless -out is given")
	fs.StringVar(&o.only, "only", "", "run only these benchmarks (comma-separated names or name prefixes; see -list)")
	fs.StringVar(&o.out, "out", "docs/benchmarks.md", "markdown report to write (written by a full run of every benchmark, or whenever -out is given)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temp dir (data dirs and manager logs)")
	fs.StringVar(&o.bin, "bin", "", "use this shoal binary instead of building ./cmd/shoal")
	fs.DurationVar(&o.election, "election-timeout", 300*time.Millisecond, "Raft election timeout given to the managers (heartbeat = election, lease = half)")
	fs.IntVar(&o.runs, "runs", 0, "runs per write measurement (default 5, quick 2)")
	fs.IntVar(&o.failRuns, "failover-runs", 0, "leader kills in the failover benchmark (default 10, quick 3)")
	fs.DurationVar(&o.duration, "duration", 0, "measured time of each write run (default 10s, quick 2s)")
	fs.DurationVar(&o.warmup, "warmup", 0, "warm-up before each write run (default 1s, quick 500ms)")
	fs.StringVar(&o.logLevel, "log-level", "info", "progress log level: debug, info, warn or error")
	fs.BoolVar(&o.list, "list", false, "list the benchmarks and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "shoal-bench takes no arguments, got %q\n", fs.Args())
		return 2
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "out" {
			o.outSet = true
		}
	})
	o.commandLine = strings.TrimSpace("go run ./cmd/shoal-bench " + strings.Join(args, " "))
	o.setDefaults()

	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		fmt.Fprintf(stderr, "-log-level %q: use debug, info, warn or error\n", o.logLevel)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	all := benchmarks()
	if o.list {
		for _, b := range all {
			fmt.Fprintf(stdout, "%-20s %s\n", b.name, b.desc)
		}
		return 0
	}
	selected, err := selectBenchmarks(all, o.only)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if o.election < 10*time.Millisecond || o.election > time.Minute {
		fmt.Fprintf(stderr, "-election-timeout %s is out of range (10ms to 1m)\n", o.election)
		return 2
	}

	// Ctrl-C and SIGTERM cancel the context; the deferred cleanup then
	// kills every manager. A global deadline bounds the whole run.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 45*time.Minute)
	defer cancel()

	e, err := newEnv(ctx, o, log)
	if err != nil {
		log.Error("setup failed", "err", err)
		return 1
	}
	defer e.cleanup()

	started := time.Now()
	var results []benchResult
	failed := false
	for _, b := range selected {
		if ctx.Err() != nil {
			break
		}
		log.Info("benchmark starting", "name", b.name, "desc", b.desc)
		if b.outside != "" {
			// The figures assume the machine runs nothing else.
			if other, err := idleLoad(ctx, time.Second); err == nil && other > 0.1 {
				log.Warn("other processes used CPU before the benchmark", "name", b.name, "cores", round1(other))
				e.notef("%s: other processes on the machine used %.0f%% of a core in the second before it started (of %d cores): its figures are disturbed", b.name, 100*other, runtime.NumCPU())
			}
		}
		t0 := time.Now()
		cpu0, cpuErr := readCPUSample()
		ss, err := b.run(ctx, e)
		e.closeClusters() // whatever the benchmark left running
		if cpu1, err := readCPUSample(); err == nil && cpuErr == nil && b.outside == "" {
			// The figures assume the machine runs nothing else.
			if other := otherCPU(cpu0, cpu1); other > 0.1 {
				log.Warn("other processes used CPU during the benchmark", "name", b.name, "cores", round1(other))
				e.notef("%s: other processes on the machine used %.0f%% of a core on average while it ran (of %d cores): its figures are disturbed", b.name, 100*other, runtime.NumCPU())
			}
		}
		r := benchResult{bench: b, series: ss, err: err, took: time.Since(t0)}
		if err != nil {
			failed = true
			log.Error("benchmark failed", "name", b.name, "err", err)
			e.notef("%s failed: %v", b.name, err)
		} else {
			log.Info("benchmark done", "name", b.name, "took", r.took.Round(time.Millisecond))
		}
		results = append(results, r)
	}
	if err := ctx.Err(); err != nil {
		log.Error("interrupted", "err", context.Cause(ctx))
		failed = true
	}

	if e.peerDownErrors > 0 {
		e.notef("managers logged %d raft or gossip ERROR lines about a peer being unreachable (connection refused/reset, EOF) while a killed manager or worker was down: expected", e.peerDownErrors)
	}
	if e.stopErrors > 0 {
		e.notef("managers logged %d ERROR lines while being stopped with SIGTERM at the end of a benchmark (shutdown noise)", e.stopErrors)
	}
	rep := &report{opts: o, machine: describeMachine(), shoal: e.shoalVersion, started: started, took: time.Since(started), results: results, notes: e.notes, sections: e.sections}
	fmt.Fprintln(stdout)
	fmt.Fprint(stdout, rep.table())
	if len(e.notes) > 0 {
		fmt.Fprintln(stdout, "\nNotes:")
		for _, n := range e.notes {
			fmt.Fprintf(stdout, "- %s\n", n)
		}
	}

	writeDocs := o.outSet || (!o.quick && o.only == "")
	switch {
	case !writeDocs:
		log.Info("report not written (quick or partial run; pass -out to write one)", "path", o.out)
	case failed:
		log.Warn("report not written: a benchmark failed or the run was interrupted", "path", o.out)
	default:
		path := o.out
		if !filepath.IsAbs(path) && !o.outSet && e.moduleRoot != "" {
			path = filepath.Join(e.moduleRoot, path)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			log.Error("write report", "err", err)
			return 1
		}
		if err := os.WriteFile(path, []byte(rep.markdown()), 0o644); err != nil {
			log.Error("write report", "err", err)
			return 1
		}
		log.Info("report written", "path", path)
	}
	if failed {
		return 1
	}
	return 0
}

func (o *options) setDefaults() {
	def := func(v *int, full, quick int) {
		if *v == 0 {
			*v = full
			if o.quick {
				*v = quick
			}
		}
	}
	defDur := func(v *time.Duration, full, quick time.Duration) {
		if *v == 0 {
			*v = full
			if o.quick {
				*v = quick
			}
		}
	}
	def(&o.runs, 5, 2)
	def(&o.failRuns, 10, 3)
	defDur(&o.duration, 10*time.Second, 2*time.Second)
	defDur(&o.warmup, time.Second, 500*time.Millisecond)
}

// selectBenchmarks applies -only: comma-separated exact names or prefixes.
func selectBenchmarks(all []bench, only string) ([]bench, error) {
	if strings.TrimSpace(only) == "" {
		return all, nil
	}
	var out []bench
	seen := map[string]bool{}
	for _, want := range strings.Split(only, ",") {
		want = strings.TrimSpace(want)
		if want == "" {
			continue
		}
		matched := false
		for _, b := range all {
			if b.name == want || strings.HasPrefix(b.name, want) {
				matched = true
				if !seen[b.name] {
					seen[b.name] = true
					out = append(out, b)
				}
			}
		}
		if !matched {
			names := make([]string, len(all))
			for i, b := range all {
				names[i] = b.name
			}
			return nil, fmt.Errorf("-only %q: no benchmark matches; have %s", want, strings.Join(names, ", "))
		}
	}
	// Keep the declared order.
	ordered := out[:0:0]
	for _, b := range all {
		if seen[b.name] {
			ordered = append(ordered, b)
		}
	}
	return ordered, nil
}
