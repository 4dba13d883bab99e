package orchestrator

import (
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/shoal-cluster/shoal/manager/scheduler"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/protobuf/proto"
)

// DefaultRestartDelay applies when a service sets no restart policy.
const DefaultRestartDelay = 5 * time.Second

// nodeMatches reports whether a node satisfies placement constraints (an
// unparsable constraint matches nothing; the control API refuses those).
func nodeMatches(n *pb.Node, exprs []string) bool {
	cs, err := scheduler.ParseConstraints(exprs)
	if err != nil {
		return false
	}
	for _, c := range cs {
		if !c.Match(n) {
			return false
		}
	}
	return true
}

// snapshot is what one reconcile transaction knows of the cluster.
type snapshot struct {
	nodes        map[string]*pb.Node
	historyLimit int
}

func newSnapshot(tx *raftstore.Tx) *snapshot {
	st := &snapshot{nodes: map[string]*pb.Node{}, historyLimit: DefaultHistoryLimit}
	for _, n := range tx.Nodes().List() {
		st.nodes[n.GetId()] = n
	}
	if c := tx.Cluster(); c != nil && c.GetSpec().GetTaskHistoryLimit() > 0 {
		st.historyLimit = int(c.GetSpec().GetTaskHistoryLimit())
	}
	return st
}

const (
	stateRunning  = pb.TaskState_TASK_STATE_RUNNING
	stateComplete = pb.TaskState_TASK_STATE_COMPLETE
	stateShutdown = pb.TaskState_TASK_STATE_SHUTDOWN
	stateRemove   = pb.TaskState_TASK_STATE_REMOVE
)

// active tasks should be running (or ready, waiting for a restart delay).
func active(t *pb.Task) bool { return t.GetDesiredState() <= stateRunning }

// ended tasks stopped for good.
func ended(t *pb.Task) bool { return t.GetStatus().GetState() > stateRunning }

// occupies reports whether a task keeps its slot (or node) taken: anything
// not being removed.
func occupies(t *pb.Task) bool { return t.GetDesiredState() < stateRemove }

// reconcileService reconciles one service; it returns the delayed
// restarts to wake up for.
func (o *Orchestrator) reconcileService(tx *raftstore.Tx, st *snapshot, id string, now time.Time) ([]delayed, error) {
	svc, ok := tx.Services().Get(id)
	tasks := tx.Tasks().Find(raftstore.IndexService, id)
	if !ok {
		return nil, o.removeAll(tx, st, tasks)
	}
	r := &run{o: o, tx: tx, st: st, svc: svc, now: now, job: isJob(svc)}
	if r.job {
		var err error
		if tasks, err = r.stopPastIterations(tasks); err != nil {
			return nil, err
		}
	}
	if err := r.handleEnded(tasks); err != nil {
		return nil, err
	}
	// Re-read: handleEnded may have created and changed tasks.
	tasks = r.current(tx.Tasks().Find(raftstore.IndexService, id))
	if err := r.promoteDelayed(tasks); err != nil {
		return nil, err
	}
	var err error
	switch {
	case r.job && isGlobal(svc):
		err = r.globalJob(tasks)
	case r.job:
		err = r.replicatedJob(tasks)
	case isGlobal(svc):
		err = r.global(tasks)
	default:
		err = r.replicated(tasks)
	}
	if err != nil {
		return nil, err
	}
	return r.delays, r.trimHistory(tx.Tasks().Find(raftstore.IndexService, id))
}

// run is one service's reconcile pass.
type run struct {
	o      *Orchestrator
	tx     *raftstore.Tx
	st     *snapshot
	svc    *pb.Service
	now    time.Time
	delays []delayed
	job    bool // the service is a job: its tasks run to completion
}

// restartPolicy returns the service's restart policy with defaults (for a
// job, as Docker's, on failure only).
func (r *run) restartPolicy() (pb.RestartCondition, time.Duration, uint64, time.Duration) {
	p := r.svc.GetSpec().GetTask().GetRestart()
	if p == nil {
		if r.job {
			return pb.RestartCondition_RESTART_CONDITION_ON_FAILURE, DefaultRestartDelay, 0, 0
		}
		return pb.RestartCondition_RESTART_CONDITION_ANY, DefaultRestartDelay, 0, 0
	}
	return p.GetCondition(), time.Duration(p.GetDelay()), p.GetMaxAttempts(), time.Duration(p.GetWindow())
}

// groupKey is the slot of a replicated task or the node of a global one.
func (r *run) groupKey(t *pb.Task) string {
	if isGlobal(r.svc) {
		return "node/" + t.GetNodeId()
	}
	return "slot/" + strconv.FormatUint(t.GetSlot(), 10)
}

// handleEnded deals with active tasks that cannot go on: ended, on a
// drained node, or on a node that no longer exists.
func (r *run) handleEnded(tasks []*pb.Task) error {
	for _, t := range tasks {
		if !active(t) {
			continue
		}
		node, known := r.st.nodes[t.GetNodeId()]
		switch {
		case r.job && t.GetStatus().GetState() == stateComplete:
			// A job's completion: done for good, never replaced.
			t.DesiredState = stateComplete
			if err := r.tx.Tasks().Update(t); err != nil {
				return err
			}
		case ended(t):
			if err := r.replace(t, tasks, r.mayRestart(t, tasks)); err != nil {
				return err
			}
		case t.GetNodeId() != "" && !known:
			t.Status = &pb.TaskStatus{Timestamp: r.now.UnixNano(), State: pb.TaskState_TASK_STATE_FAILED,
				Message: "node removed", Err: fmt.Sprintf("node %s was removed from the cluster", t.GetNodeId())}
			if r.job && isGlobal(r.svc) {
				// A global job no longer runs on that node: it is not a
				// failure of the job.
				t.DesiredState = stateRemove
				if err := r.tx.Tasks().Update(t); err != nil {
					return err
				}
				continue
			}
			if err := r.replace(t, tasks, !isGlobal(r.svc)); err != nil {
				return err
			}
		case known && node.GetSpec().GetAvailability() == pb.NodeAvailability_NODE_AVAILABILITY_DRAIN:
			if isGlobal(r.svc) {
				t.DesiredState = stateRemove
				if err := r.tx.Tasks().Update(t); err != nil {
					return err
				}
				continue
			}
			if err := r.replace(t, tasks, true); err != nil {
				return err
			}
		}
	}
	return nil
}

// mayRestart applies the restart policy to an ended task.
func (r *run) mayRestart(t *pb.Task, tasks []*pb.Task) bool {
	cond, _, maxAttempts, window := r.restartPolicy()
	switch cond {
	case pb.RestartCondition_RESTART_CONDITION_NONE:
		return false
	case pb.RestartCondition_RESTART_CONDITION_ON_FAILURE:
		if t.GetStatus().GetState() == pb.TaskState_TASK_STATE_COMPLETE {
			return false
		}
	}
	if maxAttempts == 0 {
		return true
	}
	if t.GetStatus().GetNodeLost() {
		return true // it did not fail: its node went Down
	}
	// Count the ended tasks of this slot within the window, this one
	// included; tasks lost with their node are no attempts.
	key := r.groupKey(t)
	count := uint64(0)
	for _, o := range tasks {
		if r.groupKey(o) != key || !ended(o) || o.GetDesiredState() >= stateRemove || o.GetStatus().GetNodeLost() {
			continue
		}
		if window > 0 && r.now.Sub(time.Unix(0, o.GetStatus().GetTimestamp())) > window {
			continue
		}
		count++
	}
	return count <= maxAttempts
}

// replace stops a task and, if restart is true, creates its successor in
// the same slot (or on the same node, for global services).
func (r *run) replace(t *pb.Task, tasks []*pb.Task, restart bool) error {
	t.DesiredState = stateShutdown
	if err := r.tx.Tasks().Update(t); err != nil {
		return err
	}
	if !restart {
		r.o.log.Info("task ended; the restart policy does not replace it", "service", r.svc.GetSpec().GetAnnotations().GetName(), "task", t.GetId(), "state", t.GetStatus().GetState().String())
		return nil
	}
	_, delay, _, _ := r.restartPolicy()
	if t.GetStatus().GetNodeLost() {
		delay = 0 // it did not fail: its node went Down; replace it at once
	}
	node := ""
	if isGlobal(r.svc) {
		node = t.GetNodeId()
	}
	desired := stateRunning
	if delay > 0 {
		desired = pb.TaskState_TASK_STATE_READY
	}
	nt := r.newTask(t.GetSlot(), node, desired)
	if delay > 0 {
		r.delays = append(r.delays, delayed{serviceID: r.svc.GetId(), taskID: nt.GetId(), at: r.now.Add(delay)})
	}
	return r.tx.Tasks().Create(nt)
}

// promoteDelayed raises delayed restarts to RUNNING once their delay passed.
func (r *run) promoteDelayed(tasks []*pb.Task) error {
	_, delay, _, _ := r.restartPolicy()
	// Groups with a task still running while being stopped (a stop-first
	// update: the updater starts the successor once the old task stopped).
	stopping := map[string]bool{}
	for _, o := range tasks {
		if s := o.GetStatus().GetState(); o.GetDesiredState() > stateRunning && s >= pb.TaskState_TASK_STATE_ASSIGNED && s <= stateRunning {
			stopping[r.groupKey(o)] = true
		}
	}
	for _, t := range tasks {
		if t.GetDesiredState() != pb.TaskState_TASK_STATE_READY || t.GetMeta().GetCreatedAt() == 0 {
			continue // created in this transaction: its wake-up is already scheduled
		}
		if stopping[r.groupKey(t)] {
			continue
		}
		due := time.Unix(0, t.GetMeta().GetCreatedAt()).Add(delay)
		if r.now.Before(due) {
			r.delays = append(r.delays, delayed{serviceID: r.svc.GetId(), taskID: t.GetId(), at: due})
			continue
		}
		t.DesiredState = stateRunning
		if err := r.tx.Tasks().Update(t); err != nil {
			return err
		}
	}
	return nil
}

// newTask makes a pending task from the service's current spec.
func (r *run) newTask(slot uint64, nodeID string, desired pb.TaskState) *pb.Task {
	return &pb.Task{
		Id:           r.tx.NewID(),
		ServiceId:    r.svc.GetId(),
		ServiceName:  r.svc.GetSpec().GetAnnotations().GetName(),
		Slot:         slot,
		NodeId:       nodeID,
		Spec:         proto.Clone(r.svc.GetSpec().GetTask()).(*pb.TaskSpec),
		SpecVersion:  r.svc.GetSpecVersion(),
		DesiredState: desired,
		Status:       &pb.TaskStatus{Timestamp: r.now.UnixNano(), State: pb.TaskState_TASK_STATE_PENDING, Message: "pending"},
		Endpoint:     proto.Clone(r.svc.GetEndpoint()).(*pb.Endpoint),
		JobIteration: r.svc.GetJobStatus().GetJobIteration(),
	}
}

// replicated keeps replicas occupied slots: it scales up into the lowest
// free slots and scales down from the slots on the most crowded nodes,
// highest slot first.
func (r *run) replicated(tasks []*pb.Task) error {
	want := int(r.svc.GetSpec().GetReplicated().GetReplicas())
	slots := map[uint64][]*pb.Task{}
	for _, t := range tasks {
		if occupies(t) {
			slots[t.GetSlot()] = append(slots[t.GetSlot()], t)
		}
	}
	if len(slots) > want {
		return r.scaleDown(slots, len(slots)-want)
	}
	for slot := uint64(1); len(slots) < want; slot++ {
		if _, taken := slots[slot]; taken {
			continue
		}
		t := r.newTask(slot, "", stateRunning)
		if err := r.tx.Tasks().Create(t); err != nil {
			return err
		}
		slots[slot] = []*pb.Task{t}
	}
	return nil
}

// scaleDown removes n slots.
func (r *run) scaleDown(slots map[uint64][]*pb.Task, n int) error {
	perNode := map[string]int{}
	nodeOf := map[uint64]string{}
	for slot, ts := range slots {
		for _, t := range ts {
			if active(t) && t.GetNodeId() != "" {
				perNode[t.GetNodeId()]++
				nodeOf[slot] = t.GetNodeId()
			}
		}
	}
	order := make([]uint64, 0, len(slots))
	for slot := range slots {
		order = append(order, slot)
	}
	sort.Slice(order, func(i, j int) bool {
		ci, cj := perNode[nodeOf[order[i]]], perNode[nodeOf[order[j]]]
		if nodeOf[order[i]] == "" {
			ci = 1 << 30 // unplaced tasks go first: removing them costs nothing
		}
		if nodeOf[order[j]] == "" {
			cj = 1 << 30
		}
		if ci != cj {
			return ci > cj
		}
		return order[i] > order[j]
	})
	for _, slot := range order[:n] {
		if node := nodeOf[slot]; node != "" {
			perNode[node]--
		}
		for _, t := range slots[slot] {
			t.DesiredState = stateRemove
			if err := r.tx.Tasks().Update(t); err != nil {
				return err
			}
		}
	}
	return nil
}

// global keeps one task on every eligible node.
func (r *run) global(tasks []*pb.Task) error {
	constraints := r.svc.GetSpec().GetTask().GetPlacement().GetConstraints()
	byNode := map[string][]*pb.Task{}
	for _, t := range tasks {
		if occupies(t) {
			byNode[t.GetNodeId()] = append(byNode[t.GetNodeId()], t)
		}
	}
	ids := make([]string, 0, len(r.st.nodes))
	for id := range r.st.nodes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		n := r.st.nodes[id]
		fits := len(n.GetDescription().GetRuntimes()) > 0 && nodeMatches(n, constraints) &&
			n.GetSpec().GetAvailability() != pb.NodeAvailability_NODE_AVAILABILITY_DRAIN
		if !fits {
			for _, t := range byNode[id] {
				t.DesiredState = stateRemove
				if err := r.tx.Tasks().Update(t); err != nil {
					return err
				}
			}
			continue
		}
		ready := n.GetStatus().GetState() == pb.NodeState_NODE_STATE_READY
		active := n.GetSpec().GetAvailability() == pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE
		if len(byNode[id]) == 0 && ready && active {
			if err := r.tx.Tasks().Create(r.newTask(0, id, stateRunning)); err != nil {
				return err
			}
		}
	}
	return nil
}

// trimHistory deletes ended tasks beyond the history limit of each slot
// (or node), and at once those of removed slots.
func (r *run) trimHistory(tasks []*pb.Task) error {
	groups := map[string][]*pb.Task{}
	for _, t := range tasks {
		if active(t) || r.completion(t) {
			continue // a completion of the current run is what keeps its slot done
		}
		if r.gone(t) && t.GetDesiredState() >= stateRemove {
			if err := r.tx.Tasks().Delete(t.GetId()); err != nil {
				return err
			}
			continue
		}
		if ended(t) {
			groups[r.groupKey(t)] = append(groups[r.groupKey(t)], t)
		}
	}
	for _, g := range groups {
		if len(g) <= r.st.historyLimit {
			continue
		}
		sort.Slice(g, func(i, j int) bool { return g[i].GetMeta().GetCreatedAt() > g[j].GetMeta().GetCreatedAt() })
		for _, t := range g[r.st.historyLimit:] {
			if err := r.tx.Tasks().Delete(t.GetId()); err != nil {
				return err
			}
		}
	}
	return nil
}

// gone reports whether nothing runs for a task any more: it ended, it was
// never placed, or its node is Down or removed.
func (r *run) gone(t *pb.Task) bool {
	if ended(t) || t.GetNodeId() == "" || t.GetStatus().GetState() < pb.TaskState_TASK_STATE_ASSIGNED {
		return true
	}
	n, ok := r.st.nodes[t.GetNodeId()]
	return !ok || n.GetStatus().GetState() == pb.NodeState_NODE_STATE_DOWN
}

// removeAll winds down the tasks of a deleted service: stop them, and
// delete each once nothing runs for it.
func (o *Orchestrator) removeAll(tx *raftstore.Tx, st *snapshot, tasks []*pb.Task) error {
	r := &run{o: o, tx: tx, st: st}
	for _, t := range tasks {
		if r.gone(t) {
			if err := tx.Tasks().Delete(t.GetId()); err != nil {
				return err
			}
			continue
		}
		if t.GetDesiredState() < stateRemove {
			t.DesiredState = stateRemove
			if err := tx.Tasks().Update(t); err != nil {
				return err
			}
		}
	}
	return nil
}
