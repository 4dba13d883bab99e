package tests

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// jobSpec is a job of /bin/sh running script, which can record its runs in
// dir (passed as $RUNS).
func jobSpec(name, dir, script string, mode any) *pb.ServiceSpec {
	spec := &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: name},
		Task: &pb.TaskSpec{
			Runtime: "process",
			Container: &pb.ContainerSpec{
				Image: "/bin/sh", Args: []string{"-c", script}, Env: []string{"RUNS=" + dir},
				StopGracePeriod: int64(time.Second),
			},
			Restart: &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ON_FAILURE, Delay: int64(100 * time.Millisecond)},
		},
	}
	switch m := mode.(type) {
	case *pb.ReplicatedJob:
		spec.Mode = &pb.ServiceSpec_ReplicatedJob{ReplicatedJob: m}
	case *pb.GlobalJob:
		spec.Mode = &pb.ServiceSpec_GlobalJob{GlobalJob: m}
	}
	return spec
}

// jobState is what the API says of a job's current iteration.
type jobState struct {
	iteration uint64
	complete  map[string]int // COMPLETE tasks per slot (or node)
	active    int            // tasks still meant to run
	running   int            // tasks observed running
}

func (s jobState) String() string {
	return fmt.Sprintf("iteration %d, complete %v, active %d, running %d", s.iteration, s.complete, s.active, s.running)
}

func (c *cluster) jobState(name string) jobState {
	c.t.Helper()
	ctx, cancel := c.ctx()
	defer cancel()
	got, err := c.control(c.leader()).GetService(ctx, &pb.GetServiceRequest{Ref: name})
	if err != nil {
		return jobState{}
	}
	st := jobState{iteration: got.GetService().GetJobStatus().GetJobIteration(), complete: map[string]int{}}
	for _, t := range c.serviceTasks(name) {
		if t.GetJobIteration() != st.iteration {
			continue
		}
		key := fmt.Sprint(t.GetSlot())
		if t.GetSlot() == 0 {
			key = t.GetNodeId()
		}
		if t.GetStatus().GetState() == pb.TaskState_TASK_STATE_COMPLETE {
			st.complete[key]++
		}
		if t.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING {
			st.active++
		}
		if t.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING {
			st.running++
		}
	}
	return st
}

// waitJobDone waits until want slots (or nodes) of the current iteration
// have completed and nothing is left to run, and checks that none
// completed twice.
func (c *cluster) waitJobDone(name string, want int, timeout time.Duration) jobState {
	c.t.Helper()
	var st jobState
	c.eventually(timeout, fmt.Sprintf("job %s: %d completions", name, want), func() (bool, string) {
		st = c.jobState(name)
		return len(st.complete) == want && st.active == 0, st.String()
	})
	for k, n := range st.complete {
		if n != 1 {
			c.t.Fatalf("job %s: slot %s completed %d times: %v", name, k, n, st)
		}
	}
	return st
}

// runsIn counts the files in dir by the part of their name before the
// first '.' (the script names them SLOT.TASK or NODE.TASK).
func runsIn(t *testing.T, dir, prefix string) map[string]int {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, e := range entries {
		if rest, ok := strings.CutPrefix(e.Name(), prefix); ok {
			key, _, _ := strings.Cut(rest, ".")
			out[key]++
		}
	}
	return out
}

// TestReplicatedJobRunsToCompletion: 5 completions, 2 at a time, on three
// workers; every slot's first attempt fails and is retried in its slot;
// each slot completes exactly once, and `update --force` runs it all again.
func TestReplicatedJobRunsToCompletion(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(3)
	dir := t.TempDir()
	// The first attempt of a slot fails; the second records its
	// completion and exits 0.
	script := `s=$SHOAL_TASK_SLOT; if [ ! -e "$RUNS/tried-$s-$ITER" ]; then touch "$RUNS/tried-$s-$ITER"; exit 3; fi; ` +
		`touch "$RUNS/done-$ITER-$s.$SHOAL_TASK_ID"`
	spec := jobSpec("batch", dir, script, &pb.ReplicatedJob{TotalCompletions: 5, MaxConcurrent: 2})
	spec.Task.Container.Env = append(spec.Task.Container.Env, "ITER=1")
	svc := c.createService(spec)
	if svc.GetJobStatus().GetJobIteration() != 1 {
		t.Fatalf("a new job's iteration is %d, want 1", svc.GetJobStatus().GetJobIteration())
	}
	// Never more than two tasks at once, while it runs.
	seenMax := 0
	c.eventually(60*time.Second, "5 completions", func() (bool, string) {
		st := c.jobState("batch")
		seenMax = max(seenMax, st.active)
		if st.active > 2 {
			t.Fatalf("%d tasks active, max-concurrent is 2: %v", st.active, st)
		}
		return len(st.complete) == 5 && st.active == 0, st.String()
	})
	c.waitJobDone("batch", 5, 10*time.Second)
	if runs := runsIn(t, dir, "done-1-"); len(runs) != 5 {
		t.Fatalf("completions recorded by the tasks: %v, want slots 1..5 once each", runs)
	} else {
		for slot, n := range runs {
			if n != 1 {
				t.Fatalf("slot %s ran to completion %d times", slot, n)
			}
		}
	}
	// A failed attempt stays in ps as Failed, each completion as Complete.
	failedTasks := 0
	for _, tk := range c.serviceTasks("batch") {
		if tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_FAILED && tk.GetStatus().GetExitCode() == 3 {
			failedTasks++
		}
	}
	if failedTasks != 5 {
		t.Fatalf("want the 5 failed first attempts kept in the history, got %d", failedTasks)
	}

	// update --force: the next iteration runs every slot again.
	ctx, cancel := c.ctx()
	defer cancel()
	cl := c.control(c.leader())
	got, err := cl.GetService(ctx, &pb.GetServiceRequest{Ref: "batch"})
	if err != nil {
		t.Fatal(err)
	}
	next := proto.Clone(got.GetService().GetSpec()).(*pb.ServiceSpec)
	next.Task.ForceUpdate++
	next.Task.Container.Env = []string{"RUNS=" + dir, "ITER=2"}
	if _, err := cl.UpdateService(ctx, &pb.UpdateServiceRequest{Ref: "batch", Spec: next}); err != nil {
		t.Fatal(err)
	}
	st := c.waitJobDone("batch", 5, 60*time.Second)
	if st.iteration != 2 {
		t.Fatalf("after update --force the iteration is %d, want 2", st.iteration)
	}
	if runs := runsIn(t, dir, "done-2-"); len(runs) != 5 {
		t.Fatalf("second iteration completions: %v", runs)
	}
	if runs := runsIn(t, dir, "done-1-"); len(runs) != 5 {
		t.Fatalf("the first iteration ran again: %v", runs)
	}
	t.Logf("max active tasks seen: %d", seenMax)
}

// TestGlobalJobRunsOnEveryNode: one run per node, including a node that
// joins after the job finished on the others.
func TestGlobalJobRunsOnEveryNode(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(2)
	dir := t.TempDir()
	c.createService(jobSpec("everywhere", dir, `touch "$RUNS/node-$SHOAL_NODE_ID.$SHOAL_TASK_ID"`, &pb.GlobalJob{}))
	c.waitJobDone("everywhere", 2, 60*time.Second)
	c.addWorkers(1)
	st := c.waitJobDone("everywhere", 3, 60*time.Second)
	runs := runsIn(t, dir, "node-")
	for n, k := range runs {
		if k != 1 {
			t.Fatalf("node %s ran the job %d times", n, k)
		}
	}
	for _, w := range []string{"w1", "w2", "w3"} {
		if runs[nodeIDOf(c, w)] != 1 {
			t.Fatalf("node %s did not run the job once: runs %v, %v", w, runs, st)
		}
	}
}

// TestJobSurvivesLeaderAndWorkerLoss: the leader is stopped and a worker
// killed while a job runs; the new leader carries the job on, the lost
// worker's tasks are replaced in their slots, and every slot completes
// exactly once.
func TestJobSurvivesLeaderAndWorkerLoss(t *testing.T) {
	c := newCluster(t)
	c.addManagers(3)
	c.addWorkers(3)
	dir := t.TempDir()
	// Each run records its start, then takes a while, then its completion.
	script := `touch "$RUNS/start-$SHOAL_TASK_SLOT.$SHOAL_TASK_ID"; sleep 2; touch "$RUNS/done-$SHOAL_TASK_SLOT.$SHOAL_TASK_ID"`
	c.createService(jobSpec("long", dir, script, &pb.ReplicatedJob{TotalCompletions: 8, MaxConcurrent: 3}))
	// Wait for a first completion and three tasks running again.
	c.eventually(60*time.Second, "a completion and three tasks running", func() (bool, string) {
		st := c.jobState("long")
		return len(st.complete) >= 1 && st.running == 3, st.String()
	})
	c.stopManager(c.leader())
	// Kill a worker that runs a task of the job, while the task sleeps.
	victim := -1
	c.eventually(30*time.Second, "a worker running a task that just started", func() (bool, string) {
		for _, tk := range c.serviceTasks("long") {
			age := time.Since(time.Unix(0, tk.GetStatus().GetTimestamp()))
			if tk.GetStatus().GetState() != pb.TaskState_TASK_STATE_RUNNING || age > time.Second {
				continue
			}
			for i, w := range c.workers {
				if nodeIDOf(c, w.cfg.Hostname) == tk.GetNodeId() {
					victim = i
					return true, ""
				}
			}
		}
		return false, "no fresh running task"
	})
	// The agent first, so that it reports nothing of its tasks' end: the
	// managers learn of it only when the node misses its heartbeats.
	w := c.workers[victim]
	w.a.Close()
	w.a = nil
	killAll(w.runtime)
	t.Logf("killed worker %s", w.cfg.Hostname)
	c.waitJobDone("long", 8, 120*time.Second)
	done := runsIn(t, dir, "done-")
	if len(done) != 8 {
		t.Fatalf("completions recorded by the tasks: %v", done)
	}
	for slot, n := range done {
		if n != 1 {
			t.Fatalf("slot %s ran to completion %d times (runs started: %v)", slot, n, runsIn(t, dir, "start-"))
		}
	}
	lost := 0
	for _, tk := range c.serviceTasks("long") {
		if tk.GetStatus().GetNodeLost() {
			lost++
		}
	}
	if lost == 0 {
		t.Fatalf("no task was lost with the killed worker; the test did not exercise a replacement")
	}
	t.Logf("tasks lost with the worker: %d; runs started per slot: %v", lost, runsIn(t, dir, "start-"))
}
