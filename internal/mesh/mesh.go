package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
)

// Config says where a node's mesh listens.
type Config struct {
	// IP is the node's advertised IP: ingress ports and the resolver bind
	// there.
	IP string
	// DNSPort is the resolver's port on IP (UDP and TCP); 0 disables it.
	DNSPort int
	// ContainerResolver, when set, serves containers too: the resolver
	// also listens on this address (port 53; see ContainerResolverIP) and
	// answers with each virtual IP's container twin, which the proxy
	// serves. The node adds these addresses to its loopback interface.
	ContainerResolver string
	// DialTimeout bounds each attempt to reach a backend (default 500ms):
	// a backend whose node went silent is given up for the next one after
	// it, never waited on for the kernel's connect timeout.
	DialTimeout time.Duration
	// NodeID is this node's ID: it names the node's nftables table and
	// tells local backends (same node) from remote ones.
	NodeID string
	// Datapath is DatapathAuto (the default: nftables rules when the node
	// is root and has the nft command, else the proxy) or
	// DatapathUserspace (always the proxy).
	Datapath string
	Log      *slog.Logger
}

// DefaultDialTimeout bounds a proxy's dial to one backend: far above a
// connect's round trip within a cluster, far below the kernel's own
// timeout (over a minute) that a silent address would otherwise cost.
const DefaultDialTimeout = 500 * time.Millisecond

// Mesh is a node's routing mesh and resolver.
type Mesh struct {
	cfg Config
	log *slog.Logger

	// tab is replaced (under mu) on every update, never modified, so the
	// resolvers read it without taking mu.
	tab atomic.Pointer[table]

	mu        sync.Mutex
	listeners map[string]proxy // by "ip:port" (TCP) or "ip:port/udp"
	errs      map[string]error // addresses that could not be bound
	retry     *time.Timer      // retries errs; set while one is scheduled
	closed    bool
	changed   chan struct{} // closed and replaced on every applied update or TaskGone
	// gone are tasks of this node that stopped serving (TaskGone) while
	// the endpoint sets may still name them: they are left out.
	gone map[string]bool

	dns      *resolver
	ctrDNS   *resolver       // the containers' resolver, if any
	ctrAddrs map[string]bool // container twin addresses added to lo

	kern  *kernel      // the kernel datapath, nil when the proxy does it all
	dp    DatapathInfo // which datapath and why
	probe *prober      // probes the kernel's backends; nil without kernel
}

// New returns a mesh that listens on nothing until Start and Apply.
func New(cfg Config) *Mesh {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	m := &Mesh{
		cfg:       cfg,
		log:       cfg.Log.With("component", "mesh"),
		listeners: map[string]proxy{},
		errs:      map[string]error{},
		changed:   make(chan struct{}),
		ctrAddrs:  map[string]bool{},
		gone:      map[string]bool{},
	}
	m.tab.Store(&table{})
	m.kern, m.dp = newKernel(cfg, m.log)
	if m.kern != nil {
		m.probe = newProber(cfg.DialTimeout, m.probeChanged)
	}
	m.log.Info("mesh datapath", "datapath", m.dp.Name, "reason", m.dp.Reason, "table", m.dp.Table)
	return m
}

// Datapath says which datapath the mesh uses and why (the proxy, while
// the kernel's rules could not be applied).
func (m *Mesh) Datapath() DatapathInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.kern != nil && m.kern.lastErr != nil {
		return DatapathInfo{Name: DatapathUserspace, Reason: fmt.Sprintf("the nftables rules could not be applied (retried at every change): %v", m.kern.lastErr)}
	}
	return m.dp
}

// Start opens the resolver (when a DNS port is set).
// Start opens the resolvers: the node's (when a DNS port is set) and the
// containers' (when ContainerResolver is set). A resolver that cannot
// start is reported; the proxy works without it.
func (m *Mesh) Start(ctx context.Context) error {
	var errs []error
	if m.cfg.DNSPort != 0 {
		r, err := startResolver(ctx, net.JoinHostPort(m.cfg.IP, strconv.Itoa(m.cfg.DNSPort)), m.lookup(nil), m.log, false)
		if err != nil {
			errs = append(errs, err)
		} else {
			m.mu.Lock()
			m.dns = r
			m.mu.Unlock()
		}
	}
	if ip := m.cfg.ContainerResolver; ip != "" {
		err := addLocalAddr(ctx, ip)
		var r *resolver
		if err == nil {
			r, err = startResolver(ctx, net.JoinHostPort(ip, "53"), m.lookup(func(vip string) string { return containerVIP(ip, vip) }), m.log, true)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("containers' resolver: %w", err))
		} else {
			m.mu.Lock()
			m.ctrDNS = r
			m.mu.Unlock()
		}
	}
	return errors.Join(errs...)
}

// DNSAddr is the resolver's address (host:port), or "" when it is off.
func (m *Mesh) DNSAddr() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dns == nil {
		return ""
	}
	return m.dns.addr
}

// Apply takes an endpoint update from the managers and reconciles the
// proxied addresses with it.
func (m *Mesh) Apply(u *pb.EndpointUpdate) {
	if u == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	next := m.tab.Load().apply(u)
	m.tab.Store(&next)
	// A gone task is forgotten once no set names it (task IDs are never
	// reused, so it never comes back).
	for id := range m.gone {
		if !next.hasTask(id) {
			delete(m.gone, id)
		}
	}
	m.reconcile()
	close(m.changed)
	m.changed = make(chan struct{})
}

// TaskGone takes a task out of the node's datapath at once: its worker
// saw it exit (or fail its health check), so new connections must not
// reach it, and the managers' update that removes it from the endpoint
// sets is a round trip away (the worker's report, a Raft commit, the push
// back). The worker calls it for its own tasks and tells the other nodes
// (TaskGoneMessage), whose meshes call it too. It reports whether this
// call took the task out (it was in the datapath, and not gone already).
func (m *Mesh) TaskGone(taskID string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.gone[taskID] {
		return false
	}
	// Marked even when no set names it yet: an update naming it may be on
	// its way (its RUNNING commit sent before it died).
	m.gone[taskID] = true
	if !m.tab.Load().hasTask(taskID) {
		return false
	}
	m.reconcile()
	close(m.changed)
	m.changed = make(chan struct{})
	return true
}

// taskGonePrefix starts a task-gone message between nodes' meshes.
const taskGonePrefix = "shoal-mesh/task-gone/1 "

// TaskGoneMessage is the message a worker sends the other nodes (over
// gossip) when one of its tasks leaves its datapath, so that their
// meshes drop it without waiting for the managers' update.
func TaskGoneMessage(taskID string) []byte { return []byte(taskGonePrefix + taskID) }

// ParseTaskGoneMessage returns the task a TaskGoneMessage names.
func ParseTaskGoneMessage(b []byte) (string, bool) {
	id, ok := strings.CutPrefix(string(b), taskGonePrefix)
	if !ok || id == "" || len(id) > 128 || strings.ContainsAny(id, " \n\x00") {
		return "", false
	}
	return id, true
}

// FollowTaskGone applies the task-gone messages other nodes send (msgs,
// the node's gossip messages) until ctx ends; anything else in msgs is
// ignored.
func (m *Mesh) FollowTaskGone(ctx context.Context, msgs <-chan []byte) {
	for {
		select {
		case <-ctx.Done():
			return
		case b := <-msgs:
			if id, ok := ParseTaskGoneMessage(b); ok && m.TaskGone(id) {
				m.log.Debug("task left the datapath on its node's word", "task", id)
			}
		}
	}
}

// Changed returns a channel closed at the next applied update (or
// TaskGone).
func (m *Mesh) Changed() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changed
}

// Errors lists addresses the mesh could not open, e.g. a published port
// another program holds on this host.
func (m *Mesh) Errors() []error {
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := make([]string, 0, len(m.errs))
	for k := range m.errs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]error, 0, len(keys))
	for _, k := range keys {
		out = append(out, m.errs[k])
	}
	return out
}

// Backends returns where new connections to addr go: "ip:port" for TCP,
// "ip:port/udp" for UDP. On the kernel datapath the rules may leave out
// backends its probes found dead or silent.
func (m *Mesh) Backends(addr string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	l, ok := m.listeners[addr]
	if !ok {
		return nil
	}
	return l.currentBackends()
}

// proxy is one proxied address, TCP (listener) or UDP (udpProxy).
type proxy interface {
	serviceName() string
	setBackends([]string)
	setProxyProtocol(bool)
	currentBackends() []string
	stats() ProxyStats
	close()
}

// wanted is one address the table says this node must proxy.
type wanted struct {
	service    string
	backends   []string
	nodes      map[string]string // backend address -> its node ID
	reusePort  bool
	localIP    string // an address to add to lo first (a container twin)
	proxyProto bool   // send a PROXY protocol v2 header to backends
}

// proxyKey names a proxied address: "ip:port", with "/udp" for UDP.
func proxyKey(ip string, port uint32, protocol pb.PortProtocol) string {
	k := net.JoinHostPort(ip, strconv.Itoa(int(port)))
	if protocol == pb.PortProtocol_PORT_PROTOCOL_UDP {
		k += "/udp"
	}
	return k
}

// desired computes every address to proxy: each ingress-published port on
// the node's IP, and each target port on each service's virtual IP (and
// its container twin when containers are served).
func (m *Mesh) desired() map[string]wanted {
	out := map[string]wanted{}
	for _, s := range *m.tab.Load() {
		for _, p := range s.GetPorts() {
			proto := p.GetProtocol()
			w := wanted{service: s.GetServiceName(), proxyProto: p.GetProxyProtocol()}
			w.backends, w.nodes = backends(s, p.GetTargetPort(), proto, "", m.gone)
			if p.GetPublishMode() == pb.PublishMode_PUBLISH_MODE_INGRESS && p.GetPublishedPort() != 0 && m.cfg.IP != "" {
				in := w
				if p.GetLocal() {
					// Only this node's tasks (none without a node ID).
					onNode := m.cfg.NodeID
					if onNode == "" {
						onNode = "\x00"
					}
					in.backends, in.nodes = backends(s, p.GetTargetPort(), proto, onNode, m.gone)
				}
				out[proxyKey(m.cfg.IP, p.GetPublishedPort(), proto)] = in
			}
			if vip := s.GetVirtualAddr(); vip != "" {
				w.reusePort = true
				out[proxyKey(vip, p.GetTargetPort(), proto)] = w
				if twin := containerVIP(m.cfg.ContainerResolver, vip); twin != "" {
					w.localIP = twin
					out[proxyKey(twin, p.GetTargetPort(), proto)] = w
				}
			}
		}
	}
	return out
}

// retryInterval is how often addresses the mesh could not open (a port
// another program holds, a twin address not added) are tried again while
// no update comes.
const retryInterval = 3 * time.Second

// reconcile opens, updates and closes listeners to match the table, and
// schedules a retry while some address could not be opened. m.mu is held.
func (m *Mesh) reconcile() {
	want := m.desired()
	for addr, l := range m.listeners {
		if w, ok := want[addr]; !ok || w.service != l.serviceName() {
			l.close()
			delete(m.listeners, addr)
			m.log.Info("mesh stopped proxying", "addr", addr, "service", l.serviceName())
		}
	}
	for addr := range m.errs {
		if _, ok := want[addr]; !ok {
			delete(m.errs, addr)
		}
	}
	for addr, w := range want {
		l, ok := m.listeners[addr]
		if !ok {
			if w.localIP != "" && !m.ctrAddrs[w.localIP] {
				if err := addLocalAddr(context.Background(), w.localIP); err != nil {
					if prev, seen := m.errs[addr]; !seen || prev.Error() != err.Error() {
						m.log.Error("mesh cannot serve containers", "addr", addr, "service", w.service, "err", err)
					}
					m.errs[addr] = err
					continue
				}
				m.ctrAddrs[w.localIP] = true
			}
			var err error
			l, err = m.open(addr, w)
			if err != nil {
				err = bindError(addr, w.service, err)
				if prev, seen := m.errs[addr]; !seen || prev.Error() != err.Error() {
					m.log.Error("mesh cannot proxy", "addr", addr, "service", w.service, "err", err)
				}
				m.errs[addr] = err
				continue
			}
			delete(m.errs, addr)
			m.listeners[addr] = l
			m.log.Info("mesh proxying", "addr", addr, "service", w.service, "endpoints", len(w.backends))
		}
		l.setBackends(w.backends)
		l.setProxyProtocol(w.proxyProto)
	}
	m.syncKernel(want)
	// A twin address whose service is gone is removed from the host (every
	// node of the cluster sees the service go).
	for ip := range m.ctrAddrs {
		still := false
		for _, w := range want {
			still = still || w.localIP == ip
		}
		if !still {
			delLocalAddr(context.Background(), ip)
			delete(m.ctrAddrs, ip)
		}
	}
	if (len(m.errs) > 0 || (m.kern != nil && m.kern.dirty)) && m.retry == nil {
		m.retry = time.AfterFunc(retryInterval, m.retryFailed)
	}
}

// syncKernel hands the kernel datapath the TCP addresses it forwards:
// every proxied TCP address whose listener is bound (so a port another
// program holds is never redirected), except container twins (the kernel
// would have to route containers' packets to loopback) and ports asking
// for the PROXY protocol (only the proxy can add it). One without
// backends is parked in the table (the proxy serves it) so that its next
// backend goes in without declaring anything. m.mu is held.
func (m *Mesh) syncKernel(want map[string]wanted) {
	if m.kern == nil {
		return
	}
	fronts := map[string]kernelFront{}
	probed := map[string]bool{}
	for key, w := range want {
		if _, bound := m.listeners[key]; !bound || strings.HasSuffix(key, "/udp") || w.localIP != "" || w.proxyProto {
			continue
		}
		// Backends the probes found dead or silent are left out, unless
		// that would leave none.
		var live []string
		remote := map[string]bool{}
		for _, b := range w.backends {
			probed[b] = true
			if !m.probe.isDown(b) {
				live = append(live, b)
			}
			remote[b] = w.nodes[b] != m.cfg.NodeID
		}
		if len(live) == 0 {
			live = w.backends
		}
		if f, ok := kernelFrontend(key, live, remote); ok {
			fronts[key] = f
		}
	}
	m.probe.set(probed)
	_ = m.kern.sync(fronts) // a failure is logged, and retried
}

// probeChanged reconciles after a probed backend went down or came back.
func (m *Mesh) probeChanged() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed {
		m.reconcile()
	}
}

// retryFailed reconciles again, for the addresses that could not be opened.
func (m *Mesh) retryFailed() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.retry = nil
	if !m.closed {
		m.reconcile()
	}
}

// open starts proxying one address.
func (m *Mesh) open(key string, w wanted) (proxy, error) {
	addr, isUDP := strings.CutSuffix(key, "/udp")
	if isUDP {
		conn, err := listenUDP(context.Background(), addr, w.reusePort)
		if err != nil {
			return nil, err
		}
		return newUDPProxy(conn, key, w.service, m.log), nil
	}
	ln, err := listen(context.Background(), addr, w.reusePort)
	if err != nil {
		return nil, err
	}
	l := newListener(ln, key, w.service, m.log, m.cfg.DialTimeout)
	l.wg.Add(1)
	go l.serve()
	return l, nil
}

// lookup returns the resolver's answer function; mapVIP, when set, turns
// a service's virtual IP into the address the asker can reach.
func (m *Mesh) lookup(mapVIP func(string) string) lookupFunc {
	return func(name string) (ips []net.IP, known bool) {
		tab := *m.tab.Load()
		if rest, ok := cutPrefixFold(name, "tasks."); ok {
			if s := tab.byName(rest); s != nil {
				return taskIPs(s), true
			}
		}
		s := tab.byName(name)
		if s == nil {
			return nil, false
		}
		vip := s.GetVirtualAddr()
		if mapVIP != nil {
			vip = mapVIP(vip)
		}
		if ip := net.ParseIP(vip).To4(); ip != nil {
			return []net.IP{ip}, true
		}
		return taskIPs(s), true
	}
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !equalFold(s[:len(prefix)], prefix) {
		return "", false
	}
	return s[len(prefix):], true
}

// Close stops every listener, the retries and the resolvers.
func (m *Mesh) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	if m.retry != nil {
		m.retry.Stop()
		m.retry = nil
	}
	ls := m.listeners
	m.listeners = map[string]proxy{}
	resolvers := []*resolver{m.dns, m.ctrDNS}
	m.mu.Unlock()
	if m.kern != nil {
		if err := m.kern.remove(context.Background()); err != nil {
			m.log.Warn("mesh: remove the nftables table", "table", m.kern.table, "err", err)
		}
	}
	for _, l := range ls {
		l.close()
	}
	if m.probe != nil {
		m.probe.close()
	}
	// Container twin addresses stay on lo: another node of the cluster on
	// this host may serve them, and a restarted node reuses them.
	var errs []error
	for _, r := range resolvers {
		if r != nil {
			if err := r.close(); err != nil {
				errs = append(errs, fmt.Errorf("close resolver: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// DNSPortOffset places a node's resolver beside its other ports: API port
// P, Raft P+1, gossip P+2, resolver P+3 (UDP and TCP).
const DNSPortOffset = 3
