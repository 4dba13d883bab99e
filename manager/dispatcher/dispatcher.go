// Package dispatcher serves worker sessions on the leader: it registers
// workers, keeps their heartbeat deadlines (and, for a new leader, the
// grace period in which the workers of the previous term reconnect, shown
// Unknown meanwhile), marks nodes that miss them Down and fails their
// tasks, streams each worker its assignments, the endpoint sets and the
// secret and config values its tasks use, and records the task status workers
// report, coalesced into few store transactions.
package dispatcher

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/shoal-cluster/shoal/internal/clock"
	"github.com/shoal-cluster/shoal/manager/endpoints"
	"github.com/shoal-cluster/shoal/manager/orchestrator"
	"github.com/shoal-cluster/shoal/manager/sealer"
	"github.com/shoal-cluster/shoal/manager/tasksubnet"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// LeaderTrailer names the trailer in which a follower's dispatcher says
// where the leader is.
const LeaderTrailer = "shoal-leader"

// AcceptedHeader names the header the leader sends as soon as it accepts a
// session, before the first message (which carries the node's complete
// assignments and may take a while over a slow link): a worker bounds its
// wait for this header by the heartbeat period, and the first message by
// more.
const AcceptedHeader = "shoal-session"

// heartbeatMisses is how many periods a node may miss before it is Down.
const heartbeatMisses = 3

// graceMisses is how many periods a new leader gives a worker, counted
// from the start of its term, to open a session before it is Down. The
// worker notices that the old leader is gone within three periods of its
// last answered heartbeat (a call may take two), which the election
// itself mostly covers, then needs a bounded attempt of one period to
// reach the new leader; the rest is margin. Meanwhile the node is
// Unknown: a leader change alone fails no task.
const graceMisses = 5

// Reasons a node is marked Down.
const (
	reasonHeartbeat = "heartbeat deadline passed"
	reasonNoSession = "no session with the new leader within its grace period"
)

// Leadership is what the dispatcher must know of Raft: whether this
// manager leads, and where the leader is.
type Leadership interface {
	IsLeader() bool
	// LeaderAPI returns the leader's Raft ID and API address, or an error
	// while there is no leader (or it is not known yet).
	LeaderAPI() (raftID, apiAddr string, err error)
}

// Endpoints is the endpoint feed sessions send from.
type Endpoints interface {
	// Snapshot returns the current sets and a channel closed at the next
	// change.
	Snapshot() (map[string]*pb.ServiceEndpoints, <-chan struct{})
}

// SecretsKey opens the secret values sessions send.
type SecretsKey interface {
	// Key returns the cluster's secrets key, or why this manager has none.
	Key() (*sealer.Key, error)
}

// Usage receives the task samples workers send with their heartbeats.
type Usage interface {
	// Record replaces a node's samples with its latest ones.
	Record(nodeID string, samples []*pb.TaskUsage)
	// ForgetNode drops a node's samples.
	ForgetNode(nodeID string)
	// Reset forgets every sample (a new term).
	Reset()
}

// Config is what a Dispatcher needs.
type Config struct {
	Store      raftstore.StateStore
	Leadership Leadership
	Endpoints  Endpoints
	Secrets    SecretsKey
	// Usage keeps the task samples of heartbeats (nil: dropped).
	Usage Usage
	// Clock times heartbeats, deadlines and the grace period.
	Clock clock.Clock
	// APIAddr is this manager's: a follower that is told it leads (an
	// election in progress) names no leader.
	APIAddr string
	// Period is the heartbeat period workers are told to keep.
	Period time.Duration
	// TaskSubnetPool is where workers' task subnets come from (default
	// tasksubnet.DefaultPool).
	TaskSubnetPool netip.Prefix
	Log            *slog.Logger
}

// Dispatcher serves worker sessions on the leader: it registers workers,
// tracks their heartbeats, streams their assignments and records the task
// status they report.
type Dispatcher struct {
	pb.UnimplementedDispatcherServer
	store  raftstore.StateStore
	lead   Leadership
	feed   Endpoints
	keys   SecretsKey
	usage  Usage
	clock  clock.Clock
	self   string
	period time.Duration
	log    *slog.Logger
	// subnets hands out workers' task subnets.
	subnets *tasksubnet.Allocator

	mu        sync.Mutex
	active    bool
	ctx       context.Context           // the leadership's context while active
	sessions  map[string]*workerSession // by node ID
	deadlines map[string]*deadline      // by node ID
	beats     map[string]time.Time      // last heartbeat by node ID (not stored: one write per beat would flood Raft)
	// heartbeats counts the heartbeats received, for metrics.
	heartbeats uint64

	statusCh chan statusBatch
}

// deadline is a node's armed deadline: when it passes, the node is marked
// Down for reason. A timer that fired while the deadline was being
// re-armed finds another deadline in the map and does nothing.
type deadline struct {
	timer  clock.Timer
	at     time.Time
	reason string
}

// workerSession is one worker's open session.
type workerSession struct {
	id     string
	nodeID string
	cancel context.CancelFunc
}

// New returns a dispatcher; it serves sessions only while Run runs (on
// the leader).
func New(cfg Config) *Dispatcher {
	return &Dispatcher{
		store:     cfg.Store,
		lead:      cfg.Leadership,
		feed:      cfg.Endpoints,
		keys:      cfg.Secrets,
		usage:     cfg.Usage,
		clock:     cfg.Clock,
		self:      cfg.APIAddr,
		period:    cfg.Period,
		log:       cfg.Log,
		subnets:   tasksubnet.New(cfg.TaskSubnetPool),
		sessions:  map[string]*workerSession{},
		deadlines: map[string]*deadline{},
		beats:     map[string]time.Time{},
		statusCh:  make(chan statusBatch, 256),
	}
}

// Run is a leader loop: it activates the dispatcher for this term, gives
// every worker that was up a grace period to reconnect (shown Unknown
// meanwhile), and writes status batches until ctx ends.
func (d *Dispatcher) Run(ctx context.Context) {
	d.begin(ctx)
	d.writeStatuses(ctx)
	d.end()
}

// begin activates the dispatcher for the term whose context is ctx and
// arms the grace deadlines of the workers that have yet to reconnect.
func (d *Dispatcher) begin(ctx context.Context) {
	d.mu.Lock()
	d.active, d.ctx = true, ctx
	d.mu.Unlock()
	if d.usage != nil {
		d.usage.Reset()
	}
	d.log.Info("dispatcher active", "heartbeat_period", d.period)

	// The grace counts from the start of the term, not from when the
	// Unknown state is committed.
	grace := d.period * graceMisses
	for _, id := range d.markUnknown(ctx) {
		d.armDeadline(id, grace, reasonNoSession)
	}
}

// end deactivates the dispatcher: the term is over, its sessions end and
// its deadlines are dropped.
func (d *Dispatcher) end() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.active = false
	for id, s := range d.sessions {
		s.cancel()
		delete(d.sessions, id)
	}
	for id, dl := range d.deadlines {
		dl.timer.Stop()
		delete(d.deadlines, id)
	}
}

func (d *Dispatcher) deadline() time.Duration { return d.period * heartbeatMisses }

// markUnknown runs at the start of a term: every worker that was Ready (or
// Unknown, waiting on an earlier leader) and has no session with this
// leader yet is shown Unknown until it opens one. It returns those nodes.
// When the write fails (leadership lost again) the nodes are still
// returned, so their deadlines are armed all the same.
func (d *Dispatcher) markUnknown(ctx context.Context) []string {
	var waiting []string
	_, err := d.store.Update(ctx, func(tx *raftstore.Tx) error {
		waiting = waiting[:0]
		for _, n := range tx.Nodes().List() {
			st := n.GetStatus().GetState()
			if n.GetRole() != pb.NodeRole_NODE_ROLE_WORKER ||
				(st != pb.NodeState_NODE_STATE_READY && st != pb.NodeState_NODE_STATE_UNKNOWN) || d.hasSession(n.GetId()) {
				continue
			}
			waiting = append(waiting, n.GetId())
			if st == pb.NodeState_NODE_STATE_UNKNOWN {
				continue
			}
			n.Status.State = pb.NodeState_NODE_STATE_UNKNOWN
			n.Status.Message = "the leader changed; waiting for the node to reconnect"
			if err := tx.Nodes().Update(n); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil && ctx.Err() == nil {
		d.log.Warn("show workers Unknown after the leader change", "err", err)
	}
	return waiting
}

// hasSession reports whether a node has a session open with this leader.
func (d *Dispatcher) hasSession(nodeID string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.sessions[nodeID]
	return ok
}

// armDeadline (re)starts a node's deadline: when it passes, the node is
// marked Down for reason.
func (d *Dispatcher) armDeadline(nodeID string, after time.Duration, reason string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.active {
		return
	}
	if old, ok := d.deadlines[nodeID]; ok {
		old.timer.Stop()
	}
	dl := &deadline{at: d.clock.Now().Add(after), reason: reason}
	dl.timer = d.clock.AfterFunc(after, func() { d.expire(nodeID, dl) })
	d.deadlines[nodeID] = dl
}

// beat records a heartbeat.
func (d *Dispatcher) beat(nodeID string) {
	d.mu.Lock()
	d.beats[nodeID] = d.clock.Now()
	d.heartbeats++
	d.mu.Unlock()
}

// Stats are the dispatcher's figures for metrics: open worker sessions
// (on the leader; none elsewhere) and heartbeats received since start.
func (d *Dispatcher) Stats() (sessions int, heartbeats uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.sessions), d.heartbeats
}

// LastBeat is the last heartbeat this leader saw from a node.
func (d *Dispatcher) LastBeat(nodeID string) (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	t, ok := d.beats[nodeID]
	return t, ok
}

// Suspect shortens a node's deadline to one period: gossip saw it die.
// The heartbeat deadline stays the authority.
func (d *Dispatcher) Suspect(nodeID string) {
	d.mu.Lock()
	dl, tracked := d.deadlines[nodeID]
	sooner := tracked && d.clock.Now().Add(d.period).Before(dl.at)
	d.mu.Unlock()
	if tracked && sooner {
		d.log.Info("gossip reports a worker dead; shortening its heartbeat deadline", "worker", nodeID)
		d.armDeadline(nodeID, d.period, reasonHeartbeat+" (gossip reports the node dead)")
	}
}

// expire marks a node that missed its deadline dl Down and fails its
// tasks, unless dl was re-armed meanwhile (a heartbeat or a new session
// raced the timer).
func (d *Dispatcher) expire(nodeID string, dl *deadline) {
	d.mu.Lock()
	if !d.active || d.deadlines[nodeID] != dl {
		d.mu.Unlock()
		return
	}
	ctx := d.ctx
	reason := dl.reason
	delete(d.deadlines, nodeID)
	if s, ok := d.sessions[nodeID]; ok {
		s.cancel()
		delete(d.sessions, nodeID)
	}
	d.mu.Unlock()
	if err := d.markDown(ctx, nodeID, reason); err != nil {
		d.log.Warn("mark node down", "worker", nodeID, "err", err)
	}
}

// markDown records a node as Down and fails the tasks it was running, so
// they can be replaced elsewhere. A node that opened a new session since
// its deadline passed is alive: it is left alone (its session's Ready and
// this write are ordered by the store, and whichever comes second sees the
// other).
func (d *Dispatcher) markDown(ctx context.Context, nodeID, why string) error {
	failed := 0
	skipped := false
	_, err := d.store.Update(ctx, func(tx *raftstore.Tx) error {
		n, ok := tx.Nodes().Get(nodeID)
		skipped = d.hasSession(nodeID)
		if !ok || skipped {
			return nil
		}
		if n.Status == nil {
			n.Status = &pb.NodeStatus{}
		}
		n.Status.State = pb.NodeState_NODE_STATE_DOWN
		n.Status.Message = why
		if err := tx.Nodes().Update(n); err != nil {
			return err
		}
		var err error
		failed, err = orchestrator.FailNodeTasks(tx, nodeID, func(t *pb.Task) *pb.TaskStatus {
			var ports []*pb.PortBinding
			if endpoints.Routable(t) {
				ports = t.GetStatus().GetPorts() // where it may still answer: see endpoints' lingers
			}
			return &pb.TaskStatus{
				Timestamp: d.clock.Now().UnixNano(),
				State:     pb.TaskState_TASK_STATE_FAILED,
				Err:       fmt.Sprintf("node %s is down (%s)", nodeID, why),
				Message:   "node down",
				Ports:     ports,
				NodeLost:  true,
			}
		})
		return err
	})
	switch {
	case err == nil && skipped:
		d.log.Info("worker reconnected as its deadline passed; not marked down", "worker", nodeID)
	case err == nil:
		d.log.Warn("worker marked down", "worker", nodeID, "reason", why, "tasks_failed", failed)
		if d.usage != nil {
			d.usage.ForgetNode(nodeID)
		}
	}
	return err
}

// leaderOnly returns the error followers give, with the leader's address
// in the trailer so the worker can go there.
func (d *Dispatcher) leaderOnly(ctx context.Context) error {
	d.mu.Lock()
	active := d.active
	d.mu.Unlock()
	if active && d.lead.IsLeader() {
		return nil
	}
	if _, addr, err := d.lead.LeaderAPI(); err == nil && addr != d.self {
		_ = grpc.SetTrailer(ctx, metadata.Pairs(LeaderTrailer, addr))
		return status.Errorf(codes.Unavailable, "this manager is not the leader; the leader is at %s", addr)
	}
	return status.Error(codes.Unavailable, "no leader right now; retry shortly")
}

// authenticate checks that the worker may open a session. Its certificate
// proved who it is (the authorisation interceptor checks that it acts for
// itself).
func (d *Dispatcher) authenticate(nodeID string) (*pb.Node, error) {
	var n *pb.Node
	var removed bool
	d.store.View(func(tx *raftstore.Tx) {
		n, _ = tx.Nodes().Get(nodeID)
		if c := tx.Cluster(); c != nil {
			for _, id := range c.GetRemovedNodes() {
				removed = removed || id == nodeID
			}
		}
	})
	switch {
	case removed:
		return nil, status.Errorf(codes.PermissionDenied, "node %s was removed from the cluster; join again with an empty data dir", nodeID)
	case n == nil:
		return nil, status.Errorf(codes.NotFound, "node %s is not a member of this cluster; join with a worker token first", nodeID)
	case n.GetRole() != pb.NodeRole_NODE_ROLE_WORKER:
		return nil, status.Errorf(codes.PermissionDenied, "node %s is not a worker", nodeID)
	}
	return n, nil
}
