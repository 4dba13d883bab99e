package manager_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/manager"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// TestMain fails the package when any test leaves a goroutine behind:
// every manager, Raft store, gossip member, gRPC server and client
// connection a test starts must be gone once it has been closed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(settleAfterRun{m})
}

// settleAfterRun gives goroutines that end by themselves shortly after a
// Close a few seconds to do so before goleak looks, instead of ignoring
// them: memberlist's Shutdown does not wait for a probe in flight
// (github.com/hashicorp/memberlist.(*Memberlist).probeNode and its TCP
// fallback), which returns within one probe interval. A goroutine still
// there after the grace period is reported by VerifyTestMain as a leak.
type settleAfterRun struct{ m *testing.M }

func (s settleAfterRun) Run() int {
	code := s.m.Run()
	deadline := time.Now().Add(10 * time.Second)
	for goleak.Find() != nil && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	return code
}

func callCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestClusterForms starts clusters of three and five managers and checks
// that every manager reports the same nodes, one leader, all reachable.
func TestClusterForms(t *testing.T) {
	for _, size := range []int{3, 5} {
		t.Run(fmt.Sprintf("%d managers", size), func(t *testing.T) {
			c := startCluster(t, size, opts{}) // waits for ListNodes to agree everywhere
			l := c.leader()
			clusterID := c.nodes[0].m.ClusterID()
			wantRaft := raftIDs(t, l.m)
			if len(wantRaft) != size {
				t.Fatalf("leader's Raft configuration has %d servers, want %d: %v", len(wantRaft), size, wantRaft)
			}
			for _, n := range c.nodes {
				if n.m.ClusterID() != clusterID {
					t.Errorf("%s belongs to cluster %s, want %s", n.name, n.m.ClusterID(), clusterID)
				}
				eventually(t, settleTimeout, n.name+" sees the Raft configuration and the leader", func() error {
					if got := raftIDs(t, n.m); !slices.Equal(got, wantRaft) {
						return fmt.Errorf("raft servers %v, want %v", got, wantRaft)
					}
					resp, err := n.ctl.GetCluster(callCtx(t, 3*time.Second), &pb.GetClusterRequest{})
					if err != nil {
						return err
					}
					if resp.GetCluster().GetId() != clusterID {
						return fmt.Errorf("cluster %s, want %s", resp.GetCluster().GetId(), clusterID)
					}
					if len(resp.GetManagers()) != size {
						return fmt.Errorf("%d managers, want %d", len(resp.GetManagers()), size)
					}
					if resp.GetLeaderNodeId() != l.m.ID() {
						return fmt.Errorf("leader %q, want %s", resp.GetLeaderNodeId(), l.m.ID())
					}
					return nil
				})
			}
		})
	}
}

// TestLeaderFailover stops the leader while a writer keeps adding labels
// through the followers: a new leader takes over, every acknowledged write
// survives, and every surviving manager accepts writes.
func TestLeaderFailover(t *testing.T) {
	c := startCluster(t, 3, opts{})
	old := c.leader()
	survivors := c.followers(old)
	target := survivors[0].m.ID()
	base := getNode(t, survivors[0], target).GetSpec()

	var (
		mu     sync.Mutex
		acked  = map[string]string{}
		failed []string
	)
	ackedCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	var stopOnce sync.Once
	stopWriter := func() {
		stopOnce.Do(func() { close(stop) })
		<-done
	}
	t.Cleanup(stopWriter)
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			key := fmt.Sprintf("w%04d", i)
			mu.Lock()
			labels := maps.Clone(acked)
			mu.Unlock()
			labels[key] = "acked"
			via := survivors[i%len(survivors)]
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			_, err := via.ctl.UpdateNode(ctx, &pb.UpdateNodeRequest{Ref: target, Spec: withLabels(base, labels)})
			cancel()
			mu.Lock()
			if err == nil {
				acked[key] = "acked"
			} else {
				failed = append(failed, fmt.Sprintf("%s via %s: %v", key, via.name, err))
			}
			mu.Unlock()
		}
	}()

	eventually(t, settleTimeout, "writes before the failover", func() error {
		if n := ackedCount(); n < 5 {
			return fmt.Errorf("%d acknowledged", n)
		}
		return nil
	})
	before := ackedCount()
	start := time.Now()
	old.stop()
	newLeader := c.leader()
	t.Logf("new leader %s after %v", newLeader.name, time.Since(start).Round(time.Millisecond))
	eventually(t, settleTimeout, "writes after the failover", func() error {
		if n := ackedCount(); n < before+5 {
			return fmt.Errorf("%d acknowledged, %d before the failover", n, before)
		}
		return nil
	})
	stopWriter()
	t.Logf("%d writes acknowledged (%d before the leader stopped), %d failed", len(acked), before, len(failed))
	for _, f := range failed {
		t.Errorf("write failed although the cluster kept a quorum: %s", f)
	}

	// Every acknowledged write is there, through each survivor and in its
	// own replica.
	for _, s := range survivors {
		labels := getNode(t, s, target).GetSpec().GetAnnotations().GetLabels()
		if miss := missingLabels(labels, acked); len(miss) > 0 {
			t.Errorf("through %s: acknowledged labels missing: %v", s.name, miss)
		}
		eventually(t, settleTimeout, s.name+"'s replica holds every acknowledged write", func() error {
			if miss := missingLabels(localLabels(s.m, target), acked); len(miss) > 0 {
				return fmt.Errorf("missing %v", miss)
			}
			return nil
		})
	}

	// Writes succeed through every surviving manager, leader or follower.
	var token string
	for _, s := range survivors {
		addLabel(t, s, target, "via-"+s.name, "ok")
		resp, err := s.ctl.RotateJoinToken(callCtx(t, callTimeout), &pb.RotateJoinTokenRequest{Role: pb.NodeRole_NODE_ROLE_MANAGER})
		if err != nil {
			t.Fatalf("rotate the join token through %s: %v", s.name, err)
		}
		token = resp.GetToken()
	}
	for _, s := range survivors {
		eventually(t, settleTimeout, s.name+" sees the last writes", func() error {
			if miss := missingLabels(localLabels(s.m, target), map[string]string{"via-" + survivors[0].name: "ok", "via-" + survivors[1].name: "ok"}); len(miss) > 0 {
				return fmt.Errorf("missing labels %v", miss)
			}
			resp, err := s.ctl.GetCluster(callCtx(t, 3*time.Second), &pb.GetClusterRequest{})
			if err != nil {
				return err
			}
			if got := resp.GetCluster().GetJoinTokens().GetManager(); got != token {
				return fmt.Errorf("manager token %q, want the last rotated one %q", got, token)
			}
			return nil
		})
	}

	// The survivors report the stopped leader as unreachable.
	eventually(t, settleTimeout, "the old leader shows as unreachable", func() error {
		resp, err := survivors[0].ctl.ListNodes(callCtx(t, 3*time.Second), &pb.ListNodesRequest{})
		if err != nil {
			return err
		}
		for _, nd := range resp.GetNodes() {
			ms := nd.GetManagerStatus()
			switch nd.GetId() {
			case old.id:
				if ms.GetReachability() != pb.Reachability_REACHABILITY_UNREACHABLE || ms.GetLeader() {
					return fmt.Errorf("old leader: %v, leader=%v", ms.GetReachability(), ms.GetLeader())
				}
			case newLeader.m.ID():
				if !ms.GetLeader() {
					return fmt.Errorf("new leader %s not flagged as leader", newLeader.name)
				}
			}
		}
		return nil
	})

	// The old leader comes back as a follower and catches up.
	old.restart(t, false)
	eventually(t, settleTimeout, "the old leader catches up", func() error {
		if miss := missingLabels(localLabels(old.m, target), acked); len(miss) > 0 {
			return fmt.Errorf("missing %v", miss)
		}
		return nil
	})
	c.waitStable()
}

// TestRestartCatchUp stops a follower, writes, and restarts it: it catches
// up from the leader's log, or from a snapshot once the log is compacted.
func TestRestartCatchUp(t *testing.T) {
	cases := []struct {
		name     string
		o        opts
		snapshot bool
	}{
		{name: "log replay"},
		{name: "snapshot install", o: opts{snapshotThreshold: 16, trailingLogs: 8}, snapshot: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := startCluster(t, 3, tc.o)
			l := c.leader()
			f := c.followers(l)[0]
			target := l.m.ID()
			snapDir := filepath.Join(f.cfg.DataDir, "raft", "snapshots")
			f.stop()
			if tc.snapshot && countSnapshots(t, snapDir) != 0 {
				t.Fatalf("the follower already holds a snapshot")
			}

			base := getNode(t, l, target).GetSpec()
			want := map[string]string{}
			for i := range 40 {
				want[fmt.Sprintf("k%02d", i)] = fmt.Sprint(i)
				if _, err := l.ctl.UpdateNode(callCtx(t, callTimeout), &pb.UpdateNodeRequest{Ref: target, Spec: withLabels(base, want)}); err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
			}
			if tc.snapshot {
				if err := l.m.Store().Snapshot(); err != nil {
					t.Fatalf("snapshot on the leader: %v", err)
				}
			}

			f.restart(t, false)
			eventually(t, settleTimeout, "the restarted follower catches up", func() error {
				if miss := missingLabels(localLabels(f.m, target), want); len(miss) > 0 {
					return fmt.Errorf("missing %d labels: %v", len(miss), miss)
				}
				return nil
			})
			if tc.snapshot {
				// The follower ran too briefly to take a snapshot of its own
				// (SnapshotInterval is 30s): this one came from the leader.
				if n := countSnapshots(t, snapDir); n == 0 {
					t.Errorf("the follower caught up without installing the leader's snapshot")
				}
			}

			// The restarted follower takes part again: it forwards a write.
			addLabel(t, f, target, "after-restart", "yes")
			eventually(t, settleTimeout, "the restarted follower applies new writes", func() error {
				if localLabels(f.m, target)["after-restart"] != "yes" {
					return errors.New("label missing")
				}
				return nil
			})
			c.waitStable()
		})
	}
}

// countSnapshots counts the finished snapshots in a Raft snapshot dir.
func countSnapshots(t *testing.T, dir string) int {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if e.IsDir() && !strings.HasSuffix(e.Name(), ".tmp") {
			n++
		}
	}
	return n
}

// TestBootstrapOnce checks that a data dir is bootstrapped once: Init
// refuses a dir that holds a node, and restarting the first manager keeps
// its identity and the managers that joined since.
func TestBootstrapOnce(t *testing.T) {
	c := startCluster(t, 2, opts{})
	first, second := c.nodes[0], c.nodes[1]
	clusterID, nodeID := first.m.ClusterID(), first.m.ID()
	wantRaft := raftIDs(t, first.m)
	if len(wantRaft) != 2 {
		t.Fatalf("raft configuration %v, want two servers", wantRaft)
	}

	// Init refuses the dir of a running manager and of a stopped one,
	// before touching the dir or its ports.
	if _, err := manager.Init(callCtx(t, 5*time.Second), second.cfg); err == nil || !strings.Contains(err.Error(), "already belongs to node "+second.m.ID()) {
		t.Fatalf("init on the running second manager's data dir: %v, want 'already belongs to node'", err)
	}
	first.stop()
	_, err := manager.Init(callCtx(t, 5*time.Second), first.cfg)
	if err == nil || !strings.Contains(err.Error(), "already belongs to node "+nodeID) {
		t.Fatalf("init on the first manager's data dir: %v, want 'already belongs to node'", err)
	}
	id, err := datadir.Load(first.cfg.DataDir)
	if err != nil || id.NodeID != nodeID || id.ClusterID != clusterID {
		t.Fatalf("identity after the refused init: %+v, %v", id, err)
	}

	// A non-empty directory that is not Shoal's is refused and left alone.
	foreign := filepath.Join(t.TempDir(), "foreign")
	writeForeignDir(t, foreign)
	cfg := c.newConfig("foreign")
	cfg.DataDir = foreign
	if _, err := manager.Init(callCtx(t, 5*time.Second), cfg); err == nil || !strings.Contains(err.Error(), "not a Shoal data dir") {
		t.Fatalf("init on a foreign dir: %v, want 'not a Shoal data dir'", err)
	}
	checkForeignDirUntouched(t, foreign)

	// Restart does not bootstrap a second, one-manager cluster.
	first.restart(t, false)
	if first.m.ClusterID() != clusterID || first.m.ID() != nodeID {
		t.Fatalf("after restart: cluster %s node %s, want %s %s", first.m.ClusterID(), first.m.ID(), clusterID, nodeID)
	}
	c.leader()
	for _, n := range c.nodes {
		eventually(t, settleTimeout, n.name+" keeps both managers in the Raft configuration", func() error {
			if got := raftIDs(t, n.m); !slices.Equal(got, wantRaft) {
				return fmt.Errorf("raft servers %v, want %v", got, wantRaft)
			}
			return nil
		})
	}
	addLabel(t, first, nodeID, "restarted", "yes")
	eventually(t, settleTimeout, "the second manager sees the write", func() error {
		if localLabels(second.m, nodeID)["restarted"] != "yes" {
			return errors.New("label missing")
		}
		return nil
	})
	c.waitStable()

	// A full stop and restart (joined manager first) resumes the same
	// two-manager cluster with its state.
	first.stop()
	second.stop()
	second.restart(t, false)
	first.restart(t, false)
	c.leader()
	for _, n := range c.nodes {
		eventually(t, settleTimeout, n.name+" resumes with its state after a full restart", func() error {
			if got := raftIDs(t, n.m); !slices.Equal(got, wantRaft) {
				return fmt.Errorf("raft servers %v, want %v", got, wantRaft)
			}
			if localLabels(n.m, nodeID)["restarted"] != "yes" {
				return errors.New("label missing")
			}
			return nil
		})
	}
	c.waitStable()
}

func writeForeignDir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "precious.txt"), []byte("not shoal's"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func checkForeignDirUntouched(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"precious.txt"}) {
		t.Errorf("foreign dir now holds %v, want only precious.txt", names)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "precious.txt")); err != nil || string(data) != "not shoal's" {
		t.Errorf("foreign file changed: %q, %v", data, err)
	}
}

// TestJoinErrors checks that a join that cannot succeed fails with a clear
// error within its deadline and leaves the data dir unused.
func TestJoinErrors(t *testing.T) {
	a := startCluster(t, 1, opts{})
	other := startCluster(t, 1, opts{})
	an := a.nodes[0]
	current := func(t *testing.T) string { return managerToken(t, an) }
	worker := func(t *testing.T) string {
		resp, err := an.ctl.GetCluster(callCtx(t, callTimeout), &pb.GetClusterRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetCluster().GetJoinTokens().GetWorker()
	}
	deadAddr := func(t *testing.T) string {
		ip := nextIP()
		return net.JoinHostPort(ip, fmt.Sprint(freePort(t, ip)))
	}

	cases := []struct {
		name    string
		token   func(t *testing.T) string
		remote  func(t *testing.T) string // default: the manager of cluster a
		foreign bool                      // join into a non-empty dir that is not Shoal's
		want    string
	}{
		{name: "malformed token", token: func(*testing.T) string { return "SWARM-1-abc" }, want: "malformed join token"},
		{name: "wrong secret", token: func(t *testing.T) string {
			digest, _, _ := strings.Cut(strings.TrimPrefix(current(t), "SHOAL-1-"), "-")
			return "SHOAL-1-" + digest + "-" + strings.Repeat("a", 32)
		}, want: "invalid join token"},
		{name: "worker token", token: worker, want: "worker token"},
		{name: "rotated token", token: func(t *testing.T) string {
			old := current(t)
			if _, err := an.ctl.RotateJoinToken(callCtx(t, callTimeout), &pb.RotateJoinTokenRequest{Role: pb.NodeRole_NODE_ROLE_MANAGER}); err != nil {
				t.Fatal(err)
			}
			if current(t) == old {
				t.Fatal("the token did not change")
			}
			return old
		}, want: "invalid join token"},
		{name: "token of another cluster", token: func(t *testing.T) string { return managerToken(t, other.nodes[0]) }, want: "CA digest mismatch"},
		{name: "nothing listens", token: current, remote: deadAddr, want: "no Shoal manager answered"},
		{name: "data dir not Shoal's", token: current, foreign: true, want: "not a Shoal data dir"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := a.newConfig("joiner")
			if tc.foreign {
				writeForeignDir(t, cfg.DataDir)
			}
			remote := an.m.APIAddr()
			if tc.remote != nil {
				remote = tc.remote(t)
			}
			token := tc.token(t)
			const deadline = 3 * time.Second
			start := time.Now()
			m, err := manager.Join(callCtx(t, deadline), cfg, remote, token)
			elapsed := time.Since(start)
			if err == nil {
				m.Close()
				t.Fatalf("join succeeded")
			}
			t.Logf("join failed after %v: %v", elapsed.Round(time.Millisecond), err)
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if elapsed > deadline+time.Second {
				t.Errorf("join took %v, beyond its %v deadline", elapsed, deadline)
			}
			if _, err := os.Stat(filepath.Join(cfg.DataDir, datadir.FileName)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s exists after the failed join (stat: %v)", datadir.FileName, err)
			}
			if tc.foreign {
				checkForeignDirUntouched(t, cfg.DataDir)
			} else if err := datadir.CheckUnused(cfg.DataDir); err != nil {
				t.Errorf("data dir not reusable after the failed join: %v", err)
			}
		})
	}

	// None of the refused joins left a trace in the cluster, and the
	// current token still admits a manager.
	resp, err := an.ctl.ListNodes(callCtx(t, callTimeout), &pb.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetNodes()) != 1 {
		t.Errorf("cluster holds %d nodes after the refused joins, want 1", len(resp.GetNodes()))
	}
	if got := raftIDs(t, an.m); len(got) != 1 {
		t.Errorf("raft configuration %v after the refused joins, want one server", got)
	}
	a.join(an.m.APIAddr(), current(t))
	a.waitStable()
}

// TestQuorumLossAndForceNewCluster stops two of three managers: writes
// through the survivor fail clearly and in time; restarting it with
// force-new-cluster makes it a one-manager cluster that kept its state.
func TestQuorumLossAndForceNewCluster(t *testing.T) {
	for _, survivorLeads := range []bool{true, false} {
		name := "survivor was a follower"
		if survivorLeads {
			name = "survivor was the leader"
		}
		t.Run(name, func(t *testing.T) {
			c := startCluster(t, 3, opts{})
			l := c.leader()
			survivor := l
			if !survivorLeads {
				survivor = c.followers(l)[0]
			}
			self := survivor.m.ID()
			var others []string
			for _, n := range c.nodes {
				if n != survivor {
					others = append(others, n.m.ID())
				}
			}
			addLabel(t, survivor, self, "before", "quorum-loss")
			eventually(t, settleTimeout, "the survivor applied the write", func() error {
				if localLabels(survivor.m, self)["before"] != "quorum-loss" {
					return errors.New("label missing")
				}
				return nil
			})
			for _, n := range c.nodes {
				if n != survivor {
					n.stop()
				}
			}

			const deadline = 3 * time.Second
			spec := withLabels(getLocalSpec(t, survivor, self), map[string]string{"during": "quorum-loss"})
			start := time.Now()
			_, err := survivor.ctl.UpdateNode(callCtx(t, deadline), &pb.UpdateNodeRequest{Ref: self, Spec: spec})
			elapsed := time.Since(start)
			t.Logf("write without quorum failed after %v: %v", elapsed.Round(time.Millisecond), err)
			switch st := status.Convert(err); {
			case err == nil:
				t.Fatal("a write succeeded without a quorum")
			case st.Code() == codes.Unavailable:
				if msg := st.Message(); !strings.Contains(msg, "leader") && !strings.Contains(msg, "majority") {
					t.Errorf("unavailable, but the message says nothing of a leader or majority: %q", msg)
				}
			case st.Code() == codes.DeadlineExceeded:
			default:
				t.Errorf("write without quorum: %v, want Unavailable or DeadlineExceeded", err)
			}
			if elapsed > deadline+time.Second {
				t.Errorf("the failing write took %v, beyond its %v deadline", elapsed, deadline)
			}
			// GetCluster still answers from the local replica.
			if _, err := survivor.ctl.GetCluster(callCtx(t, deadline), &pb.GetClusterRequest{}); err != nil {
				t.Errorf("get cluster without quorum: %v", err)
			}

			survivor.stop()
			survivor.restart(t, true)
			if !survivor.m.IsLeader() {
				t.Fatal("force-new-cluster returned before the survivor leads")
			}
			if got := localLabels(survivor.m, self)["before"]; got != "quorum-loss" {
				t.Errorf("state lost by force-new-cluster: label before=%q", got)
			}
			addLabel(t, survivor, self, "after", "force-new-cluster")
			if got, want := raftIDs(t, survivor.m), []string{raftIDOf(survivor.m, self)}; !slices.Equal(got, want) {
				t.Errorf("raft configuration %v, want %v", got, want)
			}
			resp, err := survivor.ctl.ListNodes(callCtx(t, callTimeout), &pb.ListNodesRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.GetNodes()) != 1 || resp.GetNodes()[0].GetId() != self ||
				!resp.GetNodes()[0].GetManagerStatus().GetLeader() || resp.GetNodes()[0].GetRole() != pb.NodeRole_NODE_ROLE_MANAGER {
				t.Errorf("nodes after force-new-cluster: %v, want only the survivor, leading", resp.GetNodes())
			}
			cl, err := survivor.ctl.GetCluster(callCtx(t, callTimeout), &pb.GetClusterRequest{})
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range others {
				if !slices.Contains(cl.GetCluster().GetRemovedNodes(), id) {
					t.Errorf("old manager %s is not marked removed", id)
				}
			}

			// An old manager that comes back learns it was removed and stops,
			// without disturbing the new cluster.
			var back *node
			for _, n := range c.nodes {
				if n != survivor {
					back = n
				}
			}
			term := survivor.m.Store().Status().Term
			back.restart(t, false)
			select {
			case <-back.m.Done():
			case <-time.After(15 * time.Second):
				t.Fatalf("old manager %s still runs 15s after it came back", back.name)
			}
			if !errors.Is(back.m.Err(), manager.ErrRemoved) {
				t.Errorf("old manager stopped with %v, want ErrRemoved", back.m.Err())
			}
			if !survivor.m.IsLeader() || survivor.m.Store().Status().Term != term {
				t.Errorf("the old manager disturbed the new cluster: leader=%v term %d, was %d", survivor.m.IsLeader(), survivor.m.Store().Status().Term, term)
			}
			addLabel(t, survivor, self, "after-old-came-back", "yes")
		})
	}
}

// getLocalSpec reads a node's spec from n's replica (no leader needed).
func getLocalSpec(t *testing.T, n *node, id string) *pb.NodeSpec {
	t.Helper()
	var spec *pb.NodeSpec
	n.m.Store().View(func(tx *raftstore.Tx) {
		if nd, ok := tx.Nodes().Get(id); ok {
			spec = nd.GetSpec()
		}
	})
	if spec == nil {
		t.Fatalf("node %s not in %s's replica", id, n.name)
	}
	return spec
}

// TestDemoteAndRemove takes managers out of Raft by demoting the leader,
// force-removing a follower and demoting another, checks that each of them
// notices and stops, and checks the refusals of demote and remove.
func TestDemoteAndRemove(t *testing.T) {
	c := startCluster(t, 4, opts{})
	l := c.leader()
	fs := c.followers(l)
	b, d := fs[0], fs[1]

	_, err := d.ctl.RemoveNode(callCtx(t, callTimeout), &pb.RemoveNodeRequest{Ref: "no-such-node"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("remove an unknown node: %v, want NotFound", err)
	}
	_, err = d.ctl.RemoveNode(callCtx(t, callTimeout), &pb.RemoveNodeRequest{Ref: b.id})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("remove a manager without force: %v, want FailedPrecondition", err)
	}

	demote := func(via *node, id string) error {
		nd := getNode(t, via, id)
		spec := proto.Clone(nd.GetSpec()).(*pb.NodeSpec)
		spec.DesiredRole = pb.NodeRole_NODE_ROLE_WORKER
		resp, err := via.ctl.UpdateNode(callCtx(t, callTimeout), &pb.UpdateNodeRequest{Ref: id, Spec: spec})
		if err == nil && resp.GetNode().GetRole() != pb.NodeRole_NODE_ROLE_WORKER {
			t.Errorf("demoted node %s has role %v", id, resp.GetNode().GetRole())
		}
		return err
	}
	// checkGone checks that n left the Raft configuration (seen from
	// another manager, via), that it noticed and stopped, and that its
	// data dir can no longer start a manager.
	checkGone := func(n, via *node, raftID string, demoted bool) {
		t.Helper()
		eventually(t, settleTimeout, n.name+" leaves the Raft configuration", func() error {
			if ids := raftIDs(t, via.m); slices.Contains(ids, raftID) {
				return fmt.Errorf("%s's Raft ID %s still in %v", n.name, raftID, ids)
			}
			return nil
		})
		start := time.Now()
		select {
		case <-n.m.Done():
			t.Logf("%s stopped %v after its removal", n.name, time.Since(start).Round(time.Millisecond))
		case <-time.After(15 * time.Second):
			t.Fatalf("removed manager %s did not stop within 15s", n.name)
		}
		stopErr := n.m.Err()
		n.stop()
		id, err := datadir.Load(n.cfg.DataDir)
		if demoted {
			// A demoted manager carries on as a worker of the same cluster.
			if !errors.Is(stopErr, manager.ErrDemoted) {
				t.Errorf("demoted manager %s stopped with %v, want ErrDemoted", n.name, stopErr)
			}
			if err != nil || id.Role != "worker" || id.Removed {
				t.Errorf("demoted manager's identity: %+v, %v; want a worker", id, err)
			}
			if _, _, _, err := datadir.LoadCerts(n.cfg.DataDir); err != nil {
				t.Errorf("demoted manager's certificate: %v", err)
			}
			return
		}
		if !errors.Is(stopErr, manager.ErrRemoved) {
			t.Errorf("removed manager %s stopped with %v, want ErrRemoved", n.name, stopErr)
		}
		if err != nil || !id.Removed {
			t.Errorf("removed manager's identity not marked removed: %+v, %v", id, err)
		}
		if _, err := manager.Restart(callCtx(t, 5*time.Second), n.cfg, false); !errors.Is(err, manager.ErrRemoved) {
			t.Errorf("restart of a removed manager: %v, want ErrRemoved", err)
		}
	}
	checkWorker := func(via *node, id string) {
		t.Helper()
		nd := getNode(t, via, id)
		if nd.GetRole() != pb.NodeRole_NODE_ROLE_WORKER || nd.GetManagerStatus() != nil {
			t.Errorf("demoted %s: role %v, manager status %v", id, nd.GetRole(), nd.GetManagerStatus())
		}
	}

	// A demotion based on a stale read is refused and changes nothing.
	stale := getNode(t, l, b.id)
	addLabel(t, l, b.id, "moved", "on")
	staleSpec := proto.Clone(stale.GetSpec()).(*pb.NodeSpec)
	staleSpec.DesiredRole = pb.NodeRole_NODE_ROLE_WORKER
	_, err = d.ctl.UpdateNode(callCtx(t, callTimeout), &pb.UpdateNodeRequest{Ref: b.id, Version: stale.GetMeta().GetVersion(), Spec: staleSpec})
	if status.Code(err) != codes.Aborted {
		t.Errorf("demote with a stale version: %v, want Aborted", err)
	}
	if bRaft := raftIDOf(l.m, b.id); !slices.Contains(raftIDs(t, l.m), bRaft) {
		t.Fatalf("a refused demotion took %s out of the Raft configuration", b.name)
	}
	if nd := getNode(t, l, b.id); nd.GetRole() != pb.NodeRole_NODE_ROLE_MANAGER {
		t.Fatalf("a refused demotion changed %s's role to %v", b.name, nd.GetRole())
	}

	// Demote the leader through a follower: it hands leadership over and
	// the client's retry lands on the new leader.
	lRaft := raftIDOf(b.m, l.id)
	if err := demote(b, l.id); err != nil {
		t.Fatalf("demote the leader %s: %v", l.name, err)
	}
	checkWorker(b, l.id)
	checkGone(l, b, lRaft, true)
	l2 := c.leader()

	// Force-remove a follower manager while it is down (`node rm --force`
	// of a dead manager): when it comes back it learns so and stops.
	var victim *node
	for _, n := range c.followers(l2) {
		victim = n
	}
	vRaft := raftIDOf(l2.m, victim.id)
	victim.stop()
	if _, err := l2.ctl.RemoveNode(callCtx(t, callTimeout), &pb.RemoveNodeRequest{Ref: victim.id, Force: true}); err != nil {
		t.Fatalf("force-remove manager %s: %v", victim.name, err)
	}
	victim.restart(t, false)
	checkGone(victim, l2, vRaft, false)

	// Demote the last follower, through itself.
	last := c.followers(l2)[0]
	lastRaft := raftIDOf(l2.m, last.id)
	if err := demote(last, last.id); err != nil {
		t.Fatalf("demote %s: %v", last.name, err)
	}
	checkWorker(l2, last.id)
	checkGone(last, l2, lastRaft, true)

	// The leader is the last manager: it cannot be demoted.
	if err := demote(l2, l2.id); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("demote the last manager: %v, want FailedPrecondition", err)
	}
	if got := raftIDs(t, l2.m); len(got) != 1 {
		t.Errorf("raft configuration %v, want the leader alone", got)
	}

	// A demoted node is a worker: removable with force.
	if _, err := l2.ctl.RemoveNode(callCtx(t, callTimeout), &pb.RemoveNodeRequest{Ref: l.id, Force: true}); err != nil {
		t.Errorf("remove the demoted %s: %v", l.name, err)
	}
	resp, err := l2.ctl.ListNodes(callCtx(t, callTimeout), &pb.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var managers, workers []string
	for _, nd := range resp.GetNodes() {
		switch nd.GetRole() {
		case pb.NodeRole_NODE_ROLE_MANAGER:
			managers = append(managers, nd.GetId())
		case pb.NodeRole_NODE_ROLE_WORKER:
			workers = append(workers, nd.GetId())
		}
	}
	if !slices.Equal(managers, []string{l2.id}) || !slices.Equal(workers, []string{last.id}) {
		t.Errorf("after demotions and removals: managers %v, workers %v; want [%s] and [%s]", managers, workers, l2.id, last.id)
	}
	cl, err := l2.ctl.GetCluster(callCtx(t, callTimeout), &pb.GetClusterRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{l.id, victim.id} {
		if !slices.Contains(cl.GetCluster().GetRemovedNodes(), id) {
			t.Errorf("removed node %s not recorded as removed", id)
		}
	}
}
