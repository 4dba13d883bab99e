package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-cluster/shoal/internal/mesh"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker/tasknet"
	"google.golang.org/grpc"
)

// Helpers for the worker benchmarks: clusters with extra manager flags,
// worker processes, and a process's CPU time and RSS from /proc.

// workerIP is the loopback address worker processes advertise.
const workerIP = "127.0.0.4"

// freePortWithWorker picks a base port that is also free (API, Raft and
// gossip, TCP and UDP) on workerIP, for a worker that uses the same base.
func (e *env) freePortWithWorker() (int, error) {
	for range 50 {
		base, err := e.freePort()
		if err != nil {
			return 0, err
		}
		if portsFreeOn(workerIP, base) {
			return base, nil
		}
	}
	return 0, errors.New("no port range free on the manager and worker addresses")
}

func portsFreeOn(ip string, base int) bool {
	for off := range 3 {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(base+off)))
		if err != nil {
			return false
		}
		l.Close()
	}
	pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(base+2)))
	if err != nil {
		return false
	}
	pc.Close()
	return true
}

// newClusterN starts n manager processes (1 to 3) with the usual daemon
// flags plus extra (e.g. --heartbeat-period, --gossip-fast): m1 runs
// `shoal init`, the others `shoal join`. port 0 picks a free base port.
// It returns once every manager is reachable and caught up; env stops the
// cluster at the end of the benchmark.
func (e *env) newClusterN(ctx context.Context, name string, n, port int, extra []string) (*cluster, error) {
	if n < 1 || n > len(managerIPs) {
		return nil, fmt.Errorf("cluster %s: %d managers (want 1 to %d)", name, n, len(managerIPs))
	}
	if port == 0 {
		var err error
		if port, err = e.freePort(); err != nil {
			return nil, err
		}
	}
	c := &cluster{e: e, name: name, port: port, conns: map[string]*grpc.ClientConn{}}
	dir := filepath.Join(e.tmp, name)
	for i, ip := range managerIPs[:n] {
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
	e.log.Info("starting cluster", "name", name, "managers", n, "port", port, "dir", dir, "extra", strings.Join(extra, " "))
	args := func(sub string, m *member) []string {
		a := []string{sub, "--data-dir", m.dataDir, "--advertise", m.api, "--hostname", m.name}
		a = append(a, e.daemonArgs()...)
		return append(a, extra...)
	}
	first := c.members[0]
	var err error
	if first.proc, err = e.startProc(name+"/"+first.name, first.logPath, args("init", first)...); err != nil {
		return nil, err
	}
	token, err := c.joinToken(ctx, pb.NodeRole_NODE_ROLE_MANAGER)
	if err != nil {
		return nil, err
	}
	for _, m := range c.members[1:] {
		a := append(args("join", m), "--token", token, first.api)
		if m.proc, err = e.startProc(name+"/"+m.name, m.logPath, a...); err != nil {
			return nil, err
		}
		err := poll(ctx, 30*time.Second, 50*time.Millisecond, m.name+" to join", func(ctx context.Context) (bool, error) {
			if m.proc.exited() {
				return false, fatal(m.proc.exitError())
			}
			n, err := c.nodeByHostname(ctx, m.name)
			return n != nil && n.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER, err
		})
		if err != nil {
			return nil, err
		}
	}
	if err := c.waitHealthy(ctx); err != nil {
		return nil, err
	}
	for _, m := range c.members {
		nd, err := c.nodeByHostname(ctx, m.name)
		if err != nil {
			return nil, err
		}
		if nd == nil {
			return nil, fmt.Errorf("cluster %s: no node record for %s", name, m.name)
		}
		m.nodeID = nd.GetId()
	}
	e.log.Info("cluster ready", "name", name, "took", time.Since(t0).Round(time.Millisecond))
	return c, nil
}

// joinToken waits until m1 answers GetCluster and returns a join token.
func (c *cluster) joinToken(ctx context.Context, role pb.NodeRole) (string, error) {
	first := c.members[0]
	var token string
	err := poll(ctx, 30*time.Second, 50*time.Millisecond, first.name+" to create the cluster", func(ctx context.Context) (bool, error) {
		if first.proc != nil && first.proc.exited() {
			return false, fatal(first.proc.exitError())
		}
		resp, err := pb.NewControlClient(c.conn(first.api)).GetCluster(ctx, &pb.GetClusterRequest{})
		if err != nil {
			return false, err
		}
		token = resp.GetCluster().GetJoinTokens().GetManager()
		if role == pb.NodeRole_NODE_ROLE_WORKER {
			token = resp.GetCluster().GetJoinTokens().GetWorker()
		}
		return token != "", nil
	})
	return token, err
}

// nodeByHostname finds a node record through m1 (nil if none).
func (c *cluster) nodeByHostname(ctx context.Context, host string) (*pb.Node, error) {
	resp, err := pb.NewControlClient(c.conn(c.members[0].api)).ListNodes(ctx, &pb.ListNodesRequest{})
	if err != nil {
		return nil, err
	}
	for _, n := range resp.GetNodes() {
		if n.GetDescription().GetHostname() == host {
			return n, nil
		}
	}
	return nil, nil
}

// workerNode is a worker process (`shoal join` with a worker token, then
// `shoal start` after a kill).
type workerNode struct {
	e       *env
	name    string // hostname
	label   string // process name in logs: cluster/hostname
	dataDir string
	logPath string
	extra   []string
	nodeID  string
	proc    *proc
}

// startWorker joins a worker process at workerIP and the cluster's port
// and waits until ListNodes shows it Ready.
func (c *cluster) startWorker(ctx context.Context, name string, extra []string) (*workerNode, error) {
	return c.startWorkerAt(ctx, name, workerIP, extra)
}

// startWorkerAt is startWorker on another loopback address.
func (c *cluster) startWorkerAt(ctx context.Context, name, ip string, extra []string) (*workerNode, error) {
	token, err := c.joinToken(ctx, pb.NodeRole_NODE_ROLE_WORKER)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(c.e.tmp, c.name)
	w := &workerNode{e: c.e, name: name, label: c.name + "/" + name, dataDir: filepath.Join(dir, name), logPath: filepath.Join(dir, name+".log"), extra: extra}
	args := []string{"join", "--data-dir", w.dataDir, "--advertise", net.JoinHostPort(ip, strconv.Itoa(c.port)),
		"--hostname", name, "--token", token, "--log-level", "info"}
	args = append(append(args, extra...), c.members[0].api)
	if w.proc, err = c.e.startProc(w.label, w.logPath, args...); err != nil {
		return nil, err
	}
	n, err := c.waitNodeState(ctx, w, pb.NodeState_NODE_STATE_READY, 30*time.Second)
	if err != nil {
		return nil, err
	}
	w.nodeID = n.GetId()
	return w, nil
}

// restart starts a killed worker again with `shoal start` on its data dir.
func (w *workerNode) restart() error {
	if w.proc != nil && !w.proc.exited() {
		return fmt.Errorf("%s is still running", w.name)
	}
	args := append([]string{"start", "--data-dir", w.dataDir, "--log-level", "info"}, w.extra...)
	p, err := w.e.startProc(w.label, w.logPath, args...)
	if err != nil {
		return err
	}
	w.proc = p
	return nil
}

// stop stops the worker (SIGTERM, then SIGKILL) and notes ERROR lines it
// logged before.
func (w *workerNode) stop() {
	if w.proc == nil {
		return
	}
	stopping := time.Now()
	stopAll([]*proc{w.proc})
	if le := countErrors(w.logPath, stopping); le.other > 0 {
		w.e.notef("worker %s logged %d unexpected ERROR/panic lines; first: `%s`", w.label, le.other, le.first)
	}
	// A worker that can run containers added its cluster's container
	// resolver address to lo, and leaves it there when it stops.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	mesh.RemoveNodeContainerAddrs(ctx, w.dataDir)
	mesh.RemoveNodeTable(ctx, w.dataDir)      // left when it had to be killed
	tasknet.RemoveNodeNetwork(ctx, w.dataDir) // a stopped worker leaves its task network for a restart
	cancel()
}

// waitNodeState polls ListNodes on m1 until the worker's node (by
// hostname) is in state want.
func (c *cluster) waitNodeState(ctx context.Context, w *workerNode, want pb.NodeState, timeout time.Duration) (*pb.Node, error) {
	var node *pb.Node
	err := poll(ctx, timeout, 20*time.Millisecond, w.name+" to be "+want.String(), func(ctx context.Context) (bool, error) {
		if w.proc != nil && w.proc.exited() && want == pb.NodeState_NODE_STATE_READY {
			return false, fatal(w.proc.exitError())
		}
		n, err := c.nodeByHostname(ctx, w.name)
		if err != nil {
			return false, err
		}
		if n == nil {
			return false, errors.New("no node record yet")
		}
		if got := n.GetStatus().GetState(); got != want {
			return false, fmt.Errorf("state %s", got)
		}
		node = n
		return true, nil
	})
	return node, err
}

// procUsage is a process's cumulative CPU time and current RSS.
type procUsage struct {
	at  time.Time
	cpu time.Duration // user + system
	rss int64         // bytes
}

// clockTick is USER_HZ, the unit of utime and stime in /proc/PID/stat
// (100 on every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// readProcUsage reads /proc/PID/stat (utime, stime) and /proc/PID/status
// (VmRSS).
func readProcUsage(pid int) (procUsage, error) {
	u := procUsage{at: time.Now()}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return u, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return u, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return u, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	u.cpu = time.Duration(ut+st) * clockTick
	sf, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	defer sf.Close()
	sc := bufio.NewScanner(sf)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				return u, fmt.Errorf("/proc/%d/status VmRSS: %w", pid, err)
			}
			u.rss = kb * 1024
			return u, nil
		}
	}
	return u, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}
