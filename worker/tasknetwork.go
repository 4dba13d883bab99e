package worker

import (
	"context"
	"net/netip"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker/tasknet"
)

// taskNetTimeout bounds one change of the task network (links, routes,
// one nft run).
const taskNetTimeout = 30 * time.Second

// TaskSubnet is the node's task subnet, as the managers last said (the
// zero prefix before they have).
func (a *Agent) TaskSubnet() netip.Prefix {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.taskSubnet
}

// TaskNetwork is the node's task network, nil without one.
func (a *Agent) TaskNetwork() *tasknet.Node { return a.taskNet }

// noteTaskNetworks takes what a session message says of task subnets: the
// node's own (on its record) and every node's with its address (routes).
func (a *Agent) noteTaskNetworks(node *pb.Node, nets *pb.TaskNetworks) {
	if node != nil {
		if p, err := netip.ParsePrefix(node.GetTaskSubnet()); err == nil {
			a.mu.Lock()
			changed := a.taskSubnet != p
			a.taskSubnet = p
			a.mu.Unlock()
			// A network that could not be made is tried again at each
			// message that carries the node's record.
			if a.taskNet != nil && (changed || a.taskNet.Network() == nil) {
				ctx, cancel := context.WithTimeout(a.ctx, taskNetTimeout)
				if err := a.taskNet.SetSubnet(ctx, p); err != nil {
					a.log.Error("task network: tasks that need their own address cannot start on this node", "subnet", p, "err", err)
				}
				cancel()
			}
		}
	}
	if nets == nil || a.taskNet == nil {
		return
	}
	peers := map[netip.Prefix]netip.Addr{}
	for _, n := range nets.GetNodes() {
		if n.GetNodeId() == a.id.NodeID {
			continue
		}
		p, err := netip.ParsePrefix(n.GetSubnet())
		via, err2 := netip.ParseAddr(n.GetAddr())
		if err != nil || err2 != nil {
			continue
		}
		peers[p] = via
	}
	ctx, cancel := context.WithTimeout(a.ctx, taskNetTimeout)
	defer cancel()
	if err := a.taskNet.SetPeerRoutes(ctx, peers); err != nil {
		a.log.Warn("task network: routes to other nodes' tasks", "err", err)
	}
}

// destroyTaskNetwork removes the node's task network (its tasks are gone):
// the node left the cluster.
func (a *Agent) destroyTaskNetwork() {
	if a.taskNet == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), taskNetTimeout)
	defer cancel()
	if err := a.taskNet.Destroy(ctx); err != nil {
		a.log.Warn("remove the task network", "err", err)
	}
}
