package tests

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"github.com/shoal-cluster/shoal/worker/tasknet"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestWorkersGetTheirOwnTaskSubnets checks the leader hands each worker a
// task subnet of the cluster's pool, different for each and kept on its
// node record; that workers (as root) make their bridges from it, and
// tasks on two workers reach each other; that a restarted worker keeps its
// subnet and its tasks their addresses; and that a removed worker's
// subnet is free again (the next worker gets it) and its bridge is gone.
func TestWorkersGetTheirOwnTaskSubnets(t *testing.T) {
	c := newCluster(t)
	c.taskNetworks = os.Geteuid() == 0
	if _, err := exec.LookPath("nft"); err != nil {
		c.taskNetworks = false
	}
	c.addManagers(1)
	c.addWorkers(2)
	w1, w2 := c.workers[0], c.workers[1]
	subnetOf := func(w *wrk) netip.Prefix {
		var p netip.Prefix
		c.eventually(10*time.Second, "worker "+w.a.ID()+" learns its task subnet", func() (bool, string) {
			p = w.a.TaskSubnet()
			return p.IsValid(), "none yet"
		})
		return p
	}
	s1, s2 := subnetOf(w1), subnetOf(w2)
	if s1 == s2 || !c.taskPool.Contains(s1.Addr()) || !c.taskPool.Contains(s2.Addr()) || s1.Bits() != 24 {
		t.Fatalf("subnets %s and %s, pool %s", s1, s2, c.taskPool)
	}
	recorded := func(id string) string {
		var got string
		c.leader().m.Store().View(func(tx *raftstore.Tx) {
			n, _ := tx.Nodes().Get(id)
			got = n.GetTaskSubnet()
		})
		return got
	}
	if recorded(w1.a.ID()) != s1.String() || recorded(w2.a.ID()) != s2.String() {
		t.Fatalf("node records hold %q and %q, workers say %s and %s", recorded(w1.a.ID()), recorded(w2.a.ID()), s1, s2)
	}
	if !c.taskNetworks {
		t.Log("not root with nft: subnets only, no task networks")
		return
	}
	ctx := context.Background()
	a1, err := w1.taskNet.Attach(ctx, "task-on-w1")
	if err != nil {
		t.Fatal(err)
	}
	a2, err := w2.taskNet.Attach(ctx, "task-on-w2")
	if err != nil {
		t.Fatal(err)
	}
	if !s1.Contains(a1.IP) || !s2.Contains(a2.IP) {
		t.Fatalf("task addresses %s and %s, subnets %s and %s", a1.IP, a2.IP, s1, s2)
	}
	addr := serveIn(t, a2.NetNSPath, a2.IP.String()+":8080", "w2")
	if got, err := askFromNS(a1.NetNSPath, addr); err != nil || got != "w2" {
		t.Fatalf("task on w1 -> task on w2 %s: %q, %v", addr, got, err)
	}

	// A restarted worker keeps its subnet and its task's address.
	w1.a.Close()
	c.restartWorker(w1)
	if err := w1.a.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	if got := subnetOf(w1); got != s1 {
		t.Fatalf("after restart worker 1 has %s, had %s", got, s1)
	}
	again, err := w1.taskNet.Attach(ctx, "task-on-w1")
	if err != nil || again.IP != a1.IP {
		t.Fatalf("task on w1 after restart: %+v, %v; had %s", again, err, a1.IP)
	}

	// A removed worker's subnet is released and its network removed.
	if err := w2.taskNet.Detach(ctx, "task-on-w2"); err != nil {
		t.Fatal(err)
	}
	ctl := c.control(c.leader())
	rmCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := ctl.RemoveNode(rmCtx, &pb.RemoveNodeRequest{Ref: w2.a.ID(), Force: true}); err != nil {
		t.Fatal(err)
	}
	bridge := tasknet.BridgeName(s2)
	c.eventually(15*time.Second, "the removed worker's bridge is gone", func() (bool, string) {
		_, err := netlink.LinkByName(bridge)
		return err != nil, "bridge " + bridge + " still there"
	})
	c.addWorkers(1)
	if got := subnetOf(c.workers[2]); got != s2 {
		t.Fatalf("the next worker got %s, want the removed worker's %s", got, s2)
	}
}

// serveIn answers every TCP connection on addr in a namespace with reply.
func serveIn(t *testing.T, nsPath, addr, reply string) string {
	t.Helper()
	var ln net.Listener
	if err := inNetNS(nsPath, func() (err error) { ln, err = net.Listen("tcp4", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(conn, reply+"\n")
			conn.Close()
		}
	}()
	return ln.Addr().String()
}

// askFromNS connects to addr from a namespace and returns the line read.
func askFromNS(nsPath, addr string) (string, error) {
	var conn net.Conn
	if err := inNetNS(nsPath, func() (err error) { conn, err = net.DialTimeout("tcp4", addr, 2*time.Second); return err }); err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(conn)
	return strings.TrimSpace(string(b)), err
}

// inNetNS runs f on a thread in a namespace, thrown away afterwards.
func inNetNS(path string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.GetFromPath(path)
		if err != nil {
			errc <- fmt.Errorf("open %s: %w", path, err)
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
