package dispatcher

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/clock"
	"github.com/shoal-cluster/shoal/internal/storetest"
	"github.com/shoal-cluster/shoal/manager/sealer"
	"github.com/shoal-cluster/shoal/manager/usage"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// The dispatcher's deadline rules, on a memory store with a fake clock:
// no Raft, no sleeps. The clock moves only when a test advances it, and a
// deadline's timer fires (and marks its node Down) inside that call.

const period = time.Second

// leading is a manager that leads, as the dispatcher sees it.
type leading struct{}

func (leading) IsLeader() bool                     { return true }
func (leading) LeaderAPI() (string, string, error) { return "r1", "127.0.0.1:4242", nil }

// noEndpoints is an endpoint feed with no service.
type noEndpoints struct{}

func (noEndpoints) Snapshot() (map[string]*pb.ServiceEndpoints, <-chan struct{}) {
	return map[string]*pb.ServiceEndpoints{}, nil
}

// noKey is a manager without the secrets key.
type noKey struct{}

func (noKey) Key() (*sealer.Key, error) { return nil, errors.New("no secrets key here") }

// harness is a dispatcher of a leader whose term has begun, on a memory
// store holding the given nodes.
type harness struct {
	t     *testing.T
	d     *Dispatcher
	store *raftstore.MemoryStore
	clock *clock.Fake
	ctx   context.Context
}

func newHarness(t *testing.T, nodes []*pb.Node, tasks []*pb.Task) *harness {
	t.Helper()
	return newKeyedHarness(t, nodes, tasks, noKey{})
}

// newKeyedHarness is newHarness with a secrets key.
func newKeyedHarness(t *testing.T, nodes []*pb.Node, tasks []*pb.Task, keys SecretsKey) *harness {
	t.Helper()
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	store := storetest.Memory(t, clk.Now)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if _, err := store.Update(ctx, func(tx *raftstore.Tx) error {
		for _, n := range nodes {
			if err := tx.Nodes().Create(n); err != nil {
				return err
			}
		}
		for _, tk := range tasks {
			if err := tx.Tasks().Create(tk); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	d := New(Config{Store: store, Leadership: leading{}, Endpoints: noEndpoints{}, Secrets: keys, Clock: clk,
		APIAddr: "127.0.0.1:4242", Period: period, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	h := &harness{t: t, d: d, store: store, clock: clk, ctx: ctx}
	d.begin(ctx)
	t.Cleanup(d.end)
	return h
}

// worker is a worker node's record in the given state.
func worker(id string, state pb.NodeState, msg string) *pb.Node {
	return &pb.Node{Id: id, Role: pb.NodeRole_NODE_ROLE_WORKER, ApiAddr: "127.0.0.9:4242",
		Spec:   &pb.NodeSpec{DesiredRole: pb.NodeRole_NODE_ROLE_WORKER},
		Status: &pb.NodeStatus{State: state, Message: msg}}
}

func (h *harness) node(id string) *pb.Node {
	var n *pb.Node
	h.store.View(func(tx *raftstore.Tx) { n, _ = tx.Nodes().Get(id) })
	if n == nil {
		h.t.Fatalf("node %s is gone", id)
	}
	return n
}

func (h *harness) task(id string) *pb.Task {
	var t *pb.Task
	h.store.View(func(tx *raftstore.Tx) { t, _ = tx.Tasks().Get(id) })
	if t == nil {
		h.t.Fatalf("task %s is gone", id)
	}
	return t
}

// fakeStream is a worker's end of a session stream.
type fakeStream struct {
	ctx context.Context

	mu     sync.Mutex
	header metadata.MD
	sent   []*pb.SessionMessage
	first  chan struct{} // closed at the first message
}

func (s *fakeStream) Context() context.Context    { return s.ctx }
func (s *fakeStream) SetHeader(metadata.MD) error { return nil }
func (s *fakeStream) SetTrailer(metadata.MD)      {}
func (s *fakeStream) SendMsg(any) error           { return errors.New("not used") }
func (s *fakeStream) RecvMsg(any) error           { return errors.New("not used") }
func (s *fakeStream) SendHeader(md metadata.MD) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.header = md
	return nil
}

func (s *fakeStream) Send(m *pb.SessionMessage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.sent) == 0 {
		// The acceptance header comes before the first message.
		if v := s.header.Get(AcceptedHeader); len(v) != 1 || v[0] != m.GetSessionId() {
			return errors.New("first message sent before the acceptance header")
		}
		close(s.first)
	}
	s.sent = append(s.sent, m)
	return nil
}

// session is an open session of a worker.
type session struct {
	id     string
	stream *fakeStream
	close  func() error // ends the session and returns what Session returned
}

// open opens a session for nodeID and waits for its first message.
func (h *harness) open(nodeID string) *session {
	h.t.Helper()
	ctx, cancel := context.WithCancel(h.ctx)
	stream := &fakeStream{ctx: ctx, first: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- h.d.Session(&pb.SessionRequest{NodeId: nodeID}, stream) }()
	var once sync.Once
	var err error
	s := &session{stream: stream, close: func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}}
	h.t.Cleanup(func() { s.close() })
	select {
	case <-stream.first:
	case err := <-done:
		done <- err
		h.t.Fatalf("session of %s ended before its first message: %v", nodeID, err)
	case <-time.After(10 * time.Second):
		h.t.Fatalf("no first message on the session of %s", nodeID)
	}
	stream.mu.Lock()
	s.id = stream.sent[0].GetSessionId()
	stream.mu.Unlock()
	return s
}

// beat sends a heartbeat on s.
func (h *harness) beat(nodeID string, s *session) {
	h.t.Helper()
	resp, err := h.d.Heartbeat(h.ctx, &pb.HeartbeatRequest{NodeId: nodeID, SessionId: s.id})
	if err != nil {
		h.t.Fatalf("heartbeat of %s: %v", nodeID, err)
	}
	if resp.GetPeriod() != int64(period) {
		h.t.Fatalf("heartbeat answered period %v, want %v", time.Duration(resp.GetPeriod()), period)
	}
}

const ms = time.Millisecond

// TestDeadlines walks a worker through a leader's term, step by step on
// the fake clock, and checks its state after each step.
func TestDeadlines(t *testing.T) {
	type step struct {
		advance time.Duration // move the clock first
		open    bool          // the worker opens a session
		beat    bool          // the worker heartbeats on it
		suspect bool          // gossip reports the worker dead
		want    pb.NodeState  // its state afterwards
		wantMsg string        // a part of its status message
	}
	const (
		ready   = pb.NodeState_NODE_STATE_READY
		unknown = pb.NodeState_NODE_STATE_UNKNOWN
		down    = pb.NodeState_NODE_STATE_DOWN
	)
	cases := []struct {
		name  string
		start pb.NodeState // the worker's state when the term begins
		steps []step
	}{
		{"a worker Ready at the term's start is Unknown for graceMisses periods, then Down", ready, []step{
			{want: unknown, wantMsg: "the leader changed"},
			{advance: graceMisses*period - ms, want: unknown},
			{advance: ms, want: down, wantMsg: reasonNoSession},
		}},
		{"a worker still Unknown from an earlier term gets a new grace period", unknown, []step{
			{want: unknown},
			{advance: graceMisses*period - ms, want: unknown},
			{advance: ms, want: down, wantMsg: reasonNoSession},
		}},
		{"a worker Down at the term's start is left alone", down, []step{
			{want: down, wantMsg: "before"},
			{advance: 10 * graceMisses * period, want: down, wantMsg: "before"},
		}},
		{"a session within the grace period: Ready, then Down three periods after it opened", ready, []step{
			{advance: graceMisses*period - 2*ms, open: true, want: ready},
			{advance: heartbeatMisses*period - ms, want: ready},
			{advance: ms, want: down, wantMsg: reasonHeartbeat},
		}},
		{"a heartbeat re-arms the deadline", ready, []step{
			{open: true, want: ready},
			{advance: heartbeatMisses*period - ms, beat: true, want: ready},
			{advance: heartbeatMisses*period - ms, beat: true, want: ready},
			{advance: heartbeatMisses*period - ms, want: ready},
			{advance: ms, want: down, wantMsg: reasonHeartbeat},
		}},
		{"gossip's Suspect shortens a deadline to one period", ready, []step{
			{open: true, want: ready},
			{advance: period / 2, suspect: true, want: ready},
			{advance: period - ms, want: ready},
			{advance: ms, want: down, wantMsg: "gossip reports the node dead"},
		}},
		{"Suspect never lengthens a deadline", ready, []step{
			{open: true},
			{advance: heartbeatMisses*period - period/2, suspect: true, want: ready},
			{advance: period/2 - ms, want: ready},
			{advance: ms, want: down, wantMsg: reasonHeartbeat},
		}},
		{"Suspect shortens the grace period too", ready, []step{
			{suspect: true, want: unknown},
			{advance: period - ms, want: unknown},
			{advance: ms, want: down, wantMsg: "gossip reports the node dead"},
		}},
		{"a heartbeat after Suspect brings the full deadline back", ready, []step{
			{open: true},
			{suspect: true},
			{advance: period / 2, beat: true, want: ready},
			{advance: heartbeatMisses*period - ms, want: ready},
			{advance: ms, want: down, wantMsg: reasonHeartbeat},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, []*pb.Node{worker("w1", tc.start, "before")}, nil)
			var s *session
			for i, st := range tc.steps {
				h.clock.Advance(st.advance)
				if st.open {
					s = h.open("w1")
				}
				if st.beat {
					h.beat("w1", s)
				}
				if st.suspect {
					h.d.Suspect("w1")
				}
				n := h.node("w1")
				if got := n.GetStatus().GetState(); st.want != 0 && got != st.want {
					t.Fatalf("step %d (at +%v): w1 is %v (%q), want %v", i, h.clock.Now().Sub(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), got, n.GetStatus().GetMessage(), st.want)
				}
				if !strings.Contains(n.GetStatus().GetMessage(), st.wantMsg) {
					t.Fatalf("step %d: w1's message is %q, want it to say %q", i, n.GetStatus().GetMessage(), st.wantMsg)
				}
			}
		})
	}
}

// TestStaleTimer: a deadline is an object its timer must still find armed.
// A timer that fired while the deadline was re-armed (a heartbeat or a new
// session raced it), or after the term ended, does nothing.
func TestStaleTimer(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after func(h *harness, stale *deadline) // what happened before the stale timer's callback runs
	}{
		{"re-armed by a heartbeat", func(h *harness, _ *deadline) {
			h.d.armDeadline("w1", h.d.deadline(), reasonHeartbeat)
		}},
		{"re-armed by gossip", func(h *harness, _ *deadline) { h.d.Suspect("w1") }},
		{"the term ended", func(h *harness, _ *deadline) { h.d.end() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, []*pb.Node{worker("w1", pb.NodeState_NODE_STATE_READY, "")}, nil)
			h.d.mu.Lock()
			stale := h.d.deadlines["w1"]
			h.d.mu.Unlock()
			if stale == nil {
				t.Fatal("no grace deadline armed for w1")
			}
			tc.after(h, stale)
			h.d.mu.Lock()
			current := h.d.deadlines["w1"]
			h.d.mu.Unlock()
			h.d.expire("w1", stale) // the stale timer's callback, late
			if got := h.node("w1").GetStatus().GetState(); got != pb.NodeState_NODE_STATE_UNKNOWN {
				t.Fatalf("w1 is %v after a stale timer fired, want it still Unknown", got)
			}
			h.d.mu.Lock()
			still := h.d.deadlines["w1"]
			h.d.mu.Unlock()
			if still != current {
				t.Fatal("a stale timer dropped the deadline armed after it")
			}
		})
	}
}

// TestMarkDownSkipsNewSession: the Down write does not happen to a node
// that opened a new session between its deadline passing and the write
// (the store orders the session's Ready and the Down write; whichever
// comes second sees the other).
func TestMarkDownSkipsNewSession(t *testing.T) {
	running := &pb.TaskStatus{State: pb.TaskState_TASK_STATE_RUNNING}
	for _, tc := range []struct {
		name       string
		newSession bool
		want       pb.NodeState
		wantTask   pb.TaskState
	}{
		{"no new session: Down, its tasks failed", false, pb.NodeState_NODE_STATE_DOWN, pb.TaskState_TASK_STATE_FAILED},
		{"a new session meanwhile: left alone", true, pb.NodeState_NODE_STATE_READY, pb.TaskState_TASK_STATE_RUNNING},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, []*pb.Node{worker("w1", pb.NodeState_NODE_STATE_READY, "")},
				[]*pb.Task{{Id: "t1", ServiceId: "s1", NodeId: "w1", DesiredState: pb.TaskState_TASK_STATE_RUNNING, Status: running}})
			s := h.open("w1")
			// The deadline passes: expire drops the session, then the
			// worker, alive, opens a new one before the Down write.
			h.d.mu.Lock()
			delete(h.d.deadlines, "w1")
			delete(h.d.sessions, "w1")
			h.d.mu.Unlock()
			if err := s.close(); err == nil {
				t.Fatal("the session ended without an error")
			}
			if tc.newSession {
				h.open("w1")
			}
			if err := h.d.markDown(h.ctx, "w1", reasonHeartbeat); err != nil {
				t.Fatal(err)
			}
			if got := h.node("w1").GetStatus().GetState(); got != tc.want {
				t.Fatalf("w1 is %v, want %v", got, tc.want)
			}
			if got := h.task("t1").GetStatus().GetState(); got != tc.wantTask {
				t.Fatalf("t1 is %v, want %v", got, tc.wantTask)
			}
		})
	}
}

// TestMarkDownFailsTasks: a node marked Down has its tasks failed with
// node_lost; a task that was routable keeps the ports it served on (its
// endpoint lingers until a replacement is up), others do not; a standalone
// task is told to stop, a service's is left to its orchestrator; ended
// tasks and other nodes' tasks are untouched.
func TestMarkDownFailsTasks(t *testing.T) {
	ports := []*pb.PortBinding{{TargetPort: 80, HostIp: "127.0.0.9", HostPort: 30001}}
	running := func(h pb.HealthState) *pb.TaskStatus {
		return &pb.TaskStatus{State: pb.TaskState_TASK_STATE_RUNNING, Health: h, Ports: ports}
	}
	run := pb.TaskState_TASK_STATE_RUNNING
	shutdown := pb.TaskState_TASK_STATE_SHUTDOWN
	checked := &pb.TaskSpec{Container: &pb.ContainerSpec{Healthcheck: &pb.HealthCheck{HttpGet: "/healthz"}}}
	cases := []struct {
		task        *pb.Task
		wantState   pb.TaskState
		wantLost    bool
		wantPorts   bool
		wantDesired pb.TaskState
	}{
		{&pb.Task{Id: "routable", ServiceId: "s1", NodeId: "w1", DesiredState: run, Status: running(pb.HealthState_HEALTH_STATE_NONE)},
			pb.TaskState_TASK_STATE_FAILED, true, true, run},
		{&pb.Task{Id: "healthy", ServiceId: "s1", NodeId: "w1", DesiredState: run, Spec: checked, Status: running(pb.HealthState_HEALTH_STATE_HEALTHY)},
			pb.TaskState_TASK_STATE_FAILED, true, true, run},
		{&pb.Task{Id: "unhealthy", ServiceId: "s1", NodeId: "w1", DesiredState: run, Spec: checked, Status: running(pb.HealthState_HEALTH_STATE_UNHEALTHY)},
			pb.TaskState_TASK_STATE_FAILED, true, false, run},
		{&pb.Task{Id: "stopping", ServiceId: "s1", NodeId: "w1", DesiredState: shutdown, Status: running(pb.HealthState_HEALTH_STATE_NONE)},
			pb.TaskState_TASK_STATE_FAILED, true, false, shutdown},
		{&pb.Task{Id: "starting", ServiceId: "s1", NodeId: "w1", DesiredState: run, Status: &pb.TaskStatus{State: pb.TaskState_TASK_STATE_STARTING}},
			pb.TaskState_TASK_STATE_FAILED, true, false, run},
		{&pb.Task{Id: "standalone", NodeId: "w1", DesiredState: run, Status: running(pb.HealthState_HEALTH_STATE_NONE)},
			pb.TaskState_TASK_STATE_FAILED, true, true, shutdown},
		{&pb.Task{Id: "complete", ServiceId: "s1", NodeId: "w1", DesiredState: run, Status: &pb.TaskStatus{State: pb.TaskState_TASK_STATE_COMPLETE}},
			pb.TaskState_TASK_STATE_COMPLETE, false, false, run},
		{&pb.Task{Id: "elsewhere", ServiceId: "s1", NodeId: "w2", DesiredState: run, Status: running(pb.HealthState_HEALTH_STATE_NONE)},
			pb.TaskState_TASK_STATE_RUNNING, false, true, run},
	}
	var tasks []*pb.Task
	for _, tc := range cases {
		tasks = append(tasks, proto.Clone(tc.task).(*pb.Task))
	}
	h := newHarness(t, []*pb.Node{worker("w1", pb.NodeState_NODE_STATE_READY, ""), worker("w2", pb.NodeState_NODE_STATE_READY, "")}, tasks)
	w2 := h.open("w2") // w2 keeps its session and heartbeats
	for range graceMisses {
		h.clock.Advance(period)
		h.beat("w2", w2)
	}
	if got := h.node("w1").GetStatus().GetState(); got != pb.NodeState_NODE_STATE_DOWN {
		t.Fatalf("w1 is %v, want Down", got)
	}
	for _, tc := range cases {
		t.Run(tc.task.GetId(), func(t *testing.T) {
			got := h.task(tc.task.GetId())
			st := got.GetStatus()
			if st.GetState() != tc.wantState || st.GetNodeLost() != tc.wantLost || (len(st.GetPorts()) > 0) != tc.wantPorts ||
				got.GetDesiredState() != tc.wantDesired {
				t.Fatalf("task is %v (node lost %v, ports %v, desired %v), want %v (node lost %v, ports kept %v, desired %v)",
					st.GetState(), st.GetNodeLost(), st.GetPorts(), got.GetDesiredState(), tc.wantState, tc.wantLost, tc.wantPorts, tc.wantDesired)
			}
			if !tc.wantLost {
				return
			}
			if st.GetMessage() != "node down" || !strings.Contains(st.GetErr(), "node w1 is down ("+reasonNoSession+")") {
				t.Fatalf("status says %q / %q", st.GetMessage(), st.GetErr())
			}
			if st.GetTimestamp() != h.clock.Now().UnixNano() {
				t.Fatalf("status stamped %v, want the clock's %v", time.Unix(0, st.GetTimestamp()), h.clock.Now())
			}
			if tc.wantPorts && !slices.EqualFunc(st.GetPorts(), ports, func(a, b *pb.PortBinding) bool { return proto.Equal(a, b) }) {
				t.Fatalf("ports %v, want %v", st.GetPorts(), ports)
			}
		})
	}
}

// TestSessionLastBeat: a session's opening and each heartbeat are the
// node's last beat, on the dispatcher's clock, and the session's Ready
// write stamps it too.
func TestSessionLastBeat(t *testing.T) {
	h := newHarness(t, []*pb.Node{worker("w1", pb.NodeState_NODE_STATE_READY, "")}, nil)
	if _, ok := h.d.LastBeat("w1"); ok {
		t.Fatal("a beat before any session")
	}
	h.clock.Advance(period)
	s := h.open("w1")
	if got, _ := h.d.LastBeat("w1"); !got.Equal(h.clock.Now()) {
		t.Fatalf("last beat %v at the session's opening, want %v", got, h.clock.Now())
	}
	if got := h.node("w1").GetStatus().GetLastHeartbeat(); got != h.clock.Now().UnixNano() {
		t.Fatalf("the Ready write stamped %v, want %v", time.Unix(0, got), h.clock.Now())
	}
	h.clock.Advance(period)
	h.beat("w1", s)
	if got, _ := h.d.LastBeat("w1"); !got.Equal(h.clock.Now()) {
		t.Fatalf("last beat %v after a heartbeat, want %v", got, h.clock.Now())
	}
}

// TestHeartbeatUsage: the task samples a heartbeat carries replace that
// node's in the leader's table, and a node marked Down loses its samples
// (its tasks must not read as idle), while other nodes keep theirs.
func TestHeartbeatUsage(t *testing.T) {
	h := newHarness(t, []*pb.Node{worker("w1", pb.NodeState_NODE_STATE_READY, ""), worker("w2", pb.NodeState_NODE_STATE_READY, "")}, nil)
	table := usage.New(h.clock)
	h.d.usage = table
	beat := func(node string, s *session, tasks ...string) {
		t.Helper()
		req := &pb.HeartbeatRequest{NodeId: node, SessionId: s.id}
		for _, id := range tasks {
			req.Usage = append(req.Usage, &pb.TaskUsage{TaskId: id, CpuWindow: int64(time.Second), CpuNanoCores: 1e8})
		}
		if _, err := h.d.Heartbeat(h.ctx, req); err != nil {
			t.Fatalf("heartbeat of %s: %v", node, err)
		}
	}
	held := func() string {
		var ids []string
		for id, s := range table.Snapshot() {
			ids = append(ids, id+"@"+s.NodeID)
		}
		slices.Sort(ids)
		return strings.Join(ids, " ")
	}
	w1, w2 := h.open("w1"), h.open("w2")
	steps := []struct {
		name string
		do   func()
		want string
	}{
		{"both nodes report", func() { beat("w1", w1, "t1", "t2"); beat("w2", w2, "t3") }, "t1@w1 t2@w1 t3@w2"},
		{"a beat replaces the node's samples", func() { beat("w1", w1, "t2") }, "t2@w1 t3@w2"},
		{"w1 goes silent and is marked Down", func() {
			w1.close()
			for range heartbeatMisses + 1 {
				h.clock.Advance(period)
				beat("w2", w2, "t3")
			}
			if got := h.node("w1").GetStatus().GetState(); got != pb.NodeState_NODE_STATE_DOWN {
				t.Fatalf("w1 is %v, want Down", got)
			}
		}, "t3@w2"},
	}
	for _, s := range steps {
		s.do()
		if got := held(); got != s.want {
			t.Fatalf("%s: the table holds %q, want %q", s.name, got, s.want)
		}
	}
}
