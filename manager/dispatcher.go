package manager

import (
	"context"
	"fmt"
	"sync"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
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
// worker needs up to two periods to notice that the old leader is gone
// (a heartbeat call times out after one), then a bounded attempt of one
// period to reach the new leader; the rest is margin. Meanwhile the node
// is Unknown: a leader change alone fails no task.
const graceMisses = 5

// Reasons a node is marked Down.
const (
	reasonHeartbeat = "heartbeat deadline passed"
	reasonNoSession = "no session with the new leader within its grace period"
)

// dispatcher serves worker sessions on the leader: it registers workers,
// tracks their heartbeats, streams their assignments and records the task
// status they report.
type dispatcher struct {
	pb.UnimplementedDispatcherServer
	m *Manager

	mu        sync.Mutex
	active    bool
	ctx       context.Context // the leadership's context while active
	period    time.Duration
	sessions  map[string]*workerSession // by node ID
	deadlines map[string]*deadline      // by node ID
	beats     map[string]time.Time      // last heartbeat by node ID (not stored: one write per beat would flood Raft)

	statusCh chan statusBatch
}

// deadline is a node's armed deadline: when it passes, the node is marked
// Down for reason. A timer that fired while the deadline was being
// re-armed finds another deadline in the map and does nothing.
type deadline struct {
	timer  *time.Timer
	at     time.Time
	reason string
}

// workerSession is one worker's open session.
type workerSession struct {
	id     string
	nodeID string
	cancel context.CancelFunc
}

type statusBatch struct {
	nodeID  string
	updates []*pb.TaskStatusUpdate
	done    chan error
}

func newDispatcher(m *Manager, period time.Duration) *dispatcher {
	return &dispatcher{
		m:         m,
		period:    period,
		sessions:  map[string]*workerSession{},
		deadlines: map[string]*deadline{},
		beats:     map[string]time.Time{},
		statusCh:  make(chan statusBatch, 256),
	}
}

// run is a leader loop: it activates the dispatcher for this term, gives
// every worker that was up a grace period to reconnect (shown Unknown
// meanwhile), and writes status batches.
func (d *dispatcher) run(ctx context.Context) {
	d.mu.Lock()
	d.active, d.ctx = true, ctx
	d.mu.Unlock()
	d.m.log.Info("dispatcher active", "heartbeat_period", d.period)

	// The grace counts from the start of the term, not from when the
	// Unknown state is committed.
	grace := d.period * graceMisses
	for _, id := range d.markUnknown(ctx) {
		d.armDeadline(id, grace, reasonNoSession)
	}

	d.writeStatuses(ctx)

	d.mu.Lock()
	d.active = false
	for id, s := range d.sessions {
		s.cancel()
		delete(d.sessions, id)
	}
	for id, dl := range d.deadlines {
		dl.timer.Stop()
		delete(d.deadlines, id)
	}
	d.mu.Unlock()
}

func (d *dispatcher) deadline() time.Duration { return d.period * heartbeatMisses }

// markUnknown runs at the start of a term: every worker that was Ready (or
// Unknown, waiting on an earlier leader) and has no session with this
// leader yet is shown Unknown until it opens one. It returns those nodes.
// When the write fails (leadership lost again) the nodes are still
// returned, so their deadlines are armed all the same.
func (d *dispatcher) markUnknown(ctx context.Context) []string {
	var waiting []string
	_, err := d.m.store.Update(ctx, func(tx *raftstore.Tx) error {
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
		d.m.log.Warn("show workers Unknown after the leader change", "err", err)
	}
	return waiting
}

// hasSession reports whether a node has a session open with this leader.
func (d *dispatcher) hasSession(nodeID string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.sessions[nodeID]
	return ok
}

// armDeadline (re)starts a node's deadline: when it passes, the node is
// marked Down for reason.
func (d *dispatcher) armDeadline(nodeID string, after time.Duration, reason string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.active {
		return
	}
	if old, ok := d.deadlines[nodeID]; ok {
		old.timer.Stop()
	}
	dl := &deadline{at: time.Now().Add(after), reason: reason}
	dl.timer = time.AfterFunc(after, func() { d.expire(nodeID, dl) })
	d.deadlines[nodeID] = dl
}

// beat records a heartbeat.
func (d *dispatcher) beat(nodeID string) {
	d.mu.Lock()
	d.beats[nodeID] = time.Now()
	d.mu.Unlock()
}

// lastBeat is the last heartbeat this leader saw from a node.
func (d *dispatcher) lastBeat(nodeID string) (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	t, ok := d.beats[nodeID]
	return t, ok
}

// Suspect shortens a node's deadline to one period: gossip saw it die.
// The heartbeat deadline stays the authority.
func (d *dispatcher) Suspect(nodeID string) {
	d.mu.Lock()
	dl, tracked := d.deadlines[nodeID]
	sooner := tracked && time.Now().Add(d.period).Before(dl.at)
	d.mu.Unlock()
	if tracked && sooner {
		d.m.log.Info("gossip reports a worker dead; shortening its heartbeat deadline", "worker", nodeID)
		d.armDeadline(nodeID, d.period, reasonHeartbeat+" (gossip reports the node dead)")
	}
}

// expire marks a node that missed its deadline dl Down and fails its
// tasks, unless dl was re-armed meanwhile (a heartbeat or a new session
// raced the timer).
func (d *dispatcher) expire(nodeID string, dl *deadline) {
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
		d.m.log.Warn("mark node down", "worker", nodeID, "err", err)
	}
}

// markDown records a node as Down and fails the tasks it was running, so
// they can be replaced elsewhere. A node that opened a new session since
// its deadline passed is alive: it is left alone (its session's Ready and
// this write are ordered by the store, and whichever comes second sees the
// other).
func (d *dispatcher) markDown(ctx context.Context, nodeID, why string) error {
	failed := 0
	skipped := false
	_, err := d.m.store.Update(ctx, func(tx *raftstore.Tx) error {
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
		failed = 0
		for _, t := range tx.Tasks().Find(raftstore.IndexNode, nodeID) {
			if t.GetStatus().GetState() >= pb.TaskState_TASK_STATE_COMPLETE {
				continue
			}
			var ports []*pb.PortBinding
			if routable(t) {
				ports = t.GetStatus().GetPorts() // where it may still answer: see lingers
			}
			t.Status = &pb.TaskStatus{
				Timestamp: time.Now().UnixNano(),
				State:     pb.TaskState_TASK_STATE_FAILED,
				Err:       fmt.Sprintf("node %s is down (%s)", nodeID, why),
				Message:   "node down",
				Ports:     ports,
				NodeLost:  true,
			}
			// A service's orchestrator replaces the task (and tells it to
			// stop); a standalone task has nobody else to do so.
			if t.GetServiceId() == "" && t.GetDesiredState() < pb.TaskState_TASK_STATE_SHUTDOWN {
				t.DesiredState = pb.TaskState_TASK_STATE_SHUTDOWN
			}
			if err := tx.Tasks().Update(t); err != nil {
				return err
			}
			failed++
		}
		return nil
	})
	switch {
	case err == nil && skipped:
		d.m.log.Info("worker reconnected as its deadline passed; not marked down", "worker", nodeID)
	case err == nil:
		d.m.log.Warn("worker marked down", "worker", nodeID, "reason", why, "tasks_failed", failed)
	}
	return err
}

// leaderOnly returns the error followers give, with the leader's address
// in the trailer so the worker can go there.
func (d *dispatcher) leaderOnly(ctx context.Context) error {
	d.mu.Lock()
	active := d.active
	d.mu.Unlock()
	if active && d.m.store.IsLeader() {
		return nil
	}
	if addr, err := d.m.leaderAPIAddr(); err == nil && addr != d.m.cfg.APIAddr() {
		_ = grpc.SetTrailer(ctx, metadata.Pairs(LeaderTrailer, addr))
		return status.Errorf(codes.Unavailable, "this manager is not the leader; the leader is at %s", addr)
	}
	return status.Error(codes.Unavailable, "no leader right now; retry shortly")
}

// authenticate checks that the worker may open a session. Its certificate
// proved who it is (the authorisation interceptor checks that it acts for
// itself).
func (d *dispatcher) authenticate(nodeID string) (*pb.Node, error) {
	var n *pb.Node
	var removed bool
	d.m.store.View(func(tx *raftstore.Tx) {
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

// Session registers a worker and streams its assignments.
func (d *dispatcher) Session(req *pb.SessionRequest, stream grpc.ServerStreamingServer[pb.SessionMessage]) error {
	if err := d.leaderOnly(stream.Context()); err != nil {
		return err
	}
	nodeID := req.GetNodeId()
	if _, err := d.authenticate(nodeID); err != nil {
		return err
	}
	d.mu.Lock()
	leaderCtx := d.ctx
	d.mu.Unlock()
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	stop := context.AfterFunc(leaderCtx, cancel)
	defer stop()

	sess := &workerSession{id: raftstore.NewID(), nodeID: nodeID, cancel: cancel}
	d.mu.Lock()
	if old, ok := d.sessions[nodeID]; ok {
		old.cancel()
	}
	d.sessions[nodeID] = sess
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		if d.sessions[nodeID] == sess {
			delete(d.sessions, nodeID)
		}
		d.mu.Unlock()
	}()
	if err := stream.SendHeader(metadata.Pairs(AcceptedHeader, sess.id)); err != nil {
		return err
	}

	addr := hostOf(peerAddr(ctx))
	if _, err := d.m.store.Update(ctx, func(tx *raftstore.Tx) error {
		n, ok := tx.Nodes().Get(nodeID)
		if !ok {
			return status.Errorf(codes.NotFound, "node %s was removed meanwhile", nodeID)
		}
		if req.GetDescription() != nil {
			n.Description = req.GetDescription()
		}
		if n.Status == nil {
			n.Status = &pb.NodeStatus{}
		}
		n.Status.State = pb.NodeState_NODE_STATE_READY
		n.Status.Message = ""
		n.Status.LastHeartbeat = time.Now().UnixNano()
		if n.Status.Addr == "" {
			n.Status.Addr = addr
		}
		return tx.Nodes().Update(n)
	}); err != nil {
		return err
	}
	d.armDeadline(nodeID, d.deadline(), reasonHeartbeat)
	d.beat(nodeID)
	d.m.log.Info("worker session opened", "worker", nodeID, "session", sess.id)

	// Read the node's tasks and subscribe in one step: no change slips between.
	var (
		tasks    []*pb.Task
		node     *pb.Node
		index    uint64
		security *pb.SecurityUpdate
	)
	sub := d.m.store.ViewAndWatch(func(tx *raftstore.Tx) {
		tasks = tx.Tasks().Find(raftstore.IndexNode, nodeID)
		node, _ = tx.Nodes().Get(nodeID)
		index = tx.Index()
		security = securityUpdate(tx.Cluster())
	}, func(ev raftstore.Event) bool {
		switch o := ev.Object.(type) {
		case *pb.Task:
			old, _ := ev.Old.(*pb.Task)
			return o.GetNodeId() == nodeID || (old != nil && old.GetNodeId() == nodeID)
		case *pb.Node:
			return o.GetId() == nodeID
		case *pb.Cluster:
			return true
		}
		return false
	})
	defer sub.Close()

	// The endpoint sets go with the session too: complete first, then
	// only the services that changed.
	sentEndpoints, endpointsChanged := d.m.feed.snapshot()
	secrets := newSecretTracker(d.m, nodeID)
	for _, t := range tasks {
		secrets.note(t, false)
	}
	first := &pb.SessionMessage{
		SessionId:       sess.id,
		HeartbeatPeriod: int64(d.period),
		Managers:        d.managers(),
		Node:            node,
		Assignments:     &pb.Assignments{Type: pb.AssignmentsType_ASSIGNMENTS_TYPE_COMPLETE, Updated: assigned(tasks), Index: index},
		Security:        security,
		Endpoints:       completeUpdate(sentEndpoints),
		Secrets:         secrets.changes(pb.AssignmentsType_ASSIGNMENTS_TYPE_COMPLETE),
	}
	if err := stream.Send(first); err != nil {
		return err
	}
	for {
		var ev raftstore.Event
		var ok bool
		select {
		case <-ctx.Done():
			if leaderCtx.Err() != nil {
				return status.Error(codes.Unavailable, "this manager lost leadership; reconnect to the new leader")
			}
			return ctx.Err()
		case <-endpointsChanged:
			var now map[string]*pb.ServiceEndpoints
			now, endpointsChanged = d.m.feed.snapshot()
			u := diffEndpoints(sentEndpoints, now)
			sentEndpoints = now
			if len(u.GetUpdated()) == 0 && len(u.GetRemoved()) == 0 {
				continue
			}
			if err := stream.Send(&pb.SessionMessage{SessionId: sess.id, Endpoints: u}); err != nil {
				return err
			}
			continue
		case ev, ok = <-sub.C():
			if !ok {
				return status.Errorf(codes.Unavailable, "assignment stream interrupted (%v); reconnect", sub.Err())
			}
		}
		msg := &pb.SessionMessage{SessionId: sess.id}
		batch := []raftstore.Event{ev}
		// Gather what else is already queued: one message per burst.
	drain:
		for len(batch) < 1024 {
			select {
			case more, ok := <-sub.C():
				if !ok {
					break drain
				}
				batch = append(batch, more)
			default:
				break drain
			}
		}
		inc := &pb.Assignments{Type: pb.AssignmentsType_ASSIGNMENTS_TYPE_INCREMENTAL}
		for _, ev := range batch {
			inc.Index = ev.Index
			switch o := ev.Object.(type) {
			case *pb.Node:
				if ev.Kind == raftstore.EventDelete {
					return status.Errorf(codes.PermissionDenied, "node %s was removed from the cluster", nodeID)
				}
				msg.Node = o
			case *pb.Cluster:
				if up := securityUpdate(o); !proto.Equal(up, security) {
					security, msg.Security = up, up
				}
			case *pb.Task:
				secrets.note(o, ev.Kind == raftstore.EventDelete)
				old, _ := ev.Old.(*pb.Task)
				switch {
				case ev.Kind == raftstore.EventDelete || o.GetNodeId() != nodeID:
					inc.Removed = append(inc.Removed, o.GetId())
				case !isAssigned(o):
				case old == nil || !isAssigned(old) || old.GetDesiredState() != o.GetDesiredState() ||
					old.GetSpecVersion() != o.GetSpecVersion() || old.GetNodeId() != o.GetNodeId():
					inc.Updated = append(inc.Updated, o)
				}
			}
		}
		msg.Secrets = secrets.changes(pb.AssignmentsType_ASSIGNMENTS_TYPE_INCREMENTAL)
		if len(inc.Updated) == 0 && len(inc.Removed) == 0 && msg.Node == nil && msg.Security == nil && msg.Secrets == nil {
			continue
		}
		if len(inc.Updated) > 0 || len(inc.Removed) > 0 {
			msg.Assignments = inc
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
}

// securityUpdate is what workers must know of the cluster's trust roots
// and gossip keys.
func securityUpdate(c *pb.Cluster) *pb.SecurityUpdate {
	return &pb.SecurityUpdate{RootCas: c.GetRootCa().GetTrustBundle(), RootDigest: c.GetRootCa().GetDigest(), GossipKeys: c.GetGossipKeys(),
		RevokedNodes: revokedNodes(c)}
}

// isAssigned reports whether a task is the node's to run: the scheduler
// gave it a node (state ASSIGNED or later).
func isAssigned(t *pb.Task) bool {
	return t.GetNodeId() != "" && t.GetStatus().GetState() >= pb.TaskState_TASK_STATE_ASSIGNED
}

func assigned(tasks []*pb.Task) []*pb.Task {
	out := tasks[:0]
	for _, t := range tasks {
		if isAssigned(t) {
			out = append(out, t)
		}
	}
	return out
}

// managers lists the managers a worker may connect to.
func (d *dispatcher) managers() []*pb.ManagerAddr {
	leaderID, _ := d.m.store.Leader()
	var out []*pb.ManagerAddr
	d.m.store.View(func(tx *raftstore.Tx) {
		for _, n := range tx.Nodes().List() {
			if n.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER {
				out = append(out, &pb.ManagerAddr{NodeId: n.GetId(), ApiAddr: n.GetManagerStatus().GetApiAddr(), Leader: n.GetManagerStatus().GetRaftId() == leaderID})
			}
		}
	})
	return out
}

// session finds the open session a call names.
func (d *dispatcher) session(nodeID, sessionID string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.sessions[nodeID]
	if !ok || s.id != sessionID {
		return status.Errorf(codes.NotFound, "session %s of node %s is not open on the leader; open a new session", sessionID, nodeID)
	}
	return nil
}

// Heartbeat resets the node's deadline.
func (d *dispatcher) Heartbeat(ctx context.Context, req *pb.HeartbeatRequest) (*pb.HeartbeatResponse, error) {
	if err := d.leaderOnly(ctx); err != nil {
		return nil, err
	}
	if err := d.session(req.GetNodeId(), req.GetSessionId()); err != nil {
		return nil, err
	}
	d.armDeadline(req.GetNodeId(), d.deadline(), reasonHeartbeat)
	d.beat(req.GetNodeId())
	return &pb.HeartbeatResponse{Period: int64(d.period)}, nil
}

// UpdateTaskStatus records a worker's task states; batches from many
// workers are coalesced into one store transaction.
func (d *dispatcher) UpdateTaskStatus(ctx context.Context, req *pb.UpdateTaskStatusRequest) (*pb.UpdateTaskStatusResponse, error) {
	if err := d.leaderOnly(ctx); err != nil {
		return nil, err
	}
	if err := d.session(req.GetNodeId(), req.GetSessionId()); err != nil {
		return nil, err
	}
	for _, u := range req.GetUpdates() {
		if u.GetTaskId() == "" || u.GetStatus() == nil {
			return nil, status.Error(codes.InvalidArgument, "a status update needs a task ID and a status")
		}
	}
	b := statusBatch{nodeID: req.GetNodeId(), updates: req.GetUpdates(), done: make(chan error, 1)}
	select {
	case d.statusCh <- b:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case err := <-b.done:
		if err != nil {
			return nil, err
		}
		return &pb.UpdateTaskStatusResponse{}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// maxStatusBatch bounds how many updates go into one transaction.
const maxStatusBatch = 2000

// writeStatuses commits queued status batches until ctx ends.
func (d *dispatcher) writeStatuses(ctx context.Context) {
	for {
		var batches []statusBatch
		select {
		case <-ctx.Done():
			return
		case b := <-d.statusCh:
			batches = append(batches, b)
		}
		n := len(batches[0].updates)
	gather:
		for n < maxStatusBatch {
			select {
			case b := <-d.statusCh:
				batches = append(batches, b)
				n += len(b.updates)
			default:
				break gather
			}
		}
		errs := make([]error, len(batches))
		_, err := d.m.store.Update(ctx, func(tx *raftstore.Tx) error {
			for i, b := range batches {
				errs[i] = applyStatuses(tx, b)
			}
			return nil
		})
		for i, b := range batches {
			if err != nil {
				b.done <- err
			} else {
				b.done <- errs[i]
			}
		}
	}
}

// applyStatuses stages one node's updates. Updates for tasks the node was
// not assigned are refused; states only move forward.
func applyStatuses(tx *raftstore.Tx, b statusBatch) error {
	var refused []string
	for _, u := range b.updates {
		t, ok := tx.Tasks().Get(u.GetTaskId())
		if !ok {
			continue // deleted meanwhile: nothing to record
		}
		if t.GetNodeId() != b.nodeID {
			refused = append(refused, u.GetTaskId())
			continue
		}
		if u.GetStatus().GetState() < t.GetStatus().GetState() {
			continue
		}
		t.Status = u.GetStatus()
		if err := tx.Tasks().Update(t); err != nil {
			return err
		}
	}
	if len(refused) > 0 {
		return status.Errorf(codes.PermissionDenied, "node %s may not report status for tasks it was not assigned: %v", b.nodeID, refused)
	}
	return nil
}

// peerAddr is the remote address of the caller.
func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}
