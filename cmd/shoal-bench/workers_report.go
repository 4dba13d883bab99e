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
	return fmt.Sprintf("heartbeat load: one %s window at each of %s workers; assign: %d tasks; dead worker: %d kills per gossip setting",
		hbWindow(o.quick), strings.Join(ls, ", "), assignSamples(o.quick), dwRuns(o.quick))
}

// workerMethod is the Method section's text for the worker benchmarks.
func workerMethod(o options) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("- **Heartbeat load.** One manager process (`shoal init --heartbeat-period %s`). Simulated workers\n", hbPeriod)
	p("  in the bench process each join with the worker token (`Membership.Join`, own node ID and\n")
	p("  secret), open a `Dispatcher.Session` on their own gRPC connection, read the stream and send\n")
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
	p("  the worker on %s with the process runtime, whose supervisor is the built `shoal __supervise`.\n", workerIP)
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
	return b.String()
}
