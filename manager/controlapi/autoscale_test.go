package controlapi

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/storetest"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/protobuf/proto"
)

func autoscaleTestSpec(replicas uint64, reserve int64, as *pb.AutoscaleSpec) *pb.ServiceSpec {
	spec := jobTestSpec("web", &pb.ReplicatedService{Replicas: replicas})
	if reserve > 0 {
		spec.Task.Resources = &pb.ResourceRequirements{Reservations: &pb.Resources{NanoCpus: reserve}}
	}
	spec.Autoscale = as
	return spec
}

// TestAutoscaleSpecs: create checks an autoscaler and starts within its
// bounds; updates keep the autoscaler's replicas, clamp them to new
// bounds, and refuse a manual scale with how to change the bounds; a
// refusal changes nothing.
func TestAutoscaleSpecs(t *testing.T) {
	as := func(lo, hi uint64) *pb.AutoscaleSpec {
		return &pb.AutoscaleSpec{TargetCpuPercent: 70, MinReplicas: lo, MaxReplicas: hi}
	}
	cases := []struct {
		name          string
		create        *pb.ServiceSpec
		wantCreateErr string
		wantReplicas  uint64 // after create
		update        func(*pb.ServiceSpec)
		rollback      bool
		wantErr       string
		wantAfter     uint64 // replicas after the update
	}{
		{name: "no reservation", create: autoscaleTestSpec(2, 0, as(1, 5)), wantCreateErr: "without a CPU reservation to measure it against: add --reserve-cpu"},
		{name: "global service", create: func() *pb.ServiceSpec {
			s := autoscaleTestSpec(2, 5e8, as(1, 5))
			s.Mode = &pb.ServiceSpec_Global{Global: &pb.GlobalService{}}
			return s
		}(), wantCreateErr: "only replicated services can be autoscaled"},
		{name: "max below min", create: autoscaleTestSpec(2, 5e8, as(4, 3)), wantCreateErr: "below --autoscale-min"},
		{name: "no target", create: autoscaleTestSpec(2, 5e8, &pb.AutoscaleSpec{MinReplicas: 1, MaxReplicas: 3}), wantCreateErr: "use a target from 1%"},
		{name: "starts at min", create: autoscaleTestSpec(1, 5e8, as(2, 5)), wantReplicas: 2,
			update: func(s *pb.ServiceSpec) { s.Task.Container.Env = []string{"A=1"} }, wantAfter: 2},
		{name: "manual scale refused", create: autoscaleTestSpec(3, 5e8, as(2, 5)), wantReplicas: 3,
			update:  func(s *pb.ServiceSpec) { s.GetReplicated().Replicas = 4 },
			wantErr: "service web is autoscaled (CPU 70% of its reservation, 2 to 5 tasks): change its bounds with `shoal service update --autoscale-min N --autoscale-max M web`"},
		{name: "lower max clamps", create: autoscaleTestSpec(4, 5e8, as(2, 5)), wantReplicas: 4,
			update: func(s *pb.ServiceSpec) { s.Autoscale.MaxReplicas = 3 }, wantAfter: 3},
		{name: "turned off keeps the replicas", create: autoscaleTestSpec(4, 5e8, as(2, 5)), wantReplicas: 4,
			update: func(s *pb.ServiceSpec) { s.Autoscale = nil }, wantAfter: 4},
		{name: "reservation dropped refused", create: autoscaleTestSpec(4, 5e8, as(2, 5)), wantReplicas: 4,
			update: func(s *pb.ServiceSpec) { s.Task.Resources = nil }, wantErr: "add --reserve-cpu"},
		{name: "rollback keeps the autoscaler's replicas", create: autoscaleTestSpec(4, 5e8, as(2, 5)), wantReplicas: 4,
			update: func(s *pb.ServiceSpec) { s.Task.Container.Env = []string{"A=1"} }, rollback: true, wantAfter: 5},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := New(Config{Store: storetest.Memory(t, time.Now), Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
			created, err := s.CreateService(ctx, &pb.CreateServiceRequest{Spec: tc.create})
			if tc.wantCreateErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantCreateErr) {
					t.Fatalf("create: %v, want %q", err, tc.wantCreateErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			svc := created.GetService()
			if got := svc.GetSpec().GetReplicated().GetReplicas(); got != tc.wantReplicas {
				t.Fatalf("replicas after create %d, want %d", got, tc.wantReplicas)
			}
			next := proto.Clone(svc.GetSpec()).(*pb.ServiceSpec)
			tc.update(next)
			updated, err := s.UpdateService(ctx, &pb.UpdateServiceRequest{Ref: "web", Spec: next})
			if err == nil && tc.rollback {
				// The autoscaler moved the replicas since; a rollback keeps them.
				_, err = s.store.Update(ctx, func(tx *raftstore.Tx) error {
					cur, _ := tx.Services().Get(svc.GetId())
					cur = proto.Clone(cur).(*pb.Service)
					cur.Spec.GetReplicated().Replicas = tc.wantAfter
					return tx.Services().Update(cur)
				})
				if err == nil {
					updated, err = s.UpdateService(ctx, &pb.UpdateServiceRequest{Ref: "web", Rollback: true})
				}
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("update: %v, want %q", err, tc.wantErr)
				}
				var after *pb.Service
				s.store.View(func(tx *raftstore.Tx) { after, _ = tx.Services().Get(svc.GetId()) })
				if !proto.Equal(after, svc) {
					t.Fatalf("a refused update changed the service:\n%v\nwas\n%v", after, svc)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := updated.GetService().GetSpec().GetReplicated().GetReplicas(); got != tc.wantAfter {
				t.Fatalf("replicas after update %d, want %d", got, tc.wantAfter)
			}
		})
	}
}
