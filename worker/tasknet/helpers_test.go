package tasknet

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inNS runs f on a thread in the namespace at path ("" = the host's).
// Sockets made there stay in that namespace and may be used anywhere.
func inNS(path string, f func() error) error {
	if path == "" {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		ns, err := netns.GetFromPath(path)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// listenOn serves reply to every TCP connection on addr in a namespace
// and returns the address it listens on.
func listenOn(t *testing.T, nsPath, addr, reply string) string {
	t.Helper()
	var ln net.Listener
	err := inNS(nsPath, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %q: %v", addr, nsPath, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, reply+"\n")
			_ = c.Close()
		}
	}()
	return ln.Addr().String()
}

// dialIn connects to addr from a namespace and returns the line read.
func dialIn(nsPath, addr string) (string, error) {
	var c net.Conn
	err := inNS(nsPath, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", addr, 2*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// echo checks a task reaches a server of its own on ip.
func echo(t *testing.T, a Attachment, ip string) {
	t.Helper()
	addr := listenOn(t, a.NetNSPath, ip+":0", "self")
	if got, err := dialIn(a.NetNSPath, addr); err != nil || got != "self" {
		t.Fatalf("task -> itself on %s: %q, %v", addr, got, err)
	}
}

// lookupIn resolves a name from a namespace through the nameserver of its
// resolv.conf, as a task's resolver would.
func lookupIn(ctx context.Context, nsPath string, resolvConf []byte, name string) ([]string, error) {
	var server string
	for _, line := range strings.Split(string(resolvConf), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "nameserver" {
			server = net.JoinHostPort(f[1], "53")
			break
		}
	}
	if server == "" {
		return nil, errors.New("no nameserver in resolv.conf")
	}
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var c net.Conn
		err := inNS(nsPath, func() error {
			var err error
			var d net.Dialer
			c, err = d.DialContext(ctx, network, server)
			return err
		})
		return c, err
	}}
	return r.LookupHost(ctx, name)
}

func itoa(i int) string { return strconv.Itoa(i) }

// outsideNS makes a namespace that stands for a host beyond the node's
// uplink: a veth pair, 10.252.<x>.1/30 on the host, .2 in the namespace.
// It returns the namespace's path and address; the namespace has no route
// to the task subnets (only masqueraded traffic can come back).
func outsideNS(t *testing.T) (string, string) {
	t.Helper()
	x := byte(rand.IntN(250))
	path := filepath.Join(t.TempDir(), "outside")
	if err := newNetNS(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unmountNetNS(path) })
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	name := "shto" + strconv.Itoa(int(x))
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "up0", PeerNamespace: netlink.NsFd(int(nsh))}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(v) })
	hostP := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 252, x, 1}), 30)
	peerP := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 252, x, 2}), 30)
	if err := netlink.AddrAdd(v, &netlink.Addr{IPNet: ipNet(hostP)}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(v); err != nil {
		t.Fatal(err)
	}
	err = inNS(path, func() error {
		l, err := netlink.LinkByName("up0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipNet(peerP)}); err != nil {
			return err
		}
		if lo, err := netlink.LinkByName("lo"); err == nil {
			_ = netlink.LinkSetUp(lo)
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		t.Fatal(err)
	}
	return path, peerP.Addr().String()
}

// listenPeer serves "outside" on addr in a namespace; last returns the
// last client's address.
func listenPeer(t *testing.T, nsPath, addr string) (_ string, last func() string) {
	t.Helper()
	var ln net.Listener
	err := inNS(nsPath, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	var peer string
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			peer = c.RemoteAddr().(*net.TCPAddr).IP.String()
			mu.Unlock()
			_, _ = io.WriteString(c, "outside\n")
			_ = c.Close()
		}
	}()
	return ln.Addr().String(), func() string {
		mu.Lock()
		defer mu.Unlock()
		return peer
	}
}
