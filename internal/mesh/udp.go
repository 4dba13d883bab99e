package mesh

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// udpIdle is how long a UDP flow (one client address) keeps its backend
// without traffic.
const udpIdle = 60 * time.Second

// udpMaxFlows caps the flows of one UDP listener: each holds a socket and
// a goroutine, so a client spraying source ports must not exhaust them.
// Datagrams that would start a flow beyond it are dropped.
const udpMaxFlows = 4096

// udpProxy proxies datagrams: each client address is a flow bound to one
// backend (round robin over the backends when the flow starts), and the
// backend's replies go back to the client from the proxied address.
type udpProxy struct {
	key      string
	service  string
	conn     *net.UDPConn
	backends atomic.Pointer[[]string]
	next     atomic.Uint64
	log      *slog.Logger

	mu     sync.Mutex
	flows  map[string]*udpFlow // by client address
	capped bool                // udpMaxFlows was reached (and logged)
	wg     sync.WaitGroup
	done   chan struct{}

	counters proxyCounters
}

type udpFlow struct {
	backend  string // "ip:port"
	upstream *net.UDPConn
	last     atomic.Int64 // unix nanos of the last packet either way
}

func listenUDP(ctx context.Context, addr string, reusePort bool) (*net.UDPConn, error) {
	lc := listenConfig(reusePort)
	pc, err := lc.ListenPacket(ctx, "udp4", addr)
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

func newUDPProxy(conn *net.UDPConn, key, service string, log *slog.Logger) *udpProxy {
	p := &udpProxy{key: key, service: service, conn: conn, log: log, flows: map[string]*udpFlow{}, done: make(chan struct{})}
	empty := []string{}
	p.backends.Store(&empty)
	p.wg.Add(2)
	go p.serve()
	go p.reap()
	return p
}

func (p *udpProxy) serviceName() string { return p.service }

func (p *udpProxy) stats() ProxyStats { return p.counters.snapshot(p.service, p.key, "udp") }

// setBackends replaces the addresses new flows go to and ends every flow
// on a backend that left the set: the client's next datagram starts a flow
// on a live one.
// setProxyProtocol is a no-op: the PROXY protocol header is for TCP.
func (p *udpProxy) setProxyProtocol(bool) {}

func (p *udpProxy) setBackends(addrs []string) {
	cp := append([]string(nil), addrs...)
	live := make(map[string]bool, len(cp))
	for _, a := range cp {
		live[a] = true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.backends.Store(&cp)
	for k, f := range p.flows {
		if !live[f.backend] {
			_ = f.upstream.Close()
			delete(p.flows, k)
		}
	}
}

func (p *udpProxy) currentBackends() []string { return append([]string(nil), *p.backends.Load()...) }

// serve reads client datagrams and forwards each to its flow's backend.
// With no backend a datagram is dropped, as a network would.
func (p *udpProxy) serve() {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, client, err := p.conn.ReadFromUDP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		f := p.flow(client)
		if f == nil {
			continue
		}
		f.last.Store(time.Now().UnixNano())
		if _, err := f.upstream.Write(buf[:n]); err == nil {
			p.counters.bytesIn.Add(uint64(n))
		}
	}
}

// flow returns the client's flow, starting one on the next backend.
func (p *udpProxy) flow(client *net.UDPAddr) *udpFlow {
	key := client.String()
	p.mu.Lock()
	defer p.mu.Unlock()
	if f, ok := p.flows[key]; ok {
		return f
	}
	addrs := *p.backends.Load()
	if len(addrs) == 0 || p.flows == nil {
		return nil
	}
	if len(p.flows) >= udpMaxFlows {
		if !p.capped {
			p.capped = true
			p.log.Warn("mesh udp flow limit reached; dropping datagrams from new client addresses", "service", p.service, "addr", p.key, "limit", udpMaxFlows)
		}
		return nil
	}
	addr := addrs[int(p.next.Add(1)%uint64(len(addrs)))]
	raddr, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return nil
	}
	up, err := net.DialUDP("udp4", nil, raddr)
	if err != nil {
		p.counters.failures.Add(1)
		p.log.Debug("mesh udp dial", "service", p.service, "endpoint", addr, "err", err)
		return nil
	}
	p.counters.conns.Add(1)
	f := &udpFlow{backend: addr, upstream: up}
	f.last.Store(time.Now().UnixNano())
	p.flows[key] = f
	p.wg.Add(1)
	go p.replies(client, f)
	return f
}

// udpBufs holds the buffers flows read replies into, so a flow waiting
// for its backend holds none.
var udpBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// replies relays a backend's datagrams back to the client until the flow
// ends.
func (p *udpProxy) replies(client *net.UDPAddr, f *udpFlow) {
	defer p.wg.Done()
	rc, err := f.upstream.SyscallConn()
	if err != nil {
		return
	}
	for {
		var buf *[]byte
		var n int
		var rerr error
		// The buffer is taken only once a datagram can be read.
		err := rc.Read(func(fd uintptr) bool {
			buf = udpBufs.Get().(*[]byte)
			for n, rerr = unix.Read(int(fd), *buf); rerr == unix.EINTR; {
				n, rerr = unix.Read(int(fd), *buf)
			}
			if rerr == unix.EAGAIN {
				udpBufs.Put(buf)
				return false
			}
			return true
		})
		if err != nil {
			return // the flow was closed
		}
		// A read error is e.g. ICMP port unreachable: the flow stays until
		// idle.
		if rerr == nil {
			f.last.Store(time.Now().UnixNano())
			if _, err := p.conn.WriteToUDP((*buf)[:n], client); err == nil {
				p.counters.bytesOut.Add(uint64(n))
			}
		}
		udpBufs.Put(buf)
	}
}

// reap ends flows idle for udpIdle.
func (p *udpProxy) reap() {
	defer p.wg.Done()
	t := time.NewTicker(udpIdle / 4)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
		}
		cutoff := time.Now().Add(-udpIdle).UnixNano()
		p.mu.Lock()
		for k, f := range p.flows {
			if f.last.Load() < cutoff {
				_ = f.upstream.Close()
				delete(p.flows, k)
			}
		}
		p.mu.Unlock()
	}
}

func (p *udpProxy) close() {
	_ = p.conn.Close()
	close(p.done)
	p.mu.Lock()
	for _, f := range p.flows {
		_ = f.upstream.Close()
	}
	p.flows = nil
	p.mu.Unlock()
	p.wg.Wait()
}
