package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"github.com/shoal-cluster/shoal/internal/rpc"
	pb "github.com/shoal-cluster/shoal/proto"
)

// Dead worker detection: one manager process and one worker process
// (`shoal join` with the worker token); the worker gets SIGKILL and
// ListNodes is polled until the node is Down. The worker is restarted
// with `shoal start` between runs.
const (
	dwPeriod       = time.Second // --heartbeat-period: Down after 3 missed periods
	dwPoll         = 20 * time.Millisecond
	dwCallTimeout  = time.Second
	dwGiveUp       = 30 * time.Second
	dwSettle       = 2 * time.Second // after Ready, before the next kill
	dwGossipNotice = "gossip reports a worker dead"
	dwMarkedDown   = "worker marked down"
)

func dwRuns(quick bool) int {
	if quick {
		return 2
	}
	return 5
}

func runDeadWorker(ctx context.Context, e *env) ([]series, error) {
	var out []series
	for _, fast := range []bool{false, true} {
		ss, err := deadWorkerRuns(ctx, e, fast)
		e.closeClusters() // one cluster at a time
		if err != nil {
			return nil, err
		}
		out = append(out, ss...)
	}
	return out, nil
}

func deadWorkerRuns(ctx context.Context, e *env, fast bool) (_ []series, err error) {
	name, label := "dead-worker", "default gossip"
	extra := []string{"--heartbeat-period", dwPeriod.String()}
	var wextra []string
	if fast {
		name, label = "dead-worker-fast", "--gossip-fast"
		extra = append(extra, "--gossip-fast")
		wextra = []string{"--gossip-fast"}
	}
	port, err := e.freePortWithWorker()
	if err != nil {
		return nil, err
	}
	c, err := e.newClusterN(ctx, name, 1, port, extra)
	if err != nil {
		return nil, err
	}
	m := c.members[0]
	w, err := c.startWorker(ctx, "w1", wextra)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	conn, err := rpc.Dial(m.api, c.creds()) // no retry interceptor: the loop polls at its own pace
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctl := pb.NewControlClient(conn)

	var downMs, gossipMs, markMs, readyMs []float64
	runs := dwRuns(e.opts.quick)
	for r := range runs {
		// Let gossip see the worker alive again and heartbeats flow, then
		// kill at a random point of the heartbeat period.
		if err := sleepCtx(ctx, dwSettle+rand.N(dwPeriod)); err != nil {
			return nil, err
		}
		if w.proc.exited() {
			return nil, fmt.Errorf("run %d: %w", r+1, w.proc.exitError())
		}
		if n, err := c.nodeByHostname(ctx, w.name); err != nil || n.GetStatus().GetState() != pb.NodeState_NODE_STATE_READY {
			return nil, fmt.Errorf("run %d: worker not Ready before the kill: %v (%v)", r+1, n.GetStatus().GetState(), err)
		}
		t0 := time.Now()
		if err := w.proc.kill(); err != nil {
			return nil, err
		}
		var down time.Duration
		var last error
		for down == 0 {
			if time.Since(t0) > dwGiveUp {
				return nil, fmt.Errorf("run %d: worker not Down %s after the kill (last: %v)", r+1, dwGiveUp, last)
			}
			cctx, cancel := context.WithTimeout(ctx, dwCallTimeout)
			resp, err := ctl.ListNodes(cctx, &pb.ListNodesRequest{Role: pb.NodeRole_NODE_ROLE_WORKER})
			cancel()
			if ctx.Err() != nil {
				return nil, context.Cause(ctx)
			}
			if err != nil {
				last = err
			}
			for _, n := range resp.GetNodes() {
				if n.GetId() == w.nodeID && n.GetStatus().GetState() == pb.NodeState_NODE_STATE_DOWN {
					down = time.Since(t0)
				}
			}
			if down == 0 {
				_ = sleepCtx(ctx, dwPoll)
			}
		}
		downMs = append(downMs, ms(down))
		g, gok := logLineAfter(m.logPath, dwGossipNotice, w.nodeID, t0)
		if gok {
			gossipMs = append(gossipMs, ms(g.Sub(t0)))
		}
		// The manager logs just after the write ListNodes saw: allow a moment.
		var mk time.Time
		var mok bool
		for i := 0; i < 25 && !mok; i++ {
			if mk, mok = logLineAfter(m.logPath, dwMarkedDown, w.nodeID, t0); !mok {
				_ = sleepCtx(ctx, 20*time.Millisecond)
			}
		}
		if mok {
			markMs = append(markMs, ms(mk.Sub(t0)))
		}
		logArgs := []any{"gossip", label, "run", r + 1, "down_in_listnodes", down.Round(time.Millisecond)}
		if gok {
			logArgs = append(logArgs, "gossip_notice", g.Sub(t0).Round(time.Millisecond))
		}
		if mok {
			logArgs = append(logArgs, "marked_down_logged", mk.Sub(t0).Round(time.Millisecond))
		}

		t1 := time.Now()
		if err := w.restart(); err != nil {
			return nil, fmt.Errorf("run %d: restart the worker: %w", r+1, err)
		}
		if _, err := c.waitNodeState(ctx, w, pb.NodeState_NODE_STATE_READY, 30*time.Second); err != nil {
			return nil, fmt.Errorf("run %d: after the restart: %w", r+1, err)
		}
		ready := time.Since(t1)
		readyMs = append(readyMs, ms(ready))
		e.log.Info("dead worker run", append(logArgs, "restart_to_ready", ready.Round(time.Millisecond))...)
	}

	out := []series{
		{name: "dead worker (" + label + "): kill -9 → Down in ListNodes", unit: "ms", samples: downMs},
	}
	if len(gossipMs) > 0 {
		out = append(out, series{name: "dead worker (" + label + "): kill -9 → gossip reports it dead (manager log)", unit: "ms", samples: gossipMs})
	}
	if len(gossipMs) != runs && fast {
		e.notef("dead-worker (%s): the manager logged %q in only %d of %d runs", label, dwGossipNotice, len(gossipMs), runs)
	}
	if len(markMs) != runs {
		e.notef("dead-worker (%s): the manager logged %q in only %d of %d runs", label, dwMarkedDown, len(markMs), runs)
	}
	out = append(out, series{name: "dead worker (" + label + "): `shoal start` → Ready in ListNodes", unit: "ms", samples: readyMs})
	return out, nil
}

// logLineAfter returns the time stamp of the first line of a manager log
// stamped at or after since that contains msg and the node ID.
func logLineAfter(path, msg, nodeID string, since time.Time) (time.Time, bool) {
	f, err := os.Open(path)
	if err != nil {
		return time.Time{}, false
	}
	defer f.Close()
	// Log stamps have millisecond resolution.
	since = since.Truncate(time.Millisecond)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, msg) || !strings.Contains(line, nodeID) || !strings.HasPrefix(line, "time=") {
			continue
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		t, err := time.Parse(time.RFC3339Nano, ts)
		if err == nil && !t.Before(since) {
			return t, true
		}
	}
	return time.Time{}, false
}
