// Package raftstore is Shoal's replicated cluster state: one Store owns a
// hashicorp/raft node (TCP transport, bolt log and stable store behind a log
// cache, file snapshots) and an FSM over typed in-memory tables.
//
// Writes are transactions (Update) committed as one Raft entry with
// optimistic concurrency on object versions and idempotent request IDs.
// Reads are either local (View: this replica's state, fast, possibly stale on
// a follower) or linearizable (ViewConsistent: on the leader, after its
// Barrier and a VerifyLeader round). Watch streams committed changes.
//
// MemoryStore is the same state without Raft (one process, always the
// leader), applying transactions through the same FSM; StateStore is what
// both offer the manager's loops.
package raftstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	pb "github.com/shoal-cluster/shoal/proto"
	"go.etcd.io/bbolt"
)

// MaxEntrySize is the largest transaction written as one Raft entry: room
// for one config at its 1000 KiB limit with its metadata (swarmkit allows
// 1.5 MiB likewise). Writers that batch aim for BatchEntrySize.
const MaxEntrySize = 1536 * 1024

// BatchEntrySize is the size a writer that splits large changes into
// batches aims below: hashicorp/raft's suggested entry size.
const BatchEntrySize = 512 * 1024

// Timing holds the Raft timings.
type Timing struct {
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
}

// DefaultTiming is tuned for a LAN: leader failover in well under a second.
func DefaultTiming() Timing {
	return Timing{
		HeartbeatTimeout:   300 * time.Millisecond,
		ElectionTimeout:    300 * time.Millisecond,
		LeaderLeaseTimeout: 150 * time.Millisecond,
		CommitTimeout:      5 * time.Millisecond,
	}
}

// TimingFromElection derives all timings from one election timeout.
func TimingFromElection(election time.Duration) Timing {
	return Timing{
		HeartbeatTimeout:   election,
		ElectionTimeout:    election,
		LeaderLeaseTimeout: election / 2,
		CommitTimeout:      5 * time.Millisecond,
	}
}

// Config configures a Store.
type Config struct {
	// ID is this server's Raft ID.
	ID string
	// Dir holds raft.db and snapshots/.
	Dir string
	// BindAddr is the host:port the Raft transport listens on.
	BindAddr string
	// AdvertiseAddr is the host:port other managers dial; defaults to BindAddr.
	AdvertiseAddr string
	Timing        Timing
	// SnapshotThreshold is how many new log entries trigger a snapshot.
	SnapshotThreshold uint64
	// SnapshotInterval is how often the threshold is checked.
	SnapshotInterval time.Duration
	// TrailingLogs is how many entries are kept after a snapshot.
	TrailingLogs uint64
	// TLS, if set, runs the transport over mutual TLS: ServerTLS for the
	// connections it accepts, ClientTLS for those it dials (each must
	// require and verify the peer's certificate).
	ServerTLS, ClientTLS *tls.Config
	// WrapStream, if set, wraps the stream layer (fault injection).
	WrapStream func(raft.StreamLayer) raft.StreamLayer
	Logger     *slog.Logger
	// Observer, if set, hears of every write (metrics).
	Observer *Observer
}

func (c *Config) setDefaults() {
	if c.AdvertiseAddr == "" {
		c.AdvertiseAddr = c.BindAddr
	}
	if c.Timing == (Timing{}) {
		c.Timing = DefaultTiming()
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 8192
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = 30 * time.Second
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = 10240
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Store is one manager's replica of the cluster state.
type Store struct {
	cfg       Config
	log       *slog.Logger
	raft      *raft.Raft
	fsm       *fsm
	bolt      *raftboltdb.BoltStore
	snaps     raft.SnapshotStore
	transport *raft.NetworkTransport
	tcp       *tcpStreamLayer

	notifyCh  chan bool
	leaderCh  chan bool
	readyTerm atomic.Uint64 // term in which this node's leader barrier completed
	readyMu   sync.Mutex
	readyCond chan struct{} // closed and replaced whenever readiness may change

	// contended serialises writers that lost optimistic races (see Update):
	// a one-slot semaphore, so waiting for it honours the context.
	contended chan struct{}

	closeOnce sync.Once
	closed    chan struct{}
	wg        sync.WaitGroup
	// waiting counts the goroutines waiting on a raft future (futureErr).
	waiting atomic.Int64
}

// closeDrain bounds how long Close lets raft answer the futures callers
// still wait on before shutting it down.
const closeDrain = time.Second

// futureErr waits for f's outcome in a goroutine the store counts, so that
// a caller may give up on its context. Close lets raft answer them before
// shutting it down: raft never answers an entry it committed but had not
// applied yet when it shut down, which would leave the goroutine behind.
func (s *Store) futureErr(f raft.Future) <-chan error {
	errc := make(chan error, 1)
	s.waiting.Add(1)
	go func() {
		defer s.waiting.Add(-1)
		errc <- f.Error()
	}()
	return errc
}

// Open opens (or creates) the Raft state in cfg.Dir and starts Raft. A new
// store has no configuration: call Bootstrap on the first manager, or have
// the leader add this one with AddVoter.
func Open(cfg Config) (*Store, error) {
	return open(cfg, false)
}

// OpenForceNewCluster rewrites the Raft configuration of an existing store
// to this server alone (keeping all its state), then opens it. It recovers
// a manager whose cluster lost quorum for good.
func OpenForceNewCluster(cfg Config) (*Store, error) {
	return open(cfg, true)
}

func open(cfg Config, forceNew bool) (*Store, error) {
	cfg.setDefaults()
	if cfg.ID == "" || cfg.Dir == "" || cfg.BindAddr == "" {
		return nil, errors.New("raftstore: ID, Dir and BindAddr are required")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create raft dir %s: %w", cfg.Dir, err)
	}
	s := &Store{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "raftstore"),
		fsm:       &fsm{st: newState(), hub: newHub(), obs: cfg.Observer},
		notifyCh:  make(chan bool, 16),
		leaderCh:  make(chan bool, 16),
		readyCond: make(chan struct{}),
		contended: make(chan struct{}, 1),
		closed:    make(chan struct{}),
	}
	var err error
	s.bolt, err = raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.Dir, "raft.db")})
	if err != nil {
		return nil, fmt.Errorf("open raft log %s: %w", filepath.Join(cfg.Dir, "raft.db"), err)
	}
	hl := newHCLogger(s.log)
	s.snaps, err = raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, hl)
	if err != nil {
		s.bolt.Close()
		return nil, fmt.Errorf("open snapshot store in %s: %w", cfg.Dir, err)
	}
	logs, err := raft.NewLogCache(1024, wrapLogStore(s.bolt))
	if err != nil {
		s.bolt.Close()
		return nil, fmt.Errorf("log cache: %w", err)
	}
	rc := s.raftConfig(hl)

	if forceNew {
		has, err := raft.HasExistingState(logs, s.bolt, s.snaps)
		if err != nil {
			s.bolt.Close()
			return nil, fmt.Errorf("inspect raft state: %w", err)
		}
		if !has {
			s.bolt.Close()
			return nil, errors.New("force-new-cluster: this data dir has no Raft state to recover")
		}
	}

	ln, err := net.Listen("tcp", cfg.BindAddr)
	if err != nil {
		s.bolt.Close()
		return nil, fmt.Errorf("raft transport: listen on %s: %w", cfg.BindAddr, err)
	}
	adv, err := net.ResolveTCPAddr("tcp", cfg.AdvertiseAddr)
	if err != nil {
		ln.Close()
		s.bolt.Close()
		return nil, fmt.Errorf("raft transport: advertise address %q: %w", cfg.AdvertiseAddr, err)
	}
	s.tcp = newTCPStreamLayer(ln, adv, cfg.ServerTLS, cfg.ClientTLS)
	var layer raft.StreamLayer = s.tcp
	if cfg.WrapStream != nil {
		layer = cfg.WrapStream(layer)
	}
	s.transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  layer,
		MaxPool: 5,
		Timeout: 5 * time.Second,
		Logger:  hl,
		// 1 turns pipelined replication off. raft v1.7.3's pipeline can
		// deadlock: when the decoder stops on a refused or stale-term
		// response, the sender may block for ever handing over one more
		// request. Replication to that follower then stops while heartbeats
		// go on, and Shutdown (so Close) never returns. Raft's own analysis
		// (#541) found pipelining of little benefit on a LAN.
		MaxRPCsInFlight: 1,
	})

	if forceNew {
		conf := raft.Configuration{Servers: []raft.Server{{
			Suffrage: raft.Voter, ID: raft.ServerID(cfg.ID), Address: raft.ServerAddress(cfg.AdvertiseAddr),
		}}}
		if err := raft.RecoverCluster(rc, newFSM(), logs, s.bolt, s.snaps, s.transport, conf); err != nil {
			s.transport.Close()
			s.tcp.Close()
			s.bolt.Close()
			return nil, fmt.Errorf("force-new-cluster: recover raft configuration: %w", err)
		}
		s.log.Warn("raft configuration rewritten to this manager alone (force-new-cluster)", "id", cfg.ID)
	}

	s.raft, err = raft.NewRaft(rc, s.fsm, logs, s.bolt, s.snaps, s.transport)
	if err != nil {
		s.transport.Close()
		s.tcp.Close()
		s.bolt.Close()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	s.wg.Add(1)
	go s.watchLeadership()
	return s, nil
}

func (s *Store) raftConfig(hl hclog.Logger) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(s.cfg.ID)
	rc.HeartbeatTimeout = s.cfg.Timing.HeartbeatTimeout
	rc.ElectionTimeout = s.cfg.Timing.ElectionTimeout
	rc.LeaderLeaseTimeout = s.cfg.Timing.LeaderLeaseTimeout
	rc.CommitTimeout = s.cfg.Timing.CommitTimeout
	rc.SnapshotThreshold = s.cfg.SnapshotThreshold
	rc.SnapshotInterval = s.cfg.SnapshotInterval
	rc.TrailingLogs = s.cfg.TrailingLogs
	rc.NotifyCh = s.notifyCh
	rc.Logger = hl
	return rc
}

// HasState reports whether dir already holds Raft state: a term, log
// entries or a snapshot. A raft.db that Open created but that never joined
// or bootstrapped a cluster holds no state. When dir is in use by an open
// store (or unreadable) it answers true, so that nobody bootstraps over it.
func HasState(dir string) bool {
	if hasSnapshots(dir) {
		return true
	}
	path := filepath.Join(dir, "raft.db")
	if _, err := os.Stat(path); err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	bs, err := raftboltdb.New(raftboltdb.Options{
		Path:        path,
		BoltOptions: &bbolt.Options{ReadOnly: true, Timeout: 200 * time.Millisecond},
	})
	if err != nil {
		return true
	}
	defer bs.Close()
	if term, err := bs.GetUint64([]byte("CurrentTerm")); err == nil && term > 0 {
		return true
	}
	last, err := bs.LastIndex()
	return err != nil || last > 0
}

// hasSnapshots reports whether dir holds a Raft snapshot, without creating
// the snapshot directory.
func hasSnapshots(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, "snapshots")); err != nil {
		return false
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 1, hclog.NewNullLogger())
	if err != nil {
		return true
	}
	list, err := snaps.List()
	return err != nil || len(list) > 0
}

// Bootstrap makes this server the single voter of a new cluster. It fails
// with raft.ErrCantBootstrap when the store already has state, so a data
// dir is never bootstrapped twice.
func (s *Store) Bootstrap() error {
	conf := raft.Configuration{Servers: []raft.Server{{
		Suffrage: raft.Voter, ID: raft.ServerID(s.cfg.ID), Address: raft.ServerAddress(s.cfg.AdvertiseAddr),
	}}}
	if err := s.raft.BootstrapCluster(conf).Error(); err != nil {
		return fmt.Errorf("bootstrap raft: %w", err)
	}
	return nil
}

// watchLeadership turns raft's notifications into readiness: a new leader
// is ready to serve writes and linearizable reads only after a Barrier has
// applied every entry of earlier terms.
func (s *Store) watchLeadership() {
	defer s.wg.Done()
	for {
		select {
		case <-s.closed:
			return
		case leader := <-s.notifyCh:
			if leader {
				term := s.raft.CurrentTerm()
				if err := s.raft.Barrier(10 * time.Second).Error(); err != nil {
					s.log.Warn("leader barrier failed", "err", err)
					continue
				}
				s.readyTerm.Store(term)
				s.log.Info("became leader", "id", s.cfg.ID, "term", term)
			} else {
				s.readyTerm.Store(0)
				s.log.Info("lost leadership", "id", s.cfg.ID)
			}
			s.signalReady()
			s.notifyLeaderChange(leader)
		}
	}
}

// notifyLeaderChange hands a transition to LeaderChanges without blocking:
// raft itself blocks on NotifyCh until this loop reads it, so a consumer
// that is slow (or absent) must never stall it. When the buffer is full the
// oldest transition is dropped; the newest, which is the current state,
// always gets through.
func (s *Store) notifyLeaderChange(leader bool) {
	for {
		select {
		case s.leaderCh <- leader:
			return
		default:
		}
		select {
		case <-s.leaderCh:
		default:
		}
	}
}

func (s *Store) signalReady() {
	s.readyMu.Lock()
	close(s.readyCond)
	s.readyCond = make(chan struct{})
	s.readyMu.Unlock()
}

// LeaderChanges reports this manager gaining (true) and losing (false)
// leadership; true arrives after the leader's Barrier. One consumer only.
func (s *Store) LeaderChanges() <-chan bool { return s.leaderCh }

// IsLeader reports whether this manager leads and finished its barrier.
func (s *Store) IsLeader() bool {
	t := s.readyTerm.Load()
	return t != 0 && s.raft.State() == raft.Leader && s.raft.CurrentTerm() == t
}

// waitLeader waits briefly for this manager's leader barrier; it returns
// ErrNotLeader at once on a follower.
func (s *Store) waitLeader(ctx context.Context) error {
	for {
		select {
		case <-s.closed:
			return ErrClosed
		default:
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if s.IsLeader() {
			return nil
		}
		if s.raft.State() != raft.Leader {
			if addr, _ := s.raft.LeaderWithID(); addr == "" {
				return ErrNoLeader
			}
			return ErrNotLeader
		}
		s.readyMu.Lock()
		ch := s.readyCond
		s.readyMu.Unlock()
		select {
		case <-ch:
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		case <-s.closed:
			return ErrClosed
		}
	}
}

type requestIDKey struct{}

// WithRequestID tags ctx with a request ID: Update commits a given request
// ID at most once, so a call retried after ErrOutcomeUnknown is safe.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// RequestID returns the request ID carried by ctx, if any.
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// Update runs fn in a write transaction on the leader and commits its
// changes as one Raft entry. It returns the entry's index. When another
// write changed an object fn read, fn runs again on the new state. On a
// follower it returns ErrNotLeader without running fn. When ctx carries a
// request ID that already committed, Update returns that entry's index
// without running fn.
func (s *Store) Update(ctx context.Context, fn func(tx *Tx) error) (uint64, error) {
	return update(ctx, s.fsm, s.contended, s, fn)
}

// awaitWritable waits for this manager's leader barrier (committer).
func (s *Store) awaitWritable(ctx context.Context) error { return s.waitLeader(ctx) }

// commit proposes txn to Raft (committer).
func (s *Store) commit(ctx context.Context, txn *pb.Transaction) (*applyResult, error) {
	return s.propose(ctx, txn)
}

// now stamps transactions with the leader's wall clock (committer).
func (s *Store) now() time.Time { return time.Now() }

// propose commits one transaction and waits until it is applied here.
func (s *Store) propose(ctx context.Context, txn *pb.Transaction) (*applyResult, error) {
	data, err := encodeTransaction(ctx, txn)
	if err != nil {
		return nil, err
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	// raft.Apply treats a timeout <= 0 as "wait for ever to enqueue".
	if err := ctx.Err(); err != nil || timeout <= 0 {
		if err == nil {
			err = context.DeadlineExceeded
		}
		return nil, fmt.Errorf("write %s not submitted: %w", txn.RequestId, err)
	}
	f := s.raft.Apply(data, timeout)
	errc := s.futureErr(f)
	select {
	case err = <-errc:
	case <-ctx.Done():
		return nil, fmt.Errorf("write %s: %w (%w)", txn.RequestId, ErrOutcomeUnknown, ctx.Err())
	}
	switch {
	case err == nil:
	case errors.Is(err, raft.ErrNotLeader):
		return nil, ErrNotLeader
	case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return nil, ErrOutcomeUnknown
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return nil, fmt.Errorf("write not accepted by raft in time (%w); it was not applied", err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return nil, ErrClosed
	default:
		return nil, fmt.Errorf("raft apply: %w", err)
	}
	res, ok := f.Response().(*applyResult)
	if !ok {
		return nil, fmt.Errorf("raft apply: unexpected response %T", f.Response())
	}
	return res, nil
}

// View runs fn on this replica's state. It is fast and never blocks on the
// network, but a follower may lag the leader: use it for displays and for
// leader-local loops that already hold leadership.
func (s *Store) View(fn func(tx *Tx)) { s.fsm.view(fn) }

// ViewConsistent runs fn on a state that includes every write acknowledged
// before the call: it runs on the leader only, after confirming with a
// quorum that it still leads. Followers get ErrNotLeader.
func (s *Store) ViewConsistent(ctx context.Context, fn func(tx *Tx)) error {
	if err := s.VerifyLeader(ctx); err != nil {
		return err
	}
	s.View(fn)
	return nil
}

// confirm verifies leadership after Update read the state and committed
// nothing (committer).
func (s *Store) confirm(ctx context.Context) error { return s.VerifyLeader(ctx) }

// VerifyLeader returns nil once a quorum confirmed, in the term whose
// barrier this replica completed, that it still leads: everything
// acknowledged before the call is then in the local state, so an answer
// read from it before the call (a refusal: not found, already exists) is
// not out of date.
func (s *Store) VerifyLeader(ctx context.Context) error {
	if err := s.waitLeader(ctx); err != nil {
		return err
	}
	term := s.readyTerm.Load()
	f := s.raft.VerifyLeader()
	errc := s.futureErr(f)
	select {
	case err := <-errc:
		if err != nil {
			if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
				return ErrNotLeader
			}
			if errors.Is(err, raft.ErrRaftShutdown) {
				return ErrClosed
			}
			return fmt.Errorf("verify leadership: %w", err)
		}
	case <-ctx.Done():
		return fmt.Errorf("verify leadership: %w", ctx.Err())
	}
	// The verification must have happened in the term whose barrier this
	// replica completed: had leadership been lost and won again meanwhile,
	// the new term's barrier may still be pending and the local state may
	// miss writes another leader acknowledged in between.
	if term == 0 || !s.IsLeader() || s.readyTerm.Load() != term {
		return ErrNotLeader
	}
	return nil
}

// Watch subscribes to committed changes. filter, if set, selects events.
func (s *Store) Watch(filter func(Event) bool) *Subscription {
	return s.fsm.hub.subscribe(filter)
}

// ViewAndWatch runs fn and subscribes atomically: the subscription carries
// exactly the changes committed after the state fn saw.
func (s *Store) ViewAndWatch(fn func(tx *Tx), filter func(Event) bool) *Subscription {
	return s.fsm.viewAndWatch(fn, filter)
}

// Server is one member of the Raft configuration.
type Server struct {
	ID      string
	Address string
	Voter   bool
}

// Servers returns the latest Raft configuration.
func (s *Store) Servers() ([]Server, error) {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("raft configuration: %w", err)
	}
	var out []Server
	for _, sv := range f.Configuration().Servers {
		out = append(out, Server{ID: string(sv.ID), Address: string(sv.Address), Voter: sv.Suffrage == raft.Voter})
	}
	return out, nil
}

// AddVoter adds a manager to the Raft configuration (leader only).
func (s *Store) AddVoter(ctx context.Context, id, addr string) error {
	return s.waitFuture(ctx, s.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 0), "add voter "+id)
}

// RemoveServer removes a manager from the Raft configuration (leader only).
func (s *Store) RemoveServer(ctx context.Context, id string) error {
	return s.waitFuture(ctx, s.raft.RemoveServer(raft.ServerID(id), 0, 0), "remove server "+id)
}

// TransferLeadership asks another voter to take over.
func (s *Store) TransferLeadership(ctx context.Context) error {
	return s.waitFuture(ctx, s.raft.LeadershipTransfer(), "leadership transfer")
}

// Snapshot forces a snapshot and log compaction now.
func (s *Store) Snapshot() error {
	if err := s.raft.Snapshot().Error(); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}

func (s *Store) waitFuture(ctx context.Context, f raft.Future, what string) error {
	errc := s.futureErr(f)
	select {
	case err := <-errc:
		if errors.Is(err, raft.ErrNotLeader) {
			return ErrNotLeader
		}
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
}

// Leader returns the current leader's Raft ID and address, empty if none.
func (s *Store) Leader() (id, addr string) {
	a, i := s.raft.LeaderWithID()
	return string(i), string(a)
}

// Status is this replica's view of Raft.
type Status struct {
	State        string
	Term         uint64
	LastIndex    uint64
	CommitIndex  uint64
	AppliedIndex uint64
	LastContact  time.Time
}

// Status reports this replica's Raft state and indexes.
func (s *Store) Status() Status {
	return Status{
		State:        s.raft.State().String(),
		Term:         s.raft.CurrentTerm(),
		LastIndex:    s.raft.LastIndex(),
		CommitIndex:  s.raft.CommitIndex(),
		AppliedIndex: s.raft.AppliedIndex(),
		LastContact:  s.raft.LastContact(),
	}
}

// ID is this server's Raft ID.
func (s *Store) ID() string { return s.cfg.ID }

// Addr is this server's advertised Raft address.
func (s *Store) Addr() string { return s.cfg.AdvertiseAddr }

// Close stops Raft and closes the log. It does not leave the cluster.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.closed)
		drain := time.NewTicker(5 * time.Millisecond)
		for deadline := time.Now().Add(closeDrain); s.waiting.Load() > 0 && time.Now().Before(deadline); {
			<-drain.C
		}
		drain.Stop()
		err = s.raft.Shutdown().Error()
		s.wg.Wait()
		if cerr := s.transport.Close(); err == nil && cerr != nil && !errors.Is(cerr, net.ErrClosed) {
			err = cerr
		}
		// The transport closes the (possibly wrapped) stream layer; close the
		// TCP layer underneath too, whatever the wrapper does, so no raft
		// connection outlives the store.
		_ = s.tcp.Close()
		if cerr := s.bolt.Close(); err == nil {
			err = cerr
		}
		s.fsm.hub.closeAll(ErrClosed)
	})
	return err
}

// tcpStreamLayer is raft's stream layer over plain TCP. It tracks the
// connections it made and accepted and closes them all on Close: raft's
// NetworkTransport neither closes its pooled outgoing connections nor stops
// the handlers blocked reading accepted ones when it shuts down, which would
// leave goroutines and sockets behind (on the peers too) after Store.Close.
type tcpStreamLayer struct {
	net.Listener
	advertise net.Addr
	// serverTLS and clientTLS, when set, wrap every connection in TLS.
	serverTLS, clientTLS *tls.Config

	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	closed bool
}

func newTCPStreamLayer(ln net.Listener, advertise net.Addr, serverTLS, clientTLS *tls.Config) *tcpStreamLayer {
	return &tcpStreamLayer{Listener: ln, advertise: advertise, serverTLS: serverTLS, clientTLS: clientTLS, conns: map[*trackedConn]struct{}{}}
}

func (t *tcpStreamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", string(addr), timeout)
	if err != nil {
		return nil, err
	}
	tc, err := t.track(c)
	if err != nil || t.clientTLS == nil {
		return tc, err
	}
	// The handshake happens here, so a refused certificate is an error
	// of the dial rather than of the first RPC.
	conn := tls.Client(tc, t.clientTLS)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := conn.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("raft transport: TLS handshake with %s: %w", addr, err)
	}
	return conn, nil
}

func (t *tcpStreamLayer) Accept() (net.Conn, error) {
	c, err := t.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc, err := t.track(c)
	if err != nil || t.serverTLS == nil {
		return tc, err
	}
	// The handshake runs on the first read, in the transport's handler
	// goroutine: a slow client does not hold up the accept loop.
	return tls.Server(tc, t.serverTLS), nil
}

func (t *tcpStreamLayer) track(c net.Conn) (net.Conn, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	tc := &trackedConn{Conn: c, layer: t}
	t.conns[tc] = struct{}{}
	return tc, nil
}

// Close stops listening and closes every tracked connection.
func (t *tcpStreamLayer) Close() error {
	err := t.Listener.Close()
	t.mu.Lock()
	t.closed = true
	conns := t.conns
	t.conns = map[*trackedConn]struct{}{}
	t.mu.Unlock()
	for c := range conns {
		c.Conn.Close()
	}
	return err
}

func (t *tcpStreamLayer) Addr() net.Addr { return t.advertise }

type trackedConn struct {
	net.Conn
	layer *tcpStreamLayer
}

func (c *trackedConn) Close() error {
	c.layer.mu.Lock()
	delete(c.layer.conns, c)
	c.layer.mu.Unlock()
	return c.Conn.Close()
}

// newHCLogger routes raft's hclog output into slog.
func newHCLogger(l *slog.Logger) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:   "raft",
		Level:  hclog.Info,
		Output: &slogWriter{l: l.With("component", "raft")},
	})
}

// peerTrouble reports whether a raft error line is about an unreachable
// peer or a connection closed under it.
func peerTrouble(line string) bool {
	for _, sign := range []string{"connection refused", "connection reset", "EOF", "i/o timeout",
		"use of closed network connection", "no route to host", "broken pipe"} {
		if strings.Contains(line, sign) {
			return true
		}
	}
	return false
}

// slogWriter turns hclog's formatted lines into slog records.
type slogWriter struct{ l *slog.Logger }

var _ io.Writer = (*slogWriter)(nil)

func (w *slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	switch {
	case strings.Contains(line, "[ERROR]") && peerTrouble(line):
		// A peer that is down or restarting: expected, and raft retries.
		level = slog.LevelWarn
	case strings.Contains(line, "[ERROR]"):
		level = slog.LevelError
	case strings.Contains(line, "[WARN]"):
		level = slog.LevelWarn
	case strings.Contains(line, "[DEBUG]"), strings.Contains(line, "[TRACE]"):
		level = slog.LevelDebug
	}
	// Drop hclog's own timestamp and level prefix: slog adds its own.
	if i := strings.Index(line, "] "); i >= 0 && i < 60 {
		line = line[i+2:]
	}
	w.l.Log(context.Background(), level, line)
	return len(p), nil
}
