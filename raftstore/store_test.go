package raftstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func bg(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// The shared contract of Update, View, Watch and Close runs against this
// store and the MemoryStore in contract_test.go; what follows is Raft's own.

// A one-manager cluster reports itself: Status, Leader and Servers.
func TestSingleNodeStatus(t *testing.T) {
	c := newTestCluster(t, 1, clusterOptions{})
	s := c.members[0].store
	idx, err := s.Update(bg(t), func(tx *Tx) error {
		return tx.Nodes().Create(testNode("n1", "h1"))
	})
	if err != nil {
		t.Fatal(err)
	}
	// Raft answers the write from its FSM goroutine and records the
	// applied index just after: wait for it rather than race it.
	waitFor(t, 5*time.Second, "the applied index to reach the write's", func() bool { return s.Status().AppliedIndex >= idx })
	st := s.Status()
	if st.State != raft.Leader.String() || st.Term == 0 || st.AppliedIndex < idx {
		t.Errorf("Status = %+v", st)
	}
	if id, addr := s.Leader(); id != s.ID() || addr != s.Addr() {
		t.Errorf("Leader() = %s %s, want %s %s", id, addr, s.ID(), s.Addr())
	}
	servers, err := s.Servers()
	if err != nil || len(servers) != 1 || servers[0].ID != "m1" || !servers[0].Voter {
		t.Errorf("Servers() = %+v, %v", servers, err)
	}
}

// Leadership transitions nobody consumes must not block: raft waits on
// its notify channel until the store reads it.
func TestLeaderChangesNeverBlock(t *testing.T) {
	s := &Store{leaderCh: make(chan bool, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 100; i++ {
			s.notifyLeaderChange(i%2 == 0)
		}
		s.notifyLeaderChange(true)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("notifyLeaderChange blocked with nobody reading LeaderChanges")
	}
	var last bool
	for n := len(s.leaderCh); n > 0; n-- {
		last = <-s.LeaderChanges()
	}
	if !last {
		t.Error("the newest transition was dropped")
	}
}

// Many leadership changes on a 3-node cluster whose LeaderChanges nobody
// reads: the cluster keeps electing leaders and committing.
func TestUnconsumedLeaderChangesDoNotStallRaft(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	c := newTestCluster(t, 3, clusterOptions{})
	transfers := 0
	deadline := time.Now().Add(20 * time.Second)
	for transfers < 80 && time.Now().Before(deadline) {
		l := c.waitLeader(10 * time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		if err := l.store.TransferLeadership(ctx); err == nil {
			transfers++
		}
		cancel()
	}
	if transfers < 80 {
		t.Errorf("only %d leadership transfers in 20s", transfers)
	}
	c.sync(10 * time.Second)
	for _, m := range c.members {
		if n := len(m.store.leaderCh); n > cap(m.store.leaderCh) {
			t.Errorf("%s: %d queued transitions", m.id, n)
		}
	}
}

func TestOpenValidation(t *testing.T) {
	dir := t.TempDir()
	for _, cfg := range []Config{
		{Dir: dir, BindAddr: "127.0.0.1:0"},
		{ID: "a", BindAddr: "127.0.0.1:0"},
		{ID: "a", Dir: dir},
	} {
		if s, err := Open(cfg); err == nil {
			s.Close()
			t.Errorf("Open(%+v) succeeded", cfg)
		}
	}
	// Nothing to recover in an empty directory.
	if s, err := OpenForceNewCluster(Config{ID: "a", Dir: t.TempDir(), BindAddr: freeAddr(t), Logger: testLogger(t, "a")}); err == nil {
		s.Close()
		t.Error("OpenForceNewCluster on an empty directory succeeded")
	}
	// The port is in use.
	c := newTestCluster(t, 1, clusterOptions{})
	if s, err := Open(Config{ID: "b", Dir: t.TempDir(), BindAddr: c.members[0].addr, Logger: testLogger(t, "b")}); err == nil {
		s.Close()
		t.Error("Open on a taken port succeeded")
	}
}

// A data directory is bootstrapped once: again on the same store, after a
// restart, or on a member that joined through AddVoter, Bootstrap fails
// with raft.ErrCantBootstrap and HasState reports the state.
func TestBootstrapOnlyOnce(t *testing.T) {
	c := newTestCluster(t, 2, clusterOptions{})
	for _, m := range c.members {
		if !HasState(m.dir) {
			t.Errorf("HasState(%s) = false while open", m.id)
		}
		if err := m.store.Bootstrap(); !errors.Is(err, raft.ErrCantBootstrap) {
			t.Errorf("Bootstrap on running %s = %v, want ErrCantBootstrap", m.id, err)
		}
	}
	ids := c.createNodes("before", 3)
	c.waitApplied(c.sync(10*time.Second), 10*time.Second)
	for i, m := range c.members {
		c.stop(i)
		if !HasState(m.dir) {
			t.Errorf("HasState(%s) = false after close", m.id)
		}
	}
	for i, m := range c.members {
		c.start(i)
		if err := m.store.Bootstrap(); !errors.Is(err, raft.ErrCantBootstrap) {
			t.Errorf("Bootstrap on restarted %s = %v, want ErrCantBootstrap", m.id, err)
		}
	}
	c.waitLeader(10 * time.Second)
	c.sync(10 * time.Second)
	for _, m := range c.members {
		if !hasNodes(m.store, ids) {
			t.Errorf("%s lost state over a restart", m.id)
		}
		servers, _ := m.store.Servers()
		if len(servers) != 2 {
			t.Errorf("%s: servers %+v, want 2 (no second bootstrap)", m.id, servers)
		}
	}
}

func TestHasState(t *testing.T) {
	empty := t.TempDir()
	if HasState(empty) {
		t.Error("HasState(empty dir) = true")
	}
	if HasState(empty + "/missing") {
		t.Error("HasState(missing dir) = true")
	}
	// A store opened but never bootstrapped nor joined holds no state.
	dir := t.TempDir()
	s, err := Open(Config{ID: "x", Dir: dir, BindAddr: freeAddr(t), Timing: testTiming(), Logger: testLogger(t, "x")})
	if err != nil {
		t.Fatal(err)
	}
	if !HasState(dir) {
		// While open the file is locked: HasState answers true.
		t.Error("HasState(open store) = false")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if HasState(dir) {
		t.Error("HasState(never bootstrapped) = true: such a manager could never bootstrap")
	}
	// Bootstrap afterwards works.
	s, err = Open(Config{ID: "x", Dir: dir, BindAddr: freeAddr(t), Timing: testTiming(), Logger: testLogger(t, "x")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Bootstrap(); err != nil {
		t.Fatalf("Bootstrap: %v", err)
	}
	waitFor(t, 10*time.Second, "leadership", s.IsLeader)
}

func TestUpdateOnFollower(t *testing.T) {
	c := newTestCluster(t, 3, clusterOptions{})
	// On a loaded machine leadership may move during a round of checks:
	// a round counts only if the same leader held it throughout.
	var problems []string
	for round := 0; round < 5; round++ {
		l := c.waitLeader(10 * time.Second)
		term := l.store.Status().Term
		problems = nil
		report := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
		for _, m := range c.members {
			if m == l {
				continue
			}
			ran := false
			_, err := m.store.Update(bg(t), func(tx *Tx) error { ran = true; return nil })
			if !errors.Is(err, ErrNotLeader) {
				report("%s: Update on a follower = %v, want ErrNotLeader", m.id, err)
			}
			if ran {
				report("%s: Update ran fn on a follower", m.id)
			}
			ran = false
			if err := m.store.ViewConsistent(bg(t), func(*Tx) { ran = true }); !errors.Is(err, ErrNotLeader) || ran {
				report("%s: ViewConsistent on a follower = %v (fn ran: %v), want ErrNotLeader", m.id, err, ran)
			}
			if err := m.store.AddVoter(bg(t), "zz", "127.0.0.1:1"); !errors.Is(err, ErrNotLeader) {
				report("%s: AddVoter on a follower = %v, want ErrNotLeader", m.id, err)
			}
			if id, _ := m.store.Leader(); id != l.id {
				report("%s: Leader() = %q, want %q", m.id, id, l.id)
			}
			if m.store.IsLeader() {
				report("%s: follower IsLeader", m.id)
			}
		}
		if l.store.IsLeader() && l.store.Status().Term == term {
			break
		}
		t.Logf("round %d: leadership moved during the checks; again", round)
	}
	for _, p := range problems {
		t.Error(p)
	}
	if msg := fmt.Sprint(ErrNoLeader); !strings.Contains(msg, "leader") {
		t.Errorf("ErrNoLeader message %q", msg)
	}
}
