package manager_test

// Helpers that run in-process clusters of managers for the tests in
// manager_test.go. Every manager gets its own loopback IP (127.R.x.y, with R
// random per test binary so that concurrent runs rarely meet) and a port
// checked free on that IP; Raft listens on port+1 and gossip on port+2.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/clientcreds"
	"github.com/shoal-cluster/shoal/internal/poll"
	"github.com/shoal-cluster/shoal/internal/rpc"
	"github.com/shoal-cluster/shoal/manager"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

const (
	// electionTimeout is generous for -race on two cores: shorter
	// timeouts make followers start spurious elections under load.
	electionTimeout = 300 * time.Millisecond
	probeInterval   = 300 * time.Millisecond
	// callTimeout bounds one client call that is expected to succeed
	// (retries on Unavailable included).
	callTimeout = 10 * time.Second
	// settleTimeout bounds polling for a cluster-wide condition.
	settleTimeout = 20 * time.Second
)

var (
	ipOctet2 = 100 + rand.IntN(150)
	ipSeq    atomic.Uint32
)

// nextIP returns a loopback address no other manager of this test binary
// uses.
func nextIP() string {
	n := int(ipSeq.Add(1))
	return fmt.Sprintf("127.%d.%d.%d", ipOctet2, n/250, n%250+2)
}

// freePort returns a port p such that p (API), p+1 (Raft) and p+2 (gossip,
// TCP and UDP) are free on ip.
func freePort(t testing.TB, ip string) int {
	t.Helper()
	for range 100 {
		p := 20000 + rand.IntN(40000)
		if portsFree(ip, p) {
			return p
		}
	}
	t.Fatalf("no free ports on %s", ip)
	return 0
}

func portsFree(ip string, p int) bool {
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	for _, port := range []int{p, p + 1, p + 2} {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port)))
		if err != nil {
			return false
		}
		closers = append(closers, l)
	}
	u, err := net.ListenPacket("udp", net.JoinHostPort(ip, fmt.Sprint(p+2)))
	if err != nil {
		return false
	}
	closers = append(closers, u)
	return true
}

// testLogger discards the managers' logs unless SHOAL_TEST_LOG is set.
func testLogger(name string) *slog.Logger {
	if os.Getenv("SHOAL_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("t", name)
}

// opts tune the managers of a test cluster.
type opts struct {
	snapshotThreshold uint64
	trailingLogs      uint64
}

// node is one manager of a test cluster with a client connected to it.
type node struct {
	name string
	id   string // node ID, kept while the manager is stopped
	cfg  manager.Config
	m    *manager.Manager // nil while stopped
	conn *grpc.ClientConn
	ctl  pb.ControlClient
}

// cluster is a set of in-process managers.
type cluster struct {
	t     *testing.T
	o     opts
	nodes []*node
	seq   int
}

func newTestCluster(t *testing.T, o opts) *cluster {
	return &cluster{t: t, o: o}
}

// newConfig returns the config of a new manager with a fresh, empty data
// dir, a fresh IP and free ports.
func (c *cluster) newConfig(name string) manager.Config {
	c.t.Helper()
	ip := nextIP()
	return manager.Config{
		DataDir:           filepath.Join(c.t.TempDir(), name),
		Hostname:          name,
		AdvertiseIP:       ip,
		APIPort:           freePort(c.t, ip),
		Timing:            raftstore.TimingFromElection(electionTimeout),
		SnapshotThreshold: c.o.snapshotThreshold,
		TrailingLogs:      c.o.trailingLogs,
		ProbeInterval:     probeInterval,
		GossipFast:        true,
		Logger:            testLogger(c.t.Name() + "/" + name),
	}
}

// addNode registers a running manager: it gets a client, and is closed
// when the test ends (before its data dir is removed).
func (c *cluster) addNode(name string, cfg manager.Config, m *manager.Manager) *node {
	c.t.Helper()
	creds, _, err := clientcreds.Find(cfg.DataDir, "")
	if err != nil {
		m.Close()
		c.t.Fatal(err)
	}
	conn, err := rpc.Dial(cfg.APIAddr(), creds, grpc.WithUnaryInterceptor(rpc.RetryUnavailable()))
	if err != nil {
		m.Close()
		c.t.Fatalf("dial %s: %v", cfg.APIAddr(), err)
	}
	n := &node{name: name, id: m.ID(), cfg: cfg, m: m, conn: conn, ctl: pb.NewControlClient(conn)}
	c.nodes = append(c.nodes, n)
	c.t.Cleanup(func() {
		n.stop()
		n.conn.Close()
	})
	return n
}

func (c *cluster) nextName() string {
	c.seq++
	return fmt.Sprintf("m%d", c.seq)
}

// isAddrInUse reports a lost race for a port that freePort found free.
func isAddrInUse(err error) bool {
	return err != nil && strings.Contains(err.Error(), "address already in use")
}

// init starts the first manager of a new cluster.
func (c *cluster) init() *node {
	c.t.Helper()
	name := c.nextName()
	for attempt := 0; ; attempt++ {
		cfg := c.newConfig(name)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		m, err := manager.Init(ctx, cfg)
		cancel()
		if isAddrInUse(err) && attempt < 5 {
			continue
		}
		if err != nil {
			c.t.Fatalf("init %s: %v", name, err)
		}
		return c.addNode(name, cfg, m)
	}
}

// join starts a manager that joins the cluster through the manager at remote.
func (c *cluster) join(remote, token string) *node {
	c.t.Helper()
	name := c.nextName()
	for attempt := 0; ; attempt++ {
		cfg := c.newConfig(name)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		m, err := manager.Join(ctx, cfg, remote, token)
		cancel()
		if isAddrInUse(err) && attempt < 5 {
			continue
		}
		if err != nil {
			c.t.Fatalf("join %s through %s: %v", name, remote, err)
		}
		return c.addNode(name, cfg, m)
	}
}

// startCluster starts n managers: one init, then joins, each through the
// manager that joined last (so most joins are forwarded by a follower).
func startCluster(t *testing.T, n int, o opts) *cluster {
	t.Helper()
	c := newTestCluster(t, o)
	first := c.init()
	token := managerToken(t, first)
	for i := 1; i < n; i++ {
		c.join(c.nodes[len(c.nodes)-1].m.APIAddr(), token)
	}
	c.waitStable()
	return c
}

// managerToken reads the manager join token through n.
func managerToken(t *testing.T, n *node) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	resp, err := n.ctl.GetCluster(ctx, &pb.GetClusterRequest{})
	if err != nil {
		t.Fatalf("get cluster through %s: %v", n.name, err)
	}
	tok := resp.GetCluster().GetJoinTokens().GetManager()
	if tok == "" {
		t.Fatalf("cluster has no manager join token")
	}
	return tok
}

// stop closes the manager (in-process stand-in for killing it).
func (n *node) stop() {
	if n.m != nil {
		n.m.Close()
		n.m = nil
	}
}

// restart starts the manager again on its data dir.
func (n *node) restart(t *testing.T, forceNewCluster bool) {
	t.Helper()
	if n.m != nil {
		t.Fatalf("restart %s: still running", n.name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := manager.Restart(ctx, n.cfg, forceNewCluster)
	if err != nil {
		t.Fatalf("restart %s: %v", n.name, err)
	}
	n.m = m
}

// running returns the managers that are not stopped.
func (c *cluster) running() []*node {
	var out []*node
	for _, n := range c.nodes {
		if n.m != nil {
			select {
			case <-n.m.Done():
				continue
			default:
			}
			out = append(out, n)
		}
	}
	return out
}

// eventually polls cond until it returns nil or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	poll.Until(t, timeout, what, poll.Err(cond))
}

// leader waits until exactly one running manager leads, and returns it.
func (c *cluster) leader() *node {
	c.t.Helper()
	var l *node
	eventually(c.t, settleTimeout, "one leader among the running managers", func() error {
		var leaders []string
		l = nil
		for _, n := range c.running() {
			if n.m.IsLeader() {
				leaders = append(leaders, n.name)
				l = n
			}
		}
		if len(leaders) != 1 {
			return fmt.Errorf("leaders: %v", leaders)
		}
		return nil
	})
	return l
}

// followers returns the running managers other than l.
func (c *cluster) followers(l *node) []*node {
	var out []*node
	for _, n := range c.running() {
		if n != l {
			out = append(out, n)
		}
	}
	return out
}

// waitStable waits until every running manager lists the same managers,
// exactly one of them the leader and all of them reachable.
func (c *cluster) waitStable() {
	c.t.Helper()
	want := make([]string, 0, len(c.running()))
	for _, n := range c.running() {
		want = append(want, n.m.ID())
	}
	slices.Sort(want)
	eventually(c.t, settleTimeout, "cluster agrees on its managers", func() error {
		var leaderID string
		for _, n := range c.running() {
			if n.m.IsLeader() {
				leaderID = n.m.ID()
			}
		}
		for _, n := range c.running() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			resp, err := n.ctl.ListNodes(ctx, &pb.ListNodesRequest{})
			cancel()
			if err != nil {
				return fmt.Errorf("list nodes through %s: %w", n.name, err)
			}
			var ids, leaders []string
			for _, nd := range resp.GetNodes() {
				ids = append(ids, nd.GetId())
				ms := nd.GetManagerStatus()
				if nd.GetRole() != pb.NodeRole_NODE_ROLE_MANAGER || ms == nil {
					return fmt.Errorf("through %s: node %s is not a manager: %v", n.name, nd.GetId(), nd.GetRole())
				}
				if ms.GetLeader() {
					leaders = append(leaders, nd.GetId())
				}
				if ms.GetReachability() != pb.Reachability_REACHABILITY_REACHABLE {
					return fmt.Errorf("through %s: node %s is %v", n.name, nd.GetId(), ms.GetReachability())
				}
			}
			slices.Sort(ids)
			if !slices.Equal(ids, want) {
				return fmt.Errorf("through %s: nodes %v, want %v", n.name, ids, want)
			}
			if len(leaders) != 1 || leaders[0] != leaderID {
				return fmt.Errorf("through %s: leaders %v, want exactly [%s]", n.name, leaders, leaderID)
			}
		}
		return nil
	})
}

// getNode reads a node through n.
func getNode(t testing.TB, n *node, id string) *pb.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	resp, err := n.ctl.GetNode(ctx, &pb.GetNodeRequest{Ref: id})
	if err != nil {
		t.Fatalf("get node %s through %s: %v", id, n.name, err)
	}
	return resp.GetNode()
}

// withLabels returns a copy of spec with extra labels added.
func withLabels(spec *pb.NodeSpec, labels map[string]string) *pb.NodeSpec {
	s := proto.Clone(spec).(*pb.NodeSpec)
	if s.Annotations == nil {
		s.Annotations = &pb.Annotations{}
	}
	if s.Annotations.Labels == nil {
		s.Annotations.Labels = map[string]string{}
	}
	for k, v := range labels {
		s.Annotations.Labels[k] = v
	}
	return s
}

// addLabel adds one label to node id with a read-modify-write through n.
func addLabel(t testing.TB, n *node, id, key, value string) {
	t.Helper()
	// The node record may change between the read and the write (a
	// manager's certificate is recorded on it as the cluster settles): read
	// again and retry, as a client does on a version conflict.
	var err error
	for range 5 {
		nd := getNode(t, n, id)
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		_, err = n.ctl.UpdateNode(ctx, &pb.UpdateNodeRequest{
			Ref: id, Version: nd.GetMeta().GetVersion(), Spec: withLabels(nd.GetSpec(), map[string]string{key: value}),
		})
		cancel()
		if status.Code(err) != codes.Aborted {
			break
		}
	}
	if err != nil {
		t.Fatalf("add label %s=%s to %s through %s: %v", key, value, id, n.name, err)
	}
}

// localLabels returns node id's labels from m's own replica.
func localLabels(m *manager.Manager, id string) map[string]string {
	var labels map[string]string
	m.Store().View(func(tx *raftstore.Tx) {
		if nd, ok := tx.Nodes().Get(id); ok {
			labels = nd.GetSpec().GetAnnotations().GetLabels()
		}
	})
	return labels
}

// missingLabels returns the keys of want that labels lacks or holds with
// another value.
func missingLabels(labels, want map[string]string) []string {
	var out []string
	for k, v := range want {
		if labels[k] != v {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// raftIDs returns the Raft server IDs in m's configuration.
func raftIDs(t testing.TB, m *manager.Manager) []string {
	t.Helper()
	servers, err := m.Store().Servers()
	if err != nil {
		t.Fatalf("raft servers: %v", err)
	}
	var ids []string
	for _, s := range servers {
		ids = append(ids, s.ID)
	}
	slices.Sort(ids)
	return ids
}

// raftIDOf returns the Raft ID of manager node id, from m's replica.
func raftIDOf(m *manager.Manager, id string) string {
	var rid string
	m.Store().View(func(tx *raftstore.Tx) {
		if nd, ok := tx.Nodes().Get(id); ok {
			rid = nd.GetManagerStatus().GetRaftId()
		}
	})
	return rid
}
