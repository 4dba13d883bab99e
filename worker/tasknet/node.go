package tasknet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
)

// Node is a node's task network before and after the managers have handed
// the node its subnet: the agent creates it at start and calls SetSubnet
// with what the managers send; runtimes call Attach, which waits for the
// subnet. A node whose StateDir holds a network from an earlier run is
// ready at once (its subnet is kept there), so tasks reattach before the
// first session.
type Node struct {
	base Config // without Subnet

	mu     sync.Mutex
	net    *Network
	err    error // the last SetSubnet failure
	ready  chan struct{}
	wake   chan struct{}               // closed and replaced at every SetSubnet
	peers  map[netip.Prefix]netip.Addr // the last SetPeerRoutes, applied to each new network
	closed bool
}

// NewNode returns a node's task network; base is the configuration
// without the subnet (Bridge, when set, is used for every subnet). When
// base.StateDir holds a network from an earlier run, it is adopted now.
func NewNode(ctx context.Context, base Config) (*Node, error) {
	if base.StateDir == "" {
		return nil, errors.New("tasknet: a state directory is required")
	}
	nd := &Node{base: base, ready: make(chan struct{}), wake: make(chan struct{})}
	st, err := loadState(base.StateDir)
	if err != nil {
		return nil, err
	}
	if st.Subnet.IsValid() {
		if err := nd.SetSubnet(ctx, st.Subnet); err != nil {
			return nil, err
		}
	}
	return nd, nil
}

// SetSubnet gives the node its subnet: the first call creates the network;
// calls with the same subnet change nothing. A different subnet replaces
// the network when no task is attached, and is refused otherwise.
func (nd *Node) SetSubnet(ctx context.Context, subnet netip.Prefix) error {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.closed {
		return errors.New("tasknet: the node's network is closed")
	}
	defer func() { // waiters look again, at the network or the failure
		close(nd.wake)
		nd.wake = make(chan struct{})
	}()
	subnet = subnet.Masked()
	if nd.net != nil {
		if nd.net.Subnet() == subnet {
			return nil
		}
		if n := len(nd.net.Attached()); n > 0 {
			return fmt.Errorf("tasknet: the node's task subnet changed from %s to %s while %d tasks are attached: they keep the old one until they stop", nd.net.Subnet(), subnet, n)
		}
		if err := nd.net.Destroy(ctx); err != nil {
			return err
		}
		nd.net = nil
	}
	cfg := nd.base
	cfg.Subnet = subnet
	n, err := New(ctx, cfg)
	if err != nil {
		nd.err = err
		return err
	}
	nd.net, nd.err = n, nil
	select {
	case <-nd.ready:
	default:
		close(nd.ready)
	}
	if nd.peers != nil {
		if err := n.SetPeerRoutes(ctx, nd.peers); err != nil {
			return err
		}
	}
	return nil
}

// Network is the node's network, or nil before its subnet is known.
func (nd *Node) Network() *Network {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.net
}

// Ready is closed once the node has its subnet.
func (nd *Node) Ready() <-chan struct{} { return nd.ready }

// Wait returns the node's network once it has its subnet, or ctx's error
// (with the last failure to create it, if any).
func (nd *Node) Wait(ctx context.Context) (*Network, error) {
	for {
		nd.mu.Lock()
		n, lastErr, closed, wake := nd.net, nd.err, nd.closed, nd.wake
		nd.mu.Unlock()
		if closed {
			return nil, errors.New("tasknet: the node's network is closed")
		}
		if n != nil {
			return n, nil
		}
		if lastErr != nil {
			// The subnet came but the network could not be made: tasks
			// fail now, with why, rather than wait.
			return nil, fmt.Errorf("tasknet: no task network on this node: %w", lastErr)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("tasknet: the managers have not handed this node a task subnet yet: %w", ctx.Err())
		case <-wake:
		}
	}
}

// Attach is Network.Attach, once the node has its subnet.
func (nd *Node) Attach(ctx context.Context, taskID string) (Attachment, error) {
	n, err := nd.Wait(ctx)
	if err != nil {
		return Attachment{}, err
	}
	return n.Attach(ctx, taskID)
}

// Detach is Network.Detach; before the node has a subnet no task is
// attached.
func (nd *Node) Detach(ctx context.Context, taskID string) error {
	if n := nd.Network(); n != nil {
		return n.Detach(ctx, taskID)
	}
	return nil
}

// SetPeerRoutes is Network.SetPeerRoutes; before the node has its subnet
// the routes are kept and installed when it comes.
func (nd *Node) SetPeerRoutes(ctx context.Context, peers map[netip.Prefix]netip.Addr) error {
	nd.mu.Lock()
	n := nd.net
	nd.peers = peers
	nd.mu.Unlock()
	if n == nil {
		return nil
	}
	return n.SetPeerRoutes(ctx, peers)
}

// Close lets go of the network, leaving it in place for the next agent.
func (nd *Node) Close() error {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	nd.closed = true
	if nd.net != nil {
		return nd.net.Close()
	}
	return nil
}

// Destroy removes the node's network (for a node leaving the cluster).
func (nd *Node) Destroy(ctx context.Context) error {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	nd.closed = true
	if nd.net != nil {
		return nd.net.Destroy(ctx)
	}
	return DestroyState(ctx, nd.base.StateDir, nd.base.Log)
}
