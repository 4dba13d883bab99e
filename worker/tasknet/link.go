package tasknet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// defaultMTU is the MTU of the interface holding the default route, else
// 1500.
func defaultMTU() int {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err == nil {
		for _, r := range routes {
			if r.Dst != nil && r.Dst.String() != "0.0.0.0/0" {
				continue
			}
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil && l.Attrs().MTU > 0 {
				return l.Attrs().MTU
			}
		}
	}
	return 1500
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), 32)}
}

func writeSysctl(path, value string) error {
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set %s to %s: %w", path, value, err)
	}
	return nil
}

// setupBridge creates or adopts the bridge, gives it the gateway address
// and brings it up, and enables forwarding.
func (n *Network) setupBridge() error {
	name := n.cfg.Bridge
	link, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: n.cfg.MTU}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("tasknet: create bridge %s: %w", name, err)
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("tasknet: find bridge %s: %w", name, err)
		}
	case err != nil:
		return fmt.Errorf("tasknet: find bridge %s: %w", name, err)
	case link.Type() != "bridge":
		return fmt.Errorf("tasknet: %s exists and is a %s, not a bridge: choose another bridge name or remove it", name, link.Type())
	}
	// The bridge's alias names the state directory that owns it: another
	// node on this host with the same subnet (two clusters with one pool)
	// must not share it, nor its addresses.
	owner := "shoal tasknet " + n.cfg.StateDir
	if len(owner) > 128 {
		owner = owner[:128]
	}
	switch alias := link.Attrs().Alias; {
	case alias == "" || ownerGone(alias):
		// New, or left by a node whose state is gone (a killed test
		// cluster): this node's now.
		if err := netlink.LinkSetAlias(link, owner); err != nil {
			return fmt.Errorf("tasknet: mark bridge %s as this node's: %w", name, err)
		}
	case alias != owner:
		return fmt.Errorf("tasknet: bridge %s for subnet %s belongs to another node on this host (%q): give this cluster another task subnet pool (--task-subnet-pool)", name, n.cfg.Subnet, alias)
	}
	gw := netip.PrefixFrom(n.gateway, n.cfg.Subnet.Bits())
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: ipNet(gw)}); err != nil {
		return fmt.Errorf("tasknet: add %s to %s: %w", gw, name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("tasknet: bring %s up: %w", name, err)
	}
	if err := writeSysctl("/proc/sys/net/ipv4/ip_forward", "1"); err != nil {
		return fmt.Errorf("tasknet: enable forwarding: %w", err)
	}
	// Packets from the node's loopback addresses may go out through the
	// bridge (the mesh on 127.0.0.1 DNATs to a task; they are masqueraded
	// to the gateway) and the resolver on a loopback address may be
	// reached through the gateway's DNAT; the table drops every other
	// packet for 127.0.0.0/8 coming in from the bridge.
	if err := writeSysctl(filepath.Join("/proc/sys/net/ipv4/conf", name, "route_localnet"), "1"); err != nil {
		return fmt.Errorf("tasknet: %w", err)
	}
	return nil
}

// ownerGone tells whether a bridge's alias names a state directory that no
// longer exists.
func ownerGone(alias string) bool {
	dir, ok := strings.CutPrefix(alias, "shoal tasknet ")
	if !ok || len(alias) >= 128 {
		return false // not ours to judge, or cut short
	}
	_, err := os.Stat(dir)
	return errors.Is(err, os.ErrNotExist)
}

// inNetNS runs f on a locked thread in the namespace at path; the thread
// is thrown away afterwards, so no other goroutine ever runs in it.
func inNetNS(path string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		ns, err := netns.GetFromPath(path)
		if err != nil {
			errc <- fmt.Errorf("open namespace %s: %w", path, err)
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter namespace %s: %w", path, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// isNetNS tells whether path is a bind-mounted network namespace.
func isNetNS(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

// newNetNS makes a namespace and bind-mounts it on path.
func newNetNS(path string) error {
	if isNetNS(path) {
		return nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	_ = f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("new network namespace: %w", err)
			return
		}
		src := "/proc/self/task/" + strconv.Itoa(unix.Gettid()) + "/ns/net"
		if err := unix.Mount(src, path, "", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind-mount the namespace on %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		_ = os.Remove(path)
		return err
	}
	return nil
}

// unmountNetNS unmounts and removes a namespace file; a missing one is no
// error.
func unmountNetNS(path string) error {
	for isNetNS(path) {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// plumb makes whatever of a task's namespace, veth, address and routes is
// missing. The task's lock is held.
func (n *Network) plumb(_ context.Context, taskID string, ip netip.Addr) error {
	path := n.NetNSPath(taskID)
	hostName, peerName := vethNames(n.cfg.Bridge, taskID)
	if isNetNS(path) {
		if n.plumbed(path, hostName, ip) {
			return nil
		}
	} else if err := newNetNS(path); err != nil {
		return err
	}
	br, err := netlink.LinkByName(n.cfg.Bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", n.cfg.Bridge, err)
	}
	// A veth left by an attach cut short, or whose peer is gone, is
	// replaced; deleting either end deletes both.
	if old, err := netlink.LinkByName(hostName); err == nil {
		_ = netlink.LinkDel(old)
	}
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", path, err)
	}
	defer nsh.Close()
	err = inNetNS(path, func() error {
		if l, err := netlink.LinkByName("eth0"); err == nil {
			return netlink.LinkDel(l)
		}
		return nil
	})
	if err != nil {
		return err
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: hostName, MTU: n.cfg.MTU, MasterIndex: br.Attrs().Index},
		PeerName:      peerName,
		PeerNamespace: netlink.NsFd(int(nsh)),
		PeerMTU:       uint32(n.cfg.MTU),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", hostName, err)
	}
	host, err := netlink.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("find veth %s: %w", hostName, err)
	}
	if err := netlink.LinkSetHairpin(host, true); err != nil {
		return fmt.Errorf("hairpin on %s: %w", hostName, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("bring %s up: %w", hostName, err)
	}
	prefix := netip.PrefixFrom(ip, n.cfg.Subnet.Bits())
	return inNetNS(path, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("bring lo up: %w", err)
		}
		eth, err := netlink.LinkByName(peerName)
		if err != nil {
			return fmt.Errorf("find %s: %w", peerName, err)
		}
		if err := netlink.LinkSetName(eth, "eth0"); err != nil {
			return fmt.Errorf("rename %s to eth0: %w", peerName, err)
		}
		if err := netlink.AddrReplace(eth, &netlink.Addr{IPNet: ipNet(prefix)}); err != nil {
			return fmt.Errorf("add %s to eth0: %w", prefix, err)
		}
		if err := netlink.LinkSetUp(eth); err != nil {
			return fmt.Errorf("bring eth0 up: %w", err)
		}
		def := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.IP(n.gateway.AsSlice()), Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0"))}
		if err := netlink.RouteReplace(def); err != nil {
			return fmt.Errorf("default route via %s: %w", n.gateway, err)
		}
		return nil
	})
}

// plumbed tells whether a task's namespace is complete: its veth on the
// bridge and eth0 up with its address and default route.
func (n *Network) plumbed(path, hostName string, ip netip.Addr) bool {
	host, err := netlink.LinkByName(hostName)
	if err != nil || host.Attrs().MasterIndex == 0 || host.Attrs().Flags&net.FlagUp == 0 {
		return false
	}
	if br, err := netlink.LinkByName(n.cfg.Bridge); err != nil || br.Attrs().Index != host.Attrs().MasterIndex {
		return false
	}
	err = inNetNS(path, func() error {
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if eth.Attrs().Flags&net.FlagUp == 0 {
			return errors.New("eth0 down")
		}
		addrs, err := netlink.AddrList(eth, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		found := false
		for _, a := range addrs {
			if got, ok := netip.AddrFromSlice(a.IP.To4()); ok && got == ip {
				found = true
			}
		}
		if !found {
			return errors.New("address missing")
		}
		routes, err := netlink.RouteList(eth, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw != nil {
				return nil
			}
		}
		return errors.New("no default route")
	})
	return err == nil
}

// unplumb removes a task's veth and namespace file. The task's lock (or
// every task's) is held.
func (n *Network) unplumb(taskID string) error {
	hostName, _ := vethNames(n.cfg.Bridge, taskID)
	var errs []error
	if l, err := netlink.LinkByName(hostName); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete veth %s: %w", hostName, err))
		}
	}
	if err := unmountNetNS(n.NetNSPath(taskID)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// destroyKernelState removes a bridge, its table, its firewall rules and
// the peer routes a network installed.
func destroyKernelState(ctx context.Context, bridge string, routes map[netip.Prefix]netip.Addr, log *slog.Logger) error {
	var errs []error
	for dst, via := range routes {
		if err := delRoute(dst, via); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeTable(ctx, TableName(bridge)); err != nil {
		errs = append(errs, err)
	}
	if err := removeForwardAccept(ctx, bridge); err != nil {
		log.Warn("remove the firewall's accept rules", "err", err)
	}
	if l, err := netlink.LinkByName(bridge); err == nil && l.Type() == "bridge" {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("tasknet: delete bridge %s: %w", bridge, err))
		}
	}
	return errors.Join(errs...)
}
