package autoscaler

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/clock"
	"github.com/shoal-cluster/shoal/internal/storetest"
	"github.com/shoal-cluster/shoal/manager/usage"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/protobuf/proto"
)

var discard = slog.New(slog.DiscardHandler)

// world is a store with one autoscaled service whose tasks all run and
// use load % of their reservation, as the samples say.
type world struct {
	t       *testing.T
	clock   *clock.Fake
	store   *raftstore.MemoryStore
	samples *usage.Table
	load    int64
}

func newWorld(t *testing.T, svc *pb.Service) *world {
	clk := clock.NewFake(epoch)
	w := &world{t: t, clock: clk, store: storetest.Memory(t, clk.Now), samples: usage.New(clk)}
	w.update(func(tx *raftstore.Tx) error { return tx.Services().Create(svc) })
	return w
}

func (w *world) update(fn func(tx *raftstore.Tx) error) {
	w.t.Helper()
	if _, err := w.store.Update(context.Background(), fn); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) replicas() uint64 {
	var n uint64
	w.store.View(func(tx *raftstore.Tx) { n = tx.Services().List()[0].GetSpec().GetReplicated().GetReplicas() })
	return n
}

// converge makes the tasks match the replicas (as the orchestrator and
// workers would) and has every one report the load.
func (w *world) converge() {
	w.t.Helper()
	n := w.replicas()
	var samples []*pb.TaskUsage
	w.update(func(tx *raftstore.Tx) error {
		tasks := tx.Tasks().Find(raftstore.IndexService, "s1")
		for _, t := range tasks {
			if t.GetSlot() > n {
				if err := tx.Tasks().Delete(t.GetId()); err != nil {
					return err
				}
			}
		}
		for slot := uint64(len(tasks)) + 1; slot <= n; slot++ {
			if err := tx.Tasks().Create(&pb.Task{Id: fmt.Sprintf("t%d", slot), ServiceId: "s1", ServiceName: "web", Slot: slot,
				DesiredState: pb.TaskState_TASK_STATE_RUNNING, NodeId: "node-a",
				Spec:   &pb.TaskSpec{Resources: &pb.ResourceRequirements{Reservations: &pb.Resources{NanoCpus: core / 2}}},
				Status: &pb.TaskStatus{State: pb.TaskState_TASK_STATE_RUNNING}}); err != nil {
				return err
			}
		}
		return nil
	})
	for slot := uint64(1); slot <= n; slot++ {
		samples = append(samples, &pb.TaskUsage{TaskId: fmt.Sprintf("t%d", slot), CpuWindow: int64(time.Second), CpuNanoCores: core / 2 * w.load / 100})
	}
	w.samples.Record("node-a", samples)
}

// TestAutoscalerLoop runs the loop on a fake clock through a load that
// rises, holds and stops, and a leader change in the middle of the
// scale-down window.
func TestAutoscalerLoop(t *testing.T) {
	svc := service(2, 2, 10)
	svc.Spec.Autoscale.SyncPeriod = int64(15 * time.Second)
	svc.Spec.Autoscale.DownscaleWindow = int64(60 * time.Second)
	w := newWorld(t, svc)
	a := New(w.store, w.samples, w.clock, 3*time.Second, discard)
	ctx := context.Background()

	steps := []struct {
		at   time.Duration // since the start
		load int64
		// failover starts a new autoscaler (a new leader) before the step.
		failover bool
		want     uint64
		reason   string
	}{
		{at: 0, load: 150, want: 2},                // first sight: the first decision is one period away
		{at: 14 * time.Second, load: 150, want: 2}, // not due yet
		{at: 15 * time.Second, load: 150, want: 6, reason: "average CPU 150% of the 50% target"}, // ceil(2 × 3), within max(100%, 4)
		{at: 30 * time.Second, load: 150, want: 10, reason: "capped at the maximum of 10"},       // 18 → limit 12 → max 10
		{at: 45 * time.Second, load: 50, want: 10},                                               // at target
		{at: 60 * time.Second, load: 5, want: 10},                                                // idle, held by the window (10 at 30s and 45s)
		{at: 75 * time.Second, load: 5, want: 10},
		{at: 90 * time.Second, load: 5, want: 10},                                     // 45s is still in the window
		{at: 105 * time.Second, load: 5, want: 2, reason: "kept at the minimum of 2"}, // only idle recommendations left in the window
		{at: 120 * time.Second, load: 150, want: 6},                                   // load again
		{at: 121 * time.Second, load: 5, failover: true, want: 6},                     // a new leader: the window restarts with 6
		{at: 136 * time.Second, load: 5, want: 6},
		{at: 166 * time.Second, load: 5, want: 6},
		{at: 181 * time.Second, load: 5, want: 2}, // a full window of the new leader's own idle figures
	}
	start := w.clock.Now()
	for _, s := range steps {
		w.clock.Advance(start.Add(s.at).Sub(w.clock.Now()))
		w.load = s.load
		w.converge()
		if s.failover {
			a = New(w.store, w.samples, w.clock, 3*time.Second, discard)
		}
		a.Step(ctx)
		if got := w.replicas(); got != s.want {
			t.Fatalf("at %s (load %d%%): replicas = %d, want %d", s.at, s.load, got, s.want)
		}
		if s.reason != "" {
			var st *pb.AutoscaleStatus
			w.store.View(func(tx *raftstore.Tx) { st = tx.Services().List()[0].GetAutoscaleStatus() })
			if !strings.Contains(st.GetReason(), s.reason) || st.GetToReplicas() != s.want || st.GetDecidedAt() != w.clock.Now().UnixNano() {
				t.Fatalf("at %s: status = %+v, want a decision to %d now with %q", s.at, st, s.want, s.reason)
			}
		}
	}
}

// TestAutoscalerLeavesChangedServices: a decision is not written over a
// change made since it was read, nor for a service no longer autoscaled.
func TestAutoscalerLeavesChangedServices(t *testing.T) {
	svc := service(2, 1, 10)
	svc.Spec.Autoscale.SyncPeriod = int64(time.Second)
	w := newWorld(t, svc)
	a := New(w.store, w.samples, w.clock, 3*time.Second, discard)
	ctx := context.Background()
	w.load = 200
	w.converge()
	a.Step(ctx)
	w.clock.Advance(time.Second)
	w.converge()
	// Autoscaling turned off: the loop forgets the service.
	w.update(func(tx *raftstore.Tx) error {
		s, _ := tx.Services().Get("s1")
		s = proto.Clone(s).(*pb.Service)
		s.Spec.Autoscale = nil
		return tx.Services().Update(s)
	})
	a.Step(ctx)
	if got := w.replicas(); got != 2 {
		t.Fatalf("replicas = %d after autoscaling was turned off, want 2", got)
	}
	if len(a.services) != 0 {
		t.Fatalf("the loop still tracks %d services", len(a.services))
	}
}
