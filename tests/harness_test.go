// Package tests holds Shoal's multi-component tests: managers and workers
// together, in-process on 127.0.x.y addresses, with real Raft, gRPC,
// memberlist and processes.
package tests

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/clientcreds"
	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/mesh"
	"github.com/shoal-cluster/shoal/internal/poll"
	"github.com/shoal-cluster/shoal/internal/rpc"
	"github.com/shoal-cluster/shoal/manager"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/process"
	"github.com/shoal-cluster/shoal/worker/process/supervise"
	"github.com/shoal-cluster/shoal/worker/tasknet"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
)

// superviseEnv makes this test binary act as the process runtime's task
// supervisor when the runtime re-executes it.
const superviseEnv = "SHOAL_TEST_SUPERVISE"

// tmpPrefix names the temp dirs of this package, to find leaked processes.
const tmpPrefix = "shoal-it-"

func TestMain(m *testing.M) {
	if os.Getenv(superviseEnv) == "1" {
		os.Exit(supervise.Supervise(os.Args[1:]))
	}
	code := m.Run()
	if code == 0 {
		// Supervisors finish recording a task's end just after it exits.
		deadline := time.Now().Add(10 * time.Second)
		for len(leakedProcesses()) > 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if leaked := leakedProcesses(); len(leaked) > 0 {
			fmt.Fprintf(os.Stderr, "processes left running after the tests:\n%s\n", strings.Join(leaked, "\n"))
			code = 1
		}
	}
	if code == 0 {
		if err := goleak.Find(
			// memberlist's packet and stream listeners finish shortly after Shutdown returns.
			goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).packetListen"),
			goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).streamListen"),
			// A probe of a peer in flight at Shutdown waits out its probe
			// timeout (memberlist does not cancel it).
			goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"),
		); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines left running after the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// leakedProcesses lists processes whose command line mentions this
// package's temp dirs.
func leakedProcesses() []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(data), "\x00", " ")
		if strings.Contains(cmd, tmpPrefix) {
			out = append(out, e.Name()+": "+cmd)
		}
	}
	return out
}

// cluster is a test cluster of in-process managers and workers.
type cluster struct {
	t        *testing.T
	net      int // third octet of the 127.0.x.y addresses
	port     int
	base     string
	secrets  string // workers' secrets dirs go here: on tmpfs when there is one
	managers []*mgr
	workers  []*wrk
	// certExpiry, if set, is the certificate lifetime the cluster is made with.
	certExpiry time.Duration
	// taskPool is where the cluster's workers get their task subnets: a
	// random /16 of 10.20-119 (cmd/shoal's end-to-end clusters take
	// 10.120-219), so that clusters sharing this host never share a bridge.
	taskPool netip.Prefix
	// taskNetworks gives workers a task network (root only).
	taskNetworks bool
	logs         *lockedBuffer // every node's log, when captureLogs was called
}

// lockedBuffer is a bytes.Buffer safe for concurrent writers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Bytes returns a copy of what was written.
func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// captureLogs records the debug logs of the nodes started from now on.
func (c *cluster) captureLogs() *lockedBuffer {
	c.logs = &lockedBuffer{}
	return c.logs
}

type mgr struct {
	cfg manager.Config
	m   *manager.Manager
}

type wrk struct {
	cfg     worker.Config
	a       *worker.Agent
	runtime *process.Runtime
	taskNet *tasknet.Node // with cluster.taskNetworks
}

// Timings that stay stable under -race on two cores.
const (
	testElection  = 400 * time.Millisecond
	testHeartbeat = 500 * time.Millisecond
)

func newCluster(t *testing.T) *cluster {
	t.Helper()
	base, err := os.MkdirTemp("", tmpPrefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster dir %s", base)
	c := &cluster{t: t, net: 100 + rand.IntN(150), base: base, secrets: filepath.Join(base, "secrets"),
		taskPool: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(20 + rand.IntN(100)), 0, 0}), 16)}
	if shm, err := os.MkdirTemp("/dev/shm", tmpPrefix); err == nil {
		c.secrets = shm
	}
	c.port = c.freePort()
	t.Cleanup(func() {
		c.stopAll()
		os.RemoveAll(base)
		os.RemoveAll(c.secrets)
	})
	return c
}

func (c *cluster) ip(host int) string { return fmt.Sprintf("127.0.%d.%d", c.net, host) }

// freePort finds an API port whose Raft (+1), gossip (+2, TCP and UDP) and
// resolver (+3, TCP and UDP) ports are free on the addresses this cluster may use.
func (c *cluster) freePort() int {
	for range 200 {
		port := 20000 + rand.IntN(40000)
		if c.portsFree(port) {
			return port
		}
	}
	c.t.Fatal("no free port")
	return 0
}

func (c *cluster) portsFree(port int) bool {
	for host := 1; host <= 20; host += 9 {
		ip := c.ip(host)
		for p := port; p <= port+3; p++ {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(p)))
			if err != nil {
				return false
			}
			l.Close()
		}
		for p := port + 2; p <= port+3; p++ { // gossip and the resolver use UDP too
			u, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(p)))
			if err != nil {
				return false
			}
			u.Close()
		}
	}
	return true
}

func (c *cluster) logger(name string) *slog.Logger {
	var out []io.Writer
	if os.Getenv("SHOAL_TEST_LOG") != "" {
		out = append(out, os.Stderr)
	}
	if c.logs != nil {
		out = append(out, c.logs)
	}
	if len(out) == 0 {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(io.MultiWriter(out...), &slog.HandlerOptions{Level: slog.LevelDebug})).With("who", name)
}

func (c *cluster) managerConfig(i int) manager.Config {
	return manager.Config{
		DataDir:           filepath.Join(c.base, fmt.Sprintf("m%d", i)),
		Hostname:          fmt.Sprintf("m%d", i),
		AdvertiseIP:       c.ip(i),
		APIPort:           c.port,
		Timing:            raftstore.TimingFromElection(testElection),
		ProbeInterval:     300 * time.Millisecond,
		HeartbeatPeriod:   testHeartbeat,
		GossipFast:        true,
		MeshDatapath:      testMeshDatapath(),
		CertExpiry:        c.certExpiry,
		CertCheckInterval: 200 * time.Millisecond,
		TaskSubnetPool:    c.taskPool,
		Logger:            c.logger(fmt.Sprintf("m%d", i)),
	}
}

// addManagers starts n managers: the first inits, the others join.
func (c *cluster) addManagers(n int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for range n {
		i := len(c.managers) + 1
		cfg := c.managerConfig(i)
		var m *manager.Manager
		var err error
		if i == 1 {
			m, err = manager.Init(ctx, cfg)
		} else {
			m, err = manager.Join(ctx, cfg, c.managers[0].cfg.APIAddr(), c.token(pb.NodeRole_NODE_ROLE_MANAGER))
		}
		if err != nil {
			c.t.Fatalf("start manager %d: %v", i, err)
		}
		c.managers = append(c.managers, &mgr{cfg: cfg, m: m})
	}
}

func (c *cluster) token(role pb.NodeRole) string {
	c.t.Helper()
	var tok string
	c.eventually(20*time.Second, "join tokens", func() (bool, string) {
		for _, m := range c.live() {
			m.m.Store().View(func(tx *raftstore.Tx) {
				if cl := tx.Cluster(); cl != nil {
					tok = cl.GetJoinTokens().GetWorker()
					if role == pb.NodeRole_NODE_ROLE_MANAGER {
						tok = cl.GetJoinTokens().GetManager()
					}
				}
			})
			if tok != "" {
				return true, ""
			}
		}
		return false, "no cluster object yet"
	})
	return tok
}

// workerConfig configures worker i; its runtime is recorded in w.
func (c *cluster) workerConfig(i int, w *wrk) worker.Config {
	host := 10 + i
	cfg := worker.Config{
		DataDir:           filepath.Join(c.base, fmt.Sprintf("w%d", i)),
		Hostname:          fmt.Sprintf("w%d", i),
		AdvertiseIP:       c.ip(host),
		APIPort:           c.port,
		GossipFast:        true,
		MeshDatapath:      testMeshDatapath(),
		StatusInterval:    50 * time.Millisecond,
		CertCheckInterval: 200 * time.Millisecond,
		SecretsDir:        filepath.Join(c.secrets, fmt.Sprintf("w%d", i)),
		ConfigsDir:        filepath.Join(c.secrets, fmt.Sprintf("w%d-configs", i)),
		Logger:            c.logger(fmt.Sprintf("w%d", i)),
	}
	cfg.Runtimes = func() ([]worker.Runtime, error) {
		r, err := process.New(process.Config{
			Dir:               filepath.Join(cfg.DataDir, "worker", "process"),
			AdvertiseIP:       cfg.AdvertiseIP,
			DNSAddr:           cfg.DNSAddr(),
			SupervisorCommand: []string{os.Args[0]},
			SupervisorEnv:     []string{superviseEnv + "=1", "GORACE=atexit_sleep_ms=0"},
			Logger:            cfg.Logger,
		})
		if err != nil {
			return nil, err
		}
		w.runtime = r
		if c.taskNetworks {
			id, err := datadir.Load(cfg.DataDir)
			if err != nil {
				return nil, err
			}
			dns := netip.AddrPortFrom(netip.MustParseAddr(mesh.ContainerResolverIP(id.ClusterID)), 53)
			w.taskNet, err = tasknet.NewNode(context.Background(), tasknet.Config{StateDir: tasknet.StateDirOf(cfg.DataDir), DNS: dns, Log: cfg.Logger})
			if err != nil {
				return nil, err
			}
		}
		return []worker.Runtime{r}, nil
	}
	cfg.TaskNetwork = func() *tasknet.Node { return w.taskNet }
	w.cfg = cfg
	return cfg
}

// addWorkers starts n workers that join through the first live manager.
func (c *cluster) addWorkers(n int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tok := c.token(pb.NodeRole_NODE_ROLE_WORKER)
	for range n {
		i := len(c.workers) + 1
		w := &wrk{}
		cfg := c.workerConfig(i, w)
		a, err := worker.Join(ctx, cfg, c.live()[0].cfg.APIAddr(), tok)
		if err != nil {
			c.t.Fatalf("start worker %d: %v", i, err)
		}
		w.a = a
		c.workers = append(c.workers, w)
	}
	for _, w := range c.workers {
		if err := w.a.WaitConnected(ctx); err != nil {
			c.t.Fatal(err)
		}
	}
}

// restartWorker starts a stopped worker again on its data dir.
func (c *cluster) restartWorker(w *wrk) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := c.workerConfig(indexOf(c.workers, w)+1, w)
	a, err := worker.Restart(ctx, cfg)
	if err != nil {
		c.t.Fatalf("restart worker: %v", err)
	}
	w.a = a
}

func indexOf[T comparable](s []T, v T) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// live returns the managers that are running.
func (c *cluster) live() []*mgr {
	var out []*mgr
	for _, m := range c.managers {
		if m.m != nil {
			out = append(out, m)
		}
	}
	return out
}

// leader returns the leading manager.
func (c *cluster) leader() *mgr {
	c.t.Helper()
	var l *mgr
	c.eventually(20*time.Second, "a leader", func() (bool, string) {
		for _, m := range c.live() {
			if m.m.IsLeader() {
				l = m
				return true, ""
			}
		}
		return false, "no leader"
	})
	return l
}

func (c *cluster) stopManager(m *mgr) {
	if m.m != nil {
		m.m.Close()
		m.m = nil
	}
}

// stopAll stops workers (their tasks are then stopped) and managers.
func (c *cluster) stopAll() {
	for _, w := range c.workers {
		if w.a != nil {
			w.a.Close()
			w.a = nil
		}
		if w.runtime != nil {
			killAll(w.runtime)
		}
		if c.taskNetworks {
			tasknet.RemoveNodeNetwork(context.Background(), w.cfg.DataDir)
		}
	}
	for _, m := range c.managers {
		c.stopManager(m)
	}
	c.checkNoMeshTables()
}

// meshDatapathEnv chooses the mesh datapath of test clusters: auto (the
// default: nftables when root with nft) or userspace.
const meshDatapathEnv = "SHOAL_TEST_MESH_DATAPATH"

func testMeshDatapath() string {
	if dp := os.Getenv(meshDatapathEnv); dp != "" {
		return dp
	}
	return mesh.DatapathAuto
}

// checkNoMeshTables fails the test if a stopped node left its nftables
// table behind, and removes it.
func (c *cluster) checkNoMeshTables() {
	var dirs []string
	for _, m := range c.managers {
		dirs = append(dirs, m.cfg.DataDir)
	}
	for _, w := range c.workers {
		dirs = append(dirs, w.cfg.DataDir)
	}
	for _, dir := range dirs {
		id, err := datadir.Load(dir)
		if err != nil || os.Geteuid() != 0 {
			continue
		}
		table := mesh.TableName(id.NodeID)
		if out, err := exec.Command("nft", "list", "table", "ip", table).CombinedOutput(); err == nil {
			c.t.Errorf("node %s left its mesh table after it stopped:\n%s", id.NodeID, out)
			_ = mesh.RemoveTable(context.Background(), table)
		}
	}
}

// killAll removes every task a runtime holds, so no process outlives a test.
func killAll(rt *process.Runtime) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	infos, err := rt.List(ctx)
	if err != nil {
		return
	}
	for _, info := range infos {
		_ = rt.Stop(ctx, info.TaskID, 500*time.Millisecond)
		_ = rt.Remove(ctx, info.TaskID)
	}
}

// control returns a control API client for a manager.
func (c *cluster) control(m *mgr) pb.ControlClient {
	c.t.Helper()
	creds, _, err := clientcreds.Find(m.cfg.DataDir, "")
	if err != nil {
		c.t.Fatal(err)
	}
	conn, err := rpc.Dial(m.cfg.APIAddr(), creds, grpc.WithUnaryInterceptor(rpc.RetryUnavailable()))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { conn.Close() })
	return pb.NewControlClient(conn)
}

// eventually polls cond until it holds or the deadline passes.
func (c *cluster) eventually(timeout time.Duration, what string, cond func() (bool, string)) {
	c.t.Helper()
	poll.Until(c.t, timeout, what, cond)
}

// createTask assigns a process task to a node by writing the store
// directly (the orchestrator and scheduler are not involved).
func (c *cluster) createTask(nodeID, script string) string {
	c.t.Helper()
	return c.createTaskSpec(nodeID, &pb.ContainerSpec{Image: "/bin/sh", Args: []string{"-c", script}, StopGracePeriod: int64(2 * time.Second)})
}

// createTaskSpec assigns a process task with the given container spec.
func (c *cluster) createTaskSpec(nodeID string, spec *pb.ContainerSpec) string {
	c.t.Helper()
	id := raftstore.NewID()
	t := &pb.Task{
		Id: id, ServiceName: "test", Slot: 1, NodeId: nodeID, // standalone: no service, so no orchestrator
		Spec:         &pb.TaskSpec{Runtime: "process", Container: spec},
		DesiredState: pb.TaskState_TASK_STATE_RUNNING,
		Status:       &pb.TaskStatus{State: pb.TaskState_TASK_STATE_ASSIGNED, Timestamp: time.Now().UnixNano()},
	}
	c.update(func(tx *raftstore.Tx) error { return tx.Tasks().Create(t) })
	return id
}

// update writes through the leader.
func (c *cluster) update(fn func(tx *raftstore.Tx) error) {
	c.t.Helper()
	c.eventually(20*time.Second, "a store write", func() (bool, string) {
		l := c.leader()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := l.m.Store().Update(ctx, fn)
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
}

// task reads a task from the leader's store.
func (c *cluster) task(id string) *pb.Task {
	c.t.Helper()
	var t *pb.Task
	c.leader().m.Store().View(func(tx *raftstore.Tx) { t, _ = tx.Tasks().Get(id) })
	return t
}

// waitTaskState waits until a task's observed state is want.
func (c *cluster) waitTaskState(id string, want pb.TaskState, timeout time.Duration) *pb.Task {
	c.t.Helper()
	var t *pb.Task
	c.eventually(timeout, fmt.Sprintf("task %s to be %s", id, want), func() (bool, string) {
		t = c.task(id)
		return t.GetStatus().GetState() == want, fmt.Sprintf("state %s err %q", t.GetStatus().GetState(), t.GetStatus().GetErr())
	})
	return t
}

// nodeState reads a node's state through the control API of a manager.
func (c *cluster) nodeState(m *mgr, nodeID string) pb.NodeState {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	resp, err := c.control(m).GetNode(ctx, &pb.GetNodeRequest{Ref: nodeID})
	if err != nil {
		return pb.NodeState_NODE_STATE_UNKNOWN
	}
	return resp.GetNode().GetStatus().GetState()
}

// processAlive reports whether a pid is running (not a zombie).
func processAlive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	fields := strings.Fields(string(data))
	return len(fields) > 2 && fields[2] != "Z"
}
