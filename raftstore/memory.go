package raftstore

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	pb "github.com/shoal-cluster/shoal/proto"
)

// MemoryConfig configures a MemoryStore.
type MemoryConfig struct {
	// Now stamps transactions (objects' created and updated times);
	// time.Now when nil. Tests pass a fake clock's.
	Now func() time.Time
	// Observer, if set, hears of every write (metrics).
	Observer *Observer
}

// MemoryStore is the cluster state held in this process alone, without
// Raft: the same tables, transactions, FSM and watches as Store, with the
// same rules, for tests and tools that need a store but no cluster. It
// numbers its transactions itself (1, 2, ...) and applies each at once
// through the FSM's Apply, as a one-manager cluster would; it always leads
// until it is closed.
type MemoryStore struct {
	cfg       MemoryConfig
	fsm       *fsm
	contended chan struct{}
	leaderCh  chan bool

	// mu serialises commits: an index is taken and applied under it.
	mu     sync.Mutex
	index  uint64
	once   sync.Once
	closed chan struct{}
}

// NewMemoryStore returns an empty store that leads.
func NewMemoryStore(cfg MemoryConfig) *MemoryStore {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := &MemoryStore{
		cfg:       cfg,
		fsm:       &fsm{st: newState(), hub: newHub(), obs: cfg.Observer},
		contended: make(chan struct{}, 1),
		leaderCh:  make(chan bool, 1),
		closed:    make(chan struct{}),
	}
	m.leaderCh <- true
	return m
}

// Update runs fn in a write transaction and commits its changes as the
// next entry, with Store.Update's contract; it returns the entry's index.
func (m *MemoryStore) Update(ctx context.Context, fn func(tx *Tx) error) (uint64, error) {
	return update(ctx, m.fsm, m.contended, m, fn)
}

// View runs fn on the state.
func (m *MemoryStore) View(fn func(tx *Tx)) { m.fsm.view(fn) }

// ViewConsistent runs fn on the state: every acknowledged write is in it.
func (m *MemoryStore) ViewConsistent(ctx context.Context, fn func(tx *Tx)) error {
	if err := m.awaitWritable(ctx); err != nil {
		return err
	}
	m.fsm.view(fn)
	return nil
}

// Watch subscribes to committed changes. filter, if set, selects events.
func (m *MemoryStore) Watch(filter func(Event) bool) *Subscription {
	return m.fsm.hub.subscribe(filter)
}

// ViewAndWatch runs fn and subscribes atomically: the subscription carries
// exactly the changes committed after the state fn saw.
func (m *MemoryStore) ViewAndWatch(fn func(tx *Tx), filter func(Event) bool) *Subscription {
	return m.fsm.viewAndWatch(fn, filter)
}

// IsLeader reports true until the store is closed.
func (m *MemoryStore) IsLeader() bool {
	select {
	case <-m.closed:
		return false
	default:
		return true
	}
}

// LeaderChanges delivers true once: the store leads from the start.
func (m *MemoryStore) LeaderChanges() <-chan bool { return m.leaderCh }

// Close ends every subscription with ErrClosed; later writes fail with
// ErrClosed. Reads go on working.
func (m *MemoryStore) Close() error {
	m.once.Do(func() {
		m.mu.Lock()
		close(m.closed)
		m.mu.Unlock()
		m.fsm.hub.closeAll(ErrClosed)
	})
	return nil
}

// awaitWritable refuses writes once closed or when ctx is done (committer).
// confirm: a memory store always leads (committer).
func (m *MemoryStore) confirm(context.Context) error { return nil }

func (m *MemoryStore) awaitWritable(ctx context.Context) error {
	select {
	case <-m.closed:
		return ErrClosed
	default:
	}
	return ctx.Err()
}

// commit encodes txn as a log entry with the next index and applies it
// through the FSM, as Raft would once the entry committed (committer).
func (m *MemoryStore) commit(ctx context.Context, txn *pb.Transaction) (*applyResult, error) {
	data, err := encodeTransaction(ctx, txn)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.closed:
		return nil, ErrClosed
	default:
	}
	m.index++
	res, ok := m.fsm.Apply(&raft.Log{Index: m.index, Term: 1, Type: raft.LogCommand, Data: data}).(*applyResult)
	if !ok {
		return nil, fmt.Errorf("apply transaction %s: no result", txn.GetRequestId())
	}
	return res, nil
}

// now stamps transactions (committer).
func (m *MemoryStore) now() time.Time { return m.cfg.Now() }
