package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/process"
	"google.golang.org/protobuf/proto"
)

// Autoscaling: a manager and a worker in this process (the process
// runtime, cgroups as root). First the sampling cost: rounds of reading
// the CPU and memory of every one of 100 running /bin/sleep tasks, as the
// worker does before each heartbeat. Then, per run, a service of CPU
// burners (0.1 CPU reserved and allowed each, target 50%, 1 to 4 tasks,
// Kubernetes' default windows) idles until its first task has figures;
// the load starts (a file the tasks test for appears) and the time to the
// first committed scale-up is measured, then the replicas are watched for
// two more sync periods: the peak may not pass the maximum.
const (
	autoscaleTasks   = 100
	autoscaleRounds  = 20
	autoscaleHi      = 4
	autoscaleTimeout = 90 * time.Second
)

func runAutoscale(ctx context.Context, e *env) (_ []series, err error) {
	// Debug: the autoscaler's every decision, holds included.
	p, err := e.startInProcessManager(ctx, "autoscale", slog.LevelDebug)
	if err != nil {
		return nil, err
	}
	defer p.close()
	m, dir, port, logger, token := p.m, p.dir, p.port, p.logger, p.token
	st := m.Store()
	var rt *process.Runtime
	wdir := filepath.Join(dir, "w1")
	wlog := logger.With("who", "w1")
	wcfg := worker.Config{DataDir: wdir, Hostname: "w1", AdvertiseIP: workerIP, APIPort: port, Logger: wlog}
	wcfg.Runtimes = func() ([]worker.Runtime, error) {
		r, err := process.New(process.Config{Dir: filepath.Join(wdir, "worker", "process"), AdvertiseIP: workerIP,
			SupervisorCommand: e.supervisorCommand(), Logger: wlog})
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
	defer func() {
		a.Close()
		if rt != nil {
			if n, kerr := removeAllTasks(rt); kerr != nil {
				e.notef("autoscale: cleaning up %d tasks: %v", n, kerr)
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
	if !rt.LimitsEnforced() {
		return nil, errors.New("autoscale: the process runtime has no cgroups here (run as root): tasks cannot be measured")
	}

	sampling, err := autoscaleSampling(ctx, rt)
	if err != nil {
		return nil, err
	}
	runs := 3
	if e.opts.quick {
		runs = 1
	}
	var firstUp, peaks []float64
	for i := range runs {
		up, peak, err := autoscaleRun(ctx, e, st, dir, i)
		if err != nil {
			return nil, fmt.Errorf("run %d: %w", i+1, err)
		}
		firstUp = append(firstUp, up.Seconds())
		peaks = append(peaks, float64(peak))
	}
	return []series{
		{name: fmt.Sprintf("sampling %d tasks (one heartbeat)", autoscaleTasks), unit: "ms", samples: sampling},
		{name: "load start → first committed scale-up (15s sync)", unit: "s", samples: firstUp},
		{name: fmt.Sprintf("peak replicas (max %d)", autoscaleHi), unit: "tasks", samples: peaks},
	}, nil
}

// autoscaleSampling starts 100 sleeping tasks straight through the runtime
// and times rounds of reading each one's figures.
func autoscaleSampling(ctx context.Context, rt *process.Runtime) ([]float64, error) {
	var ids []string
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		for _, id := range ids {
			_ = rt.Stop(cctx, id, 200*time.Millisecond)
			_ = rt.Remove(cctx, id)
		}
	}()
	for i := range autoscaleTasks {
		id := fmt.Sprintf("benchsample%014d", i)
		t := &pb.Task{Id: id, ServiceName: "sample", Slot: uint64(i + 1), Spec: &pb.TaskSpec{Runtime: "process",
			Container: &pb.ContainerSpec{Image: "/bin/sleep", Args: []string{"600"}},
			Resources: &pb.ResourceRequirements{Limits: &pb.Resources{MemoryBytes: 64 << 20}}}}
		if err := rt.Prepare(ctx, t, worker.TaskFiles{}); err != nil {
			return nil, fmt.Errorf("prepare sampling task %d: %w", i+1, err)
		}
		ids = append(ids, id)
		if err := rt.Start(ctx, id); err != nil {
			return nil, fmt.Errorf("start sampling task %d: %w", i+1, err)
		}
	}
	var out []float64
	for range autoscaleRounds {
		start := time.Now()
		for _, id := range ids {
			if _, err := rt.Usage(ctx, id); err != nil {
				return nil, fmt.Errorf("usage of %s: %w", id, err)
			}
		}
		out = append(out, ms(time.Since(start)))
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// autoscaleRun is one load start: the time to the first committed
// scale-up, and the peak replicas over two more sync periods.
func autoscaleRun(ctx context.Context, e *env, st raftstore.StateStore, dir string, i int) (time.Duration, uint64, error) {
	name := fmt.Sprintf("burn%d", i+1)
	flag := filepath.Join(dir, name+".load")
	tenth := &pb.Resources{NanoCpus: 1e8}
	spec := &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: name},
		Task: &pb.TaskSpec{Runtime: "process",
			Container: &pb.ContainerSpec{Image: "/bin/sh", StopGracePeriod: int64(500 * time.Millisecond),
				Args: []string{"-c", fmt.Sprintf("while :; do while [ -e %s ]; do :; done; sleep 0.2; done", flag)}},
			Resources: &pb.ResourceRequirements{Reservations: tenth, Limits: proto.Clone(tenth).(*pb.Resources)},
			Restart:   &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY}},
		Mode:      &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: 1}},
		Autoscale: &pb.AutoscaleSpec{TargetCpuPercent: 50, MinReplicas: 1, MaxReplicas: autoscaleHi},
		Update:    &pb.UpdateConfig{Parallelism: 1}, Rollback: &pb.UpdateConfig{Parallelism: 1}, Endpoint: &pb.EndpointSpec{},
	}
	var id string
	if _, err := st.Update(ctx, func(tx *raftstore.Tx) error {
		id = tx.NewID()
		return tx.Services().Create(&pb.Service{Id: id, Spec: spec, SpecVersion: 1})
	}); err != nil {
		return 0, 0, err
	}
	defer func() {
		_ = os.Remove(flag)
		_, _ = st.Update(context.Background(), func(tx *raftstore.Tx) error { return tx.Services().Delete(id) })
	}()
	replicas := func() uint64 {
		var n uint64
		st.View(func(tx *raftstore.Tx) {
			if s, ok := tx.Services().Get(id); ok {
				n = s.GetSpec().GetReplicated().GetReplicas()
			}
		})
		return n
	}
	// Idle until the task runs: the leader then has its figures within
	// two heartbeats.
	err := poll(ctx, 30*time.Second, 50*time.Millisecond, "the burner running", func(context.Context) (bool, error) {
		running := false
		st.View(func(tx *raftstore.Tx) {
			for _, t := range tx.Tasks().Find(raftstore.IndexService, id) {
				running = running || t.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING
			}
		})
		return running, nil
	})
	if err != nil {
		return 0, 0, err
	}
	if err := sleepCtx(ctx, 3*time.Second); err != nil {
		return 0, 0, err
	}
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		return 0, 0, err
	}
	start := time.Now()
	var up time.Duration
	peak := uint64(1)
	err = poll(ctx, autoscaleTimeout, 50*time.Millisecond, "the first scale-up", func(context.Context) (bool, error) {
		n := replicas()
		peak = max(peak, n)
		return n > 1, nil
	})
	if err != nil {
		return 0, 0, err
	}
	up = time.Since(start)
	watchUntil := time.Now().Add(30 * time.Second)
	for time.Now().Before(watchUntil) {
		peak = max(peak, replicas())
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return 0, 0, err
		}
	}
	e.log.Info("autoscale run", "service", name, "first_scale_up", up.Round(100*time.Millisecond), "peak", peak)
	return up, peak, nil
}
