package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/shoal-cluster/shoal/internal/rpc"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// Failover polling: each attempt gets a short deadline, and a failed
// attempt is retried after a short pause, through every survivor at once.
const (
	failoverCallTimeout = 200 * time.Millisecond
	failoverPause       = 5 * time.Millisecond
	failoverGiveUp      = 30 * time.Second
)

// runFailover kills the leader with SIGKILL and measures, from the kill,
// the time until (a) the first write committed through a surviving manager
// and (b) ListNodes through a survivor shows another manager as leader.
// The killed manager is then restarted with `shoal start` and the cluster
// is left to heal (all reachable, all caught up) before the next kill.
func runFailover(ctx context.Context, e *env) ([]series, error) {
	c, err := e.newCluster(ctx, "failover")
	if err != nil {
		return nil, err
	}
	var writeMs, leaderMs, healMs []float64
	moves := 0
	for r := range e.opts.failRuns {
		old, err := c.leader(ctx)
		if err != nil {
			return nil, fmt.Errorf("run %d: %w", r+1, err)
		}
		res, err := failoverOnce(ctx, c, old, r)
		if err != nil {
			return nil, fmt.Errorf("run %d (killed %s): %w", r+1, old.name, err)
		}
		writeMs = append(writeMs, ms(res.write))
		leaderMs = append(leaderMs, ms(res.leader))
		e.log.Info("failover run", "run", r+1, "killed", old.name, "new_leader", res.newLeader.name,
			"first_write", res.write.Round(time.Millisecond), "first_write_via", res.writeVia.name,
			"leader_in_listnodes", res.leader.Round(time.Millisecond), "failed_attempts", res.attempts)

		// Bring the killed manager back and wait until it is reachable and
		// caught up, so every run starts from a healthy 3-manager cluster.
		t0 := time.Now()
		if err := c.restart(old); err != nil {
			return nil, fmt.Errorf("run %d: restart %s: %w", r+1, old.name, err)
		}
		if err := c.waitHealthy(ctx); err != nil {
			return nil, fmt.Errorf("run %d: after restarting %s: %w", r+1, old.name, err)
		}
		healMs = append(healMs, ms(time.Since(t0)))
		if now, err := c.leader(ctx); err == nil && now != res.newLeader {
			moves++
			e.log.Warn("leadership moved when the killed manager came back", "run", r+1, "from", res.newLeader.name, "to", now.name, "restarted", old.name)
		}
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-time.After(500 * time.Millisecond): // settle
		}
	}
	if moves > 0 {
		e.notef("failover: in %d of %d runs leadership moved again when the killed manager rejoined", moves, e.opts.failRuns)
	}
	return []series{
		{name: "failover: kill -9 leader → first committed write via a survivor", unit: "ms", samples: writeMs},
		{name: "failover: kill -9 leader → new leader shown by ListNodes", unit: "ms", samples: leaderMs},
		{name: "failover: restarted manager reachable and caught up", unit: "ms", samples: healMs},
	}, nil
}

type failoverResult struct {
	write, leader time.Duration
	writeVia      *member
	newLeader     *member
	attempts      int
}

func failoverOnce(ctx context.Context, c *cluster, old *member, run int) (*failoverResult, error) {
	var survivors []*member
	for _, m := range c.members {
		if m != old {
			survivors = append(survivors, m)
		}
	}
	// Plain connections (no retry interceptor: the loop below retries at
	// its own pace), warmed up by one write through each survivor, which
	// also checks that followers forward to the leader.
	type target struct {
		m    *member
		ctl  pb.ControlClient
		spec *pb.NodeSpec
	}
	var targets []*target
	for _, s := range survivors {
		conn, err := rpc.Dial(s.api, c.creds())
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		ctl := pb.NewControlClient(conn)
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		got, err := pb.NewControlClient(c.conn(s.api)).GetNode(cctx, &pb.GetNodeRequest{Ref: s.nodeID})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("GetNode %s: %w", s.name, err)
		}
		spec := proto.Clone(got.GetNode().GetSpec()).(*pb.NodeSpec)
		if spec.Annotations == nil {
			spec.Annotations = &pb.Annotations{}
		}
		if spec.Annotations.Labels == nil {
			spec.Annotations.Labels = map[string]string{}
		}
		spec.Annotations.Labels["bench-failover"] = "warmup-" + strconv.Itoa(run)
		cctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		_, err = ctl.UpdateNode(cctx, &pb.UpdateNodeRequest{Ref: s.nodeID, Spec: spec})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("warm-up write through %s: %w", s.name, err)
		}
		targets = append(targets, &target{m: s, ctl: ctl, spec: spec})
	}

	mctx, cancel := context.WithTimeout(ctx, failoverGiveUp)
	defer cancel()
	type hit struct {
		at  time.Duration
		via *member
		new *member
	}
	writes := make(chan hit, len(targets))
	leaders := make(chan hit, len(targets))
	attempts := make(chan int, 2*len(targets))
	lastErrs := make(chan error, 2*len(targets))

	t0 := time.Now()
	if err := old.proc.kill(); err != nil {
		return nil, err
	}
	// The process is gone (reaped): nothing it answers can count.
	for _, t := range targets {
		go func() {
			n := 0
			var last error
			defer func() { attempts <- n; lastErrs <- last }()
			for seq := 0; mctx.Err() == nil; seq++ {
				t.spec.Annotations.Labels["bench-failover"] = fmt.Sprintf("run%d-%d", run, seq)
				cctx, ccancel := context.WithTimeout(mctx, failoverCallTimeout)
				_, err := t.ctl.UpdateNode(cctx, &pb.UpdateNodeRequest{Ref: t.m.nodeID, Spec: t.spec})
				ccancel()
				if err == nil {
					writes <- hit{at: time.Since(t0), via: t.m}
					return
				}
				n++
				last = err
				pause(mctx)
			}
		}()
		go func() {
			for mctx.Err() == nil {
				cctx, ccancel := context.WithTimeout(mctx, failoverCallTimeout)
				resp, err := t.ctl.ListNodes(cctx, &pb.ListNodesRequest{})
				ccancel()
				if err == nil {
					for _, n := range resp.GetNodes() {
						ms := n.GetManagerStatus()
						if ms.GetLeader() && ms.GetApiAddr() != old.api {
							leaders <- hit{at: time.Since(t0), via: t.m, new: c.byAPI(ms.GetApiAddr())}
							return
						}
					}
				}
				pause(mctx)
			}
		}()
	}

	res := &failoverResult{}
	var gotWrite, gotLeader bool
	for !gotWrite || !gotLeader {
		select {
		case h := <-writes:
			if !gotWrite {
				gotWrite, res.write, res.writeVia = true, h.at, h.via
			}
		case h := <-leaders:
			if !gotLeader {
				gotLeader, res.leader, res.newLeader = true, h.at, h.new
			}
		case <-mctx.Done():
			cancel()
			var errs []error
			for range targets {
				if err := <-lastErrs; err != nil {
					errs = append(errs, err)
				}
			}
			return nil, fmt.Errorf("no write and new leader within %s (write seen: %v, leader seen: %v): %w",
				failoverGiveUp, gotWrite, gotLeader, errors.Join(errs...))
		}
	}
	cancel() // stop the other pollers
	for range targets {
		res.attempts += <-attempts
	}
	if res.newLeader == nil {
		return nil, errors.New("ListNodes named a leader at an unknown address")
	}
	return res, nil
}

// pause waits failoverPause after a failed attempt, so that an attempt
// that fails at once (connection refused) does not spin.
func pause(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(failoverPause):
	}
}
