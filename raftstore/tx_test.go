package raftstore

import (
	"errors"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
)

// seed is the committed state the Tx tests start from.
func seed(t *testing.T) *fsmHarness {
	h := newFSMHarness(t)
	h.commit("seed", func(tx *Tx) error {
		for _, n := range []*pb.Node{testNode("n1", "h1"), testNode("n2", "h2"), testNode("n3", "h3")} {
			if err := tx.Nodes().Create(n); err != nil {
				return err
			}
		}
		for _, s := range []*pb.Service{testService("s1", "web"), testService("s2", "db")} {
			if err := tx.Services().Create(s); err != nil {
				return err
			}
		}
		return nil
	})
	return h
}

func actionKinds(txn *pb.Transaction) []string {
	var out []string
	for _, a := range txn.GetActions() {
		var id string
		switch t := a.GetTarget().(type) {
		case *pb.StoreAction_Node:
			id = t.Node.GetId()
		case *pb.StoreAction_Service:
			id = t.Service.GetId()
		}
		out = append(out, a.GetKind().String()+":"+id)
	}
	return out
}

func setHostname(tx *Tx, id, host string) error {
	n, ok := tx.Nodes().Get(id)
	if !ok {
		return ErrNotFound
	}
	n.Description.Hostname = host
	return tx.Nodes().Update(n)
}

// Writes to one object within a transaction collapse into one action.
func TestTxCollapsesWrites(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fn      func(tx *Tx) error
		actions []string
		// after the commit
		nodes []string
		host  map[string]string
	}{
		{
			name: "create then update",
			fn: func(tx *Tx) error {
				if err := tx.Nodes().Create(testNode("n9", "first")); err != nil {
					return err
				}
				return setHostname(tx, "n9", "second")
			},
			actions: []string{"STORE_ACTION_KIND_CREATE:n9"},
			nodes:   []string{"n1", "n2", "n3", "n9"},
			host:    map[string]string{"n9": "second"},
		},
		{
			name: "create then delete",
			fn: func(tx *Tx) error {
				if err := tx.Nodes().Create(testNode("n9", "x")); err != nil {
					return err
				}
				return tx.Nodes().Delete("n9")
			},
			actions: nil,
			nodes:   []string{"n1", "n2", "n3"},
		},
		{
			name: "create, delete, create again",
			fn: func(tx *Tx) error {
				if err := tx.Nodes().Create(testNode("n9", "x")); err != nil {
					return err
				}
				if err := tx.Nodes().Delete("n9"); err != nil {
					return err
				}
				return tx.Nodes().Create(testNode("n9", "y"))
			},
			actions: []string{"STORE_ACTION_KIND_CREATE:n9"},
			nodes:   []string{"n1", "n2", "n3", "n9"},
			host:    map[string]string{"n9": "y"},
		},
		{
			name: "update twice",
			fn: func(tx *Tx) error {
				if err := setHostname(tx, "n1", "a"); err != nil {
					return err
				}
				return setHostname(tx, "n1", "b")
			},
			actions: []string{"STORE_ACTION_KIND_UPDATE:n1"},
			nodes:   []string{"n1", "n2", "n3"},
			host:    map[string]string{"n1": "b"},
		},
		{
			name: "update then delete",
			fn: func(tx *Tx) error {
				if err := setHostname(tx, "n1", "a"); err != nil {
					return err
				}
				return tx.Nodes().Delete("n1")
			},
			actions: []string{"STORE_ACTION_KIND_DELETE:n1"},
			nodes:   []string{"n2", "n3"},
		},
		{
			name: "delete then create is an update",
			fn: func(tx *Tx) error {
				if err := tx.Nodes().Delete("n2"); err != nil {
					return err
				}
				return tx.Nodes().Create(testNode("n2", "reborn"))
			},
			actions: []string{"STORE_ACTION_KIND_UPDATE:n2"},
			nodes:   []string{"n1", "n2", "n3"},
			host:    map[string]string{"n2": "reborn"},
		},
		{
			name: "first-touch order",
			fn: func(tx *Tx) error {
				if err := setHostname(tx, "n3", "c"); err != nil {
					return err
				}
				if err := tx.Nodes().Create(testNode("n0", "zero")); err != nil {
					return err
				}
				return setHostname(tx, "n3", "cc")
			},
			actions: []string{"STORE_ACTION_KIND_UPDATE:n3", "STORE_ACTION_KIND_CREATE:n0"},
			nodes:   []string{"n0", "n1", "n2", "n3"},
			host:    map[string]string{"n3": "cc", "n0": "zero"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := seed(t)
			txn := h.build("r", tc.fn)
			if got := actionKinds(txn); !sameStrings(got, tc.actions) {
				t.Fatalf("actions %v, want %v", got, tc.actions)
			}
			if res := h.apply(txn); res.err != nil {
				t.Fatalf("apply: %v", res.err)
			}
			h.view(func(tx *Tx) {
				if got := ids(tx.Nodes().List()); !sameStrings(got, tc.nodes) {
					t.Errorf("nodes %v, want %v", got, tc.nodes)
				}
				for id, host := range tc.host {
					n, _ := tx.Nodes().Get(id)
					if n.GetDescription().GetHostname() != host {
						t.Errorf("%s hostname %q, want %q", id, n.GetDescription().GetHostname(), host)
					}
					if got := ids(tx.Nodes().Find(IndexName, host)); !sameStrings(got, []string{id}) {
						t.Errorf("Find(name, %q) = %v, want [%s]", host, got, id)
					}
				}
			})
		})
	}
}

// Reads inside a transaction see its own staged writes.
func TestTxReadYourWrites(t *testing.T) {
	h := seed(t)
	h.build("r", func(tx *Tx) error {
		nodes := tx.Nodes()
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		must(nodes.Create(testNode("n4", "h4")))
		must(nodes.Delete("n2"))
		must(setHostname(tx, "n1", "moved"))
		must(nodes.Create(testNode("n0", "h0")))

		if got, want := ids(nodes.List()), []string{"n0", "n1", "n3", "n4"}; !sameStrings(got, want) {
			t.Errorf("List = %v, want %v (sorted, staged writes included)", got, want)
		}
		if got := nodes.Len(); got != 4 {
			t.Errorf("Len = %d, want 4", got)
		}
		if _, ok := nodes.Get("n2"); ok {
			t.Error("Get sees a node deleted in this transaction")
		}
		if n, ok := nodes.Get("n4"); !ok || n.GetDescription().GetHostname() != "h4" {
			t.Errorf("Get(n4) = %v, %v", n, ok)
		}
		for host, want := range map[string][]string{
			"h1": nil, "moved": {"n1"}, "h2": nil, "h4": {"n4"}, "h3": {"n3"},
		} {
			if got := ids(nodes.Find(IndexName, host)); !sameStrings(got, want) {
				t.Errorf("Find(name, %s) = %v, want %v", host, got, want)
			}
		}
		if got := nodes.Find("no-such-index", "x"); got != nil {
			t.Errorf("Find on an unknown index = %v", got)
		}
		// Other tables are unaffected.
		if got := tx.Services().Len(); got != 2 {
			t.Errorf("services Len = %d, want 2", got)
		}
		// Create then delete leaves nothing behind.
		must(nodes.Create(testNode("tmp", "tmp")))
		must(nodes.Delete("tmp"))
		if got := nodes.Len(); got != 4 {
			t.Errorf("Len after create+delete = %d, want 4", got)
		}
		if got := nodes.Find(IndexName, "tmp"); len(got) != 0 {
			t.Errorf("Find(tmp) = %v", ids(got))
		}
		return nil
	})
	// None of it is committed.
	h.view(func(tx *Tx) {
		if got := ids(tx.Nodes().List()); !sameStrings(got, []string{"n1", "n2", "n3"}) {
			t.Errorf("committed nodes changed by an unapplied transaction: %v", got)
		}
	})
}

// Objects handed out by a Tx are copies.
func TestTxReturnsCopies(t *testing.T) {
	h := seed(t)
	h.view(func(tx *Tx) {
		n, _ := tx.Nodes().Get("n1")
		n.Description.Hostname = "scribbled"
		for _, n := range tx.Nodes().List() {
			n.Description.Hostname = "scribbled"
		}
	})
	h.build("r", func(tx *Tx) error {
		n := testNode("n9", "orig")
		if err := tx.Nodes().Create(n); err != nil {
			return err
		}
		n.Description.Hostname = "scribbled" // after staging: ignored
		got, _ := tx.Nodes().Get("n9")
		got.Description.Hostname = "scribbled"
		if again, _ := tx.Nodes().Get("n9"); again.GetDescription().GetHostname() != "orig" {
			t.Errorf("staged object changed through a caller's pointer: %q", again.GetDescription().GetHostname())
		}
		return nil
	})
	h.view(func(tx *Tx) {
		if got := ids(tx.Nodes().Find(IndexName, "scribbled")); len(got) != 0 {
			t.Errorf("committed objects changed through returned copies: %v", got)
		}
	})
}

func TestTxErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		fn   func(tx *Tx) error
		want error
	}{
		{"create existing", func(tx *Tx) error { return tx.Nodes().Create(testNode("n1", "x")) }, ErrExists},
		{"create without ID", func(tx *Tx) error { return tx.Nodes().Create(testNode("", "x")) }, ErrMissingID},
		{"update missing", func(tx *Tx) error { return tx.Nodes().Update(testNode("nx", "x")) }, ErrNotFound},
		{"delete missing", func(tx *Tx) error { return tx.Nodes().Delete("nx") }, ErrNotFound},
		{"update deleted", func(tx *Tx) error {
			n, _ := tx.Nodes().Get("n1")
			if err := tx.Nodes().Delete("n1"); err != nil {
				return err
			}
			return tx.Nodes().Update(n)
		}, ErrNotFound},
		{"update with a stale version", func(tx *Tx) error {
			n, _ := tx.Nodes().Get("n1")
			n.Meta.Version--
			return tx.Nodes().Update(n)
		}, ErrVersionConflict},
		{"update without meta", func(tx *Tx) error { return tx.Nodes().Update(testNode("n1", "x")) }, ErrVersionConflict},
		{"create a taken name", func(tx *Tx) error { return tx.Services().Create(testService("s9", "web")) }, ErrNameConflict},
		{"rename to a taken name", func(tx *Tx) error {
			s, _ := tx.Services().Get("s2")
			s.Spec.Annotations.Name = "web"
			return tx.Services().Update(s)
		}, ErrNameConflict},
		{"name taken by a staged create", func(tx *Tx) error {
			if err := tx.Services().Create(testService("s8", "new")); err != nil {
				return err
			}
			return tx.Services().Create(testService("s9", "new"))
		}, ErrNameConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := seed(t)
			h.f.mu.RLock()
			err := tc.fn(newTx(h.f.st, true, "r"))
			h.f.mu.RUnlock()
			if !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestTxReadOnly(t *testing.T) {
	h := seed(t)
	h.view(func(tx *Tx) {
		n, _ := tx.Nodes().Get("n1")
		for name, err := range map[string]error{
			"create": tx.Nodes().Create(testNode("n9", "x")),
			"update": tx.Nodes().Update(n),
			"delete": tx.Nodes().Delete("n1"),
		} {
			if !errors.Is(err, ErrReadOnly) {
				t.Errorf("%s in View: %v, want ErrReadOnly", name, err)
			}
		}
	})
}

// Unique names are checked against the transaction's final state, both in
// the Tx and at apply time, whatever order the objects were touched in.
func TestUniqueNamesAcrossATransaction(t *testing.T) {
	for _, tc := range []struct {
		name string
		fn   func(tx *Tx) error
		want map[string]string // service ID -> name after commit
	}{
		{
			name: "free a name, then take it",
			fn: func(tx *Tx) error {
				s, _ := tx.Services().Get("s1")
				s.Spec.Annotations.Name = "web-old"
				if err := tx.Services().Update(s); err != nil {
					return err
				}
				return tx.Services().Create(testService("s3", "web"))
			},
			want: map[string]string{"s1": "web-old", "s2": "db", "s3": "web"},
		},
		{
			name: "take a name freed later in the transaction",
			fn: func(tx *Tx) error {
				// s3 is touched (created) before s1 gives "web" up, then
				// renamed to "web": the actions apply s3 first.
				if err := tx.Services().Create(testService("s3", "tmp")); err != nil {
					return err
				}
				s, _ := tx.Services().Get("s1")
				s.Spec.Annotations.Name = "web-old"
				if err := tx.Services().Update(s); err != nil {
					return err
				}
				s3, _ := tx.Services().Get("s3")
				s3.Spec.Annotations.Name = "web"
				return tx.Services().Update(s3)
			},
			want: map[string]string{"s1": "web-old", "s2": "db", "s3": "web"},
		},
		{
			name: "swap two names",
			fn: func(tx *Tx) error {
				s2, _ := tx.Services().Get("s2")
				s2.Spec.Annotations.Name = "tmp"
				if err := tx.Services().Update(s2); err != nil {
					return err
				}
				s1, _ := tx.Services().Get("s1")
				s1.Spec.Annotations.Name = "db"
				if err := tx.Services().Update(s1); err != nil {
					return err
				}
				s2.Spec.Annotations.Name = "web"
				return tx.Services().Update(s2)
			},
			want: map[string]string{"s1": "db", "s2": "web"},
		},
		{
			name: "delete after reusing the name",
			fn: func(tx *Tx) error {
				if err := tx.Services().Create(testService("s0", "tmp")); err != nil {
					return err
				}
				if err := tx.Services().Delete("s1"); err != nil {
					return err
				}
				s0, _ := tx.Services().Get("s0")
				s0.Spec.Annotations.Name = "web"
				return tx.Services().Update(s0)
			},
			want: map[string]string{"s0": "web", "s2": "db"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := seed(t)
			h.commit("r", tc.fn)
			h.view(func(tx *Tx) {
				got := map[string]string{}
				for _, s := range tx.Services().List() {
					got[s.GetId()] = s.GetSpec().GetAnnotations().GetName()
					if found := ids(tx.Services().Find(IndexName, got[s.GetId()])); !sameStrings(found, []string{s.GetId()}) {
						t.Errorf("Find(name, %q) = %v, want [%s]", got[s.GetId()], found, s.GetId())
					}
				}
				if len(got) != len(tc.want) {
					t.Errorf("services %v, want %v", got, tc.want)
				}
				for id, name := range tc.want {
					if got[id] != name {
						t.Errorf("service %s named %q, want %q", id, got[id], name)
					}
				}
			})
		})
	}
}

// Two transactions built on the same state that take the same name: the
// second is refused when it applies.
func TestUniqueNameConflictAtApply(t *testing.T) {
	h := seed(t)
	a := h.build("a", func(tx *Tx) error { return tx.Services().Create(testService("s3", "cache")) })
	b := h.build("b", func(tx *Tx) error { return tx.Services().Create(testService("s4", "cache")) })
	if res := h.apply(a); res.err != nil {
		t.Fatal(res.err)
	}
	if res := h.apply(b); !errors.Is(res.err, ErrNameConflict) {
		t.Fatalf("second create of cache: %v, want ErrNameConflict", res.err)
	}
	// Unnamed objects never conflict.
	h.commit("c", func(tx *Tx) error {
		if err := tx.Services().Create(testService("u1", "")); err != nil {
			return err
		}
		return tx.Services().Create(testService("u2", ""))
	})
}

func TestTxNewID(t *testing.T) {
	h := seed(t)
	var first, second []string
	for _, out := range []*[]string{&first, &second} {
		h.build("req-42", func(tx *Tx) error {
			*out = append(*out, tx.NewID(), tx.NewID())
			return nil
		})
	}
	if !sameStrings(first, second) {
		t.Errorf("IDs for one request ID differ across runs: %v vs %v", first, second)
	}
	if first[0] == first[1] {
		t.Errorf("two IDs in one transaction are equal: %v", first)
	}
	var other []string
	h.build("req-43", func(tx *Tx) error { other = append(other, tx.NewID()); return nil })
	if other[0] == first[0] {
		t.Error("different request IDs give the same object ID")
	}
	h.view(func(tx *Tx) {
		a, b := tx.NewID(), tx.NewID()
		if a == b || len(a) != idLength {
			t.Errorf("View IDs %q %q", a, b)
		}
	})
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := NewID()
		if len(id) != idLength || seen[id] {
			t.Fatalf("NewID %q: bad length or repeated", id)
		}
		seen[id] = true
	}
}

func TestTxCluster(t *testing.T) {
	h := newFSMHarness(t)
	h.view(func(tx *Tx) {
		if c := tx.Cluster(); c != nil {
			t.Errorf("Cluster before initialisation = %v", c)
		}
	})
	h.commit("r", func(tx *Tx) error { return tx.Clusters().Create(testClusterObject("c1", "prod")) })
	h.view(func(tx *Tx) {
		if c := tx.Cluster(); c.GetId() != "c1" || c.GetSpec().GetAnnotations().GetName() != "prod" {
			t.Errorf("Cluster = %v", c)
		}
		if tx.Index() != h.index {
			t.Errorf("Index = %d, want %d", tx.Index(), h.index)
		}
	})
}
