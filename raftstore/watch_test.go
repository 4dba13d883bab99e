package raftstore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// next receives one event or fails the test.
func next(t *testing.T, sub *Subscription) Event {
	t.Helper()
	select {
	case ev, ok := <-sub.C():
		if !ok {
			t.Fatalf("subscription ended: %v", sub.Err())
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	panic("unreachable")
}

// ended waits for the subscription's channel to close and returns Err.
func ended(t *testing.T, sub *Subscription) error {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-sub.C():
			if !ok {
				return sub.Err()
			}
		case <-deadline:
			t.Fatal("subscription did not end within 10s")
		}
	}
}

func TestWatchDeliversEventsInCommitOrder(t *testing.T) {
	h := newFSMHarness(t)
	sub := h.store().Watch(nil)
	defer sub.Close()

	type want struct {
		kind  EventKind
		table Kind
		id    string
	}
	var wants []want
	var indexes []uint64
	idx := h.commit("r1", func(tx *Tx) error {
		if err := tx.Nodes().Create(testNode("n1", "h1")); err != nil {
			return err
		}
		return tx.Services().Create(testService("s1", "web"))
	})
	wants = append(wants, want{EventCreate, KindNode, "n1"}, want{EventCreate, KindService, "s1"})
	indexes = append(indexes, idx, idx)
	idx = h.commit("r2", func(tx *Tx) error {
		if err := tx.Tasks().Create(testTask("t1", "s1", "n1")); err != nil {
			return err
		}
		return setHostname(tx, "n1", "h1b")
	})
	wants = append(wants, want{EventCreate, KindTask, "t1"}, want{EventUpdate, KindNode, "n1"})
	indexes = append(indexes, idx, idx)
	idx = h.commit("r3", func(tx *Tx) error {
		if err := tx.Secrets().Create(testSecret("x1", "pw", "p")); err != nil {
			return err
		}
		if err := tx.Clusters().Create(testClusterObject("c1", "c")); err != nil {
			return err
		}
		return tx.Tasks().Delete("t1")
	})
	wants = append(wants, want{EventCreate, KindSecret, "x1"}, want{EventCreate, KindCluster, "c1"}, want{EventDelete, KindTask, "t1"})
	indexes = append(indexes, idx, idx, idx)
	// Many small transactions after the channel's buffer is full.
	for i := 0; i < 200; i++ {
		id := fmt.Sprintf("bulk-%03d", i)
		idx = h.commit("bulk"+id, func(tx *Tx) error { return tx.Nodes().Create(testNode(id, id)) })
		wants = append(wants, want{EventCreate, KindNode, id})
		indexes = append(indexes, idx)
	}

	for i, w := range wants {
		ev := next(t, sub)
		if ev.Kind != w.kind || ev.Table != w.table || ev.Object.GetId() != w.id || ev.Index != indexes[i] {
			t.Fatalf("event %d: %v %v %s @%d, want %v %v %s @%d", i, ev.Kind, ev.Table, ev.Object.GetId(), ev.Index, w.kind, w.table, w.id, indexes[i])
		}
		switch ev.Kind {
		case EventCreate:
			if ev.Old != nil {
				t.Errorf("event %d: create with Old set", i)
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

func TestWatchFilter(t *testing.T) {
	h := newFSMHarness(t)
	st := h.store()
	tasks := st.Watch(func(ev Event) bool { return ev.Table == KindTask })
	defer tasks.Close()
	deletes := st.Watch(func(ev Event) bool { return ev.Kind == EventDelete })
	defer deletes.Close()

	h.commit("r1", func(tx *Tx) error {
		if err := tx.Nodes().Create(testNode("n1", "h")); err != nil {
			return err
		}
		return tx.Tasks().Create(testTask("t1", "s", "n1"))
	})
	h.commit("r2", func(tx *Tx) error { return tx.Nodes().Delete("n1") })
	h.commit("r3", func(tx *Tx) error { return tx.Tasks().Delete("t1") })

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
func TestViewAndWatchIsAtomic(t *testing.T) {
	const total = 400
	h := newFSMHarness(t)
	st := h.store()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < total; i++ {
			id := fmt.Sprintf("n%04d", i)
			h.commit("r"+id, func(tx *Tx) error { return tx.Nodes().Create(testNode(id, id)) })
		}
	}()

	var subs []*Subscription
	var views []map[string]bool
	for i := 0; i < 20; i++ {
		seen := map[string]bool{}
		sub := st.ViewAndWatch(func(tx *Tx) {
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

func TestRestoreEndsSubscriptionsWithReset(t *testing.T) {
	h := newFSMHarness(t)
	populate(t, h)
	data := snapshotBytes(t, h.f)
	st := h.store()
	subs := []*Subscription{st.Watch(nil), st.Watch(func(Event) bool { return false })}
	// A subscriber that has events queued and is not reading.
	h.commit("pending", func(tx *Tx) error { return tx.Nodes().Create(testNode("pending", "p")) })

	if err := h.f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	for i, sub := range subs {
		if err := ended(t, sub); !errors.Is(err, ErrWatchReset) {
			t.Errorf("subscription %d ended with %v, want ErrWatchReset", i, err)
		}
		sub.Close() // closing an ended subscription is fine
	}
	// A subscription made after the restore lives on.
	after := st.Watch(nil)
	defer after.Close()
	h.index = h.f.st.index
	h.commit("post", func(tx *Tx) error { return tx.Nodes().Create(testNode("post", "p")) })
	if ev := next(t, after); ev.Object.GetId() != "post" {
		t.Errorf("event after restore: %s", ev.Object.GetId())
	}
}

func TestSubscriptionCloseReleasesGoroutines(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	h := newFSMHarness(t)
	st := h.store()
	var subs []*Subscription
	for i := 0; i < 50; i++ {
		subs = append(subs, st.Watch(nil))
	}
	// Some with undelivered events.
	for i := 0; i < 100; i++ {
		id := fmt.Sprintf("n%d", i)
		h.commit(id, func(tx *Tx) error { return tx.Nodes().Create(testNode(id, id)) })
	}
	for _, s := range subs {
		s.Close()
		if err := ended(t, s); err != nil {
			t.Errorf("Err after Close = %v, want nil", err)
		}
	}
	if n := len(h.f.hub.subs); n != 0 {
		t.Errorf("%d subscriptions still registered", n)
	}
}

func TestWatchOverflow(t *testing.T) {
	h := newHub()
	sub := h.subscribe(nil)
	defer sub.Close()
	h.publish(make([]Event, maxQueuedEvents+1))
	if err := ended(t, sub); !errors.Is(err, ErrWatchOverflow) {
		t.Fatalf("ended with %v, want ErrWatchOverflow", err)
	}
	h.mu.Lock()
	n := len(h.subs)
	h.mu.Unlock()
	if n != 0 {
		t.Errorf("overflowed subscription still registered")
	}
}

func TestEventKindStrings(t *testing.T) {
	for k, want := range map[fmt.Stringer]string{
		EventCreate: "create", EventUpdate: "update", EventDelete: "delete", EventKind(0): "unknown",
		KindNode: "node", KindService: "service", KindTask: "task", KindCluster: "cluster", KindSecret: "secret", KindConfig: "config", Kind(9): "kind(9)",
	} {
		if got := k.String(); got != want {
			t.Errorf("%#v.String() = %q, want %q", k, got, want)
		}
	}
}
