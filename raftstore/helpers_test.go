package raftstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-cluster/shoal/internal/poll"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore/faultnet"
	"google.golang.org/protobuf/proto"
)

// ---------------------------------------------------------------- objects

func testNode(id, hostname string) *pb.Node {
	return &pb.Node{Id: id, Description: &pb.NodeDescription{Hostname: hostname}}
}

func testService(id, name string) *pb.Service {
	return &pb.Service{Id: id, Spec: &pb.ServiceSpec{Annotations: &pb.Annotations{Name: name}}}
}

func testTask(id, serviceID, nodeID string) *pb.Task {
	return &pb.Task{Id: id, ServiceId: serviceID, NodeId: nodeID}
}

func testClusterObject(id, name string) *pb.Cluster {
	return &pb.Cluster{Id: id, Spec: &pb.ClusterSpec{Annotations: &pb.Annotations{Name: name}}}
}

func testConfig(id, name string, data string) *pb.Config {
	return &pb.Config{Id: id, Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: name}, Data: []byte(data)}, Size: uint64(len(data))}
}

func testSecret(id, name string, data string) *pb.Secret {
	return &pb.Secret{Id: id, Spec: &pb.SecretSpec{Annotations: &pb.Annotations{Name: name}, Data: []byte(data)}}
}

func ids[T Object](objs []T) []string {
	out := make([]string, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.GetId())
	}
	return out
}

func sameStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------- fsm harness

// fsmHarness drives an fsm without raft: transactions built with a Tx on
// the current state are encoded and applied as raft log entries.
type fsmHarness struct {
	t     testing.TB
	f     *fsm
	index uint64
}

func newFSMHarness(t testing.TB) *fsmHarness { return &fsmHarness{t: t, f: newFSM()} }

// build runs fn in a write transaction on the current state and returns
// the transaction it would commit.
func (h *fsmHarness) build(reqID string, fn func(tx *Tx) error) *pb.Transaction {
	h.t.Helper()
	h.f.mu.RLock()
	tx := newTx(h.f.st, true, reqID)
	err := fn(tx)
	h.f.mu.RUnlock()
	if err != nil {
		h.t.Fatalf("build transaction %s: %v", reqID, err)
	}
	return &pb.Transaction{RequestId: reqID, Timestamp: int64(1000 + h.index), Actions: tx.actions()}
}

// apply applies txn as the next log entry.
func (h *fsmHarness) apply(txn *pb.Transaction) *applyResult {
	h.t.Helper()
	data, err := proto.Marshal(txn)
	if err != nil {
		h.t.Fatalf("encode: %v", err)
	}
	h.index++
	res, ok := h.f.Apply(&raft.Log{Index: h.index, Term: 1, Type: raft.LogCommand, Data: data}).(*applyResult)
	if !ok {
		h.t.Fatalf("Apply returned %T", res)
	}
	return res
}

// commit builds and applies one transaction, failing the test on a refusal.
func (h *fsmHarness) commit(reqID string, fn func(tx *Tx) error) uint64 {
	h.t.Helper()
	res := h.apply(h.build(reqID, fn))
	if res.err != nil {
		h.t.Fatalf("apply %s: %v", reqID, res.err)
	}
	return res.index
}

func (h *fsmHarness) view(fn func(tx *Tx)) {
	h.f.mu.RLock()
	defer h.f.mu.RUnlock()
	fn(newTx(h.f.st, false, ""))
}

// store is a Store around the harness's fsm, good for View, Watch and
// ViewAndWatch (nothing that needs raft).
func (h *fsmHarness) store() *Store { return &Store{fsm: h.f} }

// memSink is an in-memory raft.SnapshotSink.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }

// snapshotBytes snapshots f and persists it into memory.
func snapshotBytes(t testing.TB, f *fsm) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	defer snap.Release()
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("Persist left the sink closed=%v cancelled=%v, want closed", sink.closed, sink.cancelled)
	}
	return sink.Bytes()
}

// ---------------------------------------------------------------- logging

// testLogger sends Warn and above (or the level in RAFTSTORE_TEST_LOG:
// debug, info, warn, error) to t.Log, and nothing once the test is over.
func testLogger(t testing.TB, name string) *slog.Logger {
	level := slog.LevelWarn
	switch strings.ToLower(os.Getenv("RAFTSTORE_TEST_LOG")) {
	case "debug":
		level = slog.LevelDebug
	case "info":
		level = slog.LevelInfo
	case "error":
		level = slog.LevelError
	}
	w := &tlogWriter{t: t, prefix: name + ": "}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type tlogWriter struct {
	mu     sync.Mutex
	t      testing.TB
	prefix string
	done   bool
}

func (w *tlogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(w.prefix + strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *tlogWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// ---------------------------------------------------------------- polling

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, timeout, what, poll.Bool(cond, nil))
}

// freeAddr returns a 127.0.0.1 address whose port was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func isAddrInUse(err error) bool {
	return err != nil && strings.Contains(err.Error(), "address already in use")
}

// retryable reports whether a write or linearizable read may succeed when
// tried again, possibly on another manager.
func retryable(err error) bool {
	return errors.Is(err, ErrNotLeader) || errors.Is(err, ErrNoLeader) ||
		errors.Is(err, ErrOutcomeUnknown) || errors.Is(err, ErrClosed) ||
		strings.Contains(fmt.Sprint(err), "not accepted by raft in time")
}

// ---------------------------------------------------------------- cluster

// testTiming is fast but leaves room for the race detector on 2 cores.
func testTiming() Timing { return TimingFromElection(150 * time.Millisecond) }

type clusterOptions struct {
	// faults wraps every member's stream layer in faultnet.
	faults            bool
	snapshotThreshold uint64
	trailingLogs      uint64
}

// testMember is one manager of a test cluster. store is nil while stopped.
type testMember struct {
	id, dir, addr string
	store         *Store
	layer         *faultnet.Layer
}

type testCluster struct {
	t       testing.TB
	opts    clusterOptions
	members []*testMember
	// mu guards members' store fields, which the test goroutine changes
	// and writer goroutines read (leaderLocked).
	mu sync.Mutex
}

// newTestCluster starts n managers: the first bootstraps, the leader adds
// the others as voters. It returns once every member applied a write.
func newTestCluster(t testing.TB, n int, opts clusterOptions) *testCluster {
	t.Helper()
	c := &testCluster{t: t, opts: opts}
	t.Cleanup(c.closeAll)
	for i := 0; i < n; i++ {
		c.members = append(c.members, &testMember{id: fmt.Sprintf("m%d", i+1), dir: t.TempDir()})
	}
	c.start(0)
	if err := c.members[0].store.Bootstrap(); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	c.waitLeader(10 * time.Second)
	for _, m := range c.members[1:] {
		c.start(c.index(m))
		c.addVoter(m)
	}
	c.sync(15 * time.Second)
	return c
}

func (c *testCluster) index(m *testMember) int {
	for i, x := range c.members {
		if x == m {
			return i
		}
	}
	panic("unknown member")
}

func (c *testCluster) config(m *testMember) Config {
	cfg := Config{
		ID:                m.id,
		Dir:               m.dir,
		BindAddr:          m.addr,
		Timing:            testTiming(),
		SnapshotThreshold: c.opts.snapshotThreshold,
		TrailingLogs:      c.opts.trailingLogs,
		Logger:            testLogger(c.t, m.id),
	}
	if c.opts.faults {
		cfg.WrapStream = func(s raft.StreamLayer) raft.StreamLayer {
			m.layer = faultnet.Wrap(s)
			return m.layer
		}
	}
	return cfg
}

// start opens member i on its directory; a member's first start picks its
// address, later starts reuse it (raft's configuration names it).
func (c *testCluster) start(i int) { c.open(i, Open) }

// open opens member i with openFn (Open or OpenForceNewCluster).
func (c *testCluster) open(i int, openFn func(Config) (*Store, error)) {
	c.t.Helper()
	m := c.members[i]
	if m.store != nil {
		c.t.Fatalf("%s is already running", m.id)
	}
	fresh := m.addr == ""
	deadline := time.Now().Add(10 * time.Second)
	for {
		if fresh {
			m.addr = freeAddr(c.t)
		}
		s, err := openFn(c.config(m))
		if err == nil {
			c.mu.Lock()
			m.store = s
			c.mu.Unlock()
			return
		}
		// The port can be taken meanwhile, by a listener or by the local
		// end of an outgoing connection: pick another (first start) or
		// wait for it to be released (restart).
		if !isAddrInUse(err) || time.Now().After(deadline) {
			c.t.Fatalf("open %s on %s: %v", m.id, m.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop closes member i.
func (c *testCluster) stop(i int) {
	c.t.Helper()
	m := c.members[i]
	c.mu.Lock()
	s := m.store
	m.store = nil
	c.mu.Unlock()
	if s == nil {
		return
	}
	if err := s.Close(); err != nil {
		c.t.Errorf("close %s: %v", m.id, err)
	}
	m.layer = nil
}

func (c *testCluster) closeAll() {
	for i := range c.members {
		c.stop(i)
	}
}

func (c *testCluster) running() []*testMember {
	var out []*testMember
	for _, m := range c.members {
		if m.store != nil {
			out = append(out, m)
		}
	}
	return out
}

// leader returns the running member that leads and passed its barrier, or nil.
func (c *testCluster) leader() *testMember {
	for _, m := range c.running() {
		if m.store.IsLeader() {
			return m
		}
	}
	return nil
}

// waitLeader polls until a running member leads.
func (c *testCluster) waitLeader(timeout time.Duration) *testMember {
	c.t.Helper()
	var l *testMember
	waitFor(c.t, timeout, "a leader", func() bool { l = c.leader(); return l != nil })
	return l
}

func (c *testCluster) addVoter(m *testMember) {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		l := c.waitLeader(10 * time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := l.store.AddVoter(ctx, m.id, m.addr)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("add voter %s: %v", m.id, err)
		}
	}
}

// update commits fn through whichever member leads, retrying with the same
// request ID until it succeeds, fails for good or ctx ends.
func (c *testCluster) update(ctx context.Context, fn func(tx *Tx) error) (uint64, error) {
	ctx = WithRequestID(ctx, NewID())
	for {
		if l := c.leader(); l != nil {
			idx, err := l.store.Update(ctx, fn)
			if err == nil || !retryable(err) {
				return idx, err
			}
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// mustUpdate is update with a deadline that fails the test.
func (c *testCluster) mustUpdate(fn func(tx *Tx) error) uint64 {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	idx, err := c.update(ctx, fn)
	if err != nil {
		c.t.Fatalf("update: %v", err)
	}
	return idx
}

// sync commits a marker and waits until every running member applied it.
func (c *testCluster) sync(timeout time.Duration) uint64 {
	c.t.Helper()
	idx := c.mustUpdate(func(tx *Tx) error {
		return tx.Clusters().Create(testClusterObject(NewID(), "sync"))
	})
	c.waitApplied(idx, timeout)
	return idx
}

// waitApplied waits until every running member's state reaches index.
func (c *testCluster) waitApplied(index uint64, timeout time.Duration) {
	c.t.Helper()
	for _, m := range c.running() {
		s := m.store
		waitFor(c.t, timeout, fmt.Sprintf("%s to apply index %d", m.id, index), func() bool {
			var got uint64
			s.View(func(tx *Tx) { got = tx.Index() })
			return got >= index
		})
	}
}

// createNodes commits one node per ID, one transaction each.
func (c *testCluster) createNodes(prefix string, n int) []string {
	c.t.Helper()
	var out []string
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("%s-%03d", prefix, i)
		c.mustUpdate(func(tx *Tx) error { return tx.Nodes().Create(testNode(id, id+".host")) })
		out = append(out, id)
	}
	return out
}

// hasNodes reports whether s holds every node in want.
func hasNodes(s *Store, want []string) bool {
	ok := true
	s.View(func(tx *Tx) {
		for _, id := range want {
			if _, found := tx.Nodes().Get(id); !found {
				ok = false
				return
			}
		}
	})
	return ok
}
