// Package tasksubnet hands out nodes' task subnets: each worker gets a /24
// of the cluster's pool (DefaultPool), unique in the cluster, kept on its
// Node record in the store (Node.task_subnet), so it survives restarts and
// leader changes, and free again once the node is removed (the subnets in
// use are the ones the node records hold).
package tasksubnet

import (
	"fmt"
	"net/netip"
	"sort"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

// DefaultPool is the cluster's pool of task subnets.
var DefaultPool = netip.MustParsePrefix("10.201.0.0/16")

// Bits is the size of a node's subnet: a /24, 253 tasks per node.
const Bits = 24

// Allocator hands out subnets of one pool.
type Allocator struct {
	Pool netip.Prefix
}

// New returns an allocator for pool (DefaultPool when invalid).
func New(pool netip.Prefix) *Allocator {
	if !pool.IsValid() {
		pool = DefaultPool
	}
	return &Allocator{Pool: pool.Masked()}
}

// CheckPool tells whether a pool can hold node subnets, with what to do
// otherwise.
func CheckPool(pool netip.Prefix) error {
	if !pool.IsValid() || !pool.Addr().Is4() {
		return fmt.Errorf("not an IPv4 prefix: give one such as %s", DefaultPool)
	}
	if pool.Bits() > Bits {
		return fmt.Errorf("%s is smaller than one node's /%d: give a /%d or larger", pool, Bits, Bits)
	}
	return nil
}

// Parse reads a node's recorded subnet; ok is false when it holds none
// (or garbage).
func Parse(s string) (netip.Prefix, bool) {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() || p.Bits() != Bits || p != p.Masked() {
		return netip.Prefix{}, false
	}
	return p, true
}

// Needs reports whether node uses a task subnet: it has a task network
// (a bridge on which its tasks get addresses of their own). Other nodes
// (not root, no runc or nft) get none, so that nodes which cannot use them
// do not use up the pool, and their joining and leaving changes no
// worker's routes.
func Needs(node *pb.Node) bool {
	return node.GetDescription().GetTaskNetwork()
}

// Affects reports whether a change of a node (from old, nil when created,
// to cur; deleted when it was removed) changes the task networks every
// worker routes (Networks): only a node that has or had a subnet can.
func Affects(old, cur *pb.Node, deleted bool) bool {
	if old.GetTaskSubnet() == "" && cur.GetTaskSubnet() == "" {
		return false
	}
	return deleted || old == nil || old.GetTaskSubnet() != cur.GetTaskSubnet() || old.GetStatus().GetAddr() != cur.GetStatus().GetAddr()
}

// Ensure gives node a subnet if it needs one (Needs) and has none, in tx:
// the first /24 of the pool no other node holds. It reports whether node
// changed (the caller writes it). A node keeps a subnet it has, even one
// outside the pool.
//
// The store detects conflicts on the objects a transaction writes, not on
// the ones it lists, so an allocation also writes the cluster object
// (unchanged): two allocations at once then conflict, and the later one
// runs again and sees the other's subnet.
func (a *Allocator) Ensure(tx *raftstore.Tx, node *pb.Node) (bool, error) {
	if _, ok := Parse(node.GetTaskSubnet()); ok || !Needs(node) {
		return false, nil
	}
	used := map[netip.Prefix]bool{}
	for _, n := range tx.Nodes().List() {
		if n.GetId() == node.GetId() {
			continue
		}
		if p, ok := Parse(n.GetTaskSubnet()); ok {
			used[p] = true
		}
	}
	p, err := a.free(used)
	if err != nil {
		return false, err
	}
	if c := tx.Cluster(); c != nil {
		if err := tx.Clusters().Update(c); err != nil {
			return false, err
		}
	}
	node.TaskSubnet = p.String()
	return true, nil
}

// free is the first /24 of the pool not in used.
func (a *Allocator) free(used map[netip.Prefix]bool) (netip.Prefix, error) {
	if err := CheckPool(a.Pool); err != nil {
		return netip.Prefix{}, fmt.Errorf("task subnet pool: %w", err)
	}
	n := 1 << (Bits - a.Pool.Bits())
	base := a.Pool.Addr().As4()
	start := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	for i := range n {
		v := start + uint32(i)<<(32-Bits)
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), Bits)
		if !used[p] {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("the task subnet pool %s is used up (%d nodes): remove nodes that are gone (`shoal node rm`)", a.Pool, n)
}

// Networks lists every node's task subnet and address, by node ID.
func Networks(tx *raftstore.Tx) *pb.TaskNetworks {
	out := &pb.TaskNetworks{}
	for _, n := range tx.Nodes().List() {
		if _, ok := Parse(n.GetTaskSubnet()); !ok {
			continue
		}
		out.Nodes = append(out.Nodes, &pb.NodeTaskSubnet{NodeId: n.GetId(), Subnet: n.GetTaskSubnet(), Addr: n.GetStatus().GetAddr()})
	}
	sort.Slice(out.Nodes, func(i, j int) bool { return out.Nodes[i].GetNodeId() < out.Nodes[j].GetNodeId() })
	return out
}
