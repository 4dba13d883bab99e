// Package tasknet gives each task of a node its own network namespace with
// its own IP address on a node bridge.
//
// A node has one Network: a Linux bridge (default name "shoal" and the
// subnet's address in hex, e.g. shoal0ac90300 for 10.201.3.0/24) holding
// the gateway address, the first host of the node's subnet, which the
// managers hand out (unique in the cluster). Attach makes a task's
// namespace: a veth pair whose outer end is a port of the bridge and whose
// inner end is eth0 with the task's address, the loopback up and a default
// route through the gateway. The namespace is bind-mounted on a file under
// StateDir/netns, which the runtime hands to runc as the task's network
// namespace path; it lives until Detach, independent of the task's
// processes and of the agent.
//
// Everything the kernel needs besides links and routes is in one nftables
// table of the network's own, ip shoal_tasknet_<bridge>: task egress that
// leaves the subnet is masqueraded (except to other nodes' task subnets,
// so tasks see each other's real addresses), queries to the gateway's
// port 53 are sent to the node's resolver when it does not listen on port
// 53 of a non-loopback address, and connections from the node's loopback
// addresses into the bridge (the routing mesh on a loopback address) are
// masqueraded to the gateway. Where the host's iptables FORWARD chain drops
// by default (Docker sets it so), two accept rules for the bridge are
// inserted there, and removed with the network.
//
// Allocations are kept in StateDir/state.json, so an agent restart keeps
// every task's address, and New adopts the bridge and table it finds.
package tasknet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
)

// Config configures a node's task network.
type Config struct {
	// Bridge is the bridge's name (at most 15 bytes); default
	// BridgeName(Subnet), unique per subnet, so several nodes sharing one
	// kernel (in-process clusters) never share a bridge.
	Bridge string
	// Subnet is the node's task subnet (IPv4, at most /30). Its first host
	// is the gateway, on the bridge; tasks get the others.
	Subnet netip.Prefix
	// DNS is the node's service resolver, which tasks' resolv.conf points
	// at: directly when it listens on port 53 of a non-loopback address
	// (reached through the gateway), else through the gateway's port 53,
	// which is DNATed to it. The zero value leaves ResolvConf empty.
	DNS netip.AddrPort
	// StateDir holds the allocations (state.json) and the tasks' namespace
	// files (netns/<task>).
	StateDir string
	// MTU of the bridge and the veths (default: the MTU of the interface
	// holding the default route, else 1500).
	MTU int
	Log *slog.Logger
}

// Attachment is a task's place on the node's network.
type Attachment struct {
	// NetNSPath is the task's network namespace (a bind-mounted nsfs
	// file): the path to give runc as the network namespace.
	NetNSPath string
	// IP is the task's address, Prefix its subnet (IP/bits).
	IP     netip.Addr
	Prefix netip.Prefix
	// Gateway is the bridge's address, the task's default route.
	Gateway netip.Addr
	// ResolvConf is the content of the task's /etc/resolv.conf (empty
	// without a Config.DNS).
	ResolvConf []byte
	// Hosts is the content of the task's /etc/hosts: localhost and the
	// task's address under the task ID's first 12 characters.
	Hosts []byte
}

// HostsWith is the task's /etc/hosts with its address under the given
// names (e.g. the container's hostname) instead of the task ID.
func (a Attachment) HostsWith(names ...string) []byte {
	return hostsFile(a.IP, names)
}

// Network is a node's task network.
type Network struct {
	cfg     Config
	log     *slog.Logger
	gateway netip.Addr
	table   string // bare nftables table name
	nsDir   string

	// taskLocks serialise the plumbing of one task (striped by task ID).
	taskLocks [32]sync.Mutex

	mu     sync.Mutex // guards state and closed
	state  *state
	closed bool
}

// maxIfName is the longest interface name Linux takes.
const maxIfName = 15

// BridgeName is the default bridge name of a subnet: "shoal" and the
// subnet's address in hex.
func BridgeName(subnet netip.Prefix) string {
	a := subnet.Masked().Addr().As4()
	return "shoal" + hex.EncodeToString(a[:])
}

// TableName is the nftables table (family ip) of a bridge's network.
func TableName(bridge string) string {
	var b strings.Builder
	b.WriteString("shoal_tasknet_")
	for _, r := range strings.ToLower(bridge) {
		if ('a' <= r && r <= 'z') || ('0' <= r && r <= '9') || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

var validIfName = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

// validTaskID keeps task IDs usable as file names.
var validTaskID = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)

func (c *Config) check() error {
	if !c.Subnet.IsValid() || !c.Subnet.Addr().Is4() {
		return fmt.Errorf("task subnet %q is not an IPv4 prefix: give one such as 10.201.3.0/24", c.Subnet)
	}
	c.Subnet = c.Subnet.Masked()
	if c.Subnet.Bits() > 30 {
		return fmt.Errorf("task subnet %s is too small: it needs room for a gateway and tasks (at most /30)", c.Subnet)
	}
	if c.StateDir == "" {
		return errors.New("tasknet: a state directory is required")
	}
	if c.Bridge == "" {
		c.Bridge = BridgeName(c.Subnet)
	}
	if len(c.Bridge) > maxIfName || !validIfName.MatchString(c.Bridge) || c.Bridge == "." || c.Bridge == ".." {
		return fmt.Errorf("bridge name %q is not a valid interface name (letters, digits, _.-, at most %d bytes)", c.Bridge, maxIfName)
	}
	if c.DNS.IsValid() && !c.DNS.Addr().Is4() {
		return fmt.Errorf("resolver %s is not an IPv4 address and port", c.DNS)
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return nil
}

// Gateway is the first host of a subnet, the bridge's address.
func Gateway(subnet netip.Prefix) netip.Addr {
	return subnet.Masked().Addr().Next()
}

// New creates the node's bridge with the gateway address, or adopts the
// one a previous run left, enables forwarding and installs the network's
// nftables table; the allocations in StateDir are kept. Calling it again
// with the same configuration (an agent restart) changes nothing else.
func New(ctx context.Context, cfg Config) (*Network, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("task networks need root (CAP_NET_ADMIN and CAP_SYS_ADMIN): run the agent as root")
	}
	n := &Network{
		cfg:     cfg,
		log:     cfg.Log.With("component", "tasknet", "bridge", cfg.Bridge),
		gateway: Gateway(cfg.Subnet),
		table:   TableName(cfg.Bridge),
		nsDir:   filepath.Join(cfg.StateDir, "netns"),
	}
	if err := os.MkdirAll(n.nsDir, 0o755); err != nil {
		return nil, fmt.Errorf("tasknet: create %s: %w", n.nsDir, err)
	}
	st, err := loadState(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	if st.Subnet.IsValid() && st.Subnet != cfg.Subnet {
		if len(st.Tasks) > 0 {
			return nil, fmt.Errorf("tasknet: %d tasks are attached to subnet %s, not %s: detach them (stop the tasks) or remove the old network first", len(st.Tasks), st.Subnet, cfg.Subnet)
		}
		// The node's subnet changed while no task was attached: remove the
		// old bridge and table first.
		if err := destroyKernelState(ctx, st.Bridge, st.Routes, n.log); err != nil {
			return nil, err
		}
		st = &state{}
	}
	if st.Bridge != "" && st.Bridge != cfg.Bridge {
		if len(st.Tasks) > 0 {
			return nil, fmt.Errorf("tasknet: %d tasks are attached to bridge %s, not %s: keep the bridge name or stop the tasks first", len(st.Tasks), st.Bridge, cfg.Bridge)
		}
		if err := destroyKernelState(ctx, st.Bridge, st.Routes, n.log); err != nil {
			return nil, err
		}
		st.Routes = nil
	}
	st.Subnet, st.Bridge = cfg.Subnet, cfg.Bridge
	if st.Tasks == nil {
		st.Tasks = map[string]netip.Addr{}
	}
	if st.Routes == nil {
		st.Routes = map[netip.Prefix]netip.Addr{}
	}
	n.state = st
	if n.cfg.MTU <= 0 {
		n.cfg.MTU = defaultMTU()
	}
	if err := n.setupBridge(); err != nil {
		return nil, err
	}
	if err := n.applyRules(ctx); err != nil {
		return nil, err
	}
	if err := n.state.save(cfg.StateDir); err != nil {
		return nil, err
	}
	n.log.Info("task network ready", "subnet", cfg.Subnet, "gateway", n.gateway, "table", "ip "+n.table, "tasks", len(st.Tasks))
	return n, nil
}

// Subnet is the network's subnet.
func (n *Network) Subnet() netip.Prefix { return n.cfg.Subnet }

// Bridge is the bridge's name.
func (n *Network) Bridge() string { return n.cfg.Bridge }

// Gateway is the bridge's address.
func (n *Network) Gateway() netip.Addr { return n.gateway }

// Table is the network's nftables table, "ip shoal_tasknet_<bridge>".
func (n *Network) Table() string { return "ip " + n.table }

// Attached lists the tasks that have an address, with it.
func (n *Network) Attached() map[string]netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(map[string]netip.Addr, len(n.state.Tasks))
	for id, ip := range n.state.Tasks {
		out[id] = ip
	}
	return out
}

// NetNSPath is where a task's namespace file is (whether or not it is
// attached).
func (n *Network) NetNSPath(taskID string) string {
	return filepath.Join(n.nsDir, taskID)
}

// Attach gives a task its namespace, address, loopback and default route,
// or returns the ones it has: attaching an attached task (also after an
// agent restart) returns the same attachment, and repairs what is missing
// of it (its namespace after a reboot, its veth).
func (n *Network) Attach(ctx context.Context, taskID string) (Attachment, error) {
	if !validTaskID.MatchString(taskID) {
		return Attachment{}, fmt.Errorf("tasknet: task ID %q is not usable as a file name (letters, digits, _.-)", taskID)
	}
	// The task's own lock covers its links and namespace; n.mu only the
	// allocations, so tasks attach in parallel.
	unlock := n.lockTask(taskID)
	defer unlock()
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return Attachment{}, errors.New("tasknet: the network is closed")
	}
	ip, had := n.state.Tasks[taskID]
	if !had {
		var err error
		ip, err = n.state.allocate(n.cfg.Subnet)
		if err == nil {
			n.state.Tasks[taskID] = ip
			if err = n.state.save(n.cfg.StateDir); err != nil {
				delete(n.state.Tasks, taskID)
			}
		}
		if err != nil {
			n.mu.Unlock()
			return Attachment{}, err
		}
	}
	n.mu.Unlock()
	att := n.attachment(taskID, ip)
	if err := n.plumb(ctx, taskID, ip); err != nil {
		if !had {
			_ = n.unplumb(taskID)
			n.mu.Lock()
			delete(n.state.Tasks, taskID)
			_ = n.state.save(n.cfg.StateDir)
			n.mu.Unlock()
		}
		return Attachment{}, fmt.Errorf("tasknet: attach task %s: %w", taskID, err)
	}
	if !had {
		n.log.Info("task attached", "task", taskID, "ip", ip)
	}
	return att, nil
}

// lockTask takes the lock of a task's links and namespace (one of
// taskLocks, by the ID's hash) and returns its release.
func (n *Network) lockTask(taskID string) func() {
	h := fnv.New32a()
	_, _ = h.Write([]byte(taskID))
	mu := &n.taskLocks[h.Sum32()%uint32(len(n.taskLocks))]
	mu.Lock()
	return mu.Unlock
}

func (n *Network) attachment(taskID string, ip netip.Addr) Attachment {
	name := taskID
	if len(name) > 12 {
		name = name[:12]
	}
	return Attachment{
		NetNSPath:  n.NetNSPath(taskID),
		IP:         ip,
		Prefix:     netip.PrefixFrom(ip, n.cfg.Subnet.Bits()),
		Gateway:    n.gateway,
		ResolvConf: n.resolvConf(),
		Hosts:      hostsFile(ip, []string{name}),
	}
}

// resolverAddr is the address tasks send queries to, and whether the
// gateway's port 53 must be DNATed to the resolver.
func (n *Network) resolverAddr() (netip.Addr, bool) {
	d := n.cfg.DNS
	if !d.IsValid() {
		return netip.Addr{}, false
	}
	if d.Port() == 53 && !d.Addr().IsLoopback() && !d.Addr().IsUnspecified() {
		return d.Addr(), false
	}
	return n.gateway, true
}

func (n *Network) resolvConf() []byte {
	ns, _ := n.resolverAddr()
	if !ns.IsValid() {
		return nil
	}
	return []byte("nameserver " + ns.String() + "\noptions ndots:0\n")
}

func hostsFile(ip netip.Addr, names []string) []byte {
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	if len(names) > 0 {
		b.WriteString(ip.String() + "\t" + strings.Join(names, " ") + "\n")
	}
	return []byte(b.String())
}

// Detach removes a task's namespace and veth and frees its address. A
// task that is not attached is no error.
func (n *Network) Detach(ctx context.Context, taskID string) error {
	if !validTaskID.MatchString(taskID) {
		return fmt.Errorf("tasknet: task ID %q is not usable as a file name (letters, digits, _.-)", taskID)
	}
	unlock := n.lockTask(taskID)
	defer unlock()
	if err := n.unplumb(taskID); err != nil {
		return fmt.Errorf("tasknet: detach task %s: %w", taskID, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	ip, ok := n.state.Tasks[taskID]
	if !ok {
		return nil
	}
	delete(n.state.Tasks, taskID)
	if err := n.state.save(n.cfg.StateDir); err != nil {
		return err
	}
	n.log.Info("task detached", "task", taskID, "ip", ip)
	return nil
}

// Close lets go of the network, leaving the bridge, rules and tasks'
// namespaces in place for the next agent (New adopts them).
func (n *Network) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closed = true
	return nil
}

// Destroy removes every task's namespace, the bridge, the peer routes, the
// nftables table and the firewall accept rules, and the state: for a node
// leaving the cluster.
func (n *Network) Destroy(ctx context.Context) error {
	for i := range n.taskLocks {
		n.taskLocks[i].Lock()
		defer n.taskLocks[i].Unlock()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closed = true
	var errs []error
	ids := make([]string, 0, len(n.state.Tasks))
	for id := range n.state.Tasks {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if err := n.unplumb(id); err != nil {
			errs = append(errs, err)
		}
	}
	// Namespace files no allocation claims (an attach cut short).
	if ents, err := os.ReadDir(n.nsDir); err == nil {
		for _, e := range ents {
			if err := unmountNetNS(filepath.Join(n.nsDir, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := destroyKernelState(ctx, n.cfg.Bridge, n.state.Routes, n.log); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(n.cfg.StateDir); err != nil {
			errs = append(errs, fmt.Errorf("tasknet: remove %s: %w", n.cfg.StateDir, err))
		}
		n.state = &state{Tasks: map[string]netip.Addr{}, Routes: map[netip.Prefix]netip.Addr{}}
		n.log.Info("task network removed", "subnet", n.cfg.Subnet)
	}
	return errors.Join(errs...)
}

// DestroyState removes the network a state directory describes (its
// tasks' namespaces, bridge, routes, rules and the directory), without
// knowing its configuration: for a node that left the cluster while its
// agent was down, and for harnesses cleaning up. A directory that holds no
// network is no error.
func DestroyState(ctx context.Context, stateDir string, log *slog.Logger) error {
	st, err := loadState(stateDir)
	if err != nil {
		return err
	}
	if log == nil {
		log = slog.Default()
	}
	if !st.Subnet.IsValid() {
		return os.RemoveAll(stateDir)
	}
	n := &Network{cfg: Config{Bridge: st.Bridge, Subnet: st.Subnet, StateDir: stateDir, Log: log}, log: log,
		gateway: Gateway(st.Subnet), table: TableName(st.Bridge), nsDir: filepath.Join(stateDir, "netns"), state: st}
	if n.state.Tasks == nil {
		n.state.Tasks = map[string]netip.Addr{}
	}
	return n.Destroy(ctx)
}

// StateDirOf is where the agent of the node whose data dir is dataDir
// keeps its task network.
func StateDirOf(dataDir string) string {
	return filepath.Join(dataDir, "worker", "tasknet")
}

// RemoveNodeNetwork removes the task network of the node whose data dir
// is dataDir, if it has one: for harnesses that stopped or killed the
// nodes they ran (a stopping agent leaves its network for the next one).
func RemoveNodeNetwork(ctx context.Context, dataDir string) {
	_ = DestroyState(ctx, StateDirOf(dataDir), slog.New(slog.DiscardHandler))
}

// vethNames are a task's veth ends on the host (a bridge port) and, until
// it is moved and renamed eth0, in the task's namespace.
func vethNames(bridge, taskID string) (host, peer string) {
	sum := sha256.Sum256([]byte(bridge + "/" + taskID))
	h := hex.EncodeToString(sum[:])[:12]
	return "st" + h, "sp" + h
}
