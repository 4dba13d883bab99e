package raftstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

func TestClusterForms(t *testing.T) {
	for _, n := range []int{3, 5} {
		t.Run(fmt.Sprintf("%d managers", n), func(t *testing.T) {
			c := newTestCluster(t, n, clusterOptions{})
			l := c.waitLeader(10 * time.Second)

			servers, err := l.store.Servers()
			if err != nil {
				t.Fatal(err)
			}
			if len(servers) != n {
				t.Fatalf("servers %+v, want %d", servers, n)
			}
			for _, sv := range servers {
				if !sv.Voter {
					t.Errorf("%s is not a voter", sv.ID)
				}
			}

			// Writes on the leader reach every member's local state.
			want := c.createNodes("n", 10)
			for _, m := range c.members {
				waitFor(t, 10*time.Second, m.id+" to apply the writes", func() bool { return hasNodes(m.store, want) })
			}
			// Every member comes to agree on one leader, and only it leads.
			// (Leadership may move meanwhile on a loaded machine.)
			waitFor(t, 10*time.Second, "every member to agree on the leader", func() bool {
				l := c.leader()
				if l == nil {
					return false
				}
				for _, m := range c.members {
					if id, _ := m.store.Leader(); id != l.id || (m != l && m.store.IsLeader()) {
						return false
					}
				}
				return true
			})
		})
	}
}

// acked runs writers against a cluster and remembers every write that was
// acknowledged.
type acked struct {
	mu  sync.Mutex
	ids []string
}

func (a *acked) add(id string) {
	a.mu.Lock()
	a.ids = append(a.ids, id)
	a.mu.Unlock()
}

func (a *acked) all() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.ids...)
}

// writeLoop creates nodes through whichever member leads until stop closes.
// Failed writes (no leader, outcome unknown) are simply not acknowledged.
func writeLoop(c *testCluster, prefix string, a *acked, stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		id := fmt.Sprintf("%s-%05d", prefix, i)
		l := c.leaderLocked()
		if l == nil {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := l.Update(ctx, func(tx *Tx) error { return tx.Nodes().Create(testNode(id, id)) })
		cancel()
		if err == nil {
			a.add(id)
		}
	}
}

// leaderLocked is leader() for use from writer goroutines while the test
// stops members: it returns a store, never a member being closed.
func (c *testCluster) leaderLocked() *Store {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.members {
		if m.store != nil && m.store.IsLeader() {
			return m.store
		}
	}
	return nil
}

func TestClusterLeaderFailover(t *testing.T) {
	c := newTestCluster(t, 3, clusterOptions{})
	var a acked
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func() { defer wg.Done(); writeLoop(c, fmt.Sprintf("w%d", w), &a, stop) }()
	}
	defer func() { close(stop); wg.Wait() }()

	waitFor(t, 10*time.Second, "some acknowledged writes", func() bool { return len(a.all()) >= 20 })
	old := c.waitLeader(10 * time.Second)
	start := time.Now()
	c.stop(c.index(old))

	var l *testMember
	waitFor(t, 10*time.Second, "a new leader", func() bool {
		l = c.leader()
		return l != nil && l != old
	})
	t.Logf("new leader %s after %v", l.id, time.Since(start))
	before := len(a.all())
	waitFor(t, 10*time.Second, "writes through the new leader", func() bool { return len(a.all()) >= before+20 })

	// Every acknowledged write is on both survivors.
	want := a.all()
	c.sync(10 * time.Second)
	for _, m := range c.running() {
		if !hasNodes(m.store, want) {
			t.Errorf("%s misses acknowledged writes", m.id)
		}
	}

	// The old leader comes back as a follower and catches up.
	c.start(c.index(old))
	idx := c.sync(10 * time.Second)
	c.waitApplied(idx, 10*time.Second)
	if !hasNodes(old.store, want) {
		t.Errorf("restarted %s misses acknowledged writes", old.id)
	}
}

// A member that was down catches up when it restarts: by log replay, or
// from a snapshot when the log it misses was compacted away.
func TestClusterRestartCatchesUp(t *testing.T) {
	for _, tc := range []struct {
		name     string
		snapshot bool
	}{
		{"from the log", false},
		{"from a snapshot", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCluster(t, 3, clusterOptions{snapshotThreshold: 1 << 20, trailingLogs: 8})
			early := c.createNodes("early", 5)
			c.waitApplied(c.sync(10*time.Second), 10*time.Second)

			l := c.waitLeader(10 * time.Second)
			lagging := c.members[(c.index(l)+1)%3]
			c.stop(c.index(lagging))
			missed := c.createNodes("missed", 40)
			if tc.snapshot {
				// Snapshot and truncate the log on every survivor, so whoever
				// leads next holds no entry the lagging member needs.
				for _, m := range c.running() {
					if err := m.store.Snapshot(); err != nil {
						t.Fatalf("snapshot on %s: %v", m.id, err)
					}
				}
			}
			late := c.createNodes("late", 5)

			c.start(c.index(lagging))
			idx := c.sync(10 * time.Second)
			c.waitApplied(idx, 15*time.Second)
			for _, set := range [][]string{early, missed, late} {
				if !hasNodes(lagging.store, set) {
					t.Fatalf("%s did not catch up", lagging.id)
				}
			}
			snaps := listSnapshots(t, lagging.dir)
			if tc.snapshot && len(snaps) == 0 {
				t.Errorf("%s caught up without installing a snapshot", lagging.id)
			}
			if !tc.snapshot && len(snaps) != 0 {
				t.Errorf("%s has snapshots %v without compaction", lagging.id, snaps)
			}

			// The caught-up member can lead: the data it restored is complete.
			all := append(append(append([]string{}, early...), missed...), late...)
			for _, i := range []int{0, 1, 2} {
				if c.members[i] != lagging {
					c.stop(i)
					c.start(i)
				}
			}
			c.waitLeader(15 * time.Second)
			c.waitApplied(c.sync(15*time.Second), 15*time.Second)
			for _, m := range c.members {
				if !hasNodes(m.store, all) {
					t.Errorf("%s misses writes after the restarts", m.id)
				}
			}
		})
	}
}

func listSnapshots(t *testing.T, dir string) []*raft.SnapshotMeta {
	t.Helper()
	fs, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	list, err := fs.List()
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// Losing quorum stops writes with a clear, prompt error; forcing a new
// cluster on a survivor's directory brings everything back.
func TestQuorumLossAndForceNewCluster(t *testing.T) {
	for _, tc := range []struct {
		name string
		// survivor picks the member left running, given the leader's index.
		survivor func(leader int) int
	}{
		{"the leader survives", func(l int) int { return l }},
		{"a follower survives", func(l int) int { return (l + 1) % 3 }},
	} {
		t.Run(tc.name, func(t *testing.T) { testQuorumLoss(t, tc.survivor) })
	}
}

func testQuorumLoss(t *testing.T, pick func(leader int) int) {
	c := newTestCluster(t, 3, clusterOptions{snapshotThreshold: 1 << 20, trailingLogs: 8})
	before := c.createNodes("before", 10)
	// Part of the state in a snapshot, part only in the log.
	for _, m := range c.running() {
		if err := m.store.Snapshot(); err != nil {
			t.Fatalf("snapshot on %s: %v", m.id, err)
		}
	}
	before = append(before, c.createNodes("tail", 5)...)
	c.waitApplied(c.sync(10*time.Second), 10*time.Second)

	l := c.waitLeader(10 * time.Second)
	survivor := c.members[pick(c.index(l))]
	for i, m := range c.members {
		if m != survivor {
			c.stop(i)
		}
	}

	// Writes fail within their deadline, whatever the survivor believes;
	// soon it knows there is no leader at all.
	sawNoLeader := false
	refused := map[string]bool{} // writes that definitely did not happen
	for attempt := 0; attempt < 50 && !sawNoLeader; attempt++ {
		const budget = 1 * time.Second
		ctx, cancel := context.WithTimeout(context.Background(), budget)
		start := time.Now()
		id := fmt.Sprintf("lost-%d", attempt)
		_, err := survivor.store.Update(ctx, func(tx *Tx) error {
			return tx.Nodes().Create(testNode(id, "x"))
		})
		if errors.Is(err, ErrNoLeader) || errors.Is(err, ErrNotLeader) {
			refused[id] = true
		}
		cancel()
		took := time.Since(start)
		if err == nil {
			t.Fatal("a write succeeded without a quorum")
		}
		if !errors.Is(err, ErrNoLeader) && !errors.Is(err, ErrNotLeader) && !errors.Is(err, ErrOutcomeUnknown) &&
			!errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("write without a quorum: %v; want ErrNoLeader, ErrNotLeader, ErrOutcomeUnknown or a deadline", err)
		}
		if took > budget+time.Second {
			t.Errorf("write without a quorum took %v with a %v deadline", took, budget)
		}
		if attempt == 0 || errors.Is(err, ErrNoLeader) {
			t.Logf("write %d without quorum: %v after %v", attempt, err, took)
		}
		ctx, cancel = context.WithTimeout(context.Background(), budget)
		if err := survivor.store.ViewConsistent(ctx, func(*Tx) {}); err == nil {
			t.Error("a linearizable read succeeded without a quorum")
		}
		cancel()
		sawNoLeader = errors.Is(err, ErrNoLeader)
		if !sawNoLeader {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if !sawNoLeader {
		t.Error("the survivor never reported ErrNoLeader")
	}
	if survivor.store.IsLeader() {
		t.Error("the survivor still claims leadership without a quorum")
	}
	// The survivor keeps its local state for display.
	if !hasNodes(survivor.store, before) {
		t.Fatal("survivor lost local state")
	}

	// Recover.
	si := c.index(survivor)
	c.stop(si)
	c.open(si, OpenForceNewCluster)
	s := survivor.store
	waitFor(t, 10*time.Second, "the recovered member to lead", s.IsLeader)
	if !hasNodes(s, before) {
		t.Fatal("state lost by force-new-cluster")
	}
	servers, err := s.Servers()
	if err != nil || len(servers) != 1 || servers[0].ID != survivor.id {
		t.Fatalf("servers after force-new-cluster: %+v, %v", servers, err)
	}
	after := c.createNodes("after", 5)
	if !hasNodes(s, after) {
		t.Fatal("writes after recovery not visible")
	}
	// Refused writes never appear. A write whose outcome was unknown may:
	// recovery commits whatever the survivor's log holds.
	s.View(func(tx *Tx) {
		for id := range refused {
			if _, ok := tx.Nodes().Get(id); ok {
				t.Errorf("refused write %s appeared after recovery", id)
			}
		}
	})

	// The recovered member survives a restart and grows the cluster again.
	c.stop(si)
	c.start(si)
	waitFor(t, 10*time.Second, "the recovered member to lead after restart", survivor.store.IsLeader)
	if !hasNodes(survivor.store, append(before, after...)) {
		t.Fatal("state lost over a restart after recovery")
	}
	fresh := &testMember{id: "m9", dir: t.TempDir()}
	c.members = append(c.members, fresh)
	c.start(len(c.members) - 1)
	c.addVoter(fresh)
	c.waitApplied(c.sync(10*time.Second), 10*time.Second)
	if !hasNodes(fresh.store, append(before, after...)) {
		t.Error("a manager added after recovery did not receive the state")
	}
}
