package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/shoal-cluster/shoal/manager"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/process"
)

// Assignment to running: a manager and a worker run in this process
// (there is no service API yet, so tasks are assigned by writing the
// leader's store, as tests/harness_test.go does); the worker's process
// runtime starts each task through a supervisor, the shoal-supervise
// built beside shoal (as `shoal start` does). Times are read from the leader's
// store with a watch.
const (
	assignTaskWait  = 30 * time.Second
	assignStopGrace = time.Second
	assignSleep     = "30" // seconds the task's /bin/sleep runs
	assignSettle    = time.Second
)

func assignSamples(quick bool) int {
	if quick {
		return 8
	}
	return 20
}

func runAssign(ctx context.Context, e *env) (_ []series, err error) {
	port, err := e.freePortWithWorker()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(e.tmp, "assign")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "in-process.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	logger := slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var stopping time.Time // when the cleanup began: later ERROR lines are shutdown noise
	defer func() {
		if stopping.IsZero() {
			stopping = time.Now()
		}
		le := countErrors(logPath, stopping)
		if le.other > 0 {
			e.notef("assign: the in-process manager and worker logged %d unexpected ERROR lines while the benchmark ran; first: `%s`", le.other, le.first)
		}
		e.mu.Lock()
		e.stopErrors += le.atStop
		e.mu.Unlock()
	}()

	e.log.Info("starting in-process manager and worker", "port", port, "dir", dir)
	m, err := manager.Init(ctx, manager.Config{
		DataDir:         filepath.Join(dir, "m1"),
		Hostname:        "m1",
		AdvertiseIP:     managerIPs[0],
		APIPort:         port,
		Timing:          raftstore.TimingFromElection(e.opts.election),
		HeartbeatPeriod: time.Second,
		Logger:          logger.With("who", "m1"),
	})
	if err != nil {
		return nil, fmt.Errorf("manager.Init: %w", err)
	}
	defer m.Close()
	st := m.Store()

	var token string
	err = poll(ctx, 30*time.Second, 20*time.Millisecond, "the cluster object", func(context.Context) (bool, error) {
		if !m.IsLeader() {
			return false, errors.New("not leader yet")
		}
		st.View(func(tx *raftstore.Tx) {
			if c := tx.Cluster(); c != nil {
				token = c.GetJoinTokens().GetWorker()
			}
		})
		return token != "", nil
	})
	if err != nil {
		return nil, err
	}

	var rt *process.Runtime
	wdir := filepath.Join(dir, "w1")
	wlog := logger.With("who", "w1")
	wcfg := worker.Config{
		DataDir:     wdir,
		Hostname:    "w1",
		AdvertiseIP: workerIP,
		APIPort:     port,
		Logger:      wlog,
	}
	wcfg.Runtimes = func() ([]worker.Runtime, error) {
		r, err := process.New(process.Config{
			Dir:               filepath.Join(wdir, "worker", "process"),
			AdvertiseIP:       workerIP,
			SupervisorCommand: e.supervisorCommand(),
			Logger:            wlog,
		})
		if err != nil {
			return nil, err
		}
		rt = r
		return []worker.Runtime{r}, nil
	}
	a, err := worker.Join(ctx, wcfg, m.APIAddr(), token)
	if err != nil {
		return nil, fmt.Errorf("worker.Join: %w", err)
	}
	// Stop the agent first (it leaves its tasks running), then every task
	// the runtime holds, then the manager (deferred above).
	defer func() {
		stopping = time.Now()
		a.Close()
		if rt != nil {
			if n, kerr := removeAllTasks(rt); kerr != nil {
				e.notef("assign: cleaning up %d tasks: %v", n, kerr)
				if err == nil {
					err = kerr
				}
			}
		}
	}()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = a.WaitConnected(wctx)
	cancel()
	if err != nil {
		return nil, err
	}
	nodeID := a.ID()
	err = poll(ctx, 30*time.Second, 20*time.Millisecond, "the worker to be Ready", func(context.Context) (bool, error) {
		var n *pb.Node
		st.View(func(tx *raftstore.Tx) { n, _ = tx.Nodes().Get(nodeID) })
		return n.GetStatus().GetState() == pb.NodeState_NODE_STATE_READY, nil
	})
	if err != nil {
		return nil, err
	}
	if rt != nil {
		e.log.Info("process runtime", "isolation", rt.Isolation())
	}

	// Manager and worker share this process with the load generators of
	// earlier benchmarks: collect their garbage and let things settle.
	runtime.GC()
	if err := sleepCtx(ctx, assignSettle); err != nil {
		return nil, err
	}

	// One task first, not counted: the first supervisor exec pays for
	// cold caches.
	warm, wr, err := assignOne(ctx, st, nodeID)
	if err != nil {
		return nil, fmt.Errorf("warm-up task: %w", err)
	}
	if _, err := stopOne(ctx, st, warm, wr.pid); err != nil {
		return nil, fmt.Errorf("warm-up task: %w", err)
	}

	n := assignSamples(e.opts.quick)
	var toRunning, toFirst, toShutdown []float64
	var ids []string
	var pids []int
	for i := range n {
		id, r, err := assignOne(ctx, st, nodeID)
		if err != nil {
			return nil, fmt.Errorf("task %d: %w", i+1, err)
		}
		ids = append(ids, id)
		pids = append(pids, r.pid)
		toRunning = append(toRunning, ms(r.running))
		toFirst = append(toFirst, ms(r.first))
	}
	for i, id := range ids {
		d, err := stopOne(ctx, st, id, pids[i])
		if err != nil {
			return nil, fmt.Errorf("stop task %d: %w", i+1, err)
		}
		toShutdown = append(toShutdown, ms(d))
	}
	e.log.Info("assignment one at a time", "tasks", n, "median_to_running_ms", round1(medianOf(toRunning)), "median_to_shutdown_ms", round1(medianOf(toShutdown)))

	// All at once: n tasks in one transaction, then all stopped in one.
	batchRun, batchStop, err := assignBatch(ctx, st, nodeID, n)
	if err != nil {
		return nil, fmt.Errorf("batch of %d: %w", n, err)
	}
	e.log.Info("assignment in one transaction", "tasks", n, "all_running", batchRun.Round(time.Millisecond), "all_shutdown", batchStop.Round(time.Millisecond))

	return []series{
		{name: "assign → first worker status in store (process runtime)", unit: "ms", samples: toFirst},
		{name: "assign → RUNNING in store (process runtime, one task at a time)", unit: "ms", samples: toRunning},
		{name: "desired SHUTDOWN → SHUTDOWN in store (sleep, 1s grace)", unit: "ms", samples: toShutdown},
		{name: fmt.Sprintf("assign %d tasks in one transaction → all RUNNING", n), unit: "ms", samples: []float64{ms(batchRun)}},
		{name: fmt.Sprintf("desired SHUTDOWN for %d tasks in one transaction → all SHUTDOWN", n), unit: "ms", samples: []float64{ms(batchStop)}},
	}, nil
}

// newTasks makes n standalone tasks (no service: the orchestrator leaves
// them alone) already assigned to nodeID, running /bin/sleep with a short
// stop grace period.
func newTasks(nodeID string, n int) ([]*pb.Task, map[string]bool) {
	tasks := make([]*pb.Task, n)
	ids := map[string]bool{}
	for i := range tasks {
		tasks[i] = &pb.Task{
			Id:          raftstore.NewID(),
			ServiceName: "bench",
			Slot:        uint64(i + 1),
			NodeId:      nodeID,
			Spec: &pb.TaskSpec{
				Runtime: process.Name,
				Container: &pb.ContainerSpec{
					Image: "/bin/sleep", Args: []string{assignSleep}, StopGracePeriod: int64(assignStopGrace),
				},
			},
			DesiredState: pb.TaskState_TASK_STATE_RUNNING,
			Status:       &pb.TaskStatus{State: pb.TaskState_TASK_STATE_ASSIGNED, Timestamp: time.Now().UnixNano(), Message: "assigned by shoal-bench"},
		}
		ids[tasks[i].GetId()] = true
	}
	return tasks, ids
}

// createTasks writes tasks to the store in one transaction.
func createTasks(ctx context.Context, st *raftstore.Store, tasks []*pb.Task) error {
	_, err := st.Update(ctx, func(tx *raftstore.Tx) error {
		for _, t := range tasks {
			if err := tx.Tasks().Create(t); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("create %d tasks: %w", len(tasks), err)
	}
	return nil
}

type assignTimes struct {
	first   time.Duration // first status past ASSIGNED
	running time.Duration
	pid     int // the task's process, as reported with RUNNING
}

// assignOne creates one task and waits until the leader's store shows it
// RUNNING; the clock starts just before the write.
func assignOne(ctx context.Context, st *raftstore.Store, nodeID string) (string, assignTimes, error) {
	var r assignTimes
	tasks, want := newTasks(nodeID, 1)
	id := tasks[0].GetId()
	sub := st.Watch(taskFilter(want))
	defer sub.Close()
	t0 := time.Now()
	if err := createTasks(ctx, st, tasks); err != nil {
		return "", r, err
	}
	err := waitTasks(ctx, sub, want, func(s *pb.TaskStatus) (bool, error) {
		state := s.GetState()
		if state > pb.TaskState_TASK_STATE_ASSIGNED && r.first == 0 {
			r.first = time.Since(t0)
		}
		if state > pb.TaskState_TASK_STATE_RUNNING {
			return false, fmt.Errorf("task went %s before RUNNING: %s %s", state, s.GetMessage(), s.GetErr())
		}
		r.pid = int(s.GetPid())
		return state == pb.TaskState_TASK_STATE_RUNNING, nil
	})
	if err != nil {
		return "", r, fmt.Errorf("task %s: %w", id, err)
	}
	r.running = time.Since(t0)
	// Check (off the clock) that the reported process is the sleep.
	if cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", r.pid)); r.pid <= 0 || err != nil || !strings.Contains(string(cmd), "sleep") {
		return "", r, fmt.Errorf("task %s is RUNNING with pid %d, which is not a running sleep (%q, %v)", id, r.pid, cmd, err)
	}
	return id, r, nil
}

// stopOne sets a running task's desired state to SHUTDOWN and waits until
// the store shows it SHUTDOWN.
func stopOne(ctx context.Context, st *raftstore.Store, id string, pid int) (time.Duration, error) {
	want := map[string]bool{id: true}
	sub := st.Watch(taskFilter(want))
	defer sub.Close()
	t0 := time.Now()
	if err := setDesired(ctx, st, []string{id}, pb.TaskState_TASK_STATE_SHUTDOWN); err != nil {
		return 0, err
	}
	if err := waitTasks(ctx, sub, want, isShutdown); err != nil {
		return 0, fmt.Errorf("task %s: %w", id, err)
	}
	d := time.Since(t0)
	// Off the clock: the process must be gone (reaped by its supervisor).
	err := poll(ctx, 5*time.Second, 10*time.Millisecond, "the stopped task's process to exit", func(context.Context) (bool, error) {
		return !pidAlive(pid), nil
	})
	if err != nil {
		return 0, fmt.Errorf("task %s is SHUTDOWN: %w", id, err)
	}
	return d, nil
}

// assignBatch creates n tasks in one transaction and waits for all to
// run, then stops them all in one transaction and waits for all to be
// SHUTDOWN.
func assignBatch(ctx context.Context, st *raftstore.Store, nodeID string, n int) (run, stop time.Duration, err error) {
	tasks, want := newTasks(nodeID, n)
	var ids []string
	for _, t := range tasks {
		ids = append(ids, t.GetId())
	}
	sub := st.Watch(taskFilter(want))
	defer sub.Close()
	t0 := time.Now()
	if err := createTasks(ctx, st, tasks); err != nil {
		return 0, 0, err
	}
	err = waitTasks(ctx, sub, want, func(s *pb.TaskStatus) (bool, error) {
		if s.GetState() > pb.TaskState_TASK_STATE_RUNNING {
			return false, fmt.Errorf("a task went %s before RUNNING: %s %s", s.GetState(), s.GetMessage(), s.GetErr())
		}
		return s.GetState() == pb.TaskState_TASK_STATE_RUNNING, nil
	})
	if err != nil {
		return 0, 0, err
	}
	run = time.Since(t0)

	sub2 := st.Watch(taskFilter(want))
	defer sub2.Close()
	t0 = time.Now()
	if err := setDesired(ctx, st, ids, pb.TaskState_TASK_STATE_SHUTDOWN); err != nil {
		return 0, 0, err
	}
	if err := waitTasks(ctx, sub2, want, isShutdown); err != nil {
		return 0, 0, err
	}
	return run, time.Since(t0), nil
}

func isShutdown(s *pb.TaskStatus) (bool, error) {
	switch s.GetState() {
	case pb.TaskState_TASK_STATE_SHUTDOWN:
		return true, nil
	case pb.TaskState_TASK_STATE_FAILED, pb.TaskState_TASK_STATE_REJECTED, pb.TaskState_TASK_STATE_COMPLETE:
		return false, fmt.Errorf("task ended %s instead of SHUTDOWN: %s %s", s.GetState(), s.GetMessage(), s.GetErr())
	}
	return false, nil
}

func setDesired(ctx context.Context, st *raftstore.Store, ids []string, desired pb.TaskState) error {
	_, err := st.Update(ctx, func(tx *raftstore.Tx) error {
		for _, id := range ids {
			t, ok := tx.Tasks().Get(id)
			if !ok {
				return fmt.Errorf("task %s is gone", id)
			}
			t.DesiredState = desired
			if err := tx.Tasks().Update(t); err != nil {
				return err
			}
		}
		return nil
	})
	return err
}

func taskFilter(ids map[string]bool) func(raftstore.Event) bool {
	return func(ev raftstore.Event) bool {
		t, ok := ev.Object.(*pb.Task)
		return ok && ids[t.GetId()]
	}
}

// waitTasks reads task events until done has held for every task in want
// (events of other tasks are skipped).
func waitTasks(ctx context.Context, sub *raftstore.Subscription, want map[string]bool, done func(*pb.TaskStatus) (bool, error)) error {
	n := len(want)
	timer := time.NewTimer(assignTaskWait)
	defer timer.Stop()
	finished := map[string]bool{}
	last := map[string]pb.TaskState{}
	for len(finished) < n {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-timer.C:
			return fmt.Errorf("%d of %d tasks done after %s; last states seen: %v", len(finished), n, assignTaskWait, last)
		case ev, ok := <-sub.C():
			if !ok {
				return fmt.Errorf("watch ended: %v", sub.Err())
			}
			t := ev.Object.(*pb.Task)
			if !want[t.GetId()] {
				continue
			}
			if ev.Kind == raftstore.EventDelete {
				return fmt.Errorf("task %s was deleted (state %s, desired %s)", t.GetId(), t.GetStatus().GetState(), t.GetDesiredState())
			}
			if finished[t.GetId()] {
				continue
			}
			last[t.GetId()] = t.GetStatus().GetState()
			ok, err := done(t.GetStatus())
			if err != nil {
				return err
			}
			if ok {
				finished[t.GetId()] = true
			}
		}
	}
	return nil
}

// pidAlive reports whether a process runs (a zombie does not count).
func pidAlive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(data), ')')
	return i >= 0 && !strings.HasPrefix(strings.TrimSpace(string(data[i+1:])), "Z")
}

// removeAllTasks stops and removes every task a runtime holds, so that no
// task or supervisor outlives the benchmark.
func removeAllTasks(rt *process.Runtime) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	infos, err := rt.List(ctx)
	if err != nil {
		return 0, err
	}
	var errs []error
	for _, info := range infos {
		if err := rt.Stop(ctx, info.TaskID, 500*time.Millisecond); err != nil && !errors.Is(err, worker.ErrTaskNotFound) {
			errs = append(errs, err)
		}
		if err := rt.Remove(ctx, info.TaskID); err != nil {
			errs = append(errs, err)
		}
	}
	return len(infos), errors.Join(errs...)
}
