package raftstore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/hashicorp/raft"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// populate fills every table through committed transactions, including
// updates and deletes, and returns the request IDs it used.
func populate(t testing.TB, h *fsmHarness) []string {
	t.Helper()
	var reqs []string
	commit := func(fn func(tx *Tx) error) {
		id := fmt.Sprintf("req-%d", len(reqs))
		reqs = append(reqs, id)
		h.commit(id, fn)
	}
	commit(func(tx *Tx) error {
		if err := tx.Clusters().Create(testClusterObject("c1", "default")); err != nil {
			return err
		}
		for i := 0; i < 3; i++ {
			if err := tx.Nodes().Create(testNode(fmt.Sprintf("node-%d", i), fmt.Sprintf("host-%d", i))); err != nil {
				return err
			}
		}
		return nil
	})
	commit(func(tx *Tx) error {
		if err := tx.Services().Create(testService("svc-a", "web")); err != nil {
			return err
		}
		if err := tx.Services().Create(testService("svc-b", "db")); err != nil {
			return err
		}
		return tx.Secrets().Create(testSecret("sec-1", "password", "hunter2"))
	})
	commit(func(tx *Tx) error {
		for i := 0; i < 4; i++ {
			if err := tx.Tasks().Create(testTask(fmt.Sprintf("task-%d", i), "svc-a", fmt.Sprintf("node-%d", i%3))); err != nil {
				return err
			}
		}
		return nil
	})
	commit(func(tx *Tx) error {
		n, _ := tx.Nodes().Get("node-1")
		n.Spec = &pb.NodeSpec{Annotations: &pb.Annotations{Labels: map[string]string{"zone": "b"}}}
		if err := tx.Nodes().Update(n); err != nil {
			return err
		}
		if err := tx.Tasks().Delete("task-3"); err != nil {
			return err
		}
		if err := tx.Configs().Create(testConfig("cfg-1", "app.conf", "port=80")); err != nil {
			return err
		}
		if err := tx.Networks().Create(&pb.Network{Id: "net-1", Spec: &pb.NetworkSpec{Annotations: &pb.Annotations{Name: "app_default"}, Driver: "overlay"}}); err != nil {
			return err
		}
		return tx.Secrets().Create(testSecret("sec-2", "token", "t0k3n"))
	})
	commit(func(tx *Tx) error {
		c := tx.Cluster()
		c.JoinTokens = &pb.JoinTokens{Worker: "w", Manager: "m"}
		return tx.Clusters().Update(c)
	})
	return reqs
}

func TestFSMSnapshotRestoreRoundTrip(t *testing.T) {
	h := newFSMHarness(t)
	reqs := populate(t, h)

	data := snapshotBytes(t, h.f)
	restored := newFSM()
	if err := restored.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatalf("Restore: %v", err)
	}

	orig, got := h.f.st.capture(), restored.st.capture()
	for _, c := range []struct {
		name      string
		want, got []proto.Message
	}{
		{"nodes", msgs(orig.Nodes), msgs(got.Nodes)},
		{"services", msgs(orig.Services), msgs(got.Services)},
		{"tasks", msgs(orig.Tasks), msgs(got.Tasks)},
		{"clusters", msgs(orig.Clusters), msgs(got.Clusters)},
		{"secrets", msgs(orig.Secrets), msgs(got.Secrets)},
		{"configs", msgs(orig.Configs), msgs(got.Configs)},
		{"networks", msgs(orig.Networks), msgs(got.Networks)},
		{"applied requests", msgs(orig.AppliedRequests), msgs(got.AppliedRequests)},
	} {
		t.Run(c.name, func(t *testing.T) {
			if len(c.want) == 0 {
				t.Fatalf("the test state has no %s", c.name)
			}
			if len(c.got) != len(c.want) {
				t.Fatalf("restored %d %s, want %d", len(c.got), c.name, len(c.want))
			}
			for i := range c.want {
				if !proto.Equal(c.want[i], c.got[i]) {
					t.Errorf("%s[%d]: restored %v, want %v", c.name, i, c.got[i], c.want[i])
				}
			}
		})
	}
	if got.Index != orig.Index || got.Index != h.index {
		t.Errorf("restored index %d, want %d", got.Index, h.index)
	}
	if !proto.Equal(orig, got) {
		t.Errorf("restored snapshot differs from the original")
	}
	if len(got.AppliedRequests) != len(reqs) {
		t.Errorf("restored %d applied requests, want %d", len(got.AppliedRequests), len(reqs))
	}

	// Snapshotting the restored state gives the same bytes.
	if again := snapshotBytes(t, restored); !bytes.Equal(again, data) {
		t.Error("the snapshot of a restored state differs from the original snapshot")
	}

	// The secondary indexes are rebuilt.
	rh := &fsmHarness{t: t, f: restored, index: h.index}
	rh.view(func(tx *Tx) {
		if got := ids(tx.Tasks().Find(IndexService, "svc-a")); !sameStrings(got, []string{"task-0", "task-1", "task-2"}) {
			t.Errorf("tasks of svc-a after restore: %v", got)
		}
		if got := ids(tx.Tasks().Find(IndexNode, "node-0")); !sameStrings(got, []string{"task-0"}) {
			t.Errorf("tasks on node-0 after restore: %v", got)
		}
		if got := ids(tx.Nodes().Find(IndexName, "host-2")); !sameStrings(got, []string{"node-2"}) {
			t.Errorf("node host-2 after restore: %v", got)
		}
		if got := ids(tx.Secrets().Find(IndexName, "token")); !sameStrings(got, []string{"sec-2"}) {
			t.Errorf("secret token after restore: %v", got)
		}
		if got := ids(tx.Configs().Find(IndexName, "app.conf")); !sameStrings(got, []string{"cfg-1"}) {
			t.Errorf("config app.conf after restore: %v", got)
		}
		if got := ids(tx.Networks().Find(IndexName, "app_default")); !sameStrings(got, []string{"net-1"}) {
			t.Errorf("network app_default after restore: %v", got)
		}
	})
	// Unique names still hold after a restore.
	res := rh.apply(&pb.Transaction{RequestId: "dup-name", Actions: []*pb.StoreAction{{
		Kind:   pb.StoreActionKind_STORE_ACTION_KIND_CREATE,
		Target: &pb.StoreAction_Service{Service: testService("svc-c", "web")},
	}}})
	if !errors.Is(res.err, ErrNameConflict) {
		t.Errorf("create a second service named web after restore: %v, want ErrNameConflict", res.err)
	}
	// Applied request IDs are remembered: replaying one is a no-op.
	res = rh.apply(&pb.Transaction{RequestId: reqs[1], Actions: []*pb.StoreAction{{
		Kind:   pb.StoreActionKind_STORE_ACTION_KIND_CREATE,
		Target: &pb.StoreAction_Node{Node: testNode("node-new", "new")},
	}}})
	if res.err != nil || !res.duplicate || res.index != 2 {
		t.Errorf("replay of %s after restore: %+v, want a duplicate of index 2", reqs[1], res)
	}
	rh.view(func(tx *Tx) {
		if _, ok := tx.Nodes().Get("node-new"); ok {
			t.Error("a replayed request applied again after restore")
		}
	})

}

func msgs[T proto.Message](in []T) []proto.Message {
	out := make([]proto.Message, len(in))
	for i, m := range in {
		out[i] = m
	}
	return out
}

// A snapshot captures the state at Snapshot time even when later entries
// apply before Persist runs.
func TestFSMSnapshotIsPointInTime(t *testing.T) {
	h := newFSMHarness(t)
	populate(t, h)
	want := h.f.st.capture()
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	h.commit("later-1", func(tx *Tx) error {
		n, _ := tx.Nodes().Get("node-0")
		n.Description.Hostname = "renamed"
		if err := tx.Nodes().Update(n); err != nil {
			return err
		}
		return tx.Services().Delete("svc-b")
	})
	h.commit("later-2", func(tx *Tx) error { return tx.Nodes().Create(testNode("node-9", "h9")) })

	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	var got pb.Snapshot
	if err := proto.Unmarshal(sink.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(want, &got) {
		t.Errorf("persisted snapshot includes changes applied after Snapshot:\n got %v\nwant %v", &got, want)
	}
}

func TestFSMRestoreRejectsBadSnapshots(t *testing.T) {
	good := &pb.Snapshot{Format: snapshotFormat, Nodes: []*pb.Node{testNode("x", "x")}}
	wrongFormat := proto.Clone(good).(*pb.Snapshot)
	wrongFormat.Format = snapshotFormat + 1
	enc := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"garbage", []byte("\xff\xff\xff not a snapshot")},
		{"unknown format", enc(wrongFormat)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFSMHarness(t)
			populate(t, h)
			before := h.f.st.capture()
			if err := h.f.Restore(io.NopCloser(bytes.NewReader(tc.data))); err == nil {
				t.Fatal("Restore accepted a bad snapshot")
			}
			if !proto.Equal(before, h.f.st.capture()) {
				t.Error("a failed Restore changed the state")
			}
		})
	}
}

// failingSink fails every write.
type failingSink struct{ memSink }

func (s *failingSink) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestFSMPersistCancelsOnWriteError(t *testing.T) {
	h := newFSMHarness(t)
	populate(t, h)
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink failingSink
	if err := snap.Persist(&sink); err == nil {
		t.Fatal("Persist succeeded on a failing sink")
	}
	if !sink.cancelled || sink.closed {
		t.Errorf("sink cancelled=%v closed=%v, want cancelled only", sink.cancelled, sink.closed)
	}
}

func TestFSMIgnoresNonCommandEntriesAndReportsBadOnes(t *testing.T) {
	h := newFSMHarness(t)
	if res := h.f.Apply(&raft.Log{Index: 1, Type: raft.LogNoop}); res != nil {
		t.Errorf("Apply(noop) = %v, want nil", res)
	}
	res := h.f.Apply(&raft.Log{Index: 2, Type: raft.LogCommand, Data: []byte("\xff\xff")}).(*applyResult)
	if res.err == nil {
		t.Error("Apply of an undecodable entry succeeded")
	}
	h.index = 2
	bad := []struct {
		name   string
		action *pb.StoreAction
		want   error
	}{
		{"no target", &pb.StoreAction{Kind: pb.StoreActionKind_STORE_ACTION_KIND_CREATE}, nil},
		{"no ID", &pb.StoreAction{Kind: pb.StoreActionKind_STORE_ACTION_KIND_CREATE, Target: &pb.StoreAction_Node{Node: &pb.Node{}}}, ErrMissingID},
		{"unknown kind", &pb.StoreAction{Target: &pb.StoreAction_Node{Node: testNode("a", "a")}}, nil},
		{"update missing", &pb.StoreAction{Kind: pb.StoreActionKind_STORE_ACTION_KIND_UPDATE, Target: &pb.StoreAction_Node{Node: testNode("a", "a")}}, ErrNotFound},
		{"delete missing", &pb.StoreAction{Kind: pb.StoreActionKind_STORE_ACTION_KIND_DELETE, Target: &pb.StoreAction_Node{Node: testNode("a", "a")}}, ErrNotFound},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			res := h.apply(&pb.Transaction{RequestId: "r-" + tc.name, Actions: []*pb.StoreAction{tc.action}})
			if res.err == nil || (tc.want != nil && !errors.Is(res.err, tc.want)) {
				t.Errorf("apply: %v, want %v", res.err, tc.want)
			}
		})
	}
	h.view(func(tx *Tx) {
		if n := tx.Nodes().Len(); n != 0 {
			t.Errorf("%d nodes after refused transactions", n)
		}
	})
}

// A transaction refused at apply time leaves no trace: earlier actions are
// undone (indexes included), nothing is published and the request ID is
// not remembered, so a corrected retry with the same ID applies.
func TestFSMRefusedTransactionAppliesNothing(t *testing.T) {
	type setup struct {
		name string
		// race commits a change between building and applying the
		// transaction under test; the transaction's last action conflicts.
		race func(tx *Tx) error
		want error
	}
	for _, tc := range []setup{
		{
			name: "version conflict",
			race: func(tx *Tx) error {
				n, _ := tx.Nodes().Get("node-2")
				n.Status = &pb.NodeStatus{Message: "changed meanwhile"}
				return tx.Nodes().Update(n)
			},
			want: ErrVersionConflict,
		},
		{
			name: "deleted meanwhile",
			race: func(tx *Tx) error { return tx.Nodes().Delete("node-2") },
			want: ErrNotFound,
		},
		{
			name: "name taken meanwhile",
			race: func(tx *Tx) error { return tx.Services().Create(testService("svc-z", "cache")) },
			want: ErrNameConflict,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFSMHarness(t)
			populate(t, h)
			sub := h.store().Watch(nil)
			defer sub.Close()

			txn := h.build("victim", func(tx *Tx) error {
				// Rename a service (moves a unique index entry), create a
				// node, delete a task, update a secret: all must be undone.
				s, _ := tx.Services().Get("svc-a")
				s.Spec.Annotations.Name = "web-renamed"
				if err := tx.Services().Update(s); err != nil {
					return err
				}
				if err := tx.Nodes().Create(testNode("node-new", "host-new")); err != nil {
					return err
				}
				if err := tx.Tasks().Delete("task-0"); err != nil {
					return err
				}
				sec, _ := tx.Secrets().Get("sec-1")
				sec.Spec.Data = []byte("changed")
				if err := tx.Secrets().Update(sec); err != nil {
					return err
				}
				if err := tx.Services().Create(testService("svc-y", "cache")); err != nil {
					return err
				}
				n, _ := tx.Nodes().Get("node-2")
				n.Status = &pb.NodeStatus{Message: "victim"}
				return tx.Nodes().Update(n)
			})
			raceIdx := h.commit("race", tc.race)
			ev := <-sub.C() // the racing change's event
			if ev.Index != raceIdx {
				t.Fatalf("first event at index %d, want %d", ev.Index, raceIdx)
			}

			before := h.f.st.capture()
			res := h.apply(txn)
			if !errors.Is(res.err, tc.want) {
				t.Fatalf("apply: %v, want %v", res.err, tc.want)
			}
			after := h.f.st.capture()
			before.Index, after.Index = 0, 0
			if !proto.Equal(before, after) {
				t.Errorf("refused transaction changed the state:\nbefore %v\nafter  %v", before, after)
			}
			h.view(func(tx *Tx) {
				if got := ids(tx.Services().Find(IndexName, "web")); !sameStrings(got, []string{"svc-a"}) {
					t.Errorf("name index for web after undo: %v", got)
				}
				if got := tx.Services().Find(IndexName, "web-renamed"); len(got) != 0 {
					t.Errorf("name index for web-renamed after undo: %v", ids(got))
				}
				if got := ids(tx.Tasks().Find(IndexNode, "node-0")); !sameStrings(got, []string{"task-0"}) {
					t.Errorf("node index after undo: %v", got)
				}
				if got := tx.Nodes().Find(IndexName, "host-new"); len(got) != 0 {
					t.Errorf("hostname index after undo: %v", ids(got))
				}
			})

			// Nothing was published for the refused transaction: the next
			// event is the next committed change.
			next := h.commit("next", func(tx *Tx) error { return tx.Clusters().Create(testClusterObject("c-next", "x")) })
			if ev := <-sub.C(); ev.Index != next {
				t.Errorf("event after the refused transaction at index %d (%v %v), want %d", ev.Index, ev.Kind, ev.Table, next)
			}
			// The refused request ID was not remembered.
			if _, ok := h.f.st.requests.lookup("victim"); ok {
				t.Error("a refused request ID was remembered")
			}
		})
	}
}

func TestFSMDuplicateRequestAppliesOnce(t *testing.T) {
	h := newFSMHarness(t)
	sub := h.store().Watch(nil)
	defer sub.Close()

	first := h.commit("req-1", func(tx *Tx) error { return tx.Nodes().Create(testNode("a", "a")) })
	// A retry of the same request, built on the state that already holds
	// its effect, must not apply again.
	retry := h.build("req-1", func(tx *Tx) error { return tx.Nodes().Create(testNode("b", "b")) })
	res := h.apply(retry)
	if res.err != nil || !res.duplicate || res.index != first {
		t.Fatalf("retry: %+v, want duplicate of index %d", res, first)
	}
	// An exact replay of the first entry too.
	replay := &pb.Transaction{RequestId: "req-1", Actions: []*pb.StoreAction{{
		Kind: pb.StoreActionKind_STORE_ACTION_KIND_CREATE, Target: &pb.StoreAction_Node{Node: testNode("a", "a")},
	}}}
	if res := h.apply(replay); res.err != nil || !res.duplicate || res.index != first {
		t.Fatalf("replay: %+v, want duplicate of index %d", res, first)
	}
	h.view(func(tx *Tx) {
		if got := ids(tx.Nodes().List()); !sameStrings(got, []string{"a"}) {
			t.Errorf("nodes %v, want [a]", got)
		}
	})
	other := h.commit("req-2", func(tx *Tx) error { return tx.Nodes().Create(testNode("c", "c")) })
	for _, want := range []uint64{first, other} {
		if ev := <-sub.C(); ev.Index != want {
			t.Errorf("event at index %d, want %d (duplicates publish nothing)", ev.Index, want)
		}
	}
}

func TestRequestLogEvictsOldest(t *testing.T) {
	l := newRequestLog(3)
	for i, id := range []string{"a", "b", "", "c", "b", "d"} {
		l.add(id, uint64(i+1))
	}
	var got []string
	for _, e := range l.entries() {
		got = append(got, e.GetRequestId())
	}
	if !sameStrings(got, []string{"b", "c", "d"}) {
		t.Errorf("entries %v, want [b c d]", got)
	}
	if _, ok := l.lookup("a"); ok {
		t.Error("evicted ID still found")
	}
	if idx, ok := l.lookup("b"); !ok || idx != 2 {
		t.Errorf("lookup(b) = %d, %v; want the first index 2", idx, ok)
	}
}

// Object metadata is stamped by the FSM from the entry, identically on
// every replica.
func TestFSMStampsMeta(t *testing.T) {
	h := newFSMHarness(t)
	idx1 := h.commit("r1", func(tx *Tx) error { return tx.Nodes().Create(testNode("a", "a")) })
	ts1 := int64(1000 + idx1 - 1)
	h.commit("r2", func(tx *Tx) error {
		n, _ := tx.Nodes().Get("a")
		n.Description.Os = "linux"
		n.Meta.CreatedAt = 42 // the FSM keeps the original
		n.Meta.UpdatedAt = 42
		return tx.Nodes().Update(n)
	})
	h.view(func(tx *Tx) {
		n, _ := tx.Nodes().Get("a")
		if n.GetMeta().GetVersion() != h.index {
			t.Errorf("version %d, want the entry index %d", n.GetMeta().GetVersion(), h.index)
		}
		if n.GetMeta().GetCreatedAt() != ts1 {
			t.Errorf("created_at %d, want %d", n.GetMeta().GetCreatedAt(), ts1)
		}
		if n.GetMeta().GetUpdatedAt() <= ts1 {
			t.Errorf("updated_at %d not after created_at %d", n.GetMeta().GetUpdatedAt(), ts1)
		}
	})
}
