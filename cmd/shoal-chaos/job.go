package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Each round also runs a replicated job across its fault: jobCompletions
// slots, jobConcurrency at a time, each task a /bin/sh that sleeps a
// little, then records its completion in the round's directory and exits
// 0. Once the fault healed the job must finish, and invariant (f) checks
// that every slot completed exactly once: one COMPLETE task per slot in
// the store, and one recorded run per slot, unless the slot had a task
// lost with its node (a run the managers never saw finish is run again).
// The job is then removed, before the convergence check.
const (
	jobCompletions = 8
	jobConcurrency = 3
	jobTaskTime    = "0.7" // seconds each task sleeps
)

// roundJob is the job of one round.
type roundJob struct {
	name, dir string
}

// jobSpec is `shoal service create --mode replicated-job --replicas 8
// --max-concurrent 3 /bin/sh -c '...'`.
func jobSpec(name, dir string) *pb.ServiceSpec {
	script := `sleep ` + jobTaskTime + `; touch "$RUNS/done-$SHOAL_TASK_SLOT.$SHOAL_TASK_ID"`
	return &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: name},
		Task: &pb.TaskSpec{
			Runtime: "process",
			Container: &pb.ContainerSpec{
				Image: "/bin/sh", Args: []string{"-c", script}, Env: []string{"RUNS=" + dir},
				StopGracePeriod: int64(time.Second),
			},
			Restart: &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ON_FAILURE, Delay: int64(200 * time.Millisecond)},
		},
		Mode: &pb.ServiceSpec_ReplicatedJob{ReplicatedJob: &pb.ReplicatedJob{TotalCompletions: jobCompletions, MaxConcurrent: jobConcurrency}},
	}
}

// startJob creates the round's job.
func (s *suite) startJob(ctx context.Context, round int) (*roundJob, error) {
	j := &roundJob{name: fmt.Sprintf("job-r%d", round+1), dir: filepath.Join(s.dir, fmt.Sprintf("job-r%d", round+1))}
	if err := os.MkdirAll(j.dir, 0o777); err != nil {
		return nil, err
	}
	err := waitFor(ctx, 30*time.Second, "creating "+j.name, func(ctx context.Context) error {
		return s.anyManager(ctx, func(ctx context.Context, cl pb.ControlClient) error {
			_, err := cl.CreateService(ctx, &pb.CreateServiceRequest{Spec: jobSpec(j.name, j.dir)})
			if status.Code(err) == codes.AlreadyExists {
				return nil // an earlier attempt timed out after it committed
			}
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("create the job %s: %w", j.name, err)
	}
	return j, nil
}

// anyManager runs call against the managers in turn until one answers.
func (s *suite) anyManager(ctx context.Context, call func(context.Context, pb.ControlClient) error) error {
	var last error
	for _, m := range s.c.managers {
		cl, err := s.c.control(m)
		if err != nil {
			last = err
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, opTimeout)
		err = call(cctx, cl)
		cancel()
		if err == nil {
			return nil
		}
		last = err
	}
	return last
}

// jobTasks reads the job's tasks of its current iteration.
func (s *suite) jobTasks(ctx context.Context, name string) ([]*pb.Task, error) {
	var tasks []*pb.Task
	err := s.anyManager(ctx, func(ctx context.Context, cl pb.ControlClient) error {
		svc, err := cl.GetService(ctx, &pb.GetServiceRequest{Ref: name})
		if err != nil {
			return err
		}
		resp, err := cl.ListTasks(ctx, &pb.ListTasksRequest{ServiceRef: name})
		if err != nil {
			return err
		}
		tasks = tasks[:0]
		for _, t := range resp.GetTasks() {
			if t.GetJobIteration() == svc.GetService().GetJobStatus().GetJobIteration() {
				tasks = append(tasks, t)
			}
		}
		return nil
	})
	return tasks, err
}

// finishJob waits for the round's job to complete, checks invariant (f)
// and removes the job. It returns one line per problem.
func (s *suite) finishJob(ctx context.Context, j *roundJob) []string {
	var tasks []*pb.Task
	err := waitFor(ctx, 90*time.Second, "the job "+j.name+" to complete", func(ctx context.Context) error {
		var err error
		if tasks, err = s.jobTasks(ctx, j.name); err != nil {
			return err
		}
		return jobDone(tasks)
	})
	var problems []string
	if err != nil {
		problems = append(problems, err.Error())
	} else {
		problems = append(problems, checkJob(tasks, runsIn(j.dir))...)
	}
	if err := s.removeJob(ctx, j); err != nil {
		problems = append(problems, err.Error())
	}
	return problems
}

// removeJob removes the job (a job that no longer exists is fine).
func (s *suite) removeJob(ctx context.Context, j *roundJob) error {
	return s.removeService(ctx, j.name)
}

// jobDone reports, as an error, why the tasks are not yet a finished job:
// every slot completed and nothing left to run.
func jobDone(tasks []*pb.Task) error {
	done := map[uint64]bool{}
	active := 0
	for _, t := range tasks {
		if t.GetStatus().GetState() == pb.TaskState_TASK_STATE_COMPLETE {
			done[t.GetSlot()] = true
		}
		if t.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING {
			active++
		}
	}
	if len(done) < jobCompletions || active > 0 {
		return fmt.Errorf("%d of %d slots complete, %d tasks active", len(done), jobCompletions, active)
	}
	return nil
}

// checkJob checks invariant (f) on a finished job's tasks and the runs its
// tasks recorded (per slot): every slot 1..jobCompletions has exactly one
// COMPLETE task, and one recorded run unless a task of the slot was lost
// with its node.
func checkJob(tasks []*pb.Task, runs map[uint64]int) []string {
	var problems []string
	complete := map[uint64][]string{}
	lost := map[uint64]bool{}
	for _, t := range tasks {
		if t.GetStatus().GetState() == pb.TaskState_TASK_STATE_COMPLETE {
			complete[t.GetSlot()] = append(complete[t.GetSlot()], t.GetId())
		}
		if t.GetStatus().GetNodeLost() {
			lost[t.GetSlot()] = true
		}
	}
	for slot := uint64(1); slot <= jobCompletions; slot++ {
		switch n := len(complete[slot]); {
		case n == 0:
			problems = append(problems, fmt.Sprintf("job slot %d never completed", slot))
		case n > 1:
			problems = append(problems, fmt.Sprintf("job slot %d completed %d times in the store (tasks %s)", slot, n, strings.Join(complete[slot], ", ")))
		}
		switch {
		case runs[slot] == 0:
			problems = append(problems, fmt.Sprintf("job slot %d is complete in the store but no task recorded a run", slot))
		case runs[slot] > 1 && !lost[slot]:
			problems = append(problems, fmt.Sprintf("job slot %d ran to completion %d times, and no task of it was lost with its node", slot, runs[slot]))
		}
	}
	for slot := range complete {
		if slot < 1 || slot > jobCompletions {
			problems = append(problems, fmt.Sprintf("job completed slot %d, outside 1..%d", slot, jobCompletions))
		}
	}
	sort.Strings(problems)
	return problems
}

// runsIn counts the runs recorded in dir (files done-SLOT.TASK), by slot.
func runsIn(dir string) map[uint64]int {
	out := map[uint64]int{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return out
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "done-")
		if !ok {
			continue
		}
		var slot uint64
		if _, err := fmt.Sscanf(rest, "%d.", &slot); err == nil {
			out[slot]++
		}
	}
	return out
}
