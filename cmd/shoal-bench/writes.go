package main

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shoal-cluster/shoal/internal/rpc"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// writeConfig says how a write benchmark drives the cluster.
type writeConfig struct {
	clients     int
	viaFollower bool // send to a follower, which forwards to the leader
}

// writeCallTimeout bounds each UpdateNode call.
const writeCallTimeout = 5 * time.Second

// writeRunResult is what one measured window produced.
type writeRunResult struct {
	window    time.Duration
	ok        int
	latencies []time.Duration
	failures  map[string]int // by gRPC code, then first message
	entries   uint64         // Raft log entries committed on the leader
}

// runWrites measures committed UpdateNode writes. Client i changes a label
// of node i%3 (each manager has a node record) with version 0, i.e. without
// the caller's optimistic version check. Each client has its own gRPC
// connection, dialled as the CLI does (rpc.Dial + RetryUnavailable).
func runWrites(ctx context.Context, e *env, name string, cfg writeConfig) ([]series, error) {
	c, err := e.newCluster(ctx, name)
	if err != nil {
		return nil, err
	}
	leader, err := c.leader(ctx)
	if err != nil {
		return nil, err
	}
	target := leader
	if cfg.viaFollower {
		for _, m := range c.members {
			if m != leader {
				target = m
				break
			}
		}
	}
	e.log.Info("write benchmark", "name", name, "clients", cfg.clients, "target", target.name, "leader", leader.name,
		"runs", e.opts.runs, "warmup", e.opts.warmup, "duration", e.opts.duration)

	// The specs to write: read each node once.
	specs := map[string]*pb.NodeSpec{}
	for _, m := range c.members {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := pb.NewControlClient(c.conn(leader.api)).GetNode(cctx, &pb.GetNodeRequest{Ref: m.nodeID})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("GetNode %s: %w", m.name, err)
		}
		specs[m.nodeID] = resp.GetNode().GetSpec()
	}

	clients := make([]*writeClient, cfg.clients)
	for i := range clients {
		conn, err := rpc.Dial(target.api, c.creds(), grpc.WithUnaryInterceptor(rpc.RetryUnavailable()))
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		node := c.members[i%len(c.members)].nodeID
		spec := proto.Clone(specs[node]).(*pb.NodeSpec)
		if spec.Annotations == nil {
			spec.Annotations = &pb.Annotations{}
		}
		if spec.Annotations.Labels == nil {
			spec.Annotations.Labels = map[string]string{}
		}
		clients[i] = &writeClient{id: i, ctl: pb.NewControlClient(conn), node: node, spec: spec}
	}
	leaderStatus := pb.NewMembershipClient(c.conn(leader.api))

	var thr, p50, p99, entries, failed []float64
	var totalFail int
	failKinds := map[string]int{}
	for r := range e.opts.runs {
		res, err := writeRun(ctx, clients, leaderStatus, e.opts.warmup, e.opts.duration)
		if err != nil {
			return nil, fmt.Errorf("run %d: %w", r+1, err)
		}
		if now, err := c.leader(ctx); err != nil {
			return nil, fmt.Errorf("run %d: %w", r+1, err)
		} else if now != leader {
			// Leadership moved during a run: the figures mix two leaders.
			e.notef("%s run %d: leadership moved from %s to %s during the run", name, r+1, leader.name, now.name)
			return nil, fmt.Errorf("run %d: leader changed from %s to %s under load", r+1, leader.name, now.name)
		}
		secs := res.window.Seconds()
		nfail := 0
		for k, n := range res.failures {
			nfail += n
			failKinds[k] += n
		}
		totalFail += nfail
		thr = append(thr, float64(res.ok)/secs)
		failed = append(failed, float64(nfail)/secs)
		entries = append(entries, float64(res.entries)/secs)
		if len(res.latencies) > 0 {
			p50 = append(p50, ms(percentile(res.latencies, 0.50)))
			p99 = append(p99, ms(percentile(res.latencies, 0.99)))
		}
		e.log.Info("write run", "name", name, "run", r+1, "writes/s", round1(float64(res.ok)/secs),
			"p50", percentile(res.latencies, 0.50).Round(time.Microsecond), "p99", percentile(res.latencies, 0.99).Round(time.Microsecond),
			"failed", nfail, "raft_entries/s", round1(float64(res.entries)/secs))
	}

	label := fmt.Sprintf("%d client", cfg.clients)
	if cfg.clients != 1 {
		label += "s"
	}
	if cfg.viaFollower {
		label += ", via follower"
	} else {
		label += ", to leader"
	}
	out := []series{
		{name: "write throughput (" + label + ")", unit: "writes/s", samples: thr},
		{name: "write latency p50 (" + label + ")", unit: "ms", samples: p50},
		{name: "write latency p99 (" + label + ")", unit: "ms", samples: p99},
		{name: "raft entries committed (" + label + ")", unit: "entries/s", samples: entries},
	}
	if totalFail > 0 {
		out = append(out, series{name: "failed writes (" + label + ")", unit: "writes/s", samples: failed})
		keys := make([]string, 0, len(failKinds))
		for k := range failKinds {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%d × %s", failKinds[k], k))
		}
		e.notef("%s: %d UpdateNode calls (version 0) failed over %d measured runs: %s", name, totalFail, e.opts.runs, strings.Join(parts, "; "))
		if hasPrefixKey(failKinds, "Aborted") {
			e.notef("%s: control.proto says version 0 \"skips the check\", yet these writes failed with Aborted: concurrent writes to the same node record conflict at apply time inside the store, which re-proposes them and finally gives up", name)
		}
	}
	if _, med, _ := stats(ratio(entries, thr)); med > 1.5 {
		e.notef("%s: the leader committed %.1f Raft entries per successful write (median over runs): transactions that conflicted were re-proposed", name, med)
	}
	return out, nil
}

// hasPrefixKey reports whether a key of m starts with prefix.
func hasPrefixKey(m map[string]int, prefix string) bool {
	for k := range m {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}

// ratio divides a by b element-wise, skipping zero divisors.
func ratio(a, b []float64) []float64 {
	var out []float64
	for i := range min(len(a), len(b)) {
		if b[i] > 0 {
			out = append(out, a[i]/b[i])
		}
	}
	return out
}

// writeClient is one closed-loop client.
type writeClient struct {
	id   int
	ctl  pb.ControlClient
	node string
	spec *pb.NodeSpec
	seq  int
}

// writeRun runs every client in a closed loop for warmup+window and keeps
// the calls that completed inside the window.
func writeRun(ctx context.Context, clients []*writeClient, leaderStatus pb.MembershipClient, warmup, window time.Duration) (*writeRunResult, error) {
	start := time.Now()
	ws := start.Add(warmup)
	we := ws.Add(window)
	runCtx, cancel := context.WithDeadline(ctx, we.Add(writeCallTimeout+time.Second))
	defer cancel()

	type clientResult struct {
		lat      []time.Duration
		failures map[string]int
	}
	results := make([]clientResult, len(clients))
	var wg sync.WaitGroup
	for i, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := clientResult{failures: map[string]int{}}
			key := "bench-c" + strconv.Itoa(cl.id)
			for time.Now().Before(we) && runCtx.Err() == nil {
				cl.seq++
				cl.spec.Annotations.Labels[key] = strconv.Itoa(cl.seq)
				cctx, ccancel := context.WithTimeout(runCtx, writeCallTimeout)
				t0 := time.Now()
				_, err := cl.ctl.UpdateNode(cctx, &pb.UpdateNodeRequest{Ref: cl.node, Version: 0, Spec: cl.spec})
				t1 := time.Now()
				ccancel()
				if t1.Before(ws) || t1.After(we) {
					continue
				}
				if err != nil {
					st := status.Convert(err)
					res.failures[st.Code().String()+": "+genericMessage(st.Message())]++
					continue
				}
				res.lat = append(res.lat, t1.Sub(t0))
			}
			results[i] = res
		}()
	}

	// The leader's commit index at the window's edges gives the Raft
	// entries committed, retries of conflicting transactions included.
	var first, last uint64
	var idxErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		read := func(at time.Time) uint64 {
			select {
			case <-time.After(time.Until(at)):
			case <-runCtx.Done():
				return 0
			}
			cctx, ccancel := context.WithTimeout(runCtx, 2*time.Second)
			defer ccancel()
			st, err := leaderStatus.RaftStatus(cctx, &pb.RaftStatusRequest{})
			if err != nil {
				idxErr = fmt.Errorf("leader RaftStatus: %w", err)
				return 0
			}
			return st.GetCommitIndex()
		}
		first = read(ws)
		last = read(we)
	}()
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, context.Cause(ctx)
	}
	if idxErr != nil {
		return nil, idxErr
	}
	out := &writeRunResult{window: window, failures: map[string]int{}}
	if last > first {
		out.entries = last - first
	}
	for _, r := range results {
		out.ok += len(r.lat)
		out.latencies = append(out.latencies, r.lat...)
		for k, n := range r.failures {
			out.failures[k] += n
		}
	}
	sort.Slice(out.latencies, func(i, j int) bool { return out.latencies[i] < out.latencies[j] })
	if out.ok == 0 {
		return nil, fmt.Errorf("no write succeeded in the %s window (failures: %v)", window, out.failures)
	}
	return out, nil
}

// genericMessage replaces the words of an error message that hold digits
// (IDs, versions, addresses) with "#", so that messages group by kind.
func genericMessage(msg string) string {
	words := strings.Fields(msg)
	for i, w := range words {
		if strings.ContainsAny(w, "0123456789") {
			words[i] = "#"
		}
	}
	return strings.Join(words, " ")
}

// percentile returns the nearest-rank percentile of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.999999) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func round1(v float64) float64 { return float64(int64(v*10+0.5)) / 10 }
