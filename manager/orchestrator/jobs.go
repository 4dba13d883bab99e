package orchestrator

import (
	"sort"

	pb "github.com/shoal-cluster/shoal/proto"
)

// Jobs (replicated-job and global-job services) run their tasks to
// completion, as Docker Swarm's:
//
//   - A replicated job has slots 1..total_completions. A slot is done once
//     a task of the current iteration in it is observed COMPLETE (exit 0);
//     that task's desired state becomes COMPLETE and the slot is never run
//     again in this iteration. A slot whose task failed gets a successor in
//     the same slot as the restart policy allows (on failure by default);
//     one the policy gave up on stays failed. At most max_concurrent tasks
//     are active at once; the lowest slots with no task start first.
//   - A global job runs one task on every eligible node, nodes that join
//     later included, with the same rules per node.
//   - A task lost with its node (node_lost) is replaced at once in its slot,
//     as for services: its completion was never observed. A completion the
//     managers observed is never run again, whoever leads.
//   - Every spec update starts the next iteration (Service.job_status): the
//     tasks of earlier ones are stopped if still running, and no longer
//     count.

// current returns the tasks of the current iteration (every task for a
// service that is not a job).
func (r *run) current(tasks []*pb.Task) []*pb.Task {
	if !r.job {
		return tasks
	}
	iter := r.svc.GetJobStatus().GetJobIteration()
	out := tasks[:0:0]
	for _, t := range tasks {
		if t.GetJobIteration() == iter {
			out = append(out, t)
		}
	}
	return out
}

// completion reports whether a task is a completion of its job's current
// iteration.
func (r *run) completion(t *pb.Task) bool {
	return r.job && t.GetJobIteration() == r.svc.GetJobStatus().GetJobIteration() &&
		t.GetStatus().GetState() == stateComplete
}

// stopPastIterations tells the still active tasks of earlier iterations to
// shut down, without successors; it returns the current iteration's tasks.
func (r *run) stopPastIterations(tasks []*pb.Task) ([]*pb.Task, error) {
	iter := r.svc.GetJobStatus().GetJobIteration()
	for _, t := range tasks {
		if t.GetJobIteration() == iter || !active(t) {
			continue
		}
		t.DesiredState = stateShutdown
		if err := r.tx.Tasks().Update(t); err != nil {
			return nil, err
		}
	}
	return r.current(tasks), nil
}

// replicatedJob starts tasks in the lowest slots that have none yet, up to
// max_concurrent active tasks.
func (r *run) replicatedJob(tasks []*pb.Task) error {
	j := r.svc.GetSpec().GetReplicatedJob()
	total, limit := j.GetTotalCompletions(), max(j.GetMaxConcurrent(), 1)
	if total == 0 {
		total = limit
	}
	taken, done := map[uint64]bool{}, map[uint64]bool{}
	for _, t := range tasks {
		if occupies(t) {
			taken[t.GetSlot()] = true
		}
		if r.completion(t) {
			done[t.GetSlot()] = true
		}
	}
	running := uint64(0)
	for _, t := range tasks {
		if !active(t) {
			continue
		}
		if done[t.GetSlot()] {
			// A task told to stop (its node drained) completed after all
			// while its successor was on its way: the slot is done.
			t.DesiredState = stateShutdown
			if err := r.tx.Tasks().Update(t); err != nil {
				return err
			}
			continue
		}
		running++
	}
	for slot := uint64(1); slot <= total && running < limit; slot++ {
		if taken[slot] {
			continue
		}
		if err := r.tx.Tasks().Create(r.newTask(slot, "", stateRunning)); err != nil {
			return err
		}
		running++
	}
	return nil
}

// globalJob starts a task on every eligible node that has none in this
// iteration, and stops the active ones on nodes no longer eligible.
func (r *run) globalJob(tasks []*pb.Task) error {
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
				if !active(t) {
					continue // its run is over: keep it as the record of it
				}
				t.DesiredState = stateRemove
				if err := r.tx.Tasks().Update(t); err != nil {
					return err
				}
			}
			continue
		}
		ready := n.GetStatus().GetState() == pb.NodeState_NODE_STATE_READY
		isActive := n.GetSpec().GetAvailability() == pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE
		if len(byNode[id]) == 0 && ready && isActive {
			if err := r.tx.Tasks().Create(r.newTask(0, id, stateRunning)); err != nil {
				return err
			}
		}
	}
	return nil
}
