package tasknet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// nftTimeout bounds one nft or iptables run.
const nftTimeout = 10 * time.Second

// runNFT feeds a script to `nft -f -` (one transaction).
func runNFT(ctx context.Context, script string) error {
	nft, err := exec.LookPath("nft")
	if err != nil {
		return errors.New("the nft command is missing: install nftables (apt-get install nftables)")
	}
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

// rulesScript is the network's table, whole (one transaction replaces
// whatever a previous run left):
//
//	table ip shoal_tasknet_<bridge>
//	  set peers: other nodes' task subnets (not masqueraded)
//	  chain prerouting (nat): the gateway's port 53 -> the resolver, when needed
//	  chain postrouting (nat, priority 90, before the mesh's): task egress
//	    leaving the subnet is masqueraded;
//	    so are connections from loopback addresses into the bridge, and a
//	    task's DNATed connection back into the bridge (hairpin)
//	  chain input (filter): drops packets from the bridge for 127.0.0.0/8
//	    that no DNAT sent there (route_localnet is on for the bridge)
func (n *Network) rulesScript() string {
	var b strings.Builder
	t := "ip " + n.table
	br := n.cfg.Bridge
	fmt.Fprintf(&b, "add table %s\ndelete table %s\nadd table %s\n", t, t, t)
	fmt.Fprintf(&b, "add set %s peers { type ipv4_addr; flags interval; }\n", t)
	if peers := n.peerSubnets(); len(peers) > 0 {
		fmt.Fprintf(&b, "add element %s peers { %s }\n", t, strings.Join(peers, ", "))
	}
	fmt.Fprintf(&b, "add chain %s prerouting { type nat hook prerouting priority -100; policy accept; }\n", t)
	if _, dnat := n.resolverAddr(); dnat {
		for _, proto := range []string{"udp", "tcp"} {
			fmt.Fprintf(&b, "add rule %s prerouting iifname %q ip daddr %s %s dport 53 dnat ip to %s\n", t, br, n.gateway, proto, n.cfg.DNS)
		}
	}
	// Before the mesh's source NAT (priority 100): a connection from a
	// loopback address into the bridge is masqueraded to the gateway here,
	// not given the node's address by the mesh, which on a loopback
	// advertise address (nodes sharing one host) the task would drop as a
	// martian.
	fmt.Fprintf(&b, "add chain %s postrouting { type nat hook postrouting priority 90; policy accept; }\n", t)
	fmt.Fprintf(&b, "add rule %s postrouting ip saddr %s oifname != %q ip daddr != @peers masquerade\n", t, n.cfg.Subnet, br)
	fmt.Fprintf(&b, "add rule %s postrouting oifname %q ip saddr 127.0.0.0/8 masquerade\n", t, br)
	fmt.Fprintf(&b, "add rule %s postrouting iifname %q oifname %q ct status dnat masquerade\n", t, br, br)
	fmt.Fprintf(&b, "add chain %s input { type filter hook input priority 0; policy accept; }\n", t)
	fmt.Fprintf(&b, "add rule %s input iifname %q ip daddr 127.0.0.0/8 ct status & dnat == 0 drop\n", t, br)
	return b.String()
}

func (n *Network) peerSubnets() []string {
	var out []string
	for p := range n.state.Routes {
		out = append(out, p.String())
	}
	sort.Strings(out)
	return out
}

// applyRules installs the table and the firewall's accept rules.
func (n *Network) applyRules(ctx context.Context) error {
	if err := runNFT(ctx, n.rulesScript()); err != nil {
		return fmt.Errorf("tasknet: install table ip %s: %w", n.table, err)
	}
	if err := ensureForwardAccept(ctx, n.cfg.Bridge); err != nil {
		return fmt.Errorf("tasknet: %w", err)
	}
	return nil
}

// removeTable deletes a table, if it exists.
func removeTable(ctx context.Context, table string) error {
	if _, err := exec.LookPath("nft"); err != nil {
		return nil
	}
	t := "ip " + table
	if err := runNFT(ctx, fmt.Sprintf("add table %s\ndelete table %s\n", t, t)); err != nil {
		return fmt.Errorf("tasknet: remove table %s: %w", t, err)
	}
	return nil
}

// forwardRules are the accept rules a bridge needs in the host's iptables
// FORWARD chain, which Docker makes drop by default: without them, no
// packet from or to a task would be forwarded.
func forwardRules(bridge string) [][]string {
	c := []string{"-m", "comment", "--comment", "shoal tasknet " + bridge, "-j", "ACCEPT"}
	return [][]string{
		append([]string{"-i", bridge}, c...),
		append([]string{"-o", bridge}, c...),
	}
}

func iptables(ctx context.Context, args ...string) ([]byte, error) {
	bin, err := exec.LookPath("iptables")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, nftTimeout)
	defer cancel()
	return exec.CommandContext(ctx, bin, append([]string{"-w", "-t", "filter"}, args...)...).CombinedOutput()
}

// ensureForwardAccept inserts the bridge's accept rules at the top of the
// iptables FORWARD chain when they are missing. Without the iptables
// command there is no such chain to pass (nftables tables of other
// programs are left alone).
func ensureForwardAccept(ctx context.Context, bridge string) error {
	if _, err := exec.LookPath("iptables"); err != nil {
		return nil
	}
	for _, r := range forwardRules(bridge) {
		if _, err := iptables(ctx, append([]string{"-C", "FORWARD"}, r...)...); err == nil {
			continue
		}
		if out, err := iptables(ctx, append([]string{"-I", "FORWARD"}, r...)...); err != nil {
			return fmt.Errorf("iptables -I FORWARD %s: %v: %s", strings.Join(r, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

func removeForwardAccept(ctx context.Context, bridge string) error {
	if _, err := exec.LookPath("iptables"); err != nil {
		return nil
	}
	var errs []error
	for _, r := range forwardRules(bridge) {
		for range 8 { // every copy, should several have been inserted
			if _, err := iptables(ctx, append([]string{"-C", "FORWARD"}, r...)...); err != nil {
				break
			}
			if out, err := iptables(ctx, append([]string{"-D", "FORWARD"}, r...)...); err != nil {
				errs = append(errs, fmt.Errorf("iptables -D FORWARD: %v: %s", err, strings.TrimSpace(string(out))))
				break
			}
		}
	}
	return errors.Join(errs...)
}

// routeProtocol marks the routes a task network installs (ip route show
// proto 186).
const routeProtocol = netlink.RouteProtocol(186)

// SetPeerRoutes makes the host route each other node's task subnet through
// that node's address: routes missing are added, changed ones replaced,
// and the ones this network installed for subnets no longer listed
// removed. A subnet that is local (this network's, or on an interface of
// this host, as when several nodes share one kernel) or whose node address
// is this host's own is skipped. Masquerading leaves traffic to the listed
// subnets alone, so tasks see each other's addresses.
func (n *Network) SetPeerRoutes(ctx context.Context, peers map[netip.Prefix]netip.Addr) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return errors.New("tasknet: the network is closed")
	}
	local, err := localAddrs()
	if err != nil {
		return fmt.Errorf("tasknet: list local addresses: %w", err)
	}
	want := map[netip.Prefix]netip.Addr{}
	for p, via := range peers {
		p = p.Masked()
		if !p.Addr().Is4() || !via.Is4() || p.Overlaps(n.cfg.Subnet) || local[via] || via.IsLoopback() || isLocalAddr(via) {
			continue
		}
		isLocal := false
		for a := range local {
			isLocal = isLocal || p.Contains(a)
		}
		if !isLocal {
			want[p] = via
		}
	}
	var errs []error
	changed := false
	for p, via := range n.state.Routes {
		if w, ok := want[p]; !ok || w != via {
			if err := delRoute(p, via); err != nil {
				errs = append(errs, err)
				continue
			}
			delete(n.state.Routes, p)
			changed = true
		}
	}
	for p, via := range want {
		if _, ok := n.state.Routes[p]; ok {
			continue
		}
		r := &netlink.Route{Dst: ipNet(p), Gw: net.IP(via.AsSlice()), Protocol: routeProtocol}
		if err := netlink.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("tasknet: route %s via %s (the node must be on this host's network): %w", p, via, err))
			continue
		}
		n.state.Routes[p] = via
		changed = true
		n.log.Info("peer route", "subnet", p, "via", via)
	}
	if changed {
		if err := n.state.save(n.cfg.StateDir); err != nil {
			errs = append(errs, err)
		}
		if err := runNFT(ctx, n.rulesScript()); err != nil {
			errs = append(errs, fmt.Errorf("tasknet: update table ip %s: %w", n.table, err))
		}
	}
	return errors.Join(errs...)
}

// PeerRoutes are the peer routes this network installed.
func (n *Network) PeerRoutes() map[netip.Prefix]netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(map[netip.Prefix]netip.Addr, len(n.state.Routes))
	for p, v := range n.state.Routes {
		out[p] = v
	}
	return out
}

func delRoute(dst netip.Prefix, via netip.Addr) error {
	r := &netlink.Route{Dst: ipNet(dst), Gw: net.IP(via.AsSlice()), Protocol: routeProtocol}
	if err := netlink.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("tasknet: delete route %s via %s: %w", dst, via, err)
	}
	return nil
}

// isLocalAddr tells whether the host delivers packets for ip to itself
// (one of its addresses, or in a local route such as 127.0.0.0/8): a peer
// there shares this kernel, and its subnet needs no route.
func isLocalAddr(ip netip.Addr) bool {
	routes, err := netlink.RouteGet(net.IP(ip.AsSlice()))
	if err != nil {
		return false
	}
	for _, r := range routes {
		if r.Type == unix.RTN_LOCAL {
			return true
		}
	}
	return false
}

// localAddrs are this host's IPv4 addresses.
func localAddrs() (map[netip.Addr]bool, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, err
	}
	out := map[netip.Addr]bool{}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			out[ip] = true
		}
	}
	return out, nil
}
