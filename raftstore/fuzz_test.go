package raftstore

import (
	"bytes"
	"io"
	"testing"

	"github.com/hashicorp/raft"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// FuzzSnapshotRestore feeds arbitrary bytes to the FSM's snapshot restore
// (a snapshot file on disk, or one sent by the leader): it must refuse or
// restore without panicking, and a restored state must snapshot to bytes
// that restore to the same state again.
func FuzzSnapshotRestore(f *testing.F) {
	h := newFSMHarness(f)
	populate(f, h)
	f.Add(snapshotBytes(f, h.f))
	f.Add(snapshotBytes(f, newFSM()))
	f.Add([]byte{})
	f.Add([]byte("\x08\x02"))
	f.Fuzz(func(t *testing.T, data []byte) {
		first := newFSM()
		if err := first.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
			return
		}
		again := snapshotBytes(t, first)
		second := newFSM()
		if err := second.Restore(io.NopCloser(bytes.NewReader(again))); err != nil {
			t.Fatalf("a snapshot of a restored state does not restore: %v", err)
		}
		if third := snapshotBytes(t, second); !bytes.Equal(again, third) {
			t.Fatal("restoring a snapshot of a restored state changed it")
		}
		// Reads over every table and index work on what was restored.
		rh := &fsmHarness{t: t, f: second}
		rh.view(func(tx *Tx) {
			for _, s := range tx.Services().List() {
				tx.Tasks().Find(IndexService, s.GetId())
				tx.Services().Find(IndexName, s.GetSpec().GetAnnotations().GetName())
			}
			for _, n := range tx.Nodes().List() {
				tx.Tasks().Find(IndexNode, n.GetId())
			}
			tx.Secrets().List()
			tx.Cluster()
		})
	})
}

// FuzzApplyTransaction feeds arbitrary bytes to the FSM as a Raft log
// entry on top of a populated state: it must refuse or apply without
// panicking, deterministically (two replicas end in the same state), and
// leave a state that snapshots and restores exactly.
func FuzzApplyTransaction(f *testing.F) {
	seedState := func(t testing.TB) *fsmHarness {
		h := newFSMHarness(t)
		populate(t, h)
		return h
	}
	h := seedState(f)
	for _, txn := range []*pb.Transaction{
		h.build("seed-1", func(tx *Tx) error { return tx.Services().Create(testService("svc-z", "zed")) }),
		h.build("seed-2", func(tx *Tx) error { return tx.Nodes().Delete("node-1") }),
		h.build("seed-3", func(tx *Tx) error { return tx.Tasks().Create(testTask("task-z", "svc-a", "node-0")) }),
		{RequestId: "req-1"},
	} {
		data, err := proto.Marshal(txn)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := seedState(t), seedState(t)
		for _, r := range []*fsmHarness{a, b} {
			r.index++
			if _, ok := r.f.Apply(&raft.Log{Index: r.index, Term: 1, Type: raft.LogCommand, Data: data}).(*applyResult); !ok {
				t.Fatal("Apply did not return an applyResult")
			}
		}
		snapA, snapB := snapshotBytes(t, a.f), snapshotBytes(t, b.f)
		if !bytes.Equal(snapA, snapB) {
			t.Fatal("two replicas applying the same entry ended in different states")
		}
		restored := newFSM()
		if err := restored.Restore(io.NopCloser(bytes.NewReader(snapA))); err != nil {
			t.Fatalf("the state after the entry does not restore: %v", err)
		}
		if again := snapshotBytes(t, restored); !bytes.Equal(again, snapA) {
			t.Fatal("the state after the entry changed through a snapshot and restore")
		}
	})
}
