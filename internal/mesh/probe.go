package mesh

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// The kernel does not retry: a connection NATed to a backend that died or
// whose node went silent fails, where the proxy would have tried the next
// one. Until the managers take such a backend out of the set (a task's
// exit is committed in tens of ms; a silent node is declared Down after
// three heartbeat periods), each node probes the backends of its kernel
// frontends and leaves out of the kernel's maps those that refuse a
// connection or do not answer one twice in a row. A backend is back at
// its first answer. When every backend of a frontend is out, all stay in
// (as the proxy tries each in turn when all failed).

const (
	probeInterval = 200 * time.Millisecond
	// probeSilentAfter is how many probes in a row must time out before a
	// backend counts as silent (a refusal counts at once).
	probeSilentAfter = 2
)

// prober probes a set of backend addresses and reports changes of their
// state through onChange (called without any lock held).
type prober struct {
	timeout  time.Duration
	onChange func()

	mu      sync.Mutex
	targets map[string]context.CancelFunc
	down    map[string]bool
	closed  bool
	wg      sync.WaitGroup
}

func newProber(timeout time.Duration, onChange func()) *prober {
	return &prober{timeout: timeout, onChange: onChange, targets: map[string]context.CancelFunc{}, down: map[string]bool{}}
}

// set makes addrs the probed backends: new ones start (counted up until
// a probe says otherwise), gone ones stop and are forgotten.
func (p *prober) set(addrs map[string]bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	for a, cancel := range p.targets {
		if !addrs[a] {
			cancel()
			delete(p.targets, a)
			delete(p.down, a)
		}
	}
	for a := range addrs {
		if _, ok := p.targets[a]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		p.targets[a] = cancel
		p.wg.Add(1)
		go p.run(ctx, a)
	}
}

// isDown reports whether addr refused or ignored the last probes.
func (p *prober) isDown(addr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.down[addr]
}

// run probes one backend until ctx ends.
func (p *prober) run(ctx context.Context, addr string) {
	defer p.wg.Done()
	t := time.NewTicker(probeInterval)
	defer t.Stop()
	silent := 0
	d := net.Dialer{Timeout: p.timeout}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c, err := d.DialContext(ctx, "tcp", addr)
		if ctx.Err() != nil {
			return
		}
		down := false
		switch {
		case err == nil:
			_ = c.Close()
			silent = 0
		case errors.Is(err, syscall.ECONNREFUSED):
			down = true
		default:
			silent++
			down = silent >= probeSilentAfter
			if !down {
				continue // one timeout: wait for the next probe
			}
		}
		p.mu.Lock()
		changed := p.targets[addr] != nil && p.down[addr] != down
		if changed {
			p.down[addr] = down
		}
		p.mu.Unlock()
		if changed {
			p.onChange()
		}
	}
}

// close stops every probe and waits for them.
func (p *prober) close() {
	p.mu.Lock()
	p.closed = true
	for a, cancel := range p.targets {
		cancel()
		delete(p.targets, a)
	}
	p.mu.Unlock()
	p.wg.Wait()
}
