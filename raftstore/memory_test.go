package raftstore

import (
	"context"
	"testing"
	"time"
)

// What is the MemoryStore's own: its indexes, its clock, its leadership.
// The contract it shares with Store is in contract_test.go.

func TestMemoryStoreNumbersAndStampsTransactions(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	m := NewMemoryStore(MemoryConfig{Now: func() time.Time { return now }})
	defer m.Close()
	ctx := context.Background()

	for want := uint64(1); want <= 3; want++ {
		id := NewID()
		idx, err := m.Update(ctx, func(tx *Tx) error { return tx.Nodes().Create(testNode(id, id)) })
		if err != nil || idx != want {
			t.Fatalf("commit %d: index %d, %v", want, idx, err)
		}
	}
	created := now
	now = now.Add(time.Minute)
	idx, err := m.Update(ctx, func(tx *Tx) error {
		if err := tx.Nodes().Create(testNode("n", "h")); err != nil {
			return err
		}
		return tx.Services().Create(testService("s", "web"))
	})
	if err != nil || idx != 4 {
		t.Fatalf("a two-object transaction: index %d, %v; want one index, 4", idx, err)
	}
	now = now.Add(time.Minute)
	if _, err := m.Update(ctx, func(tx *Tx) error { return setHostname(tx, "n", "h2") }); err != nil {
		t.Fatal(err)
	}
	m.View(func(tx *Tx) {
		if tx.Index() != 5 {
			t.Errorf("index %d after five commits", tx.Index())
		}
		n, _ := tx.Nodes().Get("n")
		meta := n.GetMeta()
		if meta.GetVersion() != 5 || meta.GetCreatedAt() != created.Add(time.Minute).UnixNano() || meta.GetUpdatedAt() != now.UnixNano() {
			t.Errorf("meta %v: want version 5, created and updated by the configured clock", meta)
		}
	})
}

func TestMemoryStoreLeadsUntilClosed(t *testing.T) {
	m := NewMemoryStore(MemoryConfig{})
	if !m.IsLeader() {
		t.Error("a new memory store does not lead")
	}
	select {
	case leader := <-m.LeaderChanges():
		if !leader {
			t.Error("LeaderChanges delivered false")
		}
	default:
		t.Error("LeaderChanges has nothing for a new memory store")
	}
	select {
	case v := <-m.LeaderChanges():
		t.Errorf("LeaderChanges delivered %v a second time", v)
	default:
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if m.IsLeader() {
		t.Error("a closed memory store leads")
	}
	// Reads go on after Close.
	m.View(func(tx *Tx) { _ = tx.Nodes().List() })
}
