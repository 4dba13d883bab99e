package tasknet

import (
	"context"
	"log/slog"
	"math/rand/v2"
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
	requireRoot(t)
	cfg := Config{Subnet: testSubnet(i), DNS: dns, StateDir: filepath.Join(t.TempDir(), "tasknet"),
		Log: slog.New(slog.DiscardHandler)}
	n, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = DestroyState(context.Background(), cfg.StateDir, nil) })
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

