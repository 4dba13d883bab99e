package tasknet

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// requireRoot skips a test that needs root, nft and iptables-free
// namespaces when they are missing, unless SHOAL_REQUIRE_DOCKER is set
// (CI), where it fails instead.
func requireRoot(t *testing.T) {
	t.Helper()
	var why string
	switch {
	case os.Geteuid() != 0:
		why = "not root"
	default:
		if _, err := exec.LookPath("nft"); err != nil {
			why = "no nft command"
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("SHOAL_REQUIRE_DOCKER") != "" {
		t.Fatalf("task networks need root and nftables: %s", why)
	}
	t.Skipf("task networks need root and nftables: %s", why)
}

// testSubnet is a random /24 in 10.250.0.0/16, so that test runs sharing
// a kernel rarely meet; the index picks one of consecutive ones.
var testBase = rand.IntN(200)

func testSubnet(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, byte(testBase + i), 0}), 24)
}

// newTestNetwork makes a network on subnet i and destroys it at the end.
func newTestNetwork(t *testing.T, i int, dns netip.AddrPort) (*Network, Config) {
	t.Helper()
	return newTestNetworkOn(t, testSubnet(i), dns)
}

func newTestNetworkOn(t *testing.T, subnet netip.Prefix, dns netip.AddrPort) (*Network, Config) {
	t.Helper()
	requireRoot(t)
	cfg := Config{Subnet: subnet, DNS: dns, StateDir: filepath.Join(t.TempDir(), "tasknet"),
		Log: slog.New(slog.DiscardHandler)}
	n, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = DestroyState(context.Background(), cfg.StateDir, slog.New(slog.DiscardHandler)) })
	cfg.Bridge = n.Bridge() // as New derived it
	return n, cfg
}

// inTask runs a command in a task's namespace (nsenter), returning its
// combined output.
func inTask(t *testing.T, a Attachment, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + a.NetNSPath, "--"}, args...)...).CombinedOutput()
	return string(out), err
}

func mustInTask(t *testing.T, a Attachment, args ...string) string {
	t.Helper()
	out, err := inTask(t, a, args...)
	if err != nil {
		t.Fatalf("%s in %s: %v: %s", strings.Join(args, " "), a.NetNSPath, err, out)
	}
	return out
}

// TestAttachGivesAddressLoopbackAndRoute checks a task's namespace: eth0
// with its address, lo up, the default route through the gateway, the
// bridge on the host with the gateway address, and resolv.conf/hosts.
func TestAttachGivesAddressLoopbackAndRoute(t *testing.T) {
	n, cfg := newTestNetwork(t, 0, netip.MustParseAddrPort("127.0.0.1:5353"))
	ctx := context.Background()
	a, err := n.Attach(ctx, "task1")
	if err != nil {
		t.Fatal(err)
	}
	gw := Gateway(cfg.Subnet)
	if a.Gateway != gw || !cfg.Subnet.Contains(a.IP) || a.IP == gw || a.Prefix.Bits() != 24 {
		t.Fatalf("attachment %+v in %s", a, cfg.Subnet)
	}
	if !isNetNS(a.NetNSPath) {
		t.Fatalf("%s is not a namespace file", a.NetNSPath)
	}
	if out := mustInTask(t, a, "ip", "-4", "-o", "addr", "show", "dev", "eth0"); !strings.Contains(out, a.Prefix.String()) {
		t.Fatalf("eth0: %s, want %s", out, a.Prefix)
	}
	if out := mustInTask(t, a, "ip", "-o", "link", "show", "dev", "lo"); !strings.Contains(out, "UP") {
		t.Fatalf("lo is not up: %s", out)
	}
	if out := mustInTask(t, a, "ip", "-4", "route", "show", "default"); !strings.Contains(out, "default via "+gw.String()+" dev eth0") {
		t.Fatalf("default route: %q", out)
	}
	// The task reaches its own loopback, and the host through the gateway.
	echo(t, a, "127.0.0.1")
	hostLn := listenOn(t, "", gw.String()+":0", "host")
	if got, err := dialIn(a.NetNSPath, hostLn); err != nil || got != "host" {
		t.Fatalf("task -> host %s: %q, %v", hostLn, got, err)
	}
	br, err := netlink.LinkByName(BridgeName(cfg.Subnet))
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := netlink.AddrList(br, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != netip.PrefixFrom(gw, 24).String() {
		t.Fatalf("bridge addresses %v, want %s/24", addrs, gw)
	}
	if got, want := string(a.ResolvConf), "nameserver "+gw.String()+"\noptions ndots:0\n"; got != want {
		t.Fatalf("resolv.conf %q, want %q", got, want)
	}
	if !strings.Contains(string(a.Hosts), a.IP.String()+"\ttask1\n") || !strings.Contains(string(a.HostsWith("web.1")), "\tweb.1\n") {
		t.Fatalf("hosts %q", a.Hosts)
	}
	// Attaching again returns the same.
	again, err := n.Attach(ctx, "task1")
	if err != nil {
		t.Fatal(err)
	}
	if again.IP != a.IP || again.NetNSPath != a.NetNSPath {
		t.Fatalf("second attach %+v, first %+v", again, a)
	}
}

// TestBadInput checks configurations and task IDs that are refused, with
// nothing made.
func TestBadInput(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no subnet", Config{StateDir: dir}, "not an IPv4 prefix"},
		{"ipv6", Config{Subnet: netip.MustParsePrefix("fd00::/64"), StateDir: dir}, "not an IPv4 prefix"},
		{"too small", Config{Subnet: netip.MustParsePrefix("10.250.0.0/31"), StateDir: dir}, "too small"},
		{"no state dir", Config{Subnet: testSubnet(0)}, "state directory"},
		{"long bridge", Config{Subnet: testSubnet(0), StateDir: dir, Bridge: "averyveryverylongname"}, "not a valid interface name"},
		{"lo as bridge", Config{Subnet: testSubnet(0), StateDir: dir, Bridge: "lo"}, "not a bridge"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(context.Background(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
	n, _ := newTestNetwork(t, 1, netip.AddrPort{})
	if _, err := n.Attach(context.Background(), "../escape"); err == nil || !strings.Contains(err.Error(), "file name") {
		t.Fatalf("attach ../escape: %v", err)
	}
	if len(n.Attached()) != 0 {
		t.Fatalf("attached %v after a refused attach", n.Attached())
	}
}

// TestTasksReachEachOtherAndTheHost checks two tasks on one bridge reach
// each other (by their own addresses) and the host, and that traffic
// leaving the subnet is masqueraded (the host's server outside the subnet
// sees a host address, not the task's).
func TestTasksReachEachOtherAndTheHost(t *testing.T) {
	n, cfg := newTestNetwork(t, 2, netip.AddrPort{})
	ctx := context.Background()
	a, err := n.Attach(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.Attach(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if a.IP == b.IP {
		t.Fatalf("both tasks have %s", a.IP)
	}
	bAddr := listenOn(t, b.NetNSPath, b.IP.String()+":8080", "b")
	if got, err := dialIn(a.NetNSPath, bAddr); err != nil || got != "b" {
		t.Fatalf("a -> b %s: %q, %v", bAddr, got, err)
	}
	aAddr := listenOn(t, a.NetNSPath, "0.0.0.0:8080", "a")
	_ = aAddr
	if got, err := dialIn(b.NetNSPath, a.IP.String()+":8080"); err != nil || got != "a" {
		t.Fatalf("b -> a: %q, %v", got, err)
	}
	// The host reaches a task directly (the mesh dials tasks so).
	if got, err := dialIn("", bAddr); err != nil || got != "b" {
		t.Fatalf("host -> b %s: %q, %v", bAddr, got, err)
	}
	// The outside: a host beyond the uplink, with no route back to the
	// subnet: tasks reach it, masqueraded to the host's address.
	outPath, outIP := outsideNS(t)
	ln, peer := listenPeer(t, outPath, outIP+":0")
	for _, task := range []Attachment{a, b} {
		if got, err := dialIn(task.NetNSPath, ln); err != nil || got != "outside" {
			t.Fatalf("task %s -> outside %s: %q, %v", task.IP, ln, got, err)
		}
		if p := peer(); cfg.Subnet.Contains(netip.MustParseAddr(p)) {
			t.Fatalf("the outside saw the task's own address %s: not masqueraded", p)
		}
	}
}

// TestRestartKeepsAllocations checks a second New on the same state (an
// agent restart) adopts the bridge and keeps every task's address and
// namespace, that Detach frees an address (and is idempotent), and that
// a namespace lost while the agent was away (a reboot) is made again with
// the same address.
func TestRestartKeepsAllocations(t *testing.T) {
	// A /28: 13 addresses for tasks.
	n, cfg := newTestNetworkOn(t, netip.PrefixFrom(testSubnet(6).Addr(), 28), netip.AddrPort{})
	ctx := context.Background()
	a, err := n.Attach(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.Attach(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	bAddr := listenOn(t, b.NetNSPath, b.IP.String()+":8080", "b")
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Attach(ctx, "c"); err == nil {
		t.Fatal("attach on a closed network succeeded")
	}

	n2, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := n2.Attached(); len(got) != 2 || got["a"] != a.IP || got["b"] != b.IP {
		t.Fatalf("after restart: %v", got)
	}
	// The task's namespace and veth were left alone: its connections work.
	if got, err := dialIn(a.NetNSPath, bAddr); err != nil || got != "b" {
		t.Fatalf("a -> b after restart: %q, %v", got, err)
	}
	a2, err := n2.Attach(ctx, "a")
	if err != nil || a2.IP != a.IP || a2.NetNSPath != a.NetNSPath {
		t.Fatalf("attach a after restart: %+v, %v; before %+v", a2, err, a)
	}

	// Detach frees: b's namespace and veth go; the address is free again.
	for range 2 {
		if err := n2.Detach(ctx, "b"); err != nil {
			t.Fatal(err)
		}
	}
	if isNetNS(b.NetNSPath) {
		t.Fatalf("%s still a namespace after detach", b.NetNSPath)
	}
	if _, err := os.Stat(b.NetNSPath); !os.IsNotExist(err) {
		t.Fatalf("%s left after detach: %v", b.NetNSPath, err)
	}
	host, _ := vethNames(cfg.Bridge, "b")
	if _, err := netlink.LinkByName(host); err == nil {
		t.Fatalf("veth %s left after detach", host)
	}
	if _, ok := n2.Attached()["b"]; ok {
		t.Fatal("b still has an address after detach")
	}
	// The freed address is handed out again once the others are used.
	seen := map[netip.Addr]bool{}
	for i := range 12 {
		c, err := n2.Attach(ctx, "c"+itoa(i))
		if err != nil {
			t.Fatalf("attach #%d: %v", i, err)
		}
		if seen[c.IP] || c.IP == a.IP {
			t.Fatalf("attach #%d got %s twice", i, c.IP)
		}
		seen[c.IP] = true
	}
	if !seen[b.IP] {
		t.Fatalf("b's freed address %s was never handed out again", b.IP)
	}
	if _, err := n2.Attach(ctx, "one-too-many"); err == nil || !strings.Contains(err.Error(), "full") {
		t.Fatalf("attach to a full subnet: %v", err)
	}

	// A namespace lost while the agent was away is made again.
	if err := unmountNetNS(a.NetNSPath); err != nil {
		t.Fatal(err)
	}
	a3, err := n2.Attach(ctx, "a")
	if err != nil || a3.IP != a.IP {
		t.Fatalf("attach a after its namespace was lost: %+v, %v", a3, err)
	}
	echo(t, a3, a.IP.String())
}

// TestDestroyLeavesNothing checks Destroy removes the bridge, the veths,
// the namespace files, the nftables table, the firewall's accept rules,
// the peer routes and the state, and that several networks in one kernel
// (in-process nodes) keep apart: each its own bridge and table, and
// destroying one leaves the other working.
func TestDestroyLeavesNothing(t *testing.T) {
	ctx := context.Background()
	n1, cfg1 := newTestNetwork(t, 7, netip.AddrPort{})
	n2, cfg2 := newTestNetwork(t, 8, netip.AddrPort{})
	if n1.Bridge() == n2.Bridge() || n1.Table() == n2.Table() {
		t.Fatalf("two networks share %s / %s", n1.Bridge(), n1.Table())
	}
	a1, err := n1.Attach(ctx, "same-task-id")
	if err != nil {
		t.Fatal(err)
	}
	a2, err := n2.Attach(ctx, "same-task-id")
	if err != nil {
		t.Fatal(err)
	}
	// Tasks of two nodes on one kernel reach each other (their bridges
	// are both local: no peer route needed, and none is installed).
	addr2 := listenOn(t, a2.NetNSPath, a2.IP.String()+":8080", "n2")
	if got, err := dialIn(a1.NetNSPath, addr2); err != nil || got != "n2" {
		t.Fatalf("n1 task -> n2 task: %q, %v", got, err)
	}
	if err := n1.SetPeerRoutes(ctx, map[netip.Prefix]netip.Addr{cfg2.Subnet: netip.MustParseAddr("127.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	if r := n1.PeerRoutes(); len(r) != 0 {
		t.Fatalf("peer routes for local subnets: %v", r)
	}

	if err := n1.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(cfg1.Bridge); err == nil {
		t.Fatalf("bridge %s left", cfg1.Bridge)
	}
	if _, err := os.Stat(cfg1.StateDir); !os.IsNotExist(err) {
		t.Fatalf("state dir %s left: %v", cfg1.StateDir, err)
	}
	tables, _ := exec.Command("nft", "list", "tables").CombinedOutput()
	if strings.Contains(string(tables), TableName(cfg1.Bridge)+"\n") {
		t.Fatalf("table %s left:\n%s", TableName(cfg1.Bridge), tables)
	}
	if !strings.Contains(string(tables), TableName(cfg2.Bridge)) {
		t.Fatalf("the other network's table %s is gone:\n%s", TableName(cfg2.Bridge), tables)
	}
	if fw, err := exec.Command("iptables", "-w", "-S", "FORWARD").CombinedOutput(); err == nil && strings.Contains(string(fw), "shoal tasknet "+cfg1.Bridge+"\"") {
		t.Fatalf("accept rules left:\n%s", fw)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), cfg1.StateDir) {
		t.Fatalf("namespace mounts left under %s", cfg1.StateDir)
	}
	// The other network is untouched.
	echo(t, a2, a2.IP.String())
	if got, err := dialIn("", addr2); err != nil || got != "n2" {
		t.Fatalf("host -> n2 task after n1 was destroyed: %q, %v", got, err)
	}
	if err := n1.Destroy(ctx); err != nil {
		t.Fatalf("second destroy: %v", err)
	}
}

// TestNodeWaitsForSubnet checks a Node: Attach waits until the managers
// hand the node its subnet, peer routes given before are kept, and a node
// restarted on the same state is ready at once with the same subnet.
func TestNodeWaitsForSubnet(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "tasknet")
	t.Cleanup(func() { _ = DestroyState(context.Background(), dir, slog.New(slog.DiscardHandler)) })
	nd, err := NewNode(ctx, Config{StateDir: dir, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := nd.Attach(short, "early"); err == nil || !strings.Contains(err.Error(), "not handed this node a task subnet") {
		t.Fatalf("attach before the subnet: %v", err)
	}
	if err := nd.SetPeerRoutes(ctx, map[netip.Prefix]netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	done := make(chan Attachment, 1)
	go func() {
		a, err := nd.Attach(ctx, "waits")
		if err != nil {
			t.Error(err)
		}
		done <- a
	}()
	subnet := testSubnet(9)
	if err := nd.SetSubnet(ctx, subnet); err != nil {
		t.Fatal(err)
	}
	a := <-done
	if !subnet.Contains(a.IP) {
		t.Fatalf("attached at %s, subnet %s", a.IP, subnet)
	}
	if err := nd.SetSubnet(ctx, subnet); err != nil {
		t.Fatalf("same subnet again: %v", err)
	}
	if err := nd.SetSubnet(ctx, testSubnet(10)); err == nil || !strings.Contains(err.Error(), "attached") {
		t.Fatalf("another subnet while a task is attached: %v", err)
	}
	if err := nd.Close(); err != nil {
		t.Fatal(err)
	}
	nd2, err := NewNode(ctx, Config{StateDir: dir, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-nd2.Ready():
	default:
		t.Fatal("a node with a kept subnet is not ready at once")
	}
	if got := nd2.Network().Attached()["waits"]; got != a.IP {
		t.Fatalf("after restart the task has %s, want %s", got, a.IP)
	}
	if err := nd2.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(BridgeName(subnet)); err == nil {
		t.Fatal("bridge left after the node's network was destroyed")
	}
}

// TestPeerRoutes checks routes to another node's subnet: added through the
// node's address, traffic to its tasks keeps the task's own source address
// (not masqueraded), kept across a restart, and removed when the node is
// gone from the list (and with the network).
func TestPeerRoutes(t *testing.T) {
	n, cfg := newTestNetwork(t, 11, netip.AddrPort{})
	ctx := context.Background()
	a, err := n.Attach(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	// The other node: a namespace beyond a veth, whose task subnet holds a
	// "task" (an address on its lo); it routes our subnet back through us.
	peerPath, peerIP := outsideNS(t)
	peerSubnet := testSubnet(12)
	peerTask := Gateway(peerSubnet).Next()
	hostEnd := netip.MustParseAddr(peerIP).Prev()
	err = inNS(peerPath, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(peerTask, 32))}); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{Dst: ipNet(cfg.Subnet), Gw: net.IP(hostEnd.AsSlice())})
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, peer := listenPeer(t, peerPath, peerTask.String()+":8080")
	if _, err := dialIn(a.NetNSPath, ln); err == nil {
		t.Fatal("the other node's task is reachable without a route")
	}
	routes := map[netip.Prefix]netip.Addr{
		peerSubnet:     netip.MustParseAddr(peerIP),
		cfg.Subnet:     netip.MustParseAddr(peerIP),      // our own: skipped
		testSubnet(13): netip.MustParseAddr("127.0.0.1"), // a node on this host: skipped
	}
	if err := n.SetPeerRoutes(ctx, routes); err != nil {
		t.Fatal(err)
	}
	if got := n.PeerRoutes(); len(got) != 1 || got[peerSubnet].String() != peerIP {
		t.Fatalf("peer routes %v", got)
	}
	if got, err := dialIn(a.NetNSPath, ln); err != nil || got != "outside" {
		t.Fatalf("task -> the other node's task: %q, %v", got, err)
	}
	if p := peer(); p != a.IP.String() {
		t.Fatalf("the other node's task saw %s, want the task's own %s", p, a.IP)
	}
	out, _ := exec.Command("ip", "route", "show", "proto", "186").CombinedOutput()
	if !strings.Contains(string(out), peerSubnet.String()+" via "+peerIP) {
		t.Fatalf("ip route show proto 186:\n%s", out)
	}
	// Kept across a restart; removed when the node leaves the list.
	_ = n.Close()
	n2, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := n2.PeerRoutes(); len(got) != 1 {
		t.Fatalf("peer routes after restart %v", got)
	}
	if err := n2.SetPeerRoutes(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if out, _ := exec.Command("ip", "route", "show", peerSubnet.String()).CombinedOutput(); strings.TrimSpace(string(out)) != "" {
		t.Fatalf("route left: %s", out)
	}
	if _, err := dialIn(a.NetNSPath, ln); err == nil {
		t.Fatal("the other node's task is still reachable after its route went")
	}
}

// TestNodeFailsFastWithoutNetwork checks a task waiting for the network
// hears at once why it could not be made, and a later SetSubnet that
// succeeds serves it.
func TestNodeFailsFastWithoutNetwork(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "tasknet")
	t.Cleanup(func() { _ = DestroyState(context.Background(), dir, slog.New(slog.DiscardHandler)) })
	// "lo" is no bridge: New refuses it.
	nd, err := NewNode(ctx, Config{StateDir: dir, Bridge: "lo", Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := nd.Attach(ctx, "waits")
		errc <- err
	}()
	if err := nd.SetSubnet(ctx, testSubnet(17)); err == nil {
		t.Fatal("SetSubnet with lo as the bridge succeeded")
	}
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "not a bridge") {
			t.Fatalf("waiting attach: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting attach did not hear of the failure")
	}
}

// TestSubnetOfAnotherNodeRefused checks a second node on this host given
// the same subnet (two clusters with one pool) is refused, saying what to
// do, and leaves the first's bridge and tasks alone.
func TestSubnetOfAnotherNodeRefused(t *testing.T) {
	n, cfg := newTestNetwork(t, 18, netip.AddrPort{})
	a, err := n.Attach(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	other := Config{Subnet: cfg.Subnet, StateDir: filepath.Join(t.TempDir(), "other"), Log: slog.New(slog.DiscardHandler)}
	if _, err := New(context.Background(), other); err == nil || !strings.Contains(err.Error(), "belongs to another node") || !strings.Contains(err.Error(), "--task-subnet-pool") {
		t.Fatalf("second node on the same subnet: %v", err)
	}
	echo(t, a, a.IP.String())
	// The owner itself adopts it again.
	if _, err := New(context.Background(), cfg); err != nil {
		t.Fatalf("the owner again: %v", err)
	}
}

// TestStaleBridgeAdopted checks a bridge left by a node whose state is
// gone (a killed test cluster) is taken over by the next node with its
// subnet.
func TestStaleBridgeAdopted(t *testing.T) {
	_, cfg := newTestNetwork(t, 19, netip.AddrPort{})
	if err := os.RemoveAll(cfg.StateDir); err != nil { // as if its cluster were killed and its dir removed
		t.Fatal(err)
	}
	next := Config{Subnet: cfg.Subnet, StateDir: filepath.Join(t.TempDir(), "next"), Log: slog.New(slog.DiscardHandler)}
	t.Cleanup(func() { _ = DestroyState(context.Background(), next.StateDir, slog.New(slog.DiscardHandler)) })
	n, err := New(context.Background(), next)
	if err != nil {
		t.Fatalf("a node on a stale bridge's subnet: %v", err)
	}
	a, err := n.Attach(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	echo(t, a, a.IP.String())
}
