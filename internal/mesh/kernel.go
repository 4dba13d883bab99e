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

	"github.com/shoal-cluster/shoal/internal/datadir"
)

// The kernel datapath. With root and the nft command, a node's mesh
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
// change is one `nft -f -` transaction that updates the maps (and
// replaces a frontend's single rule when its backend count changes), so
// a connection never sees a half-applied change. The proxy's listeners
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

// kernelFront is one frontend address the kernel forwards.
type kernelFront struct {
	ip       string
	port     int
	backends []string        // host:port, in map index order
	remote   map[string]bool // backends on other nodes (SNAT)
}

func (f kernelFront) sameBackends(g kernelFront) bool {
	if len(f.backends) != len(g.backends) {
		return false
	}
	for i := range f.backends {
		if f.backends[i] != g.backends[i] {
			return false
		}
	}
	return true
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
// frontends.
type kernel struct {
	nft    string
	table  string // bare name, family ip
	snatIP string
	log    *slog.Logger

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
	return k, DatapathInfo{Name: DatapathKernel, Reason: "root and nftables available", Table: "ip " + k.table}
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
		script := k.diffScript(want)
		if script == "" {
			return nil
		}
		if err = runNFT(context.Background(), k.nft, script); err != nil {
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
		k.addFront(&b, key, want[key])
	}
	return b.String()
}

func (k *kernel) addFront(b *strings.Builder, key string, f kernelFront) {
	t, n := "ip "+k.table, frontName(key)
	fmt.Fprintf(b, "add map %s be_%s { typeof numgen inc mod 1 : ip daddr . tcp dport; }\n", t, n)
	fmt.Fprintf(b, "add chain %s fe_%s\n", t, n)
	fmt.Fprintf(b, "add rule %s fe_%s meta l4proto tcp dnat ip to numgen inc mod %d map @be_%s\n", t, n, len(f.backends), n)
	k.addBackends(b, key, f)
	fmt.Fprintf(b, "add element %s frontends { %s . %d : goto fe_%s }\n", t, f.ip, f.port, n)
	if m := f.masqElems(); len(m) > 0 {
		fmt.Fprintf(b, "add element %s masq { %s }\n", t, strings.Join(m, ", "))
	}
}

func (k *kernel) addBackends(b *strings.Builder, key string, f kernelFront) {
	elems := make([]string, len(f.backends))
	for i, be := range f.backends {
		host, port, _ := net.SplitHostPort(be)
		elems[i] = fmt.Sprintf("%d : %s . %s", i, host, port)
	}
	fmt.Fprintf(b, "add element ip %s be_%s { %s }\n", k.table, frontName(key), strings.Join(elems, ", "))
}

func (k *kernel) removeFront(b *strings.Builder, key string, f kernelFront) {
	t, n := "ip "+k.table, frontName(key)
	fmt.Fprintf(b, "delete element %s frontends { %s . %d }\n", t, f.ip, f.port)
	if m := f.masqElems(); len(m) > 0 {
		fmt.Fprintf(b, "delete element %s masq { %s }\n", t, strings.Join(m, ", "))
	}
	fmt.Fprintf(b, "flush chain %s fe_%s\ndelete chain %s fe_%s\ndelete map %s be_%s\n", t, n, t, n, t, n)
}

func (k *kernel) diffScript(want map[string]kernelFront) string {
	var b strings.Builder
	t := "ip " + k.table
	for _, key := range sortedKeys(k.applied) {
		if _, ok := want[key]; !ok {
			k.removeFront(&b, key, k.applied[key])
		}
	}
	for _, key := range sortedKeys(want) {
		f := want[key]
		old, ok := k.applied[key]
		switch {
		case !ok:
			k.addFront(&b, key, f)
			continue
		case old.sameBackends(f) && equalStrings(old.masqElems(), f.masqElems()):
			continue
		}
		n := frontName(key)
		if len(old.backends) != len(f.backends) {
			fmt.Fprintf(&b, "flush chain %s fe_%s\n", t, n)
			fmt.Fprintf(&b, "add rule %s fe_%s meta l4proto tcp dnat ip to numgen inc mod %d map @be_%s\n", t, n, len(f.backends), n)
		}
		if !old.sameBackends(f) {
			fmt.Fprintf(&b, "flush map %s be_%s\n", t, n)
			k.addBackends(&b, key, f)
		}
		oldM, newM := old.masqElems(), f.masqElems()
		if gone := minus(oldM, newM); len(gone) > 0 {
			fmt.Fprintf(&b, "delete element %s masq { %s }\n", t, strings.Join(gone, ", "))
		}
		if added := minus(newM, oldM); len(added) > 0 {
			fmt.Fprintf(&b, "add element %s masq { %s }\n", t, strings.Join(added, ", "))
		}
	}
	return b.String()
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
