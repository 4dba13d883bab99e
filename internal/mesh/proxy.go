package mesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// listener is one proxied address (an ingress port or a virtual IP port)
// and the backends its connections go to.
type listener struct {
	key      string // "ip:port"
	service  string // service name, for logs
	ln       net.Listener
	backends atomic.Pointer[backendSet]
	next     atomic.Uint64
	// proxyProto makes each backend connection start with a PROXY
	// protocol v2 header carrying the client's address.
	proxyProto atomic.Bool

	log         *slog.Logger
	dialTimeout time.Duration
	ctx         context.Context // cancelled by close: dials in flight give up
	cancel      context.CancelFunc

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup

	ejectMu sync.Mutex
	ejected map[string]time.Time // backends a dial just failed on, until when new connections try them last

	counters proxyCounters
}

// backendSet is where a listener's new connections go: the addresses,
// and each one parsed once (dials need no resolving).
type backendSet struct {
	addrs  []string
	parsed map[string]netip.AddrPort
}

// ejectFor is how long a backend that failed a dial is tried only after
// every other one: long enough that a silent node does not cost each new
// connection a dial timeout, short enough that a backend that recovers
// (or was only slow once) soon gets its share again.
const ejectFor = 5 * time.Second

// acceptPause is how long an accept loop waits after an error other than
// a timeout (e.g. out of file descriptors), so it does not spin.
const acceptPause = 10 * time.Millisecond

// listen opens a proxied address. reusePort lets every node of a cluster
// that shares a host bind the same virtual IP (they all balance over the
// same endpoints); ingress ports never share, so a port already taken on
// the host is an error.
func listen(ctx context.Context, addr string, reusePort bool) (net.Listener, error) {
	lc := listenConfig(reusePort)
	// TCP keep-alive (so a vanished client's connection is closed in the
	// end) is set once on the listening socket, whose accepted sockets
	// inherit it, rather than with four system calls per connection.
	lc.KeepAlive = -1
	reuse := lc.Control
	lc.Control = func(network, address string, c syscall.RawConn) error {
		if reuse != nil {
			if err := reuse(network, address, c); err != nil {
				return err
			}
		}
		var serr error
		err := c.Control(func(fd uintptr) {
			for _, o := range []struct{ level, opt, v int }{
				{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
				{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, keepAliveIdle},
				{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, keepAliveIdle},
				{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAliveCount},
			} {
				if serr == nil {
					serr = unix.SetsockoptInt(int(fd), o.level, o.opt, o.v)
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
	return lc.Listen(ctx, "tcp4", addr)
}

// Keep-alive probes on proxied connections, as Go's defaults: the first
// after 15 s idle, then every 15 s, 9 unanswered ones end the connection.
const (
	keepAliveIdle  = 15 // seconds
	keepAliveCount = 9
)

// listenConfig sets SO_REUSEPORT when asked.
func listenConfig(reusePort bool) net.ListenConfig {
	lc := net.ListenConfig{}
	if reusePort {
		lc.Control = func(network, address string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	return lc
}

func newListener(ln net.Listener, key, service string, log *slog.Logger, dialTimeout time.Duration) *listener {
	l := &listener{key: key, service: service, ln: ln, log: log, dialTimeout: dialTimeout, conns: map[net.Conn]struct{}{},
		ejected: map[string]time.Time{}}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.backends.Store(&backendSet{})
	return l
}

func (l *listener) serviceName() string { return l.service }

func (l *listener) stats() ProxyStats { return l.counters.snapshot(l.service, l.key, "tcp") }

func (l *listener) setProxyProtocol(on bool) { l.proxyProto.Store(on) }

func (l *listener) currentBackends() []string {
	return append([]string(nil), l.backends.Load().addrs...)
}

// setBackends replaces the addresses new connections go to; connections
// already proxied are left alone.
func (l *listener) setBackends(addrs []string) {
	cp := append([]string(nil), addrs...)
	parsed := make(map[string]netip.AddrPort, len(cp))
	for _, a := range cp {
		if ap, err := netip.ParseAddrPort(a); err == nil {
			parsed[a] = ap
		}
	}
	l.backends.Store(&backendSet{addrs: cp, parsed: parsed})
	keep := make(map[string]bool, len(cp))
	for _, a := range cp {
		keep[a] = true
	}
	l.ejectMu.Lock()
	for a := range l.ejected {
		if !keep[a] {
			delete(l.ejected, a)
		}
	}
	l.ejectMu.Unlock()
}

// dialOrder is the order a new connection tries the backends in: round
// robin from the next start, with backends ejected by a recent failed dial
// moved to the end (still tried when every other one fails).
func (l *listener) dialOrder(addrs []string) []string {
	start := int(l.next.Add(1) % uint64(len(addrs)))
	order := make([]string, 0, len(addrs))
	var last []string
	now := time.Now()
	l.ejectMu.Lock()
	for i := range addrs {
		a := addrs[(start+i)%len(addrs)]
		if until, ok := l.ejected[a]; ok {
			if now.Before(until) {
				last = append(last, a)
				continue
			}
			delete(l.ejected, a)
		}
		order = append(order, a)
	}
	l.ejectMu.Unlock()
	return append(order, last...)
}

// eject moves a backend to the end of the order for ejectFor; readmit
// takes it back at once (a dial to it succeeded).
func (l *listener) eject(addr string) {
	l.ejectMu.Lock()
	l.ejected[addr] = time.Now().Add(ejectFor)
	l.ejectMu.Unlock()
}

func (l *listener) readmit(addr string) {
	l.ejectMu.Lock()
	delete(l.ejected, addr)
	l.ejectMu.Unlock()
}

// serve accepts until the listener is closed.
func (l *listener) serve() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			l.log.Warn("mesh accept", "addr", l.key, "err", err)
			time.Sleep(acceptPause) // e.g. out of file descriptors: do not spin
			continue
		}
		if !l.track(c) {
			_ = c.Close()
			return
		}
		l.wg.Add(1)
		go l.handle(c)
	}
}

func (l *listener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns == nil {
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *listener) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// handle proxies one client connection to a backend. Backends are tried
// round robin, each dial bounded by the dial timeout; one that refuses or
// does not answer in time is skipped for the next, and tried only after
// the others for a while (a silent node costs one connection a timeout,
// not every one). With no backend at all the client's connection is
// closed at once, so clients fail fast instead of hanging. Once the
// listener is closed no further backend is tried.
func (l *listener) handle(client net.Conn) {
	defer l.wg.Done()
	defer l.untrack(client)
	defer client.Close()

	set := l.backends.Load()
	if len(set.addrs) == 0 {
		return
	}
	d := net.Dialer{Timeout: l.dialTimeout}
	var upstream net.Conn
	for _, addr := range l.dialOrder(set.addrs) {
		var c net.Conn
		var err error
		if ap, ok := set.parsed[addr]; ok {
			var tc *net.TCPConn
			if tc, err = d.DialTCP(l.ctx, "tcp", netip.AddrPort{}, ap); err == nil {
				c = tc
			}
		} else {
			c, err = d.DialContext(l.ctx, "tcp", addr)
		}
		if err == nil {
			l.readmit(addr)
			upstream = c
			break
		}
		if l.ctx.Err() != nil {
			return
		}
		l.counters.failures.Add(1)
		l.eject(addr)
		l.log.Debug("mesh dial failed; trying the next endpoint", "service", l.service, "endpoint", addr, "err", err)
	}
	if upstream == nil {
		l.log.Warn("mesh: no endpoint of the service answered", "service", l.service, "addr", l.key, "endpoints", len(set.addrs))
		return
	}
	if !l.track(upstream) {
		_ = upstream.Close()
		return
	}
	defer l.untrack(upstream)
	defer upstream.Close()
	if l.proxyProto.Load() {
		if _, err := upstream.Write(proxyHeaderV2(client.RemoteAddr(), client.LocalAddr())); err != nil {
			l.log.Debug("mesh: PROXY header not sent", "service", l.service, "err", err)
			return
		}
	}
	l.counters.conns.Add(1)
	in, out := relay(client, upstream)
	l.counters.bytesIn.Add(uint64(in))
	l.counters.bytesOut.Add(uint64(out))
}

// relay copies both ways until both directions are done, passing on
// half-closes so request/response protocols see end of input, and returns
// the bytes copied from a to b and from b to a. One direction runs in the
// caller's goroutine. The direction that ends second passes on no
// half-close: both connections are closed right after.
func relay(a, b net.Conn) (aToB, bToA int64) {
	done := make(chan struct{})
	var ended atomic.Int32
	go func() {
		bToA = pipe(a, b, &ended)
		close(done)
	}()
	aToB = pipe(b, a, &ended)
	<-done
	return aToB, bToA
}

// copyBufSize is the relay's buffer per direction while it copies.
const copyBufSize = 32 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// pipe copies src to dst through a pooled buffer, then half-closes dst
// unless the other direction has ended already (ended counts them).
// Plain reads and writes, not splice(2) (what io.Copy between two TCP
// connections does): for the small messages of request/response traffic
// a splice costs two system calls and a pipe per chunk, and measured the
// proxy's CPU per keep-alive request fell by about a third without it.
func pipe(dst, src net.Conn, ended *atomic.Int32) int64 {
	bp := copyBufs.Get().(*[]byte)
	n, _ := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
	copyBufs.Put(bp)
	if ended.Add(1) == 2 {
		return n
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	} else {
		_ = dst.Close()
	}
	return n
}

// close stops accepting, abandons dials in flight and ends every proxied
// connection.
func (l *listener) close() {
	l.cancel()
	_ = l.ln.Close()
	l.mu.Lock()
	for c := range l.conns {
		_ = c.Close()
	}
	l.conns = nil
	l.mu.Unlock()
	l.wg.Wait()
}

// bindError says why an address could not be proxied, in words a user can
// act on.
func bindError(addr, service string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("publish %s for service %s: the port is already in use on this host; publish another port (--publish-rm/--publish-add) or stop what holds it", addr, service)
	}
	return fmt.Errorf("publish %s for service %s: %w", addr, service, err)
}

// proxyV2Sig starts every PROXY protocol v2 header.
var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// proxyHeaderV2 is the PROXY protocol v2 header for a TCP connection from
// src to dst (the address the client connected to): version 2, command
// PROXY, TCP over IPv4 or IPv6 by the client's address.
func proxyHeaderV2(src, dst net.Addr) []byte {
	s, _ := src.(*net.TCPAddr)
	d, _ := dst.(*net.TCPAddr)
	h := append([]byte(nil), proxyV2Sig...)
	if s == nil || d == nil {
		return append(h, 0x20, 0x00, 0x00, 0x00) // LOCAL: no address to give
	}
	sIP, dIP := s.IP.To4(), d.IP.To4()
	fam := byte(0x11) // AF_INET, STREAM
	if sIP == nil || dIP == nil {
		sIP, dIP, fam = s.IP.To16(), d.IP.To16(), 0x21 // AF_INET6, STREAM
	}
	n := 2*len(sIP) + 4
	h = append(h, 0x21, fam, byte(n>>8), byte(n))
	h = append(h, sIP...)
	h = append(h, dIP...)
	return append(h, byte(s.Port>>8), byte(s.Port), byte(d.Port>>8), byte(d.Port))
}
