package main

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// Data-plane measurement during a round: steady HTTP traffic to every
// node's published web port, the nodes seen Down, and writes through the
// managers that survive the fault.

const (
	probeInterval = 20 * time.Millisecond // per target node
	probeTimeout  = 2 * time.Second       // per request
	// quietFor is how long every target must go without a failed request
	// (and each answer within the last second) before a round's
	// measurement window closes.
	quietFor  = 3 * time.Second
	quietWait = 60 * time.Second // at most, after the round's checks
	// planeTail is how long after the heal the requests go on at least
	// when the round's checks take longer.
	planeTail = 20 * time.Second
)

// probeState is one target's standing in the prober.
type probeState struct {
	excluded  bool          // the fault makes it unreachable on purpose
	awaiting  bool          // healed, not answered since
	gen       int           // bumped by each exclusion
	open      int           // index of its open exclusion in excl, or -1
	lastOK    time.Duration // the end of its last success
	lastFail  time.Duration // the end of its last failure that counts
	readmitAt time.Duration
}

// prober sends a request to every target's published port every
// probeInterval, each on a new connection and on its own (a request
// hanging does not hold the next one back: the clients of a real service
// keep arriving), and records the results.
type prober struct {
	start  time.Time
	client *http.Client
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	results []probeResult
	other   string // the first failure of no known kind, as it read
	excl    []exclusion
	state   map[string]*probeState
	end     time.Duration // set by stop
}

// startProber starts the traffic to the given nodes.
func startProber(ctx context.Context, nodes []*node) *prober {
	ctx, cancel := context.WithCancel(ctx)
	p := &prober{start: time.Now(), client: probeClient(probeTimeout), cancel: cancel, state: map[string]*probeState{}}
	for _, n := range nodes {
		p.state[n.name] = &probeState{open: -1}
	}
	for _, n := range nodes {
		p.wg.Go(func() {
			tick := time.NewTicker(probeInterval)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				p.wg.Go(func() { p.probe(ctx, n) })
			}
		})
	}
	return p
}

func (p *prober) now() time.Duration { return time.Since(p.start) }

// probe sends one request and records it.
func (p *prober) probe(ctx context.Context, n *node) {
	p.mu.Lock()
	gen := p.state[n.name].gen
	p.mu.Unlock()
	start := p.now()
	// A request cut short by the end of the window is not a failure.
	err := askWeb(context.WithoutCancel(ctx), p.client, n.ip)
	end := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.state[n.name]
	r := probeResult{Target: n.name, Start: start, End: end, OK: err == nil, Fail: failureKind(err)}
	p.results = append(p.results, r)
	if r.Fail == "other" && p.other == "" && !st.excluded && !st.awaiting {
		p.other = fmt.Sprintf("%s: %v", n.name, err)
	}
	switch {
	case r.OK:
		st.lastOK = end
		if st.awaiting && start >= st.readmitAt {
			// It answers again: the exclusion ends.
			st.awaiting = false
			p.excl[st.open].To = end
			st.open = -1
		}
	case !st.excluded && !st.awaiting && st.gen == gen:
		st.lastFail = end
	}
}

// exclude takes nodes out of the count from now on: the fault about to be
// injected makes them unreachable from the host on purpose.
func (p *prober) exclude(nodes ...*node) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	for _, n := range nodes {
		st := p.state[n.name]
		st.gen++
		st.excluded, st.awaiting = true, false
		if st.open < 0 {
			p.excl = append(p.excl, exclusion{Target: n.name, From: now, To: -1})
			st.open = len(p.excl) - 1
		}
	}
}

// readmit counts nodes again once they answer (the fault healed).
func (p *prober) readmit(nodes ...*node) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	for _, n := range nodes {
		st := p.state[n.name]
		if st.excluded {
			st.excluded, st.awaiting, st.readmitAt = false, true, now
		}
	}
}

// quiet says why the window cannot close yet: a target not readmitted or
// not answering again, a recent failure, or no recent success.
func (p *prober) quiet() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	for _, name := range slices.Sorted(maps.Keys(p.state)) {
		st := p.state[name]
		switch {
		case st.excluded:
			return fmt.Errorf("%s is still excluded", name)
		case st.awaiting:
			return fmt.Errorf("%s has not answered since the heal", name)
		case now-st.lastFail < quietFor && st.lastFail > 0:
			return fmt.Errorf("a request to %s failed %.1fs ago", name, (now - st.lastFail).Seconds())
		case now-st.lastOK > time.Second:
			return fmt.Errorf("no request to %s succeeded for %.1fs", name, (now - st.lastOK).Seconds())
		}
	}
	return nil
}

// otherFailure is the first failure of no known kind, for the report.
func (p *prober) otherFailure() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.other
}

// stop ends the traffic, waits for the requests in flight and returns
// the results, the exclusions (an open one ends at the window's end) and
// the window's length.
func (p *prober) stop() ([]probeResult, []exclusion, time.Duration) {
	p.cancel()
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.end == 0 {
		p.end = p.now()
	}
	excl := slices.Clone(p.excl)
	for i := range excl {
		if excl[i].To < 0 {
			excl[i].To = p.end
		}
	}
	return slices.Clone(p.results), excl, p.end
}

// downWatcher polls ListNodes through every manager and records the
// workers any of them reports Down.
type downWatcher struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	down   map[string]time.Duration // worker -> first seen Down, since start
	start  time.Time
}

// watchDown starts one poller per manager, every 200 ms, each call
// bounded so a silent manager does not hold the others back.
func watchDown(ctx context.Context, c *cluster) *downWatcher {
	ctx, cancel := context.WithCancel(ctx)
	d := &downWatcher{cancel: cancel, down: map[string]time.Duration{}, start: time.Now()}
	for _, m := range c.managers {
		d.wg.Go(func() {
			tick := time.NewTicker(200 * time.Millisecond)
			defer tick.Stop()
			for {
				if m.alive() {
					d.poll(ctx, c, m)
				}
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	return d
}

func (d *downWatcher) poll(ctx context.Context, c *cluster, m *node) {
	cl, err := c.control(m)
	if err != nil {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := cl.ListNodes(cctx, &pb.ListNodesRequest{})
	if err != nil {
		return // an unreachable manager tells nothing
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, n := range resp.GetNodes() {
		if n.GetRole() == pb.NodeRole_NODE_ROLE_WORKER && n.GetStatus().GetState() == pb.NodeState_NODE_STATE_DOWN {
			if _, seen := d.down[n.GetDescription().GetHostname()]; !seen {
				d.down[n.GetDescription().GetHostname()] = time.Since(d.start)
			}
		}
	}
}

// stop ends the polling and returns the workers seen Down, sorted.
func (d *downWatcher) stop() []string {
	d.cancel()
	d.wg.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Sorted(maps.Keys(d.down))
}

// writeTimeout bounds one write through a surviving manager.
const writeTimeout = 10 * time.Second

// writer commits a Raft entry through each surviving manager while a
// fault lasts: a label on a worker node (UpdateNode), which starts no
// rolling update. The first write is 1 s after the injection, then one a
// second per manager (the next waits for the previous to return).
type writer struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	n      int
	errs   []string
	max    time.Duration
}

// startWrites writes through each of managers to the node `on` (its spec
// as read before the round, with a changing label).
func startWrites(ctx context.Context, c *cluster, managers []*node, on *pb.Node) *writer {
	ctx, cancel := context.WithCancel(ctx)
	w := &writer{cancel: cancel}
	for _, m := range managers {
		w.wg.Go(func() {
			next := time.Now().Add(time.Second)
			for seq := 1; ; seq++ {
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Until(next)):
				}
				next = next.Add(time.Second)
				took, err := writeLabel(ctx, c, m, on, fmt.Sprintf("%s-%d", m.name, seq))
				w.mu.Lock()
				w.n++
				w.max = max(w.max, took)
				if err != nil {
					w.errs = append(w.errs, fmt.Sprintf("through %s after %.1fs: %v", m.name, took.Seconds(), err))
				}
				w.mu.Unlock()
			}
		})
	}
	return w
}

// writeLabel sets the chaos-write label of node `on` through manager m and
// returns how long the call took. A call in flight when the fault heals
// runs to its end: its latency is part of the figure.
func writeLabel(ctx context.Context, c *cluster, m *node, on *pb.Node, value string) (time.Duration, error) {
	cl, err := c.control(m)
	if err != nil {
		return 0, err
	}
	spec := proto.Clone(on.GetSpec()).(*pb.NodeSpec)
	if spec.Annotations == nil {
		spec.Annotations = &pb.Annotations{}
	}
	if spec.Annotations.Labels == nil {
		spec.Annotations.Labels = map[string]string{}
	}
	spec.Annotations.Labels["chaos-write"] = value
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	start := time.Now()
	_, err = cl.UpdateNode(cctx, &pb.UpdateNodeRequest{Ref: on.GetId(), Spec: spec})
	took := time.Since(start)
	if err != nil {
		return took, fmt.Errorf("update node %s: %w", on.GetDescription().GetHostname(), err)
	}
	return took, nil
}

// halt issues no more writes (the fault heals); the ones in flight run on.
func (w *writer) halt() {
	if w != nil {
		w.cancel()
	}
}

// stop ends the writes (waiting for the ones in flight) and returns their
// count, failures and the slowest.
func (w *writer) stop() (int, []string, time.Duration) {
	if w == nil {
		return 0, nil, 0
	}
	w.cancel()
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n, slices.Clone(w.errs), w.max
}
