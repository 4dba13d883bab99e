package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-cluster/shoal/gossip"
	"github.com/shoal-cluster/shoal/internal/joinclient"
	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/internal/rpc"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// Heartbeat load: what connected workers cost the leader. Light simulated
// workers in this process join with the worker token, open a Dispatcher
// session on the leader and heartbeat at the period it asks for; the
// leader process's CPU time and RSS are read from /proc over a window at
// each fleet size.
const (
	hbManagers      = 1
	hbPeriod        = time.Second
	hbSlice         = 2 * time.Second // one CPU/RSS sample per slice of the window
	hbJoinParallel  = 32
	hbCallTimeout   = 20 * time.Second
	simAPIPortBase  = 10000 // fake API ports of the simulated workers (nothing listens)
	simHostPrefix   = "sim-"
	simNodeIDLength = 25
)

// hbLevels are the fleet sizes measured, in increasing order; the first
// must be 0 (the baseline).
func hbLevels(quick bool) []int {
	if quick {
		return []int{0, 100, 500}
	}
	return []int{0, 100, 500, 1000}
}

func hbWindow(quick bool) time.Duration {
	if quick {
		return 4 * time.Second
	}
	return 10 * time.Second
}

func hbSettle(quick bool) time.Duration {
	if quick {
		return time.Second
	}
	return 2 * time.Second
}

func runHeartbeatLoad(ctx context.Context, e *env) ([]series, error) {
	c, err := e.newClusterN(ctx, "heartbeat-load", hbManagers, 0, []string{"--heartbeat-period", hbPeriod.String()})
	if err != nil {
		return nil, err
	}
	leader, err := c.leader(ctx)
	if err != nil {
		return nil, err
	}
	token, err := c.joinToken(ctx, pb.NodeRole_NODE_ROLE_WORKER)
	if err != nil {
		return nil, err
	}
	fleet, err := newSimFleet(ctx, leader.api, token)
	if err != nil {
		return nil, err
	}
	defer fleet.close()

	quick := e.opts.quick
	levels, window, settle := hbLevels(quick), hbWindow(quick), hbSettle(quick)
	type levelResult struct {
		n        int
		cpuPct   []float64 // per slice, % of one core
		rssMiB   []float64 // per slice
		beatsPS  float64
		benchPct float64
	}
	var results []levelResult
	pid := leader.proc.pid()
	self := os.Getpid()
	for _, n := range levels {
		t0 := time.Now()
		if err := fleet.grow(ctx, n); err != nil {
			return nil, fmt.Errorf("%d workers: %w", n, err)
		}
		if got := fleet.established.Load(); got != int64(n) {
			return nil, fmt.Errorf("%d workers: %d sessions established", n, got)
		}
		if n > 0 {
			e.log.Info("simulated workers connected", "workers", n, "took", time.Since(t0).Round(time.Millisecond))
		}
		if err := sleepCtx(ctx, settle); err != nil {
			return nil, err
		}
		if leader.proc.exited() {
			return nil, leader.proc.exitError()
		}
		fails0 := fleet.failureCount()
		beats0 := fleet.beatsOK.Load()
		r := levelResult{n: n}
		prev, err := readProcUsage(pid)
		if err != nil {
			return nil, err
		}
		selfPrev, _ := readProcUsage(self)
		start := prev
		for range int(window / hbSlice) {
			if err := sleepCtx(ctx, hbSlice); err != nil {
				return nil, err
			}
			u, err := readProcUsage(pid)
			if err != nil {
				return nil, err
			}
			r.cpuPct = append(r.cpuPct, 100*float64(u.cpu-prev.cpu)/float64(u.at.Sub(prev.at)))
			r.rssMiB = append(r.rssMiB, float64(u.rss)/(1<<20))
			prev = u
		}
		elapsed := prev.at.Sub(start.at)
		r.beatsPS = float64(fleet.beatsOK.Load()-beats0) / elapsed.Seconds()
		if selfNow, err := readProcUsage(self); err == nil {
			r.benchPct = 100 * float64(selfNow.cpu-selfPrev.cpu) / float64(selfNow.at.Sub(selfPrev.at))
		}
		if f := fleet.failureCount(); f != fails0 {
			return nil, fmt.Errorf("%d workers: %d heartbeat or session failures during the window: %s", n, f-fails0, fleet.failureSummary())
		}
		if err := fleet.checkReady(ctx, c.conn(leader.api)); err != nil {
			return nil, fmt.Errorf("%d workers, after the window: %w", n, err)
		}
		_, cpu, _ := stats(r.cpuPct)
		_, rss, _ := stats(r.rssMiB)
		e.log.Info("heartbeat load", "workers", n, "leader_cpu_pct", round1(cpu), "leader_rss_mib", round1(rss),
			"heartbeats/s", round1(r.beatsPS), "bench_process_cpu_pct", round1(r.benchPct))
		if n > 0 && r.beatsPS < 0.9*float64(n)/hbPeriod.Seconds() {
			e.notef("heartbeat-load: with %d workers only %.0f heartbeats/s were answered (expected about %.0f)", n, r.beatsPS, float64(n)/hbPeriod.Seconds())
		}
		results = append(results, r)
	}

	var out []series
	for _, r := range results {
		out = append(out, series{name: fmt.Sprintf("heartbeat load: leader CPU, %d workers", r.n), unit: "% of a core", samples: r.cpuPct})
	}
	for _, r := range results {
		out = append(out, series{name: fmt.Sprintf("heartbeat load: leader RSS, %d workers", r.n), unit: "MiB", samples: r.rssMiB})
	}
	// Slopes against the baseline, one per fleet size.
	_, cpu0, _ := stats(results[0].cpuPct)
	_, rss0, _ := stats(results[0].rssMiB)
	var cpuSlope, rssSlope []float64
	var sizes []string
	for _, r := range results[1:] {
		_, cpu, _ := stats(r.cpuPct)
		_, rss, _ := stats(r.rssMiB)
		per := float64(r.n) / 100
		cpuSlope = append(cpuSlope, (cpu-cpu0)*10/per) // 1% of a core = 10 ms/s
		rssSlope = append(rssSlope, (rss-rss0)/per)
		sizes = append(sizes, strconv.Itoa(r.n))
	}
	over := strings.Join(sizes, "/")
	out = append(out,
		series{name: "heartbeat load: leader CPU per 100 workers (vs 0; at " + over + ")", unit: "ms/s", samples: cpuSlope},
		series{name: "heartbeat load: leader RSS per 100 workers (vs 0; at " + over + ")", unit: "MiB", samples: rssSlope},
	)
	last := results[len(results)-1]
	e.notef("heartbeat-load: with %d simulated workers the leader used %.1f%% of a core and the load generator (the bench process, on the same %d cores) %.1f%%",
		last.n, medianOf(last.cpuPct), runtime.NumCPU(), last.benchPct)
	return out, nil
}

func medianOf(s []float64) float64 {
	_, m, _ := stats(s)
	return m
}

// simFleet is a set of simulated workers, each with its own gRPC
// connection, session stream and heartbeat loop.
type simFleet struct {
	addr, token string
	clusterID   string
	// gossip is the one gossip member of the fleet (worker 0's): the
	// managers' gossip join loop keeps dialling the gossip address of
	// every node until one answers (see the Method section of the report).
	gossip   *gossip.Gossip
	ctx      context.Context
	cancel   context.CancelFunc
	joinConn *grpc.ClientConn
	// resources, if set, are the CPUs and memory the simulated nodes
	// describe (the scheduler places tasks only where they fit).
	resources *pb.Resources
	// actor, if set, makes a worker act on its assignments: it is called
	// once a session is open and returns the function that receives each
	// session message (the first, complete one included) in order.
	actor func(w *simWorker, client pb.DispatcherClient, sessionID string) func(*pb.SessionMessage)
	wg    sync.WaitGroup

	mu       sync.Mutex
	workers  []*simWorker
	failures map[string]int

	established atomic.Int64
	beatsOK     atomic.Int64
}

type simWorker struct {
	id, host   string
	conn       *grpc.ClientConn
	gossipKeys [][]byte
}

func newSimFleet(ctx context.Context, addr, token string) (*simFleet, error) {
	// Joins trust the manager whose chain holds the root the token pins.
	pinned, err := joinclient.TokenCredentials(token)
	if err != nil {
		return nil, err
	}
	jc, err := rpc.Dial(addr, pinned, grpc.WithUnaryInterceptor(rpc.RetryUnavailable()))
	if err != nil {
		return nil, err
	}
	f := &simFleet{addr: addr, token: token, joinConn: jc, failures: map[string]int{}}
	f.ctx, f.cancel = context.WithCancel(ctx)
	cctx, cancel := context.WithTimeout(ctx, hbCallTimeout)
	defer cancel()
	resp, err := pb.NewMembershipClient(jc).CheckToken(cctx, &pb.CheckTokenRequest{Token: token})
	if err != nil {
		jc.Close()
		return nil, fmt.Errorf("CheckToken: %w", err)
	}
	if resp.GetRole() != pb.NodeRole_NODE_ROLE_WORKER {
		jc.Close()
		return nil, fmt.Errorf("CheckToken: the token grants %s, not worker", resp.GetRole())
	}
	f.clusterID = resp.GetClusterId()
	return f, nil
}

// gossipPort picks a free API port for the worker that joins gossip
// (its gossip port is +2).
func (f *simFleet) gossipPort() (int, error) {
	for range 100 {
		p := simAPIPortBase + 5000 + mrand.IntN(5000)
		if portsFreeOn("127.0.0.1", p) {
			return p, nil
		}
	}
	return 0, errors.New("no free port for the gossip member")
}

// startGossip makes worker w, which joined with API port p, a gossip
// member, as a real worker is, with the gossip keys its join handed out.
func (f *simFleet) startGossip(w *simWorker, p int) error {
	host, portStr, err := net.SplitHostPort(f.addr)
	if err != nil {
		return err
	}
	mport, _ := strconv.Atoi(portStr)
	g, err := gossip.New(gossip.Config{
		Meta:      gossip.Meta{NodeID: w.id, Role: gossip.RoleWorker, API: net.JoinHostPort("127.0.0.1", strconv.Itoa(p))},
		BindIP:    "127.0.0.1",
		BindPort:  p + 2,
		ClusterID: f.clusterID,
		Keys:      w.gossipKeys,
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return err
	}
	if _, err := g.Join([]string{net.JoinHostPort(host, strconv.Itoa(mport+2))}); err != nil {
		g.Shutdown()
		return err
	}
	f.gossip = g
	return nil
}

// grow adds workers until there are n, each joined and with its first
// session message received.
func (f *simFleet) grow(ctx context.Context, n int) error {
	f.mu.Lock()
	have := len(f.workers)
	f.mu.Unlock()
	if n <= have {
		return nil
	}
	sem := make(chan struct{}, hbJoinParallel)
	errs := make(chan error, n-have)
	var wg sync.WaitGroup
	for i := have; i < n; i++ {
		w := &simWorker{id: simNodeID(), host: fmt.Sprintf("%s%04d", simHostPrefix, i)}
		f.mu.Lock()
		f.workers = append(f.workers, w)
		f.mu.Unlock()
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			port := simAPIPortBase + i
			if i == 0 {
				p, err := f.gossipPort()
				if err != nil {
					errs <- fmt.Errorf("%s: gossip: %w", w.host, err)
					return
				}
				port = p
			}
			if err := f.start(ctx, w, port); err != nil {
				errs <- fmt.Errorf("%s: %w", w.host, err)
				return
			}
			if i == 0 {
				if err := f.startGossip(w, port); err != nil {
					errs <- fmt.Errorf("%s: gossip: %w", w.host, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	if len(all) > 0 {
		return fmt.Errorf("%d of %d simulated workers failed to start; first: %w", len(all), n-have, all[0])
	}
	return nil
}

// start joins one worker, opens its session and, once the first message
// is in, leaves a receive loop and a heartbeat loop running.
func (f *simFleet) start(ctx context.Context, w *simWorker, port int) error {
	desc := &pb.NodeDescription{Hostname: w.host, Os: "linux", Arch: "amd64", Runtimes: []string{"process"}, Resources: f.resources}
	keyPEM, csr, err := pki.NewKeyAndCSR()
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, hbCallTimeout)
	resp, err := pb.NewMembershipClient(f.joinConn).Join(cctx, &pb.JoinRequest{
		Token:       f.token,
		NodeId:      w.id,
		ApiAddr:     "127.0.0.1:" + strconv.Itoa(port),
		Description: desc,
		Csr:         csr,
	})
	cancel()
	if err != nil {
		return fmt.Errorf("join: %w", err)
	}
	w.gossipKeys = resp.GetGossipKeys()
	creds, err := rpc.NewCredentials(resp.GetCertificate(), keyPEM, resp.GetRootCas())
	if err != nil {
		return fmt.Errorf("join: the certificate: %w", err)
	}
	conn, err := rpc.Dial(f.addr, creds)
	if err != nil {
		return err
	}
	w.conn = conn
	stream, err := pb.NewDispatcherClient(conn).Session(f.ctx, &pb.SessionRequest{NodeId: w.id, Description: desc})
	if err != nil {
		return fmt.Errorf("session: %w", err)
	}
	type first struct {
		msg *pb.SessionMessage
		err error
	}
	got := make(chan first, 1)
	go func() {
		m, err := stream.Recv()
		got <- first{m, err}
	}()
	var msg *pb.SessionMessage
	select {
	case r := <-got:
		if r.err != nil {
			return fmt.Errorf("session, first message: %w", r.err)
		}
		msg = r.msg
	case <-time.After(hbCallTimeout):
		return errors.New("session: no first message within " + hbCallTimeout.String())
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	if msg.GetSessionId() == "" {
		return errors.New("session: first message has no session ID")
	}
	f.established.Add(1)
	period := time.Duration(msg.GetHeartbeatPeriod())
	if period <= 0 {
		period = time.Second
	}
	handle := func(*pb.SessionMessage) {}
	if f.actor != nil {
		handle = f.actor(w, pb.NewDispatcherClient(conn), msg.GetSessionId())
		handle(msg)
	}
	f.wg.Add(2)
	go func() { // read the stream, as the agent does
		defer f.wg.Done()
		for {
			m, err := stream.Recv()
			if err != nil {
				if f.ctx.Err() == nil {
					f.fail("session stream ended", err)
				}
				return
			}
			handle(m)
		}
	}()
	go func() {
		defer f.wg.Done()
		client := pb.NewDispatcherClient(conn)
		for {
			select {
			case <-f.ctx.Done():
				return
			case <-time.After(period):
			}
			hctx, cancel := context.WithTimeout(f.ctx, period)
			resp, err := client.Heartbeat(hctx, &pb.HeartbeatRequest{SessionId: msg.GetSessionId(), NodeId: w.id})
			cancel()
			if err != nil {
				if f.ctx.Err() == nil {
					f.fail("heartbeat", err)
				}
				continue
			}
			f.beatsOK.Add(1)
			if p := time.Duration(resp.GetPeriod()); p > 0 {
				period = p
			}
		}
	}()
	return nil
}

func (f *simFleet) fail(what string, err error) {
	st := status.Convert(err)
	f.mu.Lock()
	f.failures[what+": "+st.Code().String()+": "+genericMessage(st.Message())]++
	f.mu.Unlock()
}

func (f *simFleet) failureCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.failures {
		n += c
	}
	return n
}

func (f *simFleet) failureSummary() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var parts []string
	for k, n := range f.failures {
		parts = append(parts, fmt.Sprintf("%d × %s", n, k))
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

// checkReady verifies through ListNodes that every simulated worker is
// Ready.
func (f *simFleet) checkReady(ctx context.Context, conn *grpc.ClientConn) error {
	cctx, cancel := context.WithTimeout(ctx, hbCallTimeout)
	defer cancel()
	resp, err := pb.NewControlClient(conn).ListNodes(cctx, &pb.ListNodesRequest{Role: pb.NodeRole_NODE_ROLE_WORKER})
	if err != nil {
		return fmt.Errorf("ListNodes: %w", err)
	}
	state := map[string]pb.NodeState{}
	for _, n := range resp.GetNodes() {
		state[n.GetId()] = n.GetStatus().GetState()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	bad := map[string]int{}
	for _, w := range f.workers {
		s, ok := state[w.id]
		switch {
		case !ok:
			bad["missing"]++
		case s != pb.NodeState_NODE_STATE_READY:
			bad[s.String()]++
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("not every simulated worker is Ready in ListNodes: %v of %d", bad, len(f.workers))
	}
	return nil
}

// close ends every session and connection.
func (f *simFleet) close() {
	f.cancel()
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.workers {
		if w.conn != nil {
			w.conn.Close()
		}
	}
	f.joinConn.Close()
	if f.gossip != nil {
		// Leave rather than vanish: the manager would otherwise log failed
		// probes of a dead member.
		_ = f.gossip.Leave(time.Second)
	}
}

// simNodeID is a 25-character node ID of lower-case letters and digits.
func simNodeID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, simNodeIDLength)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}
