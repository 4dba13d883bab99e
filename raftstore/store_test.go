package raftstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	pb "github.com/shoal-cluster/shoal/proto"
)

func bg(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestSingleNodeUpdateAndView(t *testing.T) {
	c := newTestCluster(t, 1, clusterOptions{})
	s := c.members[0].store
	ctx := bg(t)

	sub := s.Watch(func(ev Event) bool { return ev.Table == KindNode })
	defer sub.Close()

	idx, err := s.Update(ctx, func(tx *Tx) error {
		return tx.Nodes().Create(testNode("n1", "h1"))
	})
	if err != nil {
		t.Fatal(err)
	}
	var got *pb.Node
	s.View(func(tx *Tx) {
		got, _ = tx.Nodes().Get("n1")
		if tx.Index() < idx {
			t.Errorf("View index %d < committed %d", tx.Index(), idx)
		}
	})
	if got.GetMeta().GetVersion() != idx {
		t.Errorf("version %d, want the commit index %d", got.GetMeta().GetVersion(), idx)
	}
	if ev := next(t, sub); ev.Kind != EventCreate || ev.Index != idx {
		t.Errorf("event %v @%d, want create @%d", ev.Kind, ev.Index, idx)
	}

	// ViewConsistent on the leader sees the write.
	if err := s.ViewConsistent(ctx, func(tx *Tx) {
		if _, ok := tx.Nodes().Get("n1"); !ok {
			t.Error("ViewConsistent misses an acknowledged write")
		}
	}); err != nil {
		t.Fatal(err)
	}

	// An Update without writes commits nothing and returns the read index.
	noop, err := s.Update(ctx, func(tx *Tx) error { _ = tx.Nodes().List(); return nil })
	if err != nil || noop != idx {
		t.Errorf("empty Update = %d, %v; want %d, nil", noop, err, idx)
	}

	// fn's error is returned as is and nothing is committed.
	boom := errors.New("boom")
	if _, err := s.Update(ctx, func(tx *Tx) error {
		if err := tx.Nodes().Create(testNode("n2", "h2")); err != nil {
			return err
		}
		return boom
	}); err != boom {
		t.Errorf("Update returned %v, want fn's error", err)
	}
	s.View(func(tx *Tx) {
		if _, ok := tx.Nodes().Get("n2"); ok {
			t.Error("a failed fn's writes were committed")
		}
	})

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

func TestUpdateWithRequestIDAppliesOnce(t *testing.T) {
	c := newTestCluster(t, 1, clusterOptions{})
	s := c.members[0].store
	ctx := WithRequestID(bg(t), "req-fixed")
	if RequestID(ctx) != "req-fixed" {
		t.Fatalf("RequestID = %q", RequestID(ctx))
	}

	var created []string
	create := func(tx *Tx) error {
		id := tx.NewID()
		created = append(created, id)
		return tx.Nodes().Create(testNode(id, "h-"+id))
	}
	first, err := s.Update(ctx, create)
	if err != nil {
		t.Fatal(err)
	}
	// A retry (as after ErrOutcomeUnknown) of a request that committed
	// succeeds with the original index, without running fn: run again, the
	// Create would find its own object and fail with ErrExists.
	for i := 0; i < 2; i++ {
		ran := false
		second, err := s.Update(ctx, func(tx *Tx) error { ran = true; return create(tx) })
		if err != nil || second != first {
			t.Fatalf("retry with the same request ID = %d, %v; want %d, nil", second, err, first)
		}
		if ran {
			t.Error("fn ran again for a committed request ID")
		}
	}
	s.View(func(tx *Tx) {
		if got := ids(tx.Nodes().List()); !sameStrings(got, created[:1]) {
			t.Errorf("nodes %v, want only %v", got, created[:1])
		}
	})
	// Without a request ID each Update is new.
	a, _ := s.Update(bg(t), func(tx *Tx) error { return tx.Nodes().Create(testNode("a", "a")) })
	b, _ := s.Update(bg(t), func(tx *Tx) error { return tx.Nodes().Create(testNode("b", "b")) })
	if a == b || a == 0 {
		t.Errorf("independent updates got indexes %d and %d", a, b)
	}
}

// Concurrent read-modify-write Updates of one object lose no increment:
// a version conflict at commit re-runs fn on the new state.
func TestUpdateRetriesOnVersionConflict(t *testing.T) {
	c := newTestCluster(t, 1, clusterOptions{})
	s := c.members[0].store
	ctx := bg(t)
	if _, err := s.Update(ctx, func(tx *Tx) error { return tx.Nodes().Create(testNode("counter", "c")) }); err != nil {
		t.Fatal(err)
	}
	const workers, each = 4, 10
	var (
		mu        sync.Mutex
		successes int
		runs      int
	)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				_, err := s.Update(ctx, func(tx *Tx) error {
					mu.Lock()
					runs++
					mu.Unlock()
					n, _ := tx.Nodes().Get("counter")
					v, _ := strconv.Atoi(n.GetDescription().GetOs())
					n.Description.Os = strconv.Itoa(v + 1)
					return tx.Nodes().Update(n)
				})
				switch {
				case err == nil:
					mu.Lock()
					successes++
					mu.Unlock()
				case errors.Is(err, ErrVersionConflict):
					// Lost every one of its retries: allowed, but nothing applied.
				default:
					t.Errorf("increment: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	var final int
	s.View(func(tx *Tx) {
		n, _ := tx.Nodes().Get("counter")
		final, _ = strconv.Atoi(n.GetDescription().GetOs())
	})
	if final != successes {
		t.Errorf("counter = %d after %d acknowledged increments", final, successes)
	}
	if successes < workers*each/2 {
		t.Errorf("only %d of %d increments succeeded", successes, workers*each)
	}
	t.Logf("%d increments acknowledged, fn ran %d times", successes, runs)
}

// A cancelled or expired context never commits.
func TestUpdateWithDoneContextCommitsNothing(t *testing.T) {
	c := newTestCluster(t, 1, clusterOptions{})
	s := c.members[0].store
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	for name, ctx := range map[string]context.Context{"cancelled": cancelled, "expired": expired} {
		t.Run(name, func(t *testing.T) {
			id := "n-" + name
			start := time.Now()
			_, err := s.Update(ctx, func(tx *Tx) error { return tx.Nodes().Create(testNode(id, id)) })
			if err == nil || !errors.Is(err, ctx.Err()) {
				t.Fatalf("Update = %v, want %v", err, ctx.Err())
			}
			if errors.Is(err, ErrOutcomeUnknown) {
				t.Errorf("Update = %v: a write never submitted has a known outcome", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("Update with a done context took %v", d)
			}
			c.sync(5 * time.Second)
			s.View(func(tx *Tx) {
				if _, ok := tx.Nodes().Get(id); ok {
					t.Error("an Update with a done context was committed")
				}
			})
			if err := s.ViewConsistent(ctx, func(*Tx) {}); err == nil {
				t.Error("ViewConsistent with a done context succeeded")
			}
		})
	}
}

// A deadline that passes while fn runs stops the write before it reaches
// raft: its outcome is known (not applied), not ErrOutcomeUnknown.
func TestUpdateDeadlinePassingDuringFn(t *testing.T) {
	c := newTestCluster(t, 1, clusterOptions{})
	s := c.members[0].store
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := s.Update(ctx, func(tx *Tx) error {
		<-ctx.Done()
		return tx.Nodes().Create(testNode("late", "late"))
	})
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("Update = %v, want a deadline error with a known outcome", err)
	}
	c.sync(5 * time.Second)
	s.View(func(tx *Tx) {
		if _, ok := tx.Nodes().Get("late"); ok {
			t.Error("a write whose deadline passed before it was proposed was committed")
		}
	})
}

func TestUpdateTooLarge(t *testing.T) {
	c := newTestCluster(t, 1, clusterOptions{})
	s := c.members[0].store
	_, err := s.Update(bg(t), func(tx *Tx) error {
		return tx.Secrets().Create(testSecret("big", "big", strings.Repeat("x", MaxEntrySize)))
	})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Update = %v, want ErrTooLarge", err)
	}
}

func TestClosedStore(t *testing.T) {
	c := newTestCluster(t, 1, clusterOptions{})
	s := c.members[0].store
	sub := s.Watch(nil)
	c.stop(0)
	if err := ended(t, sub); !errors.Is(err, ErrClosed) {
		t.Errorf("subscription ended with %v, want ErrClosed", err)
	}
	if _, err := s.Update(bg(t), func(tx *Tx) error { return tx.Nodes().Create(testNode("x", "x")) }); !errors.Is(err, ErrClosed) {
		t.Errorf("Update after Close = %v, want ErrClosed", err)
	}
	if err := s.ViewConsistent(bg(t), func(*Tx) {}); !errors.Is(err, ErrClosed) {
		t.Errorf("ViewConsistent after Close = %v, want ErrClosed", err)
	}
	if s.IsLeader() {
		t.Error("a closed store claims leadership")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close = %v", err)
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

// TestContendedWritesSerialise: many writers read-modify-write one object
// at once; every write lands (none fails with a version conflict) and none
// is lost.
func TestContendedWritesSerialise(t *testing.T) {
	s := openContendedStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := s.Update(ctx, func(tx *Tx) error {
		return tx.Nodes().Create(&pb.Node{Id: "hot", Spec: &pb.NodeSpec{Annotations: &pb.Annotations{Labels: map[string]string{}}}})
	}); err != nil {
		t.Fatal(err)
	}
	const writers, each = 32, 10
	errs := make(chan error, writers*each)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				_, err := s.Update(ctx, func(tx *Tx) error {
					n, _ := tx.Nodes().Get("hot")
					if n.Spec.Annotations.Labels == nil {
						n.Spec.Annotations.Labels = map[string]string{}
					}
					n.Spec.Annotations.Labels[fmt.Sprintf("w%d-%d", w, i)] = "x"
					return tx.Nodes().Update(n)
				})
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("contended write failed: %v", err)
		}
	}
	var n *pb.Node
	s.View(func(tx *Tx) { n, _ = tx.Nodes().Get("hot") })
	if got := len(n.GetSpec().GetAnnotations().GetLabels()); got != writers*each {
		t.Fatalf("%d labels, want %d: writes were lost", got, writers*each)
	}
}

// openContendedStore is a one-server cluster's leader.
func openContendedStore(t *testing.T) *Store {
	c := newTestCluster(t, 1, clusterOptions{})
	return c.waitLeader(20 * time.Second).store
}
