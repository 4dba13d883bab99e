package autoscaler

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/manager/usage"
	pb "github.com/shoal-cluster/shoal/proto"
)

var epoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

const core = int64(1e9)

// service is an autoscaled service of replicas tasks reserving half a core
// each, at a target of 50% of it, between lo and hi.
func service(replicas, lo, hi uint64) *pb.Service {
	return &pb.Service{Id: "s1", Spec: &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: "web"},
		Task:        &pb.TaskSpec{Resources: &pb.ResourceRequirements{Reservations: &pb.Resources{NanoCpus: core / 2}}},
		Mode:        &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: replicas}},
		Autoscale:   &pb.AutoscaleSpec{TargetCpuPercent: 50, MinReplicas: lo, MaxReplicas: hi},
	}}
}

// fleet describes tasks by what they use in % of their reservation:
// a number is a running task with a fresh sample; "-" a running task
// without one; "old" one whose sample is stale; "starting" a task not
// running yet; "unhealthy" a running task failing its health check;
// "failed" a task that ended; "elsewhere" a task whose (idle) sample
// another node sent.
func fleet(specs ...string) ([]*pb.Task, map[string]usage.Sample) {
	var tasks []*pb.Task
	samples := map[string]usage.Sample{}
	for i, s := range specs {
		t := &pb.Task{Id: fmt.Sprintf("t%d", i+1), ServiceId: "s1", ServiceName: "web", Slot: uint64(i + 1),
			DesiredState: pb.TaskState_TASK_STATE_RUNNING,
			Spec:         &pb.TaskSpec{Resources: &pb.ResourceRequirements{Reservations: &pb.Resources{NanoCpus: core / 2}}},
			NodeId:       "n1",
			Status:       &pb.TaskStatus{State: pb.TaskState_TASK_STATE_RUNNING}}
		switch s {
		case "-":
		case "starting":
			t.Status.State = pb.TaskState_TASK_STATE_STARTING
		case "unhealthy":
			t.Status.Health = pb.HealthState_HEALTH_STATE_UNHEALTHY
		case "failed":
			t.Status.State = pb.TaskState_TASK_STATE_FAILED
		case "old":
			samples[t.Id] = usage.Sample{NodeID: "n1", Usage: &pb.TaskUsage{CpuWindow: int64(time.Second), CpuNanoCores: core / 2}, At: epoch.Add(-time.Minute)}
		case "elsewhere": // a sample another node claims
			samples[t.Id] = usage.Sample{NodeID: "n2", Usage: &pb.TaskUsage{CpuWindow: int64(time.Second), CpuNanoCores: 0}, At: epoch}
		default:
			var pct int64
			fmt.Sscan(s, &pct)
			samples[t.Id] = usage.Sample{NodeID: "n1", Usage: &pb.TaskUsage{CpuWindow: int64(time.Second), CpuNanoCores: core / 2 * pct / 100}, At: epoch}
		}
		tasks = append(tasks, t)
	}
	return tasks, samples
}

func TestDecide(t *testing.T) {
	recs := func(at time.Duration, replicas ...uint64) []Recommendation {
		var out []Recommendation
		for _, r := range replicas {
			out = append(out, Recommendation{At: epoch.Add(at), Replicas: r})
		}
		return out
	}
	tests := []struct {
		name    string
		svc     *pb.Service
		tasks   []string
		history History
		want    uint64
		// wantRec is the raw recommendation (0: none made).
		wantRec    uint64
		wantReason string
	}{
		{name: "at target", svc: service(4, 1, 10), tasks: []string{"50", "50", "50", "50"}, want: 4, wantRec: 4, wantReason: "average CPU 50% of the 50% target"},
		{name: "within the tolerance up", svc: service(4, 1, 10), tasks: []string{"55", "55", "55", "55"}, want: 4, wantRec: 4, wantReason: "within the tolerance"},
		{name: "within the tolerance down", svc: service(4, 1, 10), tasks: []string{"46", "46", "46", "46"}, want: 4, wantRec: 4, wantReason: "within the tolerance"},
		{name: "just past the tolerance scales up", svc: service(4, 1, 10), tasks: []string{"56", "56", "56", "56"}, want: 5, wantRec: 5},
		{name: "scale up: ceil(4 × 142/50)", svc: service(4, 1, 20), tasks: []string{"142", "142", "142", "142"}, want: 8, wantRec: 12,
			wantReason: "average CPU 142% of the 50% target; limited to 8"},
		{name: "scale up within the limit", svc: service(2, 1, 20), tasks: []string{"100", "100"}, want: 4, wantRec: 4},
		{name: "scale-up limit is 4 tasks for small services", svc: service(1, 1, 20), tasks: []string{"400"}, want: 5, wantRec: 8,
			wantReason: "limited to 5"},
		{name: "scale-up limit is 100% for large ones", svc: service(10, 1, 100), tasks: repeat("300", 10), want: 20, wantRec: 60},
		{name: "scale-up limit counts the period's earlier scale-ups", svc: service(6, 1, 100), tasks: repeat("200", 6),
			history: History{ScaleUps: []ScaleUp{{At: epoch.Add(-5 * time.Second), Added: 3}}}, want: 7, wantRec: 24,
			wantReason: "limited to 7"},
		{name: "scale-ups of an earlier period do not count", svc: service(6, 1, 100), tasks: repeat("200", 6),
			history: History{ScaleUps: []ScaleUp{{At: epoch.Add(-15 * time.Second), Added: 3}}}, want: 12, wantRec: 24},
		{name: "capped at max", svc: service(4, 1, 6), tasks: repeat("100", 4), want: 6, wantRec: 8, wantReason: "capped at the maximum of 6"},
		{name: "scale down without history", svc: service(4, 1, 10), tasks: repeat("10", 4), want: 1, wantRec: 1},
		{name: "kept at min", svc: service(4, 2, 10), tasks: repeat("10", 4), want: 2, wantRec: 1, wantReason: "kept at the minimum of 2"},
		{name: "scale down held by the window's highest recommendation", svc: service(4, 1, 10), tasks: repeat("10", 4),
			history: History{Recommendations: append(recs(-200*time.Second, 4), recs(-100*time.Second, 3)...)}, want: 4, wantRec: 1,
			wantReason: "held at 4 by the scale-down window"},
		{name: "scale down to the window's highest recommendation", svc: service(4, 1, 10), tasks: repeat("10", 4),
			history: History{Recommendations: append(recs(-400*time.Second, 4), recs(-100*time.Second, 3)...)}, want: 3, wantRec: 1},
		{name: "a scale-up ignores the down window", svc: service(4, 1, 10), tasks: repeat("100", 4),
			history: History{Recommendations: recs(-10*time.Second, 2)}, want: 8, wantRec: 8},
		{name: "missing samples count idle on a scale-up", svc: service(4, 1, 10), tasks: []string{"150", "150", "-", "-"}, want: 6, wantRec: 6,
			wantReason: "2 without figures counted idle"},
		{name: "missing samples that turn a scale-up into none", svc: service(4, 1, 10), tasks: []string{"60", "-", "-", "-"}, want: 4, wantRec: 4,
			wantReason: "no change"},
		{name: "missing samples count 100% on a scale-down", svc: service(4, 1, 10), tasks: []string{"10", "10", "-", "-"}, want: 4, wantRec: 4,
			wantReason: "(2 without figures counted at 100%): no change"},
		{name: "missing samples at 100% still allow some scale-down", svc: service(6, 1, 10), tasks: []string{"0", "0", "0", "0", "0", "-"}, want: 2, wantRec: 2},
		{name: "stale samples are missing, not idle", svc: service(4, 1, 10), tasks: []string{"10", "old", "old", "old"}, want: 4, wantRec: 4,
			wantReason: "counted at 100%"},
		{name: "a sample from another node counts as missing", svc: service(4, 1, 10), tasks: []string{"10", "10", "elsewhere", "elsewhere"}, want: 4, wantRec: 4,
			wantReason: "counted at 100%"},
		{name: "starting tasks count idle on a scale-up", svc: service(4, 1, 10), tasks: []string{"200", "200", "starting", "starting"}, want: 8, wantRec: 8,
			wantReason: "2 starting counted idle"},
		{name: "starting tasks that prevent a scale-up", svc: service(4, 1, 10), tasks: []string{"70", "starting", "starting", "starting"}, want: 4, wantRec: 4,
			wantReason: "no change"},
		{name: "unready tasks are ignored on a scale-down", svc: service(4, 1, 10), tasks: []string{"10", "10", "unhealthy", "starting"}, want: 1, wantRec: 1},
		{name: "ended tasks are ignored", svc: service(2, 1, 10), tasks: []string{"100", "100", "failed"}, want: 4, wantRec: 4},
		{name: "no figures: no decision", svc: service(3, 1, 10), tasks: []string{"-", "starting", "old"}, want: 3,
			wantReason: "no CPU figures yet"},
		{name: "above max after a bounds change", svc: service(8, 1, 5), tasks: repeat("50", 8), want: 5, wantReason: "above the maximum of 5"},
		{name: "below min after a bounds change", svc: service(1, 3, 5), tasks: repeat("50", 1), want: 3, wantReason: "below the minimum of 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tasks, samples := fleet(tt.tasks...)
			d := Decide(Input{Now: epoch, Service: tt.svc, Tasks: tasks, Samples: samples, Stale: 3 * time.Second, History: tt.history})
			if d.Replicas != tt.want {
				t.Errorf("replicas = %d, want %d (%s)", d.Replicas, tt.want, d.Reason)
			}
			if d.Recommended != (tt.wantRec != 0) || d.Recommendation != tt.wantRec {
				t.Errorf("recommendation = %d (made: %v), want %d (%s)", d.Recommendation, d.Recommended, tt.wantRec, d.Reason)
			}
			if !strings.Contains(d.Reason, tt.wantReason) {
				t.Errorf("reason = %q, want it to contain %q", d.Reason, tt.wantReason)
			}
		})
	}
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}
