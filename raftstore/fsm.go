package raftstore

import (
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// snapshotFormat is the version of the snapshot encoding.
const snapshotFormat = 1

// applyResult is what FSM.Apply returns for one transaction.
type applyResult struct {
	index     uint64
	duplicate bool
	err       error
}

// fsm applies committed transactions to the in-memory state.
type fsm struct {
	mu  sync.RWMutex
	st  *state
	hub *hub
	// obs hears of writes made through Update (nil: nobody listens).
	obs *Observer
}

func newFSM() *fsm { return &fsm{st: newState(), hub: newHub()} }

// view runs fn on the current state under the read lock.
func (f *fsm) view(fn func(tx *Tx)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(newTx(f.st, false, ""))
}

// viewAndWatch runs fn and subscribes under one read lock, so the
// subscription carries exactly the changes applied after the state fn saw.
func (f *fsm) viewAndWatch(fn func(tx *Tx), filter func(Event) bool) *Subscription {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(newTx(f.st, false, ""))
	return f.hub.subscribe(filter)
}

// Apply applies one log entry. It is deterministic: the outcome depends on
// the entry and the state only.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	var txn pb.Transaction
	if err := proto.Unmarshal(l.Data, &txn); err != nil {
		return &applyResult{index: l.Index, err: fmt.Errorf("decode transaction at index %d: %w", l.Index, err)}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st.index = l.Index
	if idx, ok := f.st.requests.lookup(txn.GetRequestId()); ok {
		return &applyResult{index: idx, duplicate: true}
	}
	evs, err := f.st.apply(&txn, l.Index)
	if err != nil {
		return &applyResult{index: l.Index, err: err}
	}
	f.st.requests.add(txn.GetRequestId(), l.Index)
	f.hub.publish(evs)
	return &applyResult{index: l.Index}
}

// apply applies every action of a transaction or, on the first refusal,
// undoes the ones already applied.
//
// Unique keys are checked once every action has applied, against the
// transaction's final state, as Tx checks them: a transaction may rename
// one object and give its old name to another in any order.
func (st *state) apply(txn *pb.Transaction, index uint64) ([]Event, error) {
	var (
		undo   []func()
		checks []func() error
	)
	evs := make([]Event, 0, len(txn.GetActions()))
	rollback := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	for _, a := range txn.GetActions() {
		var (
			ev  Event
			err error
			u   func()
			chk func() error
		)
		switch t := a.GetTarget().(type) {
		case *pb.StoreAction_Node:
			ev, u, chk, err = applyAction(st.nodes, KindNode, a, t.Node, index, txn.GetTimestamp())
		case *pb.StoreAction_Service:
			ev, u, chk, err = applyAction(st.services, KindService, a, t.Service, index, txn.GetTimestamp())
		case *pb.StoreAction_Task:
			ev, u, chk, err = applyAction(st.tasks, KindTask, a, t.Task, index, txn.GetTimestamp())
		case *pb.StoreAction_Cluster:
			ev, u, chk, err = applyAction(st.clusters, KindCluster, a, t.Cluster, index, txn.GetTimestamp())
		case *pb.StoreAction_Secret:
			ev, u, chk, err = applyAction(st.secrets, KindSecret, a, t.Secret, index, txn.GetTimestamp())
		case *pb.StoreAction_Config:
			ev, u, chk, err = applyAction(st.configs, KindConfig, a, t.Config, index, txn.GetTimestamp())
		case *pb.StoreAction_Network:
			ev, u, chk, err = applyAction(st.networks, KindNetwork, a, t.Network, index, txn.GetTimestamp())
		default:
			err = fmt.Errorf("action without a target")
		}
		if err != nil {
			rollback()
			return nil, err
		}
		undo = append(undo, u)
		if chk != nil {
			checks = append(checks, chk)
		}
		evs = append(evs, ev)
	}
	for _, chk := range checks {
		if err := chk(); err != nil {
			rollback()
			return nil, err
		}
	}
	return evs, nil
}

// applyAction applies one action to one table and returns its event, how
// to undo it and, for writes, the unique-key check to run once the whole
// transaction has applied.
func applyAction[T Object](t *table[T], kind Kind, a *pb.StoreAction, o T, index uint64, ts int64) (Event, func(), func() error, error) {
	ev, undo, err := applyActionNoCheck(t, kind, a, o, index, ts)
	if err != nil || a.GetKind() == pb.StoreActionKind_STORE_ACTION_KIND_DELETE {
		return ev, undo, nil, err
	}
	id := o.GetId()
	check := func() error {
		cur, ok := t.get(id)
		if !ok {
			return nil
		}
		if field, key, taken := t.conflict(cur); taken {
			return fmt.Errorf("%s %s %q: %w", kind, field, key, ErrNameConflict)
		}
		return nil
	}
	return ev, undo, check, nil
}

func applyActionNoCheck[T Object](t *table[T], kind Kind, a *pb.StoreAction, o T, index uint64, ts int64) (Event, func(), error) {
	id := o.GetId()
	if id == "" {
		return Event{}, nil, fmt.Errorf("%s: %w", kind, ErrMissingID)
	}
	old, exists := t.get(id)
	restore := func() {
		if exists {
			t.put(old)
		} else {
			t.remove(id)
		}
	}
	switch a.GetKind() {
	case pb.StoreActionKind_STORE_ACTION_KIND_CREATE:
		if exists {
			return Event{}, nil, fmt.Errorf("create %s %s: %w", kind, id, ErrExists)
		}
	case pb.StoreActionKind_STORE_ACTION_KIND_UPDATE, pb.StoreActionKind_STORE_ACTION_KIND_DELETE:
		if !exists {
			return Event{}, nil, fmt.Errorf("%s %s: %w", kind, id, ErrNotFound)
		}
		if v := old.GetMeta().GetVersion(); v != a.GetExpectedVersion() {
			return Event{}, nil, fmt.Errorf("%s %s: expected version %d, stored %d: %w", kind, id, a.GetExpectedVersion(), v, ErrVersionConflict)
		}
	default:
		return Event{}, nil, fmt.Errorf("%s %s: unknown action %v", kind, id, a.GetKind())
	}
	if a.GetKind() == pb.StoreActionKind_STORE_ACTION_KIND_DELETE {
		t.remove(id)
		return Event{Kind: EventDelete, Table: kind, Object: old, Old: old, Index: index, Time: ts}, restore, nil
	}
	meta := o.GetMeta()
	if meta == nil {
		meta = &pb.Meta{}
		setMeta(o, meta)
	}
	meta.Version = index
	meta.UpdatedAt = ts
	if exists {
		meta.CreatedAt = old.GetMeta().GetCreatedAt()
	} else {
		meta.CreatedAt = ts
	}
	t.put(o)
	ev := Event{Kind: EventCreate, Table: kind, Object: o, Index: index, Time: ts}
	if exists {
		ev.Kind, ev.Old = EventUpdate, old
	}
	return ev, restore, nil
}

// setMeta sets the Meta field of any stored object.
func setMeta(o Object, m *pb.Meta) {
	switch v := any(o).(type) {
	case *pb.Node:
		v.Meta = m
	case *pb.Service:
		v.Meta = m
	case *pb.Task:
		v.Meta = m
	case *pb.Cluster:
		v.Meta = m
	case *pb.Secret:
		v.Meta = m
	case *pb.Config:
		v.Meta = m
	case *pb.Network:
		v.Meta = m
	}
}

// Snapshot captures the state cheaply: stored objects are immutable, so
// copying the pointers is enough. Persist does the encoding and the I/O.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &fsmSnapshot{snap: f.st.capture()}, nil
}

func (st *state) capture() *pb.Snapshot {
	return &pb.Snapshot{
		Format:          snapshotFormat,
		Nodes:           st.nodes.all(),
		Services:        st.services.all(),
		Tasks:           st.tasks.all(),
		Clusters:        st.clusters.all(),
		Secrets:         st.secrets.all(),
		Configs:         st.configs.all(),
		Networks:        st.networks.all(),
		AppliedRequests: st.requests.entries(),
		Index:           st.index,
	}
}

// Restore replaces the whole state with a snapshot's.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	st, err := decodeSnapshot(data)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st = st
	// Subscribers hold a view the snapshot just replaced. Ending them under
	// the lock keeps ViewAndWatch exact: a subscription made on the new
	// state is not reset, one made on the old state always is.
	f.hub.closeAll(ErrWatchReset)
	return nil
}

// decodeSnapshot rebuilds a state from an encoded snapshot.
func decodeSnapshot(data []byte) (*state, error) {
	var snap pb.Snapshot
	if err := proto.Unmarshal(data, &snap); err != nil {
		return nil, fmt.Errorf("decode snapshot: %w", err)
	}
	if snap.GetFormat() != snapshotFormat {
		return nil, fmt.Errorf("decode snapshot: format %d is not supported (want %d)", snap.GetFormat(), snapshotFormat)
	}
	st := newState()
	for _, o := range snap.GetNodes() {
		st.nodes.put(o)
	}
	for _, o := range snap.GetServices() {
		st.services.put(o)
	}
	for _, o := range snap.GetTasks() {
		st.tasks.put(o)
	}
	for _, o := range snap.GetClusters() {
		st.clusters.put(o)
	}
	for _, o := range snap.GetSecrets() {
		st.secrets.put(o)
	}
	for _, o := range snap.GetConfigs() {
		st.configs.put(o)
	}
	for _, o := range snap.GetNetworks() {
		st.networks.put(o)
	}
	for _, r := range snap.GetAppliedRequests() {
		st.requests.add(r.GetRequestId(), r.GetIndex())
	}
	st.index = snap.GetIndex()
	return st, nil
}

type fsmSnapshot struct{ snap *pb.Snapshot }

// Persist encodes the captured state into the sink.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(s.snap)
	if err == nil {
		_, err = sink.Write(data)
	}
	if err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

// Release is a no-op: the capture holds no resources.
func (s *fsmSnapshot) Release() {}
