package mesh

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/shoal-cluster/shoal/internal/datadir"
)

// The kernel datapath. With root and nftables, a node's mesh
// forwards TCP connections to published ports and virtual IPs with
// nftables rules in a table of its own (TableName), so connections are
// NATed by the kernel instead of copied twice through the proxy:
//
//	table ip shoal_<node id>
//	  map frontends   address . port : goto fe_<frontend>   (every proxied TCP address)
//	  chain prerouting, output (nat, priority -100): meta l4proto tcp ip daddr . tcp dport vmap @frontends
//	  chain fe_<frontend>: dnat ip to numgen inc mod N map @be_<frontend>
//	  map be_<frontend>    0..N-1 : backend address . port (round robin, even spread)
//	  set masq            frontend address . backend address . port, for backends on other nodes
//	  chain postrouting (nat, priority 100): ct status dnat ct original ip daddr . ip daddr . tcp dport @masq snat ip to <node IP>
//
// Conntrack keeps each connection on the backend its first packet chose.
// A backend on another node gets the connection from this node's address
// (SNAT), so its replies come back through this node to be un-NATed; a
// backend on this node sees the client's own address. Every endpoint
// change is one nftables transaction that updates the maps (and replaces
// a frontend's single rule when its backend count changes), so a
// connection never sees a half-applied change: a netlink batch, about a
// millisecond, for changes to existing frontends (a frontend that
// loses its last backend is parked, its chain and map kept empty, for
// that reason), and `nft -f -` for what declares a new frontend's map or
// rebuilds the table (running nft costs tens of milliseconds on a busy
// host; a netlink batch that deletes rules and elements commits as fast
// as one that only adds: the kernel frees what a transaction removed
// after it returns). The proxy's listeners
// stay bound on every address: they hold the ports (a port another
// program holds is never redirected), serve what the kernel does not
// (UDP, container twins, ports asking for the PROXY protocol, a frontend
// with no backend), and take over if the rules cannot be applied.

// Datapath names, for Config.Datapath and DatapathInfo.
const (
	// DatapathAuto uses the kernel when it can, else the proxy.
	DatapathAuto = "auto"
	// DatapathKernel is nftables rules.
	DatapathKernel = "kernel"
	// DatapathUserspace is the user-space proxy.
	DatapathUserspace = "userspace"
)

// DatapathInfo says which datapath a mesh uses and why.
type DatapathInfo struct {
	Name   string // DatapathKernel or DatapathUserspace
	Reason string
	Table  string // "ip shoal_<node id>" for the kernel datapath
}

// TableName is the nftables table (family ip) of a node's mesh.
func TableName(nodeID string) string {
	var b strings.Builder
	b.WriteString("shoal_")
	for _, r := range strings.ToLower(nodeID) {
		if ('a' <= r && r <= 'z') || ('0' <= r && r <= '9') {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// nftTimeout bounds one nft run.
const nftTimeout = 10 * time.Second

// runNFT feeds a script to `nft -f -` (one transaction).
func runNFT(ctx context.Context, nft, script string) error {
	ctx, cancel := context.WithTimeout(ctx, nftTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, nft, "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nft: %v: %s", err, strings.TrimSpace(out.String()))
	}
	return nil
}

// kernelFront is one frontend address the kernel forwards. A frontend
// without backends is parked: its chain and map stay, empty, and no
// element of the frontends map leads to them (the proxy serves, closing
// each connection at once), so its next backend needs no new map.
type kernelFront struct {
	ip       string
	port     int
	backends []string        // host:port, in map index order
	remote   map[string]bool // backends on other nodes (SNAT)
}

func (f kernelFront) sameBackends(g kernelFront) bool {
	return equalStrings(f.backends, g.backends)
}

// masqElems are the masq set's elements for this frontend.
func (f kernelFront) masqElems() []string {
	var out []string
	for _, b := range f.backends {
		if f.remote[b] {
			host, port, _ := net.SplitHostPort(b)
			out = append(out, f.ip+" . "+host+" . "+port)
		}
	}
	return out
}

// kernel keeps a node's nftables table in step with the mesh's TCP
// frontends. Changes go to the kernel over netlink, one batch (one
// transaction) each, without running a program: a change that only
// touches existing frontends (a backend leaving or joining, a frontend
// parked or unparked, a frontend removed) costs about a millisecond.
// What needs a new map (a new frontend, whose map is declared with
// `typeof` so that `nft list` shows it readably) and rebuilding the
// whole table go through `nft -f -`, also one transaction.
type kernel struct {
	nft     string
	netlink bool   // changes over netlink when they can; false: every change through nft
	table   string // bare name, family ip
	snatIP  string
	log     *slog.Logger

	applied map[string]kernelFront // by "ip:port", as the table holds them
	dirty   bool                   // the table's content is unknown: rebuild it whole
	lastErr error
}

// newKernel decides whether the kernel datapath can run and, if so,
// replaces any table a previous run of this node left (a crashed node's
// stale rules) with an empty one.
func newKernel(cfg Config, log *slog.Logger) (*kernel, DatapathInfo) {
	user := func(reason string) (*kernel, DatapathInfo) {
		return nil, DatapathInfo{Name: DatapathUserspace, Reason: reason}
	}
	switch cfg.Datapath {
	case DatapathUserspace:
		return user("chosen by configuration (--mesh-datapath=userspace)")
	case "", DatapathAuto, DatapathKernel:
	default:
		return user(fmt.Sprintf("unknown datapath %q; using the user-space proxy", cfg.Datapath))
	}
	if os.Geteuid() != 0 {
		return user("not root: nftables rules need root (CAP_NET_ADMIN)")
	}
	nft, err := exec.LookPath("nft")
	if err != nil {
		return user("the nft command is missing: install nftables (apt-get install nftables)")
	}
	if ip := net.ParseIP(cfg.IP).To4(); ip == nil || ip.IsUnspecified() {
		return user(fmt.Sprintf("the node's address %q is not a specific IPv4 address", cfg.IP))
	}
	if cfg.NodeID == "" {
		return user("no node ID to name the nftables table after")
	}
	k := &kernel{nft: nft, table: TableName(cfg.NodeID), snatIP: cfg.IP, log: log, applied: map[string]kernelFront{}, dirty: true}
	if err := k.sync(map[string]kernelFront{}); err != nil {
		return user(fmt.Sprintf("nftables rules could not be installed: %v", err))
	}
	reason := "root and nftables available"
	if _, err := newNetlinkConn().ListTableOfFamily(k.table, nftables.TableFamilyIPv4); err != nil {
		log.Warn("mesh: nftables over netlink does not work here; every change runs nft", "err", err)
		reason += " (changes through the nft command: netlink failed)"
	} else {
		k.netlink = true
	}
	return k, DatapathInfo{Name: DatapathKernel, Reason: reason, Table: "ip " + k.table}
}

// newNetlinkConn returns a connection that opens a netlink socket for
// each batch it sends (Flush) and holds none meanwhile.
func newNetlinkConn() *nftables.Conn {
	nl, _ := nftables.New() // only a lasting connection can fail here
	return nl
}

// frontName names a frontend's chain and map: its address and port with
// underscores.
func frontName(key string) string {
	return strings.NewReplacer(".", "_", ":", "_").Replace(key)
}

// sync makes the table hold exactly want, in one transaction: the
// differences, or the whole table when its content is unknown or applying
// the differences failed (another program changed the table, or a
// concurrent change got in the way). When that fails too the table is
// removed (the proxy serves every address meanwhile) and the next sync
// rebuilds it.
func (k *kernel) sync(want map[string]kernelFront) error {
	var err error
	if !k.dirty {
		ops := k.diff(want)
		if len(ops) == 0 {
			return nil
		}
		if err = k.apply(ops); err != nil {
			k.log.Warn("mesh: nftables update failed; rebuilding the table", "table", k.table, "err", err)
		}
	}
	if k.dirty || err != nil {
		err = runNFT(context.Background(), k.nft, k.fullScript(want))
	}
	if err != nil {
		k.lastErr = err
		k.dirty = true
		k.applied = map[string]kernelFront{}
		k.log.Error("mesh: nftables update failed; the user-space proxy serves until it succeeds", "table", k.table, "err", err)
		_ = k.remove(context.Background())
		return err
	}
	k.lastErr = nil
	k.dirty = false
	k.applied = want
	return nil
}

// apply makes one transaction of ops: over netlink, unless one of them
// declares a new frontend's map (only nft writes the map's typeof).
func (k *kernel) apply(ops []kernelOp) error {
	viaNFT := !k.netlink
	for _, op := range ops {
		viaNFT = viaNFT || op.kind == opDeclare
	}
	if viaNFT {
		var b strings.Builder
		for _, op := range ops {
			op.script(&b, k)
		}
		return runNFT(context.Background(), k.nft, b.String())
	}
	nl := newNetlinkConn()
	for _, op := range ops {
		if err := op.netlink(nl, k.table); err != nil {
			return err // nothing was sent
		}
	}
	if err := nl.Flush(); err != nil {
		return fmt.Errorf("nftables (netlink): %w", err)
	}
	return nil
}

func (k *kernel) fullScript(want map[string]kernelFront) string {
	var b strings.Builder
	t := "ip " + k.table
	// Adding then deleting makes the delete safe when no table exists;
	// both and the rebuild are one transaction.
	fmt.Fprintf(&b, "add table %s\ndelete table %s\nadd table %s\n", t, t, t)
	fmt.Fprintf(&b, "add map %s frontends { type ipv4_addr . inet_service : verdict; }\n", t)
	fmt.Fprintf(&b, "add set %s masq { type ipv4_addr . ipv4_addr . inet_service; }\n", t)
	for _, hook := range []string{"prerouting", "output"} {
		fmt.Fprintf(&b, "add chain %s %s { type nat hook %s priority -100; policy accept; }\n", t, hook, hook)
		fmt.Fprintf(&b, "add rule %s %s meta l4proto tcp ip daddr . tcp dport vmap @frontends\n", t, hook)
	}
	fmt.Fprintf(&b, "add chain %s postrouting { type nat hook postrouting priority 100; policy accept; }\n", t)
	fmt.Fprintf(&b, "add rule %s postrouting ct status dnat ct original ip daddr . ip daddr . tcp dport @masq snat ip to %s\n", t, k.snatIP)
	for _, key := range sortedKeys(want) {
		for _, op := range addFrontOps(key, want[key]) {
			op.script(&b, k)
		}
	}
	return b.String()
}

// addFrontOps declares a frontend and fills it.
func addFrontOps(key string, f kernelFront) []kernelOp {
	ops := []kernelOp{{kind: opDeclare, key: key}}
	if len(f.backends) == 0 {
		return ops // parked
	}
	ops = append(ops,
		kernelOp{kind: opRule, key: key, n: len(f.backends)},
		kernelOp{kind: opBackends, key: key, front: f},
		kernelOp{kind: opFrontAdd, key: key, front: f})
	if m := f.masqElems(); len(m) > 0 {
		ops = append(ops, kernelOp{kind: opMasqAdd, elems: m})
	}
	return ops
}

// diff is what takes the table from k.applied to want. Within it, a
// frontends element goes before its chain and comes after it, and a
// frontend's rule and map change together.
func (k *kernel) diff(want map[string]kernelFront) []kernelOp {
	var ops []kernelOp
	for _, key := range sortedKeys(k.applied) {
		old := k.applied[key]
		if _, ok := want[key]; ok {
			continue
		}
		if len(old.backends) > 0 {
			ops = append(ops, kernelOp{kind: opFrontDel, key: key, front: old})
		}
		if m := old.masqElems(); len(m) > 0 {
			ops = append(ops, kernelOp{kind: opMasqDel, elems: m})
		}
		ops = append(ops, kernelOp{kind: opUndeclare, key: key})
	}
	for _, key := range sortedKeys(want) {
		f := want[key]
		old, ok := k.applied[key]
		if !ok {
			ops = append(ops, addFrontOps(key, f)...)
			continue
		}
		if old.sameBackends(f) && equalStrings(old.masqElems(), f.masqElems()) {
			continue
		}
		if len(f.backends) == 0 {
			ops = append(ops, kernelOp{kind: opFrontDel, key: key, front: old})
		}
		if len(old.backends) != len(f.backends) {
			ops = append(ops, kernelOp{kind: opRule, key: key, n: len(f.backends)})
		}
		if !old.sameBackends(f) {
			ops = append(ops, kernelOp{kind: opBackends, key: key, front: f})
		}
		oldM, newM := old.masqElems(), f.masqElems()
		if gone := minus(oldM, newM); len(gone) > 0 {
			ops = append(ops, kernelOp{kind: opMasqDel, elems: gone})
		}
		if added := minus(newM, oldM); len(added) > 0 {
			ops = append(ops, kernelOp{kind: opMasqAdd, elems: added})
		}
		if len(old.backends) == 0 && len(f.backends) > 0 {
			ops = append(ops, kernelOp{kind: opFrontAdd, key: key, front: f})
		}
	}
	return ops
}

// remove deletes the table.
func (k *kernel) remove(ctx context.Context) error {
	return RemoveTable(ctx, k.table)
}

// RemoveTable deletes one mesh table (a bare name from TableName), if it
// exists.
func RemoveTable(ctx context.Context, table string) error {
	nft, err := exec.LookPath("nft")
	if err != nil {
		return nil // no nftables, no table
	}
	t := "ip " + table
	return runNFT(ctx, nft, fmt.Sprintf("add table %s\ndelete table %s\n", t, t))
}

// RemoveNodeTable removes the mesh table of the node whose data dir is
// dataDir (nothing when it holds no node): for harnesses that killed the
// nodes they ran. A node removes its own table when it stops.
func RemoveNodeTable(ctx context.Context, dataDir string) {
	if id, err := datadir.Load(dataDir); err == nil && os.Geteuid() == 0 {
		_ = RemoveTable(ctx, TableName(id.NodeID))
	}
}

func sortedKeys(m map[string]kernelFront) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// minus is a without the elements of b.
func minus(a, b []string) []string {
	in := make(map[string]bool, len(b))
	for _, s := range b {
		in[s] = true
	}
	var out []string
	for _, s := range a {
		if !in[s] {
			out = append(out, s)
		}
	}
	return out
}

// kernelFrontend builds a frontend from a proxied "ip:port".
func kernelFrontend(key string, backends []string, remote map[string]bool) (kernelFront, bool) {
	host, p, err := net.SplitHostPort(key)
	if err != nil {
		return kernelFront{}, false
	}
	port, err := strconv.Atoi(p)
	if err != nil || net.ParseIP(host).To4() == nil {
		return kernelFront{}, false
	}
	for _, b := range backends {
		if h, _, err := net.SplitHostPort(b); err != nil || net.ParseIP(h).To4() == nil {
			return kernelFront{}, false // IPv4 only
		}
	}
	return kernelFront{ip: host, port: port, backends: backends, remote: remote}, true
}
