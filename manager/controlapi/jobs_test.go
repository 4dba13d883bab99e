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

func jobTestSpec(name string, mode any) *pb.ServiceSpec {
	spec := &pb.ServiceSpec{Annotations: &pb.Annotations{Name: name},
		Task: &pb.TaskSpec{Runtime: "process", Container: &pb.ContainerSpec{Image: "/bin/true"}}}
	switch m := mode.(type) {
	case *pb.ReplicatedJob:
		spec.Mode = &pb.ServiceSpec_ReplicatedJob{ReplicatedJob: m}
	case *pb.GlobalJob:
		spec.Mode = &pb.ServiceSpec_GlobalJob{GlobalJob: m}
	case *pb.ReplicatedService:
		spec.Mode = &pb.ServiceSpec_Replicated{Replicated: m}
	}
	return spec
}

// TestJobIterations: a job starts at iteration 1 with Docker's defaults;
// every update starts the next iteration without a rolling update; a
// mode change is refused and changes nothing.
func TestJobIterations(t *testing.T) {
	cases := []struct {
		name           string
		mode           any
		wantMode       any
		wantRestart    pb.RestartCondition
		update         func(*pb.ServiceSpec)
		wantIteration  uint64
		wantErr        string
		wantSpecBumped bool
	}{
		{name: "replicated job defaults", mode: &pb.ReplicatedJob{},
			wantMode:    &pb.ReplicatedJob{MaxConcurrent: 1, TotalCompletions: 1},
			wantRestart: pb.RestartCondition_RESTART_CONDITION_ON_FAILURE,
			update:      func(s *pb.ServiceSpec) { s.Task.ForceUpdate++ }, wantIteration: 2, wantSpecBumped: true},
		{name: "completions default to max-concurrent", mode: &pb.ReplicatedJob{MaxConcurrent: 3},
			wantMode:    &pb.ReplicatedJob{MaxConcurrent: 3, TotalCompletions: 3},
			wantRestart: pb.RestartCondition_RESTART_CONDITION_ON_FAILURE,
			update:      func(s *pb.ServiceSpec) { s.GetReplicatedJob().TotalCompletions = 9 }, wantIteration: 2},
		{name: "global job", mode: &pb.GlobalJob{}, wantMode: &pb.GlobalJob{},
			wantRestart: pb.RestartCondition_RESTART_CONDITION_ON_FAILURE,
			update:      func(s *pb.ServiceSpec) { s.Task.Container.Env = []string{"A=1"} }, wantIteration: 2, wantSpecBumped: true},
		{name: "job to service refused", mode: &pb.ReplicatedJob{MaxConcurrent: 1, TotalCompletions: 2},
			wantMode:    &pb.ReplicatedJob{MaxConcurrent: 1, TotalCompletions: 2},
			wantRestart: pb.RestartCondition_RESTART_CONDITION_ON_FAILURE,
			update: func(s *pb.ServiceSpec) {
				s.Mode = &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: 2}}
			}, wantIteration: 1, wantErr: "a service's mode cannot change (replicated-job to replicated)"},
		{name: "service to global job refused", mode: &pb.ReplicatedService{Replicas: 1},
			wantMode:      &pb.ReplicatedService{Replicas: 1},
			wantRestart:   pb.RestartCondition_RESTART_CONDITION_ANY,
			update:        func(s *pb.ServiceSpec) { s.Mode = &pb.ServiceSpec_GlobalJob{GlobalJob: &pb.GlobalJob{}} },
			wantIteration: 0, wantErr: "a service's mode cannot change (replicated to global-job)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := New(Config{Store: storetest.Memory(t, time.Now), Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
			created, err := s.CreateService(ctx, &pb.CreateServiceRequest{Spec: jobTestSpec("j", tc.mode)})
			if err != nil {
				t.Fatal(err)
			}
			svc := created.GetService()
			got := proto.Message(svc.GetSpec().GetReplicatedJob())
			switch tc.wantMode.(type) {
			case *pb.GlobalJob:
				got = svc.GetSpec().GetGlobalJob()
			case *pb.ReplicatedService:
				got = svc.GetSpec().GetReplicated()
			}
			if !proto.Equal(got, tc.wantMode.(proto.Message)) {
				t.Fatalf("mode %v, want %v", got, tc.wantMode)
			}
			if c := svc.GetSpec().GetTask().GetRestart().GetCondition(); c != tc.wantRestart {
				t.Fatalf("restart condition %v, want %v", c, tc.wantRestart)
			}
			job := svc.GetSpec().GetReplicatedJob() != nil || svc.GetSpec().GetGlobalJob() != nil
			if job != (svc.GetJobStatus().GetJobIteration() == 1) {
				t.Fatalf("job status %v of a new service (job %v)", svc.GetJobStatus(), job)
			}
			next := proto.Clone(svc.GetSpec()).(*pb.ServiceSpec)
			tc.update(next)
			updated, err := s.UpdateService(ctx, &pb.UpdateServiceRequest{Ref: "j", Spec: next})
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
			u := updated.GetService()
			if u.GetJobStatus().GetJobIteration() != tc.wantIteration || u.GetJobStatus().GetLastExecution() == 0 {
				t.Fatalf("job status after update %v, want iteration %d", u.GetJobStatus(), tc.wantIteration)
			}
			if u.GetUpdateStatus() != nil {
				t.Fatalf("a job got a rolling update: %v", u.GetUpdateStatus())
			}
			if bumped := u.GetSpecVersion() == svc.GetSpecVersion()+1; bumped != tc.wantSpecBumped {
				t.Fatalf("spec version %d -> %d, want bumped %v", svc.GetSpecVersion(), u.GetSpecVersion(), tc.wantSpecBumped)
			}
		})
	}
}

// TestJobTaskCounts: service ls counts a job's current iteration only.
func TestJobTaskCounts(t *testing.T) {
	svc := &pb.Service{Id: "s", JobStatus: &pb.JobStatus{JobIteration: 2},
		Spec: jobTestSpec("j", &pb.ReplicatedJob{MaxConcurrent: 2, TotalCompletions: 5})}
	task := func(iter uint64, desired, state pb.TaskState) *pb.Task {
		return &pb.Task{JobIteration: iter, DesiredState: desired, Status: &pb.TaskStatus{State: state}}
	}
	complete, running := pb.TaskState_TASK_STATE_COMPLETE, pb.TaskState_TASK_STATE_RUNNING
	c := countTasks(svc, []*pb.Task{
		task(1, complete, complete), task(1, complete, complete), // the previous run
		task(2, complete, complete), task(2, running, running), task(2, running, pb.TaskState_TASK_STATE_PENDING),
	})
	if c.GetCompleted() != 1 || c.GetRunning() != 1 || c.GetDesired() != 2 {
		t.Fatalf("counts %v: want 1 completed, 1 running, 2 desired", c)
	}
}
