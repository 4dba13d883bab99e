package tasksubnet

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

// newStore is a memory store holding a cluster object, as a cluster's
// store always does.
func newStore(t *testing.T) *raftstore.MemoryStore {
	t.Helper()
	s := raftstore.NewMemoryStore(raftstore.MemoryConfig{})
	t.Cleanup(func() { s.Close() })
	if _, err := s.Update(context.Background(), func(tx *raftstore.Tx) error {
		return tx.Clusters().Create(&pb.Cluster{Id: "c1", Spec: &pb.ClusterSpec{Annotations: &pb.Annotations{Name: "default"}}})
	}); err != nil {
		t.Fatal(err)
	}
	return s
}

// register creates a node and gives it a subnet in one transaction, as a
// worker's first session does, and returns its subnet.
func register(t *testing.T, s raftstore.StateStore, a *Allocator, id string) (string, error) {
	t.Helper()
	_, err := s.Update(context.Background(), func(tx *raftstore.Tx) error {
		n, ok := tx.Nodes().Get(id)
		if !ok {
			n = &pb.Node{Id: id, Status: &pb.NodeStatus{Addr: "192.0.2." + id},
				Description: &pb.NodeDescription{TaskNetwork: true}}
			if err := tx.Nodes().Create(n); err != nil {
				return err
			}
			n, _ = tx.Nodes().Get(id)
		}
		if _, err := a.Ensure(tx, n); err != nil {
			return err
		}
		return tx.Nodes().Update(n)
	})
	if err != nil {
		return "", err
	}
	var got string
	s.View(func(tx *raftstore.Tx) {
		n, _ := tx.Nodes().Get(id)
		got = n.GetTaskSubnet()
	})
	return got, nil
}

// TestSubnetsUniqueKeptAndReleased checks concurrent registrations get
// distinct /24s of the pool, a node keeps its subnet when it registers
// again, a removed node's subnet is handed out again, and a used-up pool
// says what to do.
func TestSubnetsUniqueKeptAndReleased(t *testing.T) {
	s := newStore(t)
	a := New(netip.Prefix{})
	const nodes = 20
	subnets := make([]string, nodes)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() {
			var err error
			subnets[i], err = register(t, s, a, fmt.Sprint(i+1))
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, sub := range subnets {
		p, ok := Parse(sub)
		if !ok || !DefaultPool.Contains(p.Addr()) || seen[sub] {
			t.Fatalf("node %d got %q (seen: %v)", i+1, sub, seen[sub])
		}
		seen[sub] = true
	}
	// Kept: registering again changes nothing.
	again, err := register(t, s, a, "1")
	if err != nil || again != subnets[0] {
		t.Fatalf("node 1 again: %q, %v; had %q", again, err, subnets[0])
	}
	// The cluster's list holds every node with its address.
	var nets *pb.TaskNetworks
	s.View(func(tx *raftstore.Tx) { nets = Networks(tx) })
	if len(nets.GetNodes()) != nodes {
		t.Fatalf("networks list %d nodes, want %d", len(nets.GetNodes()), nodes)
	}
	for _, n := range nets.GetNodes() {
		if n.GetAddr() != "192.0.2."+n.GetNodeId() {
			t.Fatalf("network of %s: %+v", n.GetNodeId(), n)
		}
	}
	// Released: node 5's subnet goes to the next node.
	if _, err := s.Update(context.Background(), func(tx *raftstore.Tx) error { return tx.Nodes().Delete("5") }); err != nil {
		t.Fatal(err)
	}
	next, err := register(t, s, a, "99")
	if err != nil || next != subnets[4] {
		t.Fatalf("after node 5's removal the next node got %q, %v; want its %q", next, err, subnets[4])
	}
}

func TestPoolUsedUpAndBadPools(t *testing.T) {
	s := newStore(t)
	a := New(netip.MustParsePrefix("10.9.0.0/23"))
	for _, id := range []string{"1", "2"} {
		if _, err := register(t, s, a, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := register(t, s, a, "3"); err == nil || !strings.Contains(err.Error(), "used up") {
		t.Fatalf("third node in a /23: %v", err)
	}
	for _, tc := range []struct{ pool, want string }{
		{"10.9.0.0/25", "smaller than one node's /24"},
		{"fd00::/48", "not an IPv4 prefix"},
	} {
		if err := CheckPool(netip.MustParsePrefix(tc.pool)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("pool %s: %v, want %q", tc.pool, err, tc.want)
		}
	}
	if err := CheckPool(DefaultPool); err != nil {
		t.Fatal(err)
	}
}

// TestNodesWithoutTaskNetworkGetNone: a node without a task network gets
// no subnet and writes nothing (its joining wakes no other worker's
// session), so a pool is not used up by nodes that cannot use it; nodes
// with one still get theirs.
func TestNodesWithoutTaskNetworkGetNone(t *testing.T) {
	s := newStore(t)
	a := &Allocator{Pool: netip.MustParsePrefix("10.201.0.0/23")} // two subnets
	var clusterIndex uint64
	s.View(func(tx *raftstore.Tx) { clusterIndex = tx.Cluster().GetMeta().GetVersion() })
	for i := range 5 {
		id := fmt.Sprintf("plain%d", i)
		_, err := s.Update(context.Background(), func(tx *raftstore.Tx) error {
			n := &pb.Node{Id: id, Description: &pb.NodeDescription{Runtimes: []string{"process", "container"}}}
			if err := tx.Nodes().Create(n); err != nil {
				return err
			}
			changed, err := a.Ensure(tx, n)
			if changed || err != nil || n.GetTaskSubnet() != "" {
				return fmt.Errorf("Ensure = %v, %v, subnet %q; want nothing", changed, err, n.GetTaskSubnet())
			}
			return nil
		})
		if err != nil {
			t.Fatalf("node %s: %v", id, err)
		}
	}
	s.View(func(tx *raftstore.Tx) {
		if got := tx.Cluster().GetMeta().GetVersion(); got != clusterIndex {
			t.Errorf("the cluster object was written (index %d, was %d)", got, clusterIndex)
		}
	})
	for _, id := range []string{"c1", "c2"} {
		if got, err := register(t, s, a, id); err != nil || got == "" {
			t.Fatalf("container node %s: %q, %v", id, got, err)
		}
	}
}

// TestAffects: only changes of nodes with a subnet change what workers
// route.
func TestAffects(t *testing.T) {
	plain := &pb.Node{Id: "p", Status: &pb.NodeStatus{Addr: "192.0.2.1"}}
	plainMoved := &pb.Node{Id: "p", Status: &pb.NodeStatus{Addr: "192.0.2.9"}}
	sub := &pb.Node{Id: "s", TaskSubnet: "10.201.0.0/24", Status: &pb.NodeStatus{Addr: "192.0.2.2"}}
	subMoved := &pb.Node{Id: "s", TaskSubnet: "10.201.0.0/24", Status: &pb.NodeStatus{Addr: "192.0.2.3"}}
	subOther := &pb.Node{Id: "s", TaskSubnet: "10.201.1.0/24", Status: &pb.NodeStatus{Addr: "192.0.2.2"}}
	for _, tt := range []struct {
		name     string
		old, cur *pb.Node
		deleted  bool
		want     bool
	}{
		{"a node without a subnet joins", nil, plain, false, false},
		{"a node without a subnet moves", plain, plainMoved, false, false},
		{"a node without a subnet leaves", plain, plain, true, false},
		{"a node gets its subnet", plain, sub, false, true},
		{"a node with a subnet is created", nil, sub, false, true},
		{"a node with a subnet moves", sub, subMoved, false, true},
		{"a node's subnet changes", sub, subOther, false, true},
		{"a node with a subnet leaves", sub, sub, true, true},
		{"a node with a subnet heartbeats", sub, sub, false, false},
	} {
		if got := Affects(tt.old, tt.cur, tt.deleted); got != tt.want {
			t.Errorf("%s: Affects = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestParse(t *testing.T) {
	for s, ok := range map[string]bool{"10.201.3.0/24": true, "": false, "10.201.3.1/24": false, "10.201.0.0/16": false, "garbage": false, "fd00::/24": false} {
		if _, got := Parse(s); got != ok {
			t.Errorf("Parse(%q) = %v, want %v", s, got, ok)
		}
	}
}
