package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-cluster/shoal/internal/clientcreds"
	"github.com/shoal-cluster/shoal/internal/rpc"
	"github.com/shoal-cluster/shoal/manager"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Service convergence: a manager runs in this process (manager.Init on
// 127.0.0.1) with simulated workers connected over real gRPC, as in the
// heartbeat-load benchmark, except that these workers act on their
// assignments: they report each task RUNNING (READY while its desired state
// is READY) or SHUTDOWN through Dispatcher.UpdateTaskStatus, in batches,
// without executing anything. A service is then created, scaled and
// updated through the Control API and ListServices is polled until the
// cluster has done it.
const (
	cvWorkers     = 100
	cvReplicas    = 1000
	cvScaled      = 2000
	cvParallelism = 100
	cvPoll        = 50 * time.Millisecond
	cvWait        = 3 * time.Minute // per phase
	cvHeartbeat   = time.Second
	cvStatusBatch = 500 // most updates per UpdateTaskStatus call
	cvCallTimeout = 20 * time.Second
)

// cvResources is what each simulated worker describes: 1,000 tasks without
// reservations fit anywhere; the figures only have to be plausible.
var cvResources = &pb.Resources{NanoCpus: 4e9, MemoryBytes: 8 << 30}

func convergeRuns(quick bool) int {
	if quick {
		return 1
	}
	return 3
}

type convergeResult struct {
	create, scale, update time.Duration
	// heap in use after a GC and process RSS: with the fleet connected and
	// no service, at 1,000 and 2,000 running tasks, and after the update
	// (2,000 running plus 2,000 ended tasks kept as history).
	heap, rss [4]float64
	calls     int64 // UpdateTaskStatus calls
	updates   int64 // task status updates in them
}

func runConverge(ctx context.Context, e *env) ([]series, error) {
	var rs []*convergeResult
	for run := 1; run <= convergeRuns(e.opts.quick); run++ {
		r, err := convergeOnce(ctx, e, run)
		if err != nil {
			return nil, fmt.Errorf("run %d: %w", run, err)
		}
		rs = append(rs, r)
	}
	col := func(f func(r *convergeResult) float64) []float64 {
		out := make([]float64, len(rs))
		for i, r := range rs {
			out[i] = f(r)
		}
		return out
	}
	out := []series{
		{name: fmt.Sprintf("converge: create %d replicas → %d running (%d simulated workers)", cvReplicas, cvReplicas, cvWorkers), unit: "ms",
			samples: col(func(r *convergeResult) float64 { return ms(r.create) })},
		{name: fmt.Sprintf("converge: scale %d → %d → %d running", cvReplicas, cvScaled, cvScaled), unit: "ms",
			samples: col(func(r *convergeResult) float64 { return ms(r.scale) })},
		{name: fmt.Sprintf("converge: rolling update of %d tasks (parallelism %d, monitor 0) → completed", cvScaled, cvParallelism), unit: "ms",
			samples: col(func(r *convergeResult) float64 { return ms(r.update) })},
	}
	labels := []string{"no service", fmt.Sprintf("%d tasks", cvReplicas), fmt.Sprintf("%d tasks", cvScaled), fmt.Sprintf("%d tasks + %d in history", cvScaled, cvScaled)}
	for i, l := range labels {
		out = append(out, series{name: "converge: manager memory, Go heap in use after GC, " + l, unit: "MiB",
			samples: col(func(r *convergeResult) float64 { return r.heap[i] })})
	}
	for i, l := range labels {
		if i < 3 {
			out = append(out, series{name: "converge: manager memory, process RSS, " + l, unit: "MiB",
				samples: col(func(r *convergeResult) float64 { return r.rss[i] })})
		}
	}
	return out, nil
}

// convergeOnce starts a manager and the simulated fleet, creates, scales and
// updates one service, and stops everything again.
func convergeOnce(ctx context.Context, e *env, run int) (_ *convergeResult, err error) {
	port, err := e.freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(e.tmp, "converge", "run"+strconv.Itoa(run))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "manager.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	var stopping time.Time
	defer func() {
		if stopping.IsZero() {
			stopping = time.Now()
		}
		le := countErrors(logPath, stopping)
		if le.other > 0 {
			e.notef("converge run %d: the in-process manager logged %d unexpected ERROR lines; first: `%s`", run, le.other, le.first)
		}
		e.mu.Lock()
		e.stopErrors += le.atStop
		e.mu.Unlock()
	}()
	logger := slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelInfo}))

	e.log.Info("starting in-process manager and simulated workers", "run", run, "port", port, "workers", cvWorkers, "dir", dir)
	m, err := manager.Init(ctx, manager.Config{
		DataDir:         filepath.Join(dir, "m1"),
		Hostname:        "m1",
		AdvertiseIP:     managerIPs[0],
		APIPort:         port,
		Timing:          raftstore.TimingFromElection(e.opts.election),
		HeartbeatPeriod: cvHeartbeat,
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

	fleet, err := newSimFleet(ctx, m.APIAddr(), token)
	if err != nil {
		return nil, err
	}
	stats := &actorStats{}
	fleet.resources = cvResources
	fleet.actor = func(w *simWorker, client pb.DispatcherClient, sessionID string) func(*pb.SessionMessage) {
		return newSimActor(fleet, stats, w, client, sessionID).handle
	}
	defer func() {
		stopping = time.Now()
		fleet.close()
	}()
	t0 := time.Now()
	if err := fleet.grow(ctx, cvWorkers); err != nil {
		return nil, err
	}
	admin, err := clientcreds.Admin(filepath.Join(dir, "m1"))
	if err != nil {
		return nil, err
	}
	conn, err := rpc.Dial(m.APIAddr(), admin, grpc.WithUnaryInterceptor(rpc.RetryUnavailable()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := fleet.checkReady(ctx, conn); err != nil {
		return nil, err
	}
	e.log.Info("simulated workers connected", "workers", cvWorkers, "took", time.Since(t0).Round(time.Millisecond))
	cl := pb.NewControlClient(conn)
	r := &convergeResult{}
	r.heap[0], r.rss[0] = memNow()

	// Create: 1,000 replicas of a process task nobody executes.
	name := "converge"
	spec := &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: name},
		Task: &pb.TaskSpec{
			Runtime:   "process",
			Container: &pb.ContainerSpec{Image: "/bin/true", Env: []string{"BENCH_ROUND=1"}},
		},
		Mode:   &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: cvReplicas}},
		Update: &pb.UpdateConfig{Parallelism: cvParallelism, Monitor: 0},
	}
	t0 = time.Now()
	cctx, cancel := context.WithTimeout(ctx, cvCallTimeout)
	created, err := cl.CreateService(cctx, &pb.CreateServiceRequest{Spec: spec})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("CreateService: %w", err)
	}
	id := created.GetService().GetId()
	if err := waitRunning(ctx, cl, fleet, id, cvReplicas); err != nil {
		return nil, fmt.Errorf("create: %w", err)
	}
	r.create = time.Since(t0)
	r.heap[1], r.rss[1] = memNow()
	e.log.Info("service converged", "run", run, "replicas", cvReplicas, "took", r.create.Round(time.Millisecond))

	// Scale to 2,000.
	svc, err := getService(ctx, cl, id)
	if err != nil {
		return nil, err
	}
	next := proto.Clone(svc.GetSpec()).(*pb.ServiceSpec)
	next.GetReplicated().Replicas = cvScaled
	t0 = time.Now()
	if err := updateService(ctx, cl, svc, next); err != nil {
		return nil, fmt.Errorf("scale: %w", err)
	}
	if err := waitRunning(ctx, cl, fleet, id, cvScaled); err != nil {
		return nil, fmt.Errorf("scale: %w", err)
	}
	r.scale = time.Since(t0)
	r.heap[2], r.rss[2] = memNow()
	e.log.Info("service scaled", "run", run, "replicas", cvScaled, "took", r.scale.Round(time.Millisecond))
	if err := checkSpread(ctx, e, cl, id, run, "after scaling"); err != nil {
		return nil, err
	}

	// Rolling update: a new environment, 100 tasks at a time, no monitor.
	svc, err = getService(ctx, cl, id)
	if err != nil {
		return nil, err
	}
	next = proto.Clone(svc.GetSpec()).(*pb.ServiceSpec)
	next.Task.Container.Env = []string{"BENCH_ROUND=2"}
	next.Update = &pb.UpdateConfig{Parallelism: cvParallelism, Monitor: 0}
	t0 = time.Now()
	if err := updateService(ctx, cl, svc, next); err != nil {
		return nil, fmt.Errorf("update: %w", err)
	}
	if err := waitUpdated(ctx, cl, fleet, id, svc.GetSpecVersion()+1, cvScaled); err != nil {
		return nil, fmt.Errorf("rolling update: %w", err)
	}
	r.update = time.Since(t0)
	r.heap[3], r.rss[3] = memNow()
	r.calls, r.updates = stats.calls.Load(), stats.updates.Load()
	e.log.Info("rolling update completed", "run", run, "tasks", cvScaled, "took", r.update.Round(time.Millisecond),
		"heap_mib", fmt.Sprintf("%.1f/%.1f/%.1f/%.1f", r.heap[0], r.heap[1], r.heap[2], r.heap[3]),
		"status_calls", r.calls, "status_updates", r.updates)
	if err := checkSpread(ctx, e, cl, id, run, "after the rolling update"); err != nil {
		return nil, err
	}
	if f := fleet.failureCount(); f > 0 {
		return nil, fmt.Errorf("%d simulated worker failures: %s", f, fleet.failureSummary())
	}
	if m.Err() != nil {
		return nil, fmt.Errorf("manager stopped: %w", m.Err())
	}
	return r, nil
}

// memNow is the Go heap in use after a collection and the process RSS
// once the freed memory went back to the OS, in MiB.
func memNow() (heap, rss float64) {
	debug.FreeOSMemory() // collects too
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	kb, _ := procStatusKB("VmRSS:")
	return float64(ms.HeapInuse) / (1 << 20), float64(kb) / 1024
}

func getService(ctx context.Context, cl pb.ControlClient, id string) (*pb.Service, error) {
	cctx, cancel := context.WithTimeout(ctx, cvCallTimeout)
	defer cancel()
	resp, err := cl.GetService(cctx, &pb.GetServiceRequest{Ref: id})
	if err != nil {
		return nil, fmt.Errorf("GetService: %w", err)
	}
	return resp.GetService(), nil
}

func updateService(ctx context.Context, cl pb.ControlClient, svc *pb.Service, spec *pb.ServiceSpec) error {
	cctx, cancel := context.WithTimeout(ctx, cvCallTimeout)
	defer cancel()
	_, err := cl.UpdateService(cctx, &pb.UpdateServiceRequest{Ref: svc.GetId(), Version: svc.GetMeta().GetVersion(), Spec: spec})
	if err != nil {
		return fmt.Errorf("UpdateService: %w", err)
	}
	return nil
}

// serviceCounts reads a service's counts from ListServices.
func serviceCounts(ctx context.Context, cl pb.ControlClient, id string) (*pb.ServiceTaskCounts, error) {
	resp, err := cl.ListServices(ctx, &pb.ListServicesRequest{})
	if err != nil {
		return nil, fmt.Errorf("ListServices: %w", err)
	}
	for _, c := range resp.GetCounts() {
		if c.GetServiceId() == id {
			return c, nil
		}
	}
	return nil, fmt.Errorf("ListServices has no counts for service %s", id)
}

// waitRunning polls ListServices until the service counts want running
// tasks.
func waitRunning(ctx context.Context, cl pb.ControlClient, fleet *simFleet, id string, want uint64) error {
	var last string
	return poll(ctx, cvWait, cvPoll, fmt.Sprintf("%d running tasks", want), func(ctx context.Context) (bool, error) {
		if f := fleet.failureCount(); f > 0 {
			return false, fatal(fmt.Errorf("simulated workers failed: %s", fleet.failureSummary()))
		}
		c, err := serviceCounts(ctx, cl, id)
		if err != nil {
			return false, err
		}
		last = fmt.Sprintf("%d of %d running", c.GetRunning(), c.GetDesired())
		if c.GetRunning() == want && c.GetDesired() == want {
			return true, nil
		}
		return false, errors.New(last)
	})
}

// waitUpdated polls until the service's update is COMPLETED on spec
// version v and ListServices counts want running tasks, then checks with
// ListTasks that every active task is on version v and running.
func waitUpdated(ctx context.Context, cl pb.ControlClient, fleet *simFleet, id string, v uint64, want uint64) error {
	return poll(ctx, cvWait, cvPoll, "the rolling update to complete", func(ctx context.Context) (bool, error) {
		if f := fleet.failureCount(); f > 0 {
			return false, fatal(fmt.Errorf("simulated workers failed: %s", fleet.failureSummary()))
		}
		resp, err := cl.GetService(ctx, &pb.GetServiceRequest{Ref: id})
		if err != nil {
			return false, err
		}
		svc := resp.GetService()
		us := svc.GetUpdateStatus()
		switch us.GetState() {
		case pb.UpdateState_UPDATE_STATE_COMPLETED:
		case pb.UpdateState_UPDATE_STATE_UPDATING:
			return false, fmt.Errorf("update %s: %s", us.GetState(), us.GetMessage())
		default:
			return false, fatal(fmt.Errorf("update went %s: %s", us.GetState(), us.GetMessage()))
		}
		if svc.GetSpecVersion() != v {
			return false, fatal(fmt.Errorf("service is on spec version %d, expected %d", svc.GetSpecVersion(), v))
		}
		c, err := serviceCounts(ctx, cl, id)
		if err != nil {
			return false, err
		}
		if c.GetRunning() != want {
			return false, fmt.Errorf("update completed, %d of %d running", c.GetRunning(), want)
		}
		tr, err := cl.ListTasks(ctx, &pb.ListTasksRequest{ServiceRef: id, RunningOnly: true})
		if err != nil {
			return false, fmt.Errorf("ListTasks: %w", err)
		}
		onV := uint64(0)
		for _, t := range tr.GetTasks() {
			if t.GetSpecVersion() != v || t.GetStatus().GetState() != pb.TaskState_TASK_STATE_RUNNING {
				return false, fmt.Errorf("update completed, but task %s (slot %d) is on spec version %d, %s", t.GetId(), t.GetSlot(), t.GetSpecVersion(), t.GetStatus().GetState())
			}
			onV++
		}
		if onV != want {
			return false, fmt.Errorf("update completed, %d active tasks on version %d, want %d", onV, v, want)
		}
		return true, nil
	})
}

// actorStats counts what the simulated workers reported.
type actorStats struct {
	calls, updates atomic.Int64
}

// simActor is one simulated worker's task handling: it turns assignments
// into status reports and sends them in batches from one goroutine.
type simActor struct {
	f         *simFleet
	stats     *actorStats
	w         *simWorker
	client    pb.DispatcherClient
	sessionID string

	mu       sync.Mutex
	reported map[string]pb.TaskState // highest state reported per task
	queue    map[string]*pb.TaskStatus
	poke     chan struct{}
}

func newSimActor(f *simFleet, stats *actorStats, w *simWorker, client pb.DispatcherClient, sessionID string) *simActor {
	a := &simActor{f: f, stats: stats, w: w, client: client, sessionID: sessionID,
		reported: map[string]pb.TaskState{}, queue: map[string]*pb.TaskStatus{}, poke: make(chan struct{}, 1)}
	f.wg.Add(1)
	go a.send()
	return a
}

// handle reads one session message.
func (a *simActor) handle(msg *pb.SessionMessage) {
	as := msg.GetAssignments()
	if as == nil {
		return
	}
	a.mu.Lock()
	if as.GetType() == pb.AssignmentsType_ASSIGNMENTS_TYPE_COMPLETE {
		keep := map[string]bool{}
		for _, t := range as.GetUpdated() {
			keep[t.GetId()] = true
		}
		for id := range a.reported {
			if !keep[id] {
				delete(a.reported, id)
				delete(a.queue, id)
			}
		}
	}
	for _, id := range as.GetRemoved() {
		delete(a.reported, id)
		delete(a.queue, id)
	}
	n := 0
	for _, t := range as.GetUpdated() {
		if a.consider(t) {
			n++
		}
	}
	a.mu.Unlock()
	if n > 0 {
		select {
		case a.poke <- struct{}{}:
		default:
		}
	}
}

// consider queues the status a task should be reported in, if it moves
// forward: SHUTDOWN when told to stop, READY while the desired state is
// READY, else RUNNING. a.mu is held.
func (a *simActor) consider(t *pb.Task) bool {
	id := t.GetId()
	cur := max(t.GetStatus().GetState(), a.reported[id])
	desired := t.GetDesiredState()
	var next pb.TaskState
	switch {
	case cur >= pb.TaskState_TASK_STATE_COMPLETE:
		return false
	case desired >= pb.TaskState_TASK_STATE_SHUTDOWN:
		next = pb.TaskState_TASK_STATE_SHUTDOWN
	case desired >= pb.TaskState_TASK_STATE_RUNNING && cur < pb.TaskState_TASK_STATE_RUNNING:
		next = pb.TaskState_TASK_STATE_RUNNING
	case desired == pb.TaskState_TASK_STATE_READY && cur < pb.TaskState_TASK_STATE_READY:
		next = pb.TaskState_TASK_STATE_READY
	default:
		return false
	}
	a.reported[id] = next
	a.queue[id] = &pb.TaskStatus{Timestamp: time.Now().UnixNano(), State: next, Message: "simulated by shoal-bench"}
	return true
}

// send reports queued statuses, up to cvStatusBatch per call, until the
// fleet closes. A failed call is counted and its updates queued again
// unless newer ones replaced them.
func (a *simActor) send() {
	defer a.f.wg.Done()
	for {
		select {
		case <-a.f.ctx.Done():
			return
		case <-a.poke:
		}
		for {
			a.mu.Lock()
			var ups []*pb.TaskStatusUpdate
			for id, s := range a.queue {
				ups = append(ups, &pb.TaskStatusUpdate{TaskId: id, Status: s})
				delete(a.queue, id)
				if len(ups) == cvStatusBatch {
					break
				}
			}
			a.mu.Unlock()
			if len(ups) == 0 {
				break
			}
			ctx, cancel := context.WithTimeout(a.f.ctx, cvCallTimeout)
			_, err := a.client.UpdateTaskStatus(ctx, &pb.UpdateTaskStatusRequest{SessionId: a.sessionID, NodeId: a.w.id, Updates: ups})
			cancel()
			if err != nil {
				if a.f.ctx.Err() != nil {
					return
				}
				a.f.fail("UpdateTaskStatus", err)
				a.mu.Lock()
				for _, u := range ups {
					if _, newer := a.queue[u.GetTaskId()]; !newer {
						a.queue[u.GetTaskId()] = u.GetStatus()
					}
				}
				a.mu.Unlock()
				if sleepCtx(a.f.ctx, 100*time.Millisecond) != nil {
					return
				}
				continue
			}
			a.stats.calls.Add(1)
			a.stats.updates.Add(int64(len(ups)))
		}
	}
}

// checkSpread (off the clock) counts the service's running tasks per node:
// the scheduler spreads a service's tasks, so every simulated worker
// should hold cvScaled/cvWorkers of them. An uneven spread is noted.
func checkSpread(ctx context.Context, e *env, cl pb.ControlClient, id string, run int, when string) error {
	cctx, cancel := context.WithTimeout(ctx, cvCallTimeout)
	defer cancel()
	resp, err := cl.ListTasks(cctx, &pb.ListTasksRequest{ServiceRef: id, RunningOnly: true})
	if err != nil {
		return fmt.Errorf("ListTasks: %w", err)
	}
	per := map[string]int{}
	for _, t := range resp.GetTasks() {
		if t.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING {
			per[t.GetNodeId()]++
		}
	}
	lo, hi := -1, 0
	for _, n := range per {
		if lo < 0 || n < lo {
			lo = n
		}
		hi = max(hi, n)
	}
	if len(per) < cvWorkers {
		lo = 0
	}
	e.log.Debug("spread", "run", run, "when", when, "nodes", len(per), "min", lo, "max", hi)
	if hi-lo > 1 {
		e.notef("converge run %d: %s the %d running tasks were spread unevenly over the %d workers: %d to %d per node", run, when, cvScaled, cvWorkers, lo, hi)
	}
	return nil
}
