package main

import (
	"fmt"
	"strings"
)

// workerRuns describes the run counts of the worker benchmarks for the
// report's setup table.
func workerRuns(o options) string {
	levels := hbLevels(o.quick)
	ls := make([]string, len(levels))
	for i, n := range levels {
		ls[i] = fmt.Sprint(n)
	}
	var sched []string
	for _, sz := range schedSizes(o.quick) {
		sched = append(sched, fmt.Sprintf("%s of %s tasks", plural(sz.runs, "run"), kilo(sz.tasks)))
	}
	return fmt.Sprintf("heartbeat load: one %s window at each of %s workers; assign: %d tasks; dead worker: %d kills per gossip setting; schedule: %s; converge: %s",
		hbWindow(o.quick), strings.Join(ls, ", "), assignSamples(o.quick), dwRuns(o.quick), strings.Join(sched, " and "), plural(convergeRuns(o.quick), "run"))
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// workerMethod is the Method section's text for the worker benchmarks.
func workerMethod(o options) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("- **Heartbeat load.** One manager process (`shoal init --heartbeat-period %s`). Simulated workers\n", hbPeriod)
	p("  in the bench process each join with the worker token (`Membership.Join`, own node ID and\n")
	p("  certificate request), open a `Dispatcher.Session` on their own mutual-TLS gRPC connection, read the stream and send\n")
	p("  `Heartbeat` at the period the manager asks for, as the agent does. Worker 0 is also a gossip\n")
	p("  member (the others are not: the manager's gossip join loop dials every node's gossip address\n")
	p("  until one answers, which with no reachable worker would add about two dials per worker per\n")
	p("  second). Workers are added %d at a time, every session's first message is counted, and the\n", hbJoinParallel)
	p("  window starts %s after the last one. The leader's CPU time (utime+stime from\n", hbSettle(o.quick))
	p("  `/proc/PID/stat`, 10 ms ticks) and `VmRSS` are read every %s of a %s window: each slice is\n", hbSlice, hbWindow(o.quick))
	p("  one sample. After each window `ListNodes` must show every simulated worker Ready, and no\n")
	p("  heartbeat or stream may have failed. \"per 100 workers\" is (median at N − median at 0) / (N/100)\n")
	p("  for each N measured; CPU in ms per second (10 ms/s = 1%% of a core). The load generator runs\n")
	p("  on the same cores; gossip traffic of real workers (one memberlist member each) is not simulated.\n")
	p("- **Assign.** A manager (`manager.Init`) and a worker (`worker.Join`) run inside the bench process,\n")
	p("  the worker on %s with the process runtime, whose supervisor is the built `shoal-supervise`.\n", workerIP)
	p("  Tasks are written to the leader's store as standalone tasks (no service, so neither orchestrator\n")
	p("  nor scheduler touches them), already on the worker: `ASSIGNED`, desired `RUNNING`, `/bin/sleep %s`,\n", assignSleep)
	p("  stop grace %s. Times run from just before the write to the first store event showing the state,\n", assignStopGrace)
	p("  from a watch on the leader's store; the bench process first collects garbage and waits %s. One\n", assignSettle)
	p("  warm-up task is not counted; the task's reported pid must be a running `sleep`. Tasks are started\n")
	p("  one at a time, then stopped one at a time (desired `SHUTDOWN` → `SHUTDOWN`; the process must then\n")
	p("  be gone); the last two rows do the same for all of them in one transaction.\n")
	p("- **Dead worker.** One manager process (`--heartbeat-period %s`: Down after three missed\n", dwPeriod)
	p("  periods) and one worker process (`shoal join` with the worker token, on %s), both with or both\n", workerIP)
	p("  without `--gossip-fast`. %s plus a random part of a period after the worker is Ready, it gets\n", dwSettle)
	p("  SIGKILL; the clock starts just before the signal and `ListNodes` is polled every %s until the\n", dwPoll)
	p("  node is Down. The gossip row is the time stamp of the manager's \"%s\" log line\n", dwGossipNotice)
	p("  (millisecond resolution); the worker is then restarted with `shoal start --data-dir …` and the\n")
	p("  last row is the time until `ListNodes` shows it Ready again.\n")
	p("- **Schedule.** `scheduler.Throughput(tasks, %d)`, in the bench process: a real single-manager store\n", schedNodes)
	p("  (Raft on 127.0.0.1 with raftstore's default timings, bolt log in a temp dir), %d simulated\n", schedNodes)
	p("  Ready nodes (64 CPUs, 256 GiB, process runtime, three zones) written to the store, the leader's\n")
	p("  scheduler running, then the tasks created `PENDING` in transactions of 1,000 (100 per service, each\n")
	p("  reserving 0.01 CPU and 16 MiB, with a `node.platform.os==linux` constraint) while it runs. The\n")
	p("  figure is tasks `ASSIGNED` per second of wall clock from the first task created to the last\n")
	p("  assignment seen by a store watch, Raft commits included. \"Manager memory\" is this process\n")
	p("  during the run: its peak RSS (`VmHWM`, reset through `/proc/self/clear_refs` after a GC and\n")
	p("  `debug.FreeOSMemory` before each run, so it includes the bench process's own ~20 MiB) and the\n")
	p("  peak Go heap in use sampled every 20 ms. Nothing else runs meanwhile. No worker sessions, no\n")
	p("  orchestrator: this is the scheduler and the store alone.\n")
	p("- **Converge.** A manager (`manager.Init`, `--election-timeout %s` timings, heartbeat period %s)\n", o.election, cvHeartbeat)
	p("  runs in the bench process on 127.0.0.1 with %d simulated workers connected over real gRPC as in\n", cvWorkers)
	p("  the heartbeat-load benchmark (join with the worker token for a certificate, `Dispatcher.Session`,\n")
	p("  heartbeats), each describing the process runtime, 4 CPUs and 8 GiB. These workers act on their\n")
	p("  assignments without running anything: for every task of a session message (the complete set\n")
	p("  or an increment) they report `RUNNING` when its desired state is `RUNNING`, `READY` when it is\n")
	p("  `READY` (a stop-first successor waiting for its predecessor), and `SHUTDOWN` when it is `SHUTDOWN`\n")
	p("  or beyond, through `Dispatcher.UpdateTaskStatus` from one sender per worker, up to %d updates a\n", cvStatusBatch)
	p("  call; a failed call fails the run. Through the Control API the bench then creates a service of\n")
	p("  %d replicas (`/bin/true`, process runtime, no reservations) and polls `ListServices` every %s\n", cvReplicas, cvPoll)
	p("  until its counts show %d running; scales it to %d (`UpdateService`) and waits the same way; then\n", cvReplicas, cvScaled)
	p("  changes its environment with parallelism %d, monitor 0, stop-first (the default order) and waits\n", cvParallelism)
	p("  until `GetService` shows the update `COMPLETED`, `ListServices` counts %d running and `ListTasks`\n", cvScaled)
	p("  shows every active task on the new spec version and running. Each time runs from just before\n")
	p("  the call. Memory is the bench process's Go heap in use after `runtime.GC()` (and its RSS) at each\n")
	p("  step: it holds the manager and also the simulated workers (their gRPC connections and task\n")
	p("  maps), so compare the rows with the \"no service\" one. Each run starts a fresh manager and fleet;\n")
	p("  off the clock, the tasks must be spread evenly over the workers after the scale and the update.\n")
	p("- **Mesh.** Three small HTTP servers on 127.0.0.1 stand for a service's tasks. A load generator\n")
	p("  of %d clients, each with its own connection pool, asks them for a fixed time, round robin,\n", meshClients)
	p("  directly and through a node's mesh (`internal/mesh`, the proxy every node runs, here in the\n")
	p("  bench process, balancing over the three), once with keep-alive connections and once with a new\n")
	p("  connection per request (what the proxy pays per connection: accept, a dial to a backend, two\n")
	p("  copy loops). Throughput counts completed requests; the latency is the 99th percentile of\n")
	p("  their round trips. Then a manager and a worker run in the bench process (real gRPC and TLS,\n")
	p("  the process runtime) with a one-task service of `/bin/sleep` published on a port: each sample\n")
	p("  kills the task's process with SIGKILL and times until the worker's proxy no longer sends\n")
	p("  the port's connections to it (the supervisor sees the exit, the worker reports it, the leader\n")
	p("  commits it, the endpoint feed changes and the session pushes the new set); then times from\n")
	p("  its replacement's RUNNING commit, seen by a store watch, to the worker's proxy using it.\n")
	p("  Samples are 250 ms apart: the endpoint feed batches the changes of each 100 ms, so a change\n")
	p("  in a burst (the replacement follows its predecessor's failure within milliseconds) waits for\n")
	p("  the rest of that interval, and an isolated one does not.\n")
	return b.String()
}
