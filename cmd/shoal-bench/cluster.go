package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/shoal-cluster/shoal/internal/clientcreds"
	"github.com/shoal-cluster/shoal/internal/mesh"
	"github.com/shoal-cluster/shoal/internal/rpc"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc"
)

// member is one manager process of a cluster.
type member struct {
	name    string // hostname: m1, m2, m3
	ip      string
	api     string // ip:port
	dataDir string
	logPath string
	nodeID  string
	proc    *proc
}

// cluster is a cluster of manager processes on this machine.
type cluster struct {
	e       *env
	name    string
	port    int
	members []*member

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn

	credsOnce sync.Once
	admin     *rpc.Credentials
}

// daemonArgs are the flags every manager process gets.
func (e *env) daemonArgs() []string {
	return []string{"--election-timeout", e.opts.election.String(), "--log-level", "info"}
}

// newCluster starts a 3-manager cluster: m1 runs `shoal init`, then m2 and
// m3 `shoal join` one after the other. It returns once every manager is
// reachable and caught up. env stops it at the end of the benchmark.
func (e *env) newCluster(ctx context.Context, name string) (*cluster, error) {
	port, err := e.freePort()
	if err != nil {
		return nil, err
	}
	c := &cluster{e: e, name: name, port: port, conns: map[string]*grpc.ClientConn{}}
	dir := filepath.Join(e.tmp, name)
	for i, ip := range managerIPs {
		host := "m" + strconv.Itoa(i+1)
		c.members = append(c.members, &member{
			name:    host,
			ip:      ip,
			api:     net.JoinHostPort(ip, strconv.Itoa(port)),
			dataDir: filepath.Join(dir, host),
			logPath: filepath.Join(dir, host+".log"),
		})
	}
	e.mu.Lock()
	e.clusters = append(e.clusters, c)
	e.mu.Unlock()

	t0 := time.Now()
	e.log.Info("starting cluster", "name", name, "port", port, "dir", dir)
	first := c.members[0]
	args := append([]string{"init", "--data-dir", first.dataDir, "--advertise", first.api, "--hostname", first.name}, e.daemonArgs()...)
	if first.proc, err = e.startProc(name+"/"+first.name, first.logPath, args...); err != nil {
		return nil, err
	}
	var token string
	err = poll(ctx, 30*time.Second, 50*time.Millisecond, "m1 to create the cluster", func(ctx context.Context) (bool, error) {
		if first.proc.exited() {
			return false, fatal(first.proc.exitError())
		}
		resp, err := pb.NewControlClient(c.conn(first.api)).GetCluster(ctx, &pb.GetClusterRequest{})
		if err != nil {
			return false, err
		}
		token = resp.GetCluster().GetJoinTokens().GetManager()
		return token != "", nil
	})
	if err != nil {
		return nil, err
	}
	for _, m := range c.members[1:] {
		args := append([]string{"join", "--data-dir", m.dataDir, "--advertise", m.api, "--hostname", m.name, "--token", token}, e.daemonArgs()...)
		args = append(args, first.api)
		if m.proc, err = e.startProc(name+"/"+m.name, m.logPath, args...); err != nil {
			return nil, err
		}
		err := poll(ctx, 30*time.Second, 50*time.Millisecond, m.name+" to join", func(ctx context.Context) (bool, error) {
			if m.proc.exited() {
				return false, fatal(m.proc.exitError())
			}
			resp, err := pb.NewControlClient(c.conn(first.api)).ListNodes(ctx, &pb.ListNodesRequest{})
			if err != nil {
				return false, err
			}
			for _, n := range resp.GetNodes() {
				if n.GetDescription().GetHostname() == m.name && n.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			return nil, err
		}
	}
	if err := c.waitHealthy(ctx); err != nil {
		return nil, err
	}
	resp, err := pb.NewControlClient(c.conn(first.api)).ListNodes(ctx, &pb.ListNodesRequest{})
	if err != nil {
		return nil, err
	}
	for _, n := range resp.GetNodes() {
		if m := c.byHostname(n.GetDescription().GetHostname()); m != nil {
			m.nodeID = n.GetId()
		}
	}
	for _, m := range c.members {
		if m.nodeID == "" {
			return nil, fmt.Errorf("cluster %s: no node record for %s", name, m.name)
		}
	}
	e.log.Info("cluster ready", "name", name, "took", time.Since(t0).Round(time.Millisecond))
	return c, nil
}

// creds are the admin credentials `shoal init` wrote in m1's data dir,
// waiting for them (init writes them first thing).
func (c *cluster) creds() *rpc.Credentials {
	c.credsOnce.Do(func() {
		deadline := time.Now().Add(30 * time.Second)
		for {
			creds, err := clientcreds.Admin(c.members[0].dataDir)
			if err == nil {
				c.admin = creds
				return
			}
			if time.Now().After(deadline) {
				panic(fmt.Sprintf("admin credentials of cluster %s: %v", c.name, err))
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	return c.admin
}

// conn returns a cached client connection to addr that retries calls
// answered Unavailable until their deadline (as the CLI does).
func (c *cluster) conn(addr string) *grpc.ClientConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cc, ok := c.conns[addr]; ok {
		return cc
	}
	cc, err := rpc.Dial(addr, c.creds(), grpc.WithUnaryInterceptor(rpc.RetryUnavailable()))
	if err != nil {
		// grpc.NewClient fails only on a malformed target.
		panic(err)
	}
	c.conns[addr] = cc
	return cc
}

func (c *cluster) byHostname(h string) *member {
	for _, m := range c.members {
		if m.name == h {
			return m
		}
	}
	return nil
}

func (c *cluster) byAPI(addr string) *member {
	for _, m := range c.members {
		if m.api == addr {
			return m
		}
	}
	return nil
}

// running returns the members whose process is up.
func (c *cluster) running() []*member {
	var out []*member
	for _, m := range c.members {
		if m.proc != nil && !m.proc.exited() {
			out = append(out, m)
		}
	}
	return out
}

// leader asks the running managers (ListNodes, answered by the leader)
// which one leads.
func (c *cluster) leader(ctx context.Context) (*member, error) {
	var lastErr error
	for _, m := range c.running() {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		resp, err := pb.NewControlClient(c.conn(m.api)).ListNodes(cctx, &pb.ListNodesRequest{})
		cancel()
		if err != nil {
			lastErr = err
			continue
		}
		for _, n := range resp.GetNodes() {
			if n.GetManagerStatus().GetLeader() {
				if l := c.byAPI(n.GetManagerStatus().GetApiAddr()); l != nil {
					return l, nil
				}
				return nil, fmt.Errorf("leader %s has unknown address %s", n.GetId(), n.GetManagerStatus().GetApiAddr())
			}
		}
		lastErr = errors.New("ListNodes shows no leader")
	}
	if lastErr == nil {
		lastErr = errors.New("no manager is running")
	}
	return nil, fmt.Errorf("find the leader: %w", lastErr)
}

// waitHealthy waits until every manager process runs, ListNodes shows
// three reachable managers and one leader, and every manager has applied
// the leader's commit index.
func (c *cluster) waitHealthy(ctx context.Context) error {
	i := 0
	return poll(ctx, 60*time.Second, 50*time.Millisecond, "cluster "+c.name+" to be healthy", func(ctx context.Context) (bool, error) {
		for _, m := range c.members {
			if m.proc == nil {
				return false, fatal(fmt.Errorf("%s was never started", m.name))
			}
			if m.proc.exited() {
				return false, fatal(m.proc.exitError())
			}
		}
		i++
		via := c.members[i%len(c.members)]
		resp, err := pb.NewControlClient(c.conn(via.api)).ListNodes(ctx, &pb.ListNodesRequest{})
		if err != nil {
			return false, fmt.Errorf("ListNodes via %s: %w", via.name, err)
		}
		var leader *member
		managers := 0
		for _, n := range resp.GetNodes() {
			ms := n.GetManagerStatus()
			if n.GetRole() != pb.NodeRole_NODE_ROLE_MANAGER || ms == nil {
				continue
			}
			managers++
			if ms.GetReachability() != pb.Reachability_REACHABILITY_REACHABLE {
				return false, fmt.Errorf("%s is %s", n.GetDescription().GetHostname(), ms.GetReachability())
			}
			if ms.GetLeader() {
				leader = c.byAPI(ms.GetApiAddr())
			}
		}
		if managers != len(c.members) {
			return false, fmt.Errorf("%d managers listed, want %d", managers, len(c.members))
		}
		if leader == nil {
			return false, errors.New("no leader listed")
		}
		gc, err := pb.NewControlClient(c.conn(leader.api)).GetCluster(ctx, &pb.GetClusterRequest{})
		if err != nil {
			return false, fmt.Errorf("GetCluster via %s: %w", leader.name, err)
		}
		var commit uint64
		for _, st := range gc.GetManagers() {
			if st.GetState() == "Leader" && st.GetApiAddr() == leader.api {
				commit = st.GetCommitIndex()
			}
		}
		if commit == 0 {
			return false, fmt.Errorf("GetCluster on %s does not report it as leader", leader.name)
		}
		for _, st := range gc.GetManagers() {
			if st.GetError() != "" {
				return false, fmt.Errorf("%s: %s", st.GetHostname(), st.GetError())
			}
			if st.GetState() != "Leader" && st.GetState() != "Follower" {
				return false, fmt.Errorf("%s is %s", st.GetHostname(), st.GetState())
			}
			if st.GetAppliedIndex() < commit {
				return false, fmt.Errorf("%s applied %d of %d", st.GetHostname(), st.GetAppliedIndex(), commit)
			}
		}
		return true, nil
	})
}

// restart starts a stopped manager again with `shoal start` on its data dir.
func (c *cluster) restart(m *member) error {
	if m.proc != nil && !m.proc.exited() {
		return fmt.Errorf("%s is still running", m.name)
	}
	args := append([]string{"start", "--data-dir", m.dataDir}, c.e.daemonArgs()...)
	p, err := c.e.startProc(c.name+"/"+m.name, m.logPath, args...)
	if err != nil {
		return err
	}
	m.proc = p
	return nil
}

// close stops the managers and closes the client connections. It notes
// errors the managers logged.
func (c *cluster) close() {
	stopping := time.Now()
	c.mu.Lock()
	for addr, cc := range c.conns {
		cc.Close()
		delete(c.conns, addr)
	}
	c.mu.Unlock()
	var procs []*proc
	for _, m := range c.members {
		if m.proc != nil {
			procs = append(procs, m.proc)
		}
	}
	stopAll(procs)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	for _, m := range c.members {
		mesh.RemoveNodeTable(ctx, m.dataDir) // a manager killed during the run left its mesh's nftables table
	}
	cancel()
	for _, m := range c.members {
		le := countErrors(m.logPath, stopping)
		if le.other > 0 {
			c.e.log.Warn("manager logged errors", "cluster", c.name, "manager", m.name, "lines", le.other, "first", le.first, "log", m.logPath)
			c.e.notef("cluster %s: %s logged %d unexpected ERROR/panic lines while the benchmark ran; first: `%s`", c.name, m.name, le.other, le.first)
		}
		c.e.mu.Lock()
		c.e.stopErrors += le.atStop
		c.e.peerDownErrors += le.peerDown
		c.e.mu.Unlock()
	}
}

// fatalError stops poll at once.
type fatalError struct{ err error }

func (f fatalError) Error() string { return f.err.Error() }
func (f fatalError) Unwrap() error { return f.err }

func fatal(err error) error { return fatalError{err} }

// poll calls f every interval, each call bounded by a short timeout, until
// it reports done, returns a fatal error, or timeout passes. The last
// non-fatal error is returned on timeout.
func poll(ctx context.Context, timeout, interval time.Duration, what string, f func(ctx context.Context) (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		done, err := f(cctx)
		cancel()
		var fe fatalError
		switch {
		case errors.As(err, &fe):
			return fmt.Errorf("waiting for %s: %w", what, fe.err)
		case done && err == nil:
			return nil
		case err != nil:
			last = err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for %s: %w", what, context.Cause(ctx))
		}
		if time.Now().After(deadline) {
			if last == nil {
				last = errors.New("not done")
			}
			return fmt.Errorf("waiting for %s: gave up after %s: %w", what, timeout, last)
		}
		select {
		case <-ctx.Done():
		case <-time.After(interval):
		}
	}
}
