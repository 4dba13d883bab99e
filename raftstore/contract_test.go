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

	pb "github.com/shoal-cluster/shoal/proto"
)

// The contract both stores keep (StateStore plus leadership and Close):
// every case runs against a one-manager Raft store and a MemoryStore.

// contractStore is the API the contract covers.
type contractStore interface {
	StateStore
	IsLeader() bool
	LeaderChanges() <-chan bool
	Close() error
}

// fixture is one store under test.
type fixture struct {
	store contractStore
	// sync returns once every write committed so far is in View.
	sync func()
	// stop closes the store.
	stop func()
}

var contractStores = []struct {
	name string
	open func(t *testing.T) *fixture
}{
	{"raft", func(t *testing.T) *fixture {
		c := newTestCluster(t, 1, clusterOptions{})
		return &fixture{store: c.members[0].store, sync: func() { c.sync(5 * time.Second) }, stop: func() { c.stop(0) }}
	}},
	{"memory", func(t *testing.T) *fixture {
		m := NewMemoryStore(MemoryConfig{})
		t.Cleanup(func() { m.Close() })
		return &fixture{store: m, sync: func() {}, stop: func() { m.Close() }}
	}},
}

var contractCases = []struct {
	name string
	run  func(t *testing.T, f *fixture)
}{
	{"UpdateAndView", contractUpdateAndView},
	{"RequestIDAppliesOnce", contractRequestIDAppliesOnce},
	{"RetriesOnVersionConflict", contractRetriesOnVersionConflict},
	{"DoneContextCommitsNothing", contractDoneContextCommitsNothing},
	{"DeadlinePassingDuringFn", contractDeadlinePassingDuringFn},
	{"TooLarge", contractTooLarge},
	{"LargestConfigFits", contractLargestConfigFits},
	{"RefusalsCommitNothing", contractRefusalsCommitNothing},
	{"Closed", contractClosed},
	{"ContendedWritesSerialise", contractContendedWritesSerialise},
	{"WatchInCommitOrder", contractWatchInCommitOrder},
	{"WatchFilter", contractWatchFilter},
	{"ViewAndWatchIsAtomic", contractViewAndWatchIsAtomic},
}

func TestStoreContract(t *testing.T) {
	for _, c := range contractCases {
		for _, s := range contractStores {
			t.Run(c.name+"/"+s.name, func(t *testing.T) { c.run(t, s.open(t)) })
		}
	}
}

func contractUpdateAndView(t *testing.T, f *fixture) {
	s := f.store
	ctx := bg(t)
	if !s.IsLeader() {
		t.Error("the store does not lead")
	}
	select {
	case leader := <-s.LeaderChanges():
		if !leader {
			t.Error("LeaderChanges delivered false first")
		}
	case <-time.After(10 * time.Second):
		t.Error("LeaderChanges delivered nothing")
	}

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

	// ViewConsistent sees the write.
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
}

func contractRequestIDAppliesOnce(t *testing.T, f *fixture) {
	s := f.store
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
	// The object IDs derive from the request ID: another store, or this one
	// after the request ID was forgotten, creates the same ones.
	if want := newTx(newState(), true, "req-fixed").NewID(); created[0] != want {
		t.Errorf("the first ID created under req-fixed is %s, want %s", created[0], want)
	}
	// Without a request ID each Update is new.
	a, _ := s.Update(bg(t), func(tx *Tx) error { return tx.Nodes().Create(testNode("a", "a")) })
	b, _ := s.Update(bg(t), func(tx *Tx) error { return tx.Nodes().Create(testNode("b", "b")) })
	if a == b || a == 0 {
		t.Errorf("independent updates got indexes %d and %d", a, b)
	}
}

// Concurrent read-modify-write Updates of one object lose no increment:
// a version conflict at commit re-runs fn on the new state.
func contractRetriesOnVersionConflict(t *testing.T, f *fixture) {
	s := f.store
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
func contractDoneContextCommitsNothing(t *testing.T, f *fixture) {
	s := f.store
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
			f.sync()
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

// A deadline that passes while fn runs stops the write before it is
// committed: its outcome is known (not applied), not ErrOutcomeUnknown.
func contractDeadlinePassingDuringFn(t *testing.T, f *fixture) {
	s := f.store
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := s.Update(ctx, func(tx *Tx) error {
		<-ctx.Done()
		return tx.Nodes().Create(testNode("late", "late"))
	})
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("Update = %v, want a deadline error with a known outcome", err)
	}
	f.sync()
	s.View(func(tx *Tx) {
		if _, ok := tx.Nodes().Get("late"); ok {
			t.Error("a write whose deadline passed before it was proposed was committed")
		}
	})
}

func contractTooLarge(t *testing.T, f *fixture) {
	_, err := f.store.Update(bg(t), func(tx *Tx) error {
		return tx.Secrets().Create(testSecret("big", "big", strings.Repeat("x", MaxEntrySize)))
	})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Update = %v, want ErrTooLarge", err)
	}
	f.store.View(func(tx *Tx) {
		if _, ok := tx.Secrets().Get("big"); ok {
			t.Error("a transaction over the size limit was committed")
		}
	})
}

// contractLargestConfigFits: a config at its 1000 KiB limit is one
// transaction under MaxEntrySize, and comes back whole.
func contractLargestConfigFits(t *testing.T, f *fixture) {
	data := strings.Repeat("c", 1000*1024)
	if _, err := f.store.Update(bg(t), func(tx *Tx) error {
		return tx.Configs().Create(testConfig("cfg-big", "big.conf", data))
	}); err != nil {
		t.Fatalf("Update with a 1000 KiB config = %v, want it committed", err)
	}
	f.store.View(func(tx *Tx) {
		got, ok := tx.Configs().Get("cfg-big")
		if !ok || string(got.GetSpec().GetData()) != data {
			t.Errorf("the 1000 KiB config came back with %d bytes (found %v)", len(got.GetSpec().GetData()), ok)
		}
	})
}

// The Tx's refusals (a taken unique name, a stale version, a missing or
// existing object) fail the Update as they are and commit nothing.
func contractRefusalsCommitNothing(t *testing.T, f *fixture) {
	s := f.store
	ctx := bg(t)
	if _, err := s.Update(ctx, func(tx *Tx) error {
		if err := tx.Services().Create(testService("s1", "web")); err != nil {
			return err
		}
		return tx.Nodes().Create(testNode("n1", "h1"))
	}); err != nil {
		t.Fatal(err)
	}
	var stale *pb.Node
	s.View(func(tx *Tx) { stale, _ = tx.Nodes().Get("n1") })
	if _, err := s.Update(ctx, func(tx *Tx) error { return setHostname(tx, "n1", "h1b") }); err != nil {
		t.Fatal(err)
	}
	var before uint64
	s.View(func(tx *Tx) { before = tx.Index() })
	for _, tc := range []struct {
		name string
		fn   func(tx *Tx) error
		want error
	}{
		{"taken name", func(tx *Tx) error {
			if err := tx.Nodes().Create(testNode("n2", "h2")); err != nil {
				return err
			}
			return tx.Services().Create(testService("s2", "web"))
		}, ErrNameConflict},
		{"stale version", func(tx *Tx) error {
			if err := tx.Nodes().Create(testNode("n3", "h3")); err != nil {
				return err
			}
			stale.Description.Hostname = "h1c"
			return tx.Nodes().Update(stale)
		}, ErrVersionConflict},
		{"existing ID", func(tx *Tx) error { return tx.Nodes().Create(testNode("n1", "again")) }, ErrExists},
		{"missing object", func(tx *Tx) error { return tx.Tasks().Delete("nope") }, ErrNotFound},
		{"missing ID", func(tx *Tx) error { return tx.Nodes().Create(testNode("", "anon")) }, ErrMissingID},
	} {
		if _, err := s.Update(ctx, tc.fn); !errors.Is(err, tc.want) {
			t.Errorf("%s: Update = %v, want %v", tc.name, err, tc.want)
		}
	}
	index := func() uint64 {
		var idx uint64
		s.View(func(tx *Tx) { idx = tx.Index() })
		return idx
	}
	if after := index(); after != before {
		t.Errorf("refused updates moved the index from %d to %d", before, after)
	}
	f.sync()
	s.View(func(tx *Tx) {
		if got := ids(tx.Nodes().List()); !sameStrings(got, []string{"n1"}) {
			t.Errorf("nodes %v after refused updates, want [n1]", got)
		}
		if got := ids(tx.Services().List()); !sameStrings(got, []string{"s1"}) {
			t.Errorf("services %v after refused updates, want [s1]", got)
		}
		if n, _ := tx.Nodes().Get("n1"); n.GetDescription().GetHostname() != "h1b" {
			t.Errorf("n1's hostname %q, want h1b", n.GetDescription().GetHostname())
		}
	})
}

func contractClosed(t *testing.T, f *fixture) {
	s := f.store
	sub := s.Watch(nil)
	f.stop()
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

// Many writers read-modify-write one object at once; every write lands
// (none fails with a version conflict) and none is lost.
func contractContendedWritesSerialise(t *testing.T, f *fixture) {
	s := f.store
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

// Watchers get every change in commit order, each with its transaction's
// index, the new object and the one it replaced.
func contractWatchInCommitOrder(t *testing.T, f *fixture) {
	s := f.store
	ctx := bg(t)
	sub := s.Watch(nil)
	defer sub.Close()

	type want struct {
		kind  EventKind
		table Kind
		id    string
		index uint64
	}
	var wants []want
	commit := func(fn func(tx *Tx) error, changes ...want) {
		t.Helper()
		idx, err := s.Update(ctx, fn)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range changes {
			w.index = idx
			wants = append(wants, w)
		}
	}
	commit(func(tx *Tx) error {
		if err := tx.Nodes().Create(testNode("n1", "h1")); err != nil {
			return err
		}
		return tx.Services().Create(testService("s1", "web"))
	}, want{EventCreate, KindNode, "n1", 0}, want{EventCreate, KindService, "s1", 0})
	commit(func(tx *Tx) error {
		if err := tx.Tasks().Create(testTask("t1", "s1", "n1")); err != nil {
			return err
		}
		return setHostname(tx, "n1", "h1b")
	}, want{EventCreate, KindTask, "t1", 0}, want{EventUpdate, KindNode, "n1", 0})
	commit(func(tx *Tx) error {
		if err := tx.Secrets().Create(testSecret("x1", "pw", "p")); err != nil {
			return err
		}
		if err := tx.Clusters().Create(testClusterObject("c1", "c")); err != nil {
			return err
		}
		return tx.Tasks().Delete("t1")
	}, want{EventCreate, KindSecret, "x1", 0}, want{EventCreate, KindCluster, "c1", 0}, want{EventDelete, KindTask, "t1", 0})
	// More small transactions than the channel's buffer holds.
	for i := 0; i < 100; i++ {
		id := fmt.Sprintf("bulk-%03d", i)
		commit(func(tx *Tx) error { return tx.Nodes().Create(testNode(id, id)) }, want{EventCreate, KindNode, id, 0})
	}

	for i, w := range wants {
		ev := next(t, sub)
		if ev.Kind != w.kind || ev.Table != w.table || ev.Object.GetId() != w.id || ev.Index != w.index {
			t.Fatalf("event %d: %v %v %s @%d, want %v %v %s @%d", i, ev.Kind, ev.Table, ev.Object.GetId(), ev.Index, w.kind, w.table, w.id, w.index)
		}
		switch ev.Kind {
		case EventCreate:
			if ev.Old != nil {
				t.Errorf("event %d: create with Old set", i)
			}
			if ev.Object.GetMeta().GetVersion() != ev.Index {
				t.Errorf("event %d: created object at version %d, want the index %d", i, ev.Object.GetMeta().GetVersion(), ev.Index)
			}
		case EventUpdate:
			if ev.Old == nil || ev.Old.GetMeta().GetVersion() >= ev.Object.GetMeta().GetVersion() {
				t.Errorf("event %d: update without the older object: %v", i, ev.Old)
			}
		case EventDelete:
			if ev.Old == nil || ev.Object != ev.Old {
				t.Errorf("event %d: delete should carry the removed object as Object and Old", i)
			}
		}
	}
}

func contractWatchFilter(t *testing.T, f *fixture) {
	s := f.store
	ctx := bg(t)
	tasks := s.Watch(func(ev Event) bool { return ev.Table == KindTask })
	defer tasks.Close()
	deletes := s.Watch(func(ev Event) bool { return ev.Kind == EventDelete })
	defer deletes.Close()

	for _, fn := range []func(tx *Tx) error{
		func(tx *Tx) error {
			if err := tx.Nodes().Create(testNode("n1", "h")); err != nil {
				return err
			}
			return tx.Tasks().Create(testTask("t1", "s", "n1"))
		},
		func(tx *Tx) error { return tx.Nodes().Delete("n1") },
		func(tx *Tx) error { return tx.Tasks().Delete("t1") },
	} {
		if _, err := s.Update(ctx, fn); err != nil {
			t.Fatal(err)
		}
	}
	for _, w := range []struct {
		kind EventKind
		id   string
	}{{EventCreate, "t1"}, {EventDelete, "t1"}} {
		if ev := next(t, tasks); ev.Kind != w.kind || ev.Object.GetId() != w.id {
			t.Errorf("task watch: %v %s, want %v %s", ev.Kind, ev.Object.GetId(), w.kind, w.id)
		}
	}
	for _, id := range []string{"n1", "t1"} {
		if ev := next(t, deletes); ev.Kind != EventDelete || ev.Object.GetId() != id {
			t.Errorf("delete watch: %v %s, want delete %s", ev.Kind, ev.Object.GetId(), id)
		}
	}
	select {
	case ev := <-tasks.C():
		t.Errorf("unexpected task event %v %s", ev.Kind, ev.Object.GetId())
	default:
	}
}

// ViewAndWatch neither misses nor repeats a change committed concurrently.
func contractViewAndWatchIsAtomic(t *testing.T, f *fixture) {
	const total = 150
	s := f.store
	ctx := bg(t)
	const subscriptions = 15
	// The writer reports each commit, so that the subscriptions are spread
	// over the writes whatever the speed of either side.
	progress := make(chan struct{}, total)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(progress)
		for i := 0; i < total; i++ {
			id := fmt.Sprintf("n%04d", i)
			if _, err := s.Update(ctx, func(tx *Tx) error { return tx.Nodes().Create(testNode(id, id)) }); err != nil {
				t.Errorf("create %s: %v", id, err)
				return
			}
			progress <- struct{}{}
		}
	}()

	var subs []*Subscription
	var views []map[string]bool
	for i := 0; i < subscriptions; i++ {
		for range total / subscriptions / 2 {
			<-progress
		}
		seen := map[string]bool{}
		sub := s.ViewAndWatch(func(tx *Tx) {
			for _, n := range tx.Nodes().List() {
				seen[n.GetId()] = true
			}
		}, nil)
		subs = append(subs, sub)
		views = append(views, seen)
	}
	wg.Wait()

	for i, sub := range subs {
		got := views[i]
		for len(got) < total {
			ev := next(t, sub)
			if got[ev.Object.GetId()] {
				t.Fatalf("subscription %d: %s both in the view and in an event", i, ev.Object.GetId())
			}
			got[ev.Object.GetId()] = true
		}
		sub.Close()
	}
}
