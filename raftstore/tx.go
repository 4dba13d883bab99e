package raftstore

import (
	"crypto/sha256"
	"fmt"
	"sort"
	"strings"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// Kind names a table.
type Kind int

// The tables of the store.
const (
	KindNode Kind = iota + 1
	KindService
	KindTask
	KindCluster
	KindSecret
	KindConfig
	KindNetwork
)

func (k Kind) String() string {
	switch k {
	case KindNode:
		return "node"
	case KindService:
		return "service"
	case KindTask:
		return "task"
	case KindCluster:
		return "cluster"
	case KindSecret:
		return "secret"
	case KindConfig:
		return "config"
	case KindNetwork:
		return "network"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

type stagedKey struct {
	kind Kind
	id   string
}

type stagedChange struct {
	action   pb.StoreActionKind
	obj      Object
	expected uint64
}

// Tx is a view of the store inside View or Update. Reads see the committed
// state plus this transaction's own staged writes. Objects returned are
// copies the caller may change; pass them back to Update to write them.
// A Tx must not be used after its function returns, and the function must
// not call other Store methods (the store's read lock is held).
type Tx struct {
	st        *state
	writable  bool
	requestID string
	ids       int
	staged    map[stagedKey]*stagedChange
	order     []stagedKey
}

func newTx(st *state, writable bool, requestID string) *Tx {
	return &Tx{st: st, writable: writable, requestID: requestID, staged: map[stagedKey]*stagedChange{}}
}

// Index is the Raft index of the state this transaction reads.
func (tx *Tx) Index() uint64 { return tx.st.index }

// NewID returns a fresh object ID. Inside Update the IDs derive from the
// request ID, so a retried request creates the same objects.
func (tx *Tx) NewID() string {
	tx.ids++
	if tx.requestID == "" {
		return NewID()
	}
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s/%d", tx.requestID, tx.ids)))
	return strings.ToLower(idEncoding.EncodeToString(sum[:]))[:idLength]
}

// Nodes is the node table.
func (tx *Tx) Nodes() Table[*pb.Node] { return Table[*pb.Node]{tx: tx, t: tx.st.nodes, kind: KindNode} }

// Services is the service table.
func (tx *Tx) Services() Table[*pb.Service] {
	return Table[*pb.Service]{tx: tx, t: tx.st.services, kind: KindService}
}

// Tasks is the task table.
func (tx *Tx) Tasks() Table[*pb.Task] { return Table[*pb.Task]{tx: tx, t: tx.st.tasks, kind: KindTask} }

// Clusters is the cluster table (one object once the cluster is initialised).
func (tx *Tx) Clusters() Table[*pb.Cluster] {
	return Table[*pb.Cluster]{tx: tx, t: tx.st.clusters, kind: KindCluster}
}

// Secrets is the secret table.
func (tx *Tx) Secrets() Table[*pb.Secret] {
	return Table[*pb.Secret]{tx: tx, t: tx.st.secrets, kind: KindSecret}
}

// Configs is the config table.
func (tx *Tx) Configs() Table[*pb.Config] {
	return Table[*pb.Config]{tx: tx, t: tx.st.configs, kind: KindConfig}
}

// Networks is the network table.
func (tx *Tx) Networks() Table[*pb.Network] {
	return Table[*pb.Network]{tx: tx, t: tx.st.networks, kind: KindNetwork}
}

// Cluster returns the cluster object, or nil before initialisation.
func (tx *Tx) Cluster() *pb.Cluster {
	all := tx.Clusters().List()
	if len(all) == 0 {
		return nil
	}
	return all[0]
}

// actions returns the staged writes as store actions, in first-touch order.
func (tx *Tx) actions() []*pb.StoreAction {
	out := make([]*pb.StoreAction, 0, len(tx.order))
	for _, k := range tx.order {
		ch := tx.staged[k]
		if ch == nil {
			continue
		}
		a := &pb.StoreAction{Kind: ch.action, ExpectedVersion: ch.expected}
		switch o := ch.obj.(type) {
		case *pb.Node:
			a.Target = &pb.StoreAction_Node{Node: o}
		case *pb.Service:
			a.Target = &pb.StoreAction_Service{Service: o}
		case *pb.Task:
			a.Target = &pb.StoreAction_Task{Task: o}
		case *pb.Cluster:
			a.Target = &pb.StoreAction_Cluster{Cluster: o}
		case *pb.Secret:
			a.Target = &pb.StoreAction_Secret{Secret: o}
		case *pb.Config:
			a.Target = &pb.StoreAction_Config{Config: o}
		case *pb.Network:
			a.Target = &pb.StoreAction_Network{Network: o}
		}
		out = append(out, a)
	}
	return out
}

// Table is a typed view of one table inside a transaction.
type Table[T Object] struct {
	tx   *Tx
	t    *table[T]
	kind Kind
}

func clone[T Object](o T) T { return proto.Clone(o).(T) }

// current returns the object as this transaction sees it.
func (tb Table[T]) current(id string) (T, bool) {
	if ch, ok := tb.tx.staged[stagedKey{tb.kind, id}]; ok && ch != nil {
		if ch.action == pb.StoreActionKind_STORE_ACTION_KIND_DELETE {
			var zero T
			return zero, false
		}
		return ch.obj.(T), true
	}
	return tb.t.get(id)
}

// Get returns a copy of the object with this ID, or false.
func (tb Table[T]) Get(id string) (T, bool) {
	o, ok := tb.current(id)
	if !ok {
		return o, false
	}
	return clone(o), true
}

// Len is the number of objects in the table as this transaction sees it.
func (tb Table[T]) Len() int {
	n := tb.t.len()
	for k, ch := range tb.tx.staged {
		if k.kind != tb.kind || ch == nil {
			continue
		}
		_, committed := tb.t.get(k.id)
		switch {
		case ch.action == pb.StoreActionKind_STORE_ACTION_KIND_DELETE && committed:
			n--
		case ch.action == pb.StoreActionKind_STORE_ACTION_KIND_CREATE && !committed:
			n++
		}
	}
	return n
}

// List returns copies of every object, sorted by ID.
func (tb Table[T]) List() []T {
	return tb.overlay(tb.t.all(), func(T) bool { return true })
}

// Find returns copies of the objects whose index key equals key.
func (tb Table[T]) Find(index, key string) []T {
	var keyOf func(T) string
	for _, d := range tb.t.defs {
		if d.name == index {
			keyOf = d.key
		}
	}
	if keyOf == nil {
		return nil
	}
	return tb.overlay(tb.t.lookup(index, key), func(o T) bool { return keyOf(o) == key })
}

// overlay merges this transaction's staged writes into committed results.
func (tb Table[T]) overlay(committed []T, match func(T) bool) []T {
	out := make([]T, 0, len(committed))
	touched := false
	for _, o := range committed {
		if _, ok := tb.tx.staged[stagedKey{tb.kind, o.GetId()}]; ok {
			touched = true
			continue
		}
		out = append(out, clone(o))
	}
	for k, ch := range tb.tx.staged {
		if k.kind != tb.kind || ch == nil || ch.action == pb.StoreActionKind_STORE_ACTION_KIND_DELETE {
			continue
		}
		if o := ch.obj.(T); match(o) {
			out = append(out, clone(o))
			touched = true
		}
	}
	if touched {
		sort.Slice(out, func(i, j int) bool { return out[i].GetId() < out[j].GetId() })
	}
	return out
}

func (tb Table[T]) stage(id string, ch *stagedChange) {
	k := stagedKey{tb.kind, id}
	if _, seen := tb.tx.staged[k]; !seen {
		tb.tx.order = append(tb.tx.order, k)
	}
	tb.tx.staged[k] = ch
}

// Create stages a new object. Its ID must be set and unused.
func (tb Table[T]) Create(o T) error {
	if !tb.tx.writable {
		return ErrReadOnly
	}
	id := o.GetId()
	if id == "" {
		return fmt.Errorf("create %s: %w", tb.kind, ErrMissingID)
	}
	if _, ok := tb.current(id); ok {
		return fmt.Errorf("create %s %s: %w", tb.kind, id, ErrExists)
	}
	if err := tb.checkUnique(o); err != nil {
		return err
	}
	k := stagedKey{tb.kind, id}
	action := pb.StoreActionKind_STORE_ACTION_KIND_CREATE
	var expected uint64
	if prev, ok := tb.tx.staged[k]; ok && prev != nil {
		// Deleted and created again in one transaction: an update.
		action, expected = pb.StoreActionKind_STORE_ACTION_KIND_UPDATE, prev.expected
	}
	tb.stage(id, &stagedChange{action: action, obj: clone(o), expected: expected})
	return nil
}

// Update stages a change to an existing object. The object's Meta.Version
// must be the version that was read: if the stored object moved on since,
// the transaction fails with ErrVersionConflict.
func (tb Table[T]) Update(o T) error {
	if !tb.tx.writable {
		return ErrReadOnly
	}
	id := o.GetId()
	cur, ok := tb.current(id)
	if !ok {
		return fmt.Errorf("update %s %s: %w", tb.kind, id, ErrNotFound)
	}
	if err := tb.checkUnique(o); err != nil {
		return err
	}
	k := stagedKey{tb.kind, id}
	if prev, staged := tb.tx.staged[k]; staged && prev != nil {
		tb.tx.staged[k] = &stagedChange{action: prev.action, obj: clone(o), expected: prev.expected}
		return nil
	}
	if v := o.GetMeta().GetVersion(); v != cur.GetMeta().GetVersion() {
		return fmt.Errorf("update %s %s: read version %d, stored version %d: %w",
			tb.kind, id, v, cur.GetMeta().GetVersion(), ErrVersionConflict)
	}
	tb.stage(id, &stagedChange{action: pb.StoreActionKind_STORE_ACTION_KIND_UPDATE, obj: clone(o), expected: cur.GetMeta().GetVersion()})
	return nil
}

// Delete stages the removal of an object.
func (tb Table[T]) Delete(id string) error {
	if !tb.tx.writable {
		return ErrReadOnly
	}
	cur, ok := tb.current(id)
	if !ok {
		return fmt.Errorf("delete %s %s: %w", tb.kind, id, ErrNotFound)
	}
	k := stagedKey{tb.kind, id}
	if prev, staged := tb.tx.staged[k]; staged && prev != nil {
		if prev.action == pb.StoreActionKind_STORE_ACTION_KIND_CREATE {
			tb.tx.staged[k] = nil // created and deleted here: nothing to do
			return nil
		}
		tb.tx.staged[k] = &stagedChange{action: pb.StoreActionKind_STORE_ACTION_KIND_DELETE, obj: cur, expected: prev.expected}
		return nil
	}
	tb.stage(id, &stagedChange{action: pb.StoreActionKind_STORE_ACTION_KIND_DELETE, obj: cur, expected: cur.GetMeta().GetVersion()})
	return nil
}

// checkUnique refuses an object whose unique keys another object holds.
func (tb Table[T]) checkUnique(o T) error {
	for _, d := range tb.t.defs {
		if !d.unique {
			continue
		}
		key := d.key(o)
		if key == "" {
			continue
		}
		for _, other := range tb.Find(d.name, key) {
			if other.GetId() != o.GetId() {
				return fmt.Errorf("%s %s %q is taken by %s: %w", tb.kind, d.name, key, other.GetId(), ErrNameConflict)
			}
		}
	}
	return nil
}
