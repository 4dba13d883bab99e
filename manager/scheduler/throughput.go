package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/shoal-cluster/shoal/internal/clock"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

// Throughput measures the scheduler end to end: it opens a real
// single-manager store (Raft on 127.0.0.1, in a temporary directory that
// is removed afterwards), creates nodes simulated Ready nodes, starts the
// scheduler, then creates tasks PENDING tasks in transactions of 1,000
// (100 tasks per service, each reserving 0.01 CPU and 16 MiB, with a
// platform constraint) while the scheduler runs. It returns the tasks
// assigned per second of wall clock, from the first task created until the
// last one is ASSIGNED, Raft commits included.
func Throughput(tasks, nodes int) (placedPerSec float64, err error) {
	if tasks <= 0 || nodes <= 0 {
		return 0, errors.New("throughput: tasks and nodes must be positive")
	}
	dir, err := os.MkdirTemp("", "shoal-scheduler-throughput-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	log := slog.New(slog.DiscardHandler)
	st, err := openBenchStore(dir, log)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	if err := st.Bootstrap(); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := waitLeader(ctx, st); err != nil {
		return 0, err
	}
	if err := createBenchNodes(ctx, st, nodes); err != nil {
		return 0, err
	}

	assigned := st.Watch(func(ev raftstore.Event) bool {
		t, ok := ev.Object.(*pb.Task)
		old, _ := ev.Old.(*pb.Task)
		return ok && ev.Kind == raftstore.EventUpdate && old.GetStatus().GetState() == pb.TaskState_TASK_STATE_PENDING &&
			t.GetStatus().GetState() == pb.TaskState_TASK_STATE_ASSIGNED
	})
	defer assigned.Close()

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		New(st, clock.Real(), log).Run(ctx)
	}()

	start := time.Now()
	created := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		created <- createBenchTasks(ctx, st, tasks, 1000)
	}()
	for n := 0; n < tasks; {
		select {
		case _, ok := <-assigned.C():
			if !ok {
				return 0, fmt.Errorf("throughput: watch ended: %v", assigned.Err())
			}
			n++
		case err := <-created:
			if err != nil {
				return 0, fmt.Errorf("throughput: create tasks: %w", err)
			}
			created = nil
		case <-ctx.Done():
			return 0, fmt.Errorf("throughput: timed out with %d of %d tasks assigned", n, tasks)
		}
	}
	elapsed := time.Since(start)
	return float64(tasks) / elapsed.Seconds(), nil
}

// openBenchStore opens a store on a free 127.0.0.1 port.
func openBenchStore(dir string, log *slog.Logger) (*raftstore.Store, error) {
	for attempt := 0; ; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		addr := ln.Addr().String()
		ln.Close()
		st, err := raftstore.Open(raftstore.Config{ID: "bench", Dir: dir, BindAddr: addr, Logger: log})
		if err == nil {
			return st, nil
		}
		if attempt >= 20 || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, err
		}
	}
}

func waitLeader(ctx context.Context, st *raftstore.Store) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !st.IsLeader() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("store did not become leader: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// benchNode is a Ready worker with a process runtime, 64 CPUs and 256 GiB,
// in one of three zones.
func benchNode(i int) *pb.Node {
	return &pb.Node{
		Id:   fmt.Sprintf("node-%05d", i),
		Role: pb.NodeRole_NODE_ROLE_WORKER,
		Spec: &pb.NodeSpec{
			Annotations: &pb.Annotations{Labels: map[string]string{"zone": string(rune('a' + i%3))}},
			DesiredRole: pb.NodeRole_NODE_ROLE_WORKER,
		},
		Description: &pb.NodeDescription{
			Hostname:  fmt.Sprintf("host-%05d", i),
			Os:        "linux",
			Arch:      "amd64",
			Runtimes:  []string{"process"},
			Resources: &pb.Resources{NanoCpus: 64e9, MemoryBytes: 256 << 30},
		},
		Status: &pb.NodeStatus{State: pb.NodeState_NODE_STATE_READY},
	}
}

// benchTask is a pending replicated task of service svc.
func benchTask(id string, svc int, slot uint64) *pb.Task {
	return &pb.Task{
		Id:          id,
		ServiceId:   fmt.Sprintf("svc-%05d", svc),
		ServiceName: fmt.Sprintf("web%d", svc),
		Slot:        slot,
		Spec: &pb.TaskSpec{
			Runtime:   "process",
			Container: &pb.ContainerSpec{Image: "/bin/sleep", Args: []string{"3600"}},
			Resources: &pb.ResourceRequirements{Reservations: &pb.Resources{NanoCpus: 1e7, MemoryBytes: 16 << 20}},
			Placement: &pb.Placement{Constraints: []string{"node.platform.os==linux"}},
		},
		SpecVersion:  1,
		DesiredState: pb.TaskState_TASK_STATE_RUNNING,
		Status:       &pb.TaskStatus{State: pb.TaskState_TASK_STATE_PENDING, Message: "pending", Timestamp: time.Now().UnixNano()},
	}
}

func createBenchNodes(ctx context.Context, st *raftstore.Store, n int) error {
	for i := 0; i < n; {
		end := min(i+500, n)
		if _, err := st.Update(ctx, func(tx *raftstore.Tx) error {
			for j := i; j < end; j++ {
				if err := tx.Nodes().Create(benchNode(j)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return fmt.Errorf("create nodes: %w", err)
		}
		i = end
	}
	return nil
}

// createBenchTasks creates n pending tasks, 100 per service, batch per
// transaction.
func createBenchTasks(ctx context.Context, st *raftstore.Store, n, batch int) error {
	for i := 0; i < n; {
		end := min(i+batch, n)
		if _, err := st.Update(ctx, func(tx *raftstore.Tx) error {
			for j := i; j < end; j++ {
				if err := tx.Tasks().Create(benchTask(tx.NewID(), j/100, uint64(j%100+1))); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
		i = end
	}
	return nil
}
