package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/shoal-cluster/shoal/internal/clientcreds"
	"github.com/shoal-cluster/shoal/internal/rpc"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc"
)

// apiPort is every node's API port: each node has a namespace of its own.
const apiPort = 4242

// daemonFlags are the timings every node runs with: fast gossip and
// heartbeats so that faults are noticed within a round.
//
// The routing mesh runs on the user-space proxy: the invariants below
// (next to no failed request while a worker is cut off) rely on the
// proxy giving up on a silent backend after its dial timeout and trying
// the next one; the kernel datapath (nftables) sends a cut-off worker's
// share of new connections into the void until its probes give up on the
// worker's tasks (about a second) or the worker is declared Down.
var daemonFlags = []string{"--gossip-fast", "--heartbeat-period", "500ms", "--election-timeout", "300ms", "--mesh-datapath", "userspace"}

// node is one shoal daemon in its own network namespace.
type node struct {
	name    string
	manager bool
	ns      string
	ip      string
	dir     string // data dir
	logPath string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	paused bool
}

func (n *node) addr() string { return net.JoinHostPort(n.ip, strconv.Itoa(apiPort)) }

// diskDelayFile is where the slow-disk fault writes this node's fsync delay.
func (n *node) diskDelayFile() string { return n.dir + ".diskdelay" }

// start runs `shoal <args>` inside the node's namespace.
func (n *node) start(bin string, args ...string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	logf, err := os.OpenFile(n.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("open log of %s: %w", n.name, err)
	}
	full := append([]string{"--net=/var/run/netns/" + n.ns, bin}, args...)
	full = append(full, "--data-dir", n.dir)
	full = append(full, daemonFlags...)
	cmd := exec.Command("nsenter", full...)
	cmd.Env = append(os.Environ(), raftstore.DiskDelayFileEnv+"="+n.diskDelayFile())
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", n.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	n.cmd, n.done, n.paused = cmd, done, false
	return nil
}

// restart starts the node again from its data dir.
func (n *node) restart(bin string) error { return n.start(bin, "start") }

// alive reports whether the daemon process runs.
func (n *node) alive() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and waits for the process to end.
func (n *node) kill() {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.paused = false
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// stop sends SIGTERM and waits, killing after grace.
func (n *node) stop(grace time.Duration) {
	n.mu.Lock()
	cmd, done, paused := n.cmd, n.done, n.paused
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	if paused {
		_ = cmd.Process.Signal(syscall.SIGCONT)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		n.kill()
	}
}

// pause stops the process (SIGSTOP), standing for a long GC pause.
func (n *node) pause() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return fmt.Errorf("pause %s: not running", n.name)
	}
	n.paused = true
	return n.cmd.Process.Signal(syscall.SIGSTOP)
}

// resume continues a paused process.
func (n *node) resume() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || !n.paused {
		return nil
	}
	n.paused = false
	return n.cmd.Process.Signal(syscall.SIGCONT)
}

// setDiskDelay makes every Raft log write of the node sleep d (0 heals).
func (n *node) setDiskDelay(d time.Duration) error {
	if d == 0 {
		if err := os.Remove(n.diskDelayFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	return os.WriteFile(n.diskDelayFile(), []byte(d.String()), 0o644)
}

// cluster is the suite's managers and workers.
type cluster struct {
	bin      string
	dir      string
	net      *network
	managers []*node
	workers  []*node

	connMu sync.Mutex
	conns  map[string]*grpc.ClientConn
}

func (c *cluster) nodes() []*node { return append(append([]*node{}, c.managers...), c.workers...) }

// control returns a Control client for a manager; connections are reused.
func (c *cluster) control(n *node) (pb.ControlClient, error) {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	if c.conns == nil {
		c.conns = map[string]*grpc.ClientConn{}
	}
	conn, ok := c.conns[n.addr()]
	if !ok {
		// The admin client config `shoal init` wrote in the first
		// manager's data dir: every call is mutual TLS.
		creds, err := clientcreds.Admin(c.managers[0].dir)
		if err != nil {
			return nil, err
		}
		conn, err = rpc.Dial(n.addr(), creds, grpc.WithUnaryInterceptor(rpc.RetryUnavailable()))
		if err != nil {
			return nil, err
		}
		c.conns[n.addr()] = conn
	}
	return pb.NewControlClient(conn), nil
}

func (c *cluster) closeConns() {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	for _, conn := range c.conns {
		conn.Close()
	}
	c.conns = nil
}

// newCluster creates the namespaces and starts managers and workers, one
// at a time, waiting until every node is Ready.
func newCluster(ctx context.Context, net *network, bin, dir string, managers, workers int) (*cluster, error) {
	c := &cluster{bin: bin, dir: dir, net: net}
	for i := range managers + workers {
		name := fmt.Sprintf("m%d", i+1)
		if i >= managers {
			name = fmt.Sprintf("w%d", i-managers+1)
		}
		ns, ip, err := net.addNode(ctx, name, i)
		if err != nil {
			return c, err
		}
		n := &node{name: name, manager: i < managers, ns: ns, ip: ip,
			dir: filepath.Join(dir, "nodes", name), logPath: filepath.Join(dir, "logs", name+".log")}
		if n.manager {
			c.managers = append(c.managers, n)
		} else {
			c.workers = append(c.workers, n)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return c, err
	}
	first := c.managers[0]
	if err := first.start(bin, "init", "--advertise", first.addr(), "--hostname", first.name); err != nil {
		return c, err
	}
	tokens := map[bool]string{}
	err := waitFor(ctx, 30*time.Second, "the first manager", func(ctx context.Context) error {
		cl, err := c.control(first)
		if err != nil {
			return err
		}
		resp, err := cl.GetCluster(ctx, &pb.GetClusterRequest{})
		if err != nil {
			return err
		}
		tokens[true] = resp.GetCluster().GetJoinTokens().GetManager()
		tokens[false] = resp.GetCluster().GetJoinTokens().GetWorker()
		if tokens[true] == "" || tokens[false] == "" {
			return errors.New("no join tokens yet")
		}
		return nil
	})
	if err != nil {
		return c, err
	}
	for i, n := range c.nodes()[1:] {
		if err := n.start(bin, "join", "--advertise", n.addr(), "--hostname", n.name, "--token", tokens[n.manager], first.addr()); err != nil {
			return c, err
		}
		// Join one at a time: each manager join changes the Raft configuration.
		if err := c.waitReady(ctx, i+2, 60*time.Second); err != nil {
			return c, err
		}
	}
	return c, nil
}

// waitReady waits until want nodes are Ready, every manager is Reachable
// and one of them leads.
func (c *cluster) waitReady(ctx context.Context, want int, timeout time.Duration) error {
	return waitFor(ctx, timeout, fmt.Sprintf("%d ready nodes and a leader", want), func(ctx context.Context) error {
		nodes, err := c.listNodes(ctx)
		if err != nil {
			return err
		}
		ready, leaders := 0, 0
		var notReady []string
		for _, n := range nodes {
			ok := n.GetStatus().GetState() == pb.NodeState_NODE_STATE_READY
			if ms := n.GetManagerStatus(); ms != nil {
				ok = ok && ms.GetReachability() == pb.Reachability_REACHABILITY_REACHABLE
				if ms.GetLeader() {
					leaders++
				}
			}
			if ok {
				ready++
			} else {
				notReady = append(notReady, n.GetDescription().GetHostname())
			}
		}
		if ready != want || leaders != 1 {
			return fmt.Errorf("%d of %d nodes ready (not: %v), %d leaders", ready, want, notReady, leaders)
		}
		return nil
	})
}

// listNodes asks each manager in turn until one answers.
func (c *cluster) listNodes(ctx context.Context) ([]*pb.Node, error) {
	var last error
	for _, m := range c.managers {
		if !m.alive() {
			continue
		}
		cl, err := c.control(m)
		if err != nil {
			return nil, err
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := cl.ListNodes(cctx, &pb.ListNodesRequest{})
		cancel()
		if err == nil {
			return resp.GetNodes(), nil
		}
		last = err
	}
	if last == nil {
		last = errors.New("no manager is running")
	}
	return nil, last
}

// leader returns the leading manager, as the managers see it.
func (c *cluster) leader(ctx context.Context) (*node, error) {
	var found *node
	err := waitFor(ctx, 30*time.Second, "a leader", func(ctx context.Context) error {
		nodes, err := c.listNodes(ctx)
		if err != nil {
			return err
		}
		for _, n := range nodes {
			if n.GetManagerStatus().GetLeader() {
				for _, m := range c.managers {
					if m.name == n.GetDescription().GetHostname() {
						found = m
						return nil
					}
				}
			}
		}
		return errors.New("no leader")
	})
	return found, err
}

// shutdown stops every node.
func (c *cluster) shutdown() {
	c.closeConns()
	var wg sync.WaitGroup
	for _, n := range c.nodes() {
		wg.Go(func() { n.stop(10 * time.Second) })
	}
	wg.Wait()
}

// waitFor polls cond every 100ms until it returns nil or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		err := cond(ctx)
		if err == nil {
			return nil
		}
		// A call cut short by the deadline says nothing about the
		// condition: keep what the attempt before it found.
		if last == nil || ctx.Err() == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("timed out after %s waiting for %s: %w", timeout, what, last)
		case <-tick.C:
		}
	}
}
