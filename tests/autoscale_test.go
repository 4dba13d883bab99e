package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// burnSpec is an autoscaled service whose tasks burn CPU while the file
// burn exists and idle after. Each reserves and may use a tenth of a core
// (the process runtime enforces the limit with a cgroup CPU quota), so the
// whole test costs at most max × 0.1 cores.
func burnSpec(name, burn string, lo, hi uint64) *pb.ServiceSpec {
	tenth := &pb.Resources{NanoCpus: 1e8}
	return &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: name},
		Task: &pb.TaskSpec{
			Runtime: "process",
			Container: &pb.ContainerSpec{Image: "/bin/sh", Args: []string{"-c", fmt.Sprintf("while [ -e %s ]; do :; done; exec sleep 600", burn)},
				StopGracePeriod: int64(500 * time.Millisecond)},
			Resources: &pb.ResourceRequirements{Reservations: tenth, Limits: tenth},
			Restart:   &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY, Delay: int64(100 * time.Millisecond)},
		},
		Mode: &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: lo}},
		Autoscale: &pb.AutoscaleSpec{TargetCpuPercent: 50, MinReplicas: lo, MaxReplicas: hi,
			SyncPeriod: int64(time.Second), DownscaleWindow: int64(4 * time.Second)},
	}
}

// replicasOf reads a service's replicas and autoscaler status.
func (c *cluster) replicasOf(name string) (uint64, *pb.AutoscaleStatus) {
	c.t.Helper()
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.control(c.live()[0]).GetService(ctx, &pb.GetServiceRequest{Ref: name})
	if err != nil {
		return 0, nil
	}
	return resp.GetService().GetSpec().GetReplicated().GetReplicas(), resp.GetService().GetAutoscaleStatus()
}

// TestAutoscaleOnCPU: real tasks under real load (cgroup-measured) make
// the autoscaler scale a service up to its maximum and, when the load
// stops, back down to its minimum after the scale-down window; stats show
// each task's use; a manual scale is refused.
func TestAutoscaleOnCPU(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(1)
	burn := filepath.Join(c.base, "burn")
	if err := os.WriteFile(burn, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	const lo, hi = 1, 3
	c.createService(burnSpec("burn", burn, lo, hi))

	// The leader has the burning task's figures: a tenth of a core,
	// about 100% of its reservation.
	c.eventually(20*time.Second, "the first task's figures", func() (bool, string) {
		ctx, cancel := c.ctx()
		defer cancel()
		resp, err := c.control(c.leader()).TaskStats(ctx, &pb.TaskStatsRequest{Service: "burn"})
		if err != nil {
			return false, err.Error()
		}
		for _, st := range resp.GetStats() {
			u := st.GetUsage()
			if u.GetCpuWindow() > 0 && u.GetCpuNanoCores() > 5e7 && u.GetCpuNanoCores() < 1.5e8 && u.GetMemoryBytes() > 0 {
				return true, ""
			}
		}
		return false, fmt.Sprint(resp.GetStats())
	})

	// A manual scale is refused while autoscaled, and changes nothing.
	ctx, cancel := c.ctx()
	got, err := c.control(c.leader()).GetService(ctx, &pb.GetServiceRequest{Ref: "burn"})
	if err != nil {
		t.Fatal(err)
	}
	spec := proto.Clone(got.GetService().GetSpec()).(*pb.ServiceSpec)
	// A count the autoscaler cannot reach meanwhile (past its maximum):
	// one it can may be the service's own by the time the update lands.
	spec.GetReplicated().Replicas = spec.GetAutoscale().GetMaxReplicas() + 5
	_, err = c.control(c.leader()).UpdateService(ctx, &pb.UpdateServiceRequest{Ref: "burn", Spec: spec})
	cancel()
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "--autoscale-max") {
		t.Fatalf("manual scale of an autoscaled service: %v, want a refusal that says how to change the bounds", err)
	}

	// Up to the maximum, never past it.
	start := time.Now()
	peak := uint64(0)
	var reason string
	c.eventually(60*time.Second, "scaled up to the maximum", func() (bool, string) {
		n, st := c.replicasOf("burn")
		peak = max(peak, n)
		if st.GetToReplicas() > st.GetFromReplicas() {
			reason = st.GetReason()
		}
		return n == hi && total(c.runningPerNodeAny("burn")) == hi, fmt.Sprintf("replicas %d, last decision %v", n, st)
	})
	t.Logf("scaled up to %d in %s; last scale-up: %s", hi, time.Since(start).Round(100*time.Millisecond), reason)
	if !strings.Contains(reason, "average CPU") || !strings.Contains(reason, "of the 50% target") {
		t.Fatalf("scale-up reason %q, want the average CPU and the target", reason)
	}

	// Load stops: down to the minimum once the window has passed.
	if err := os.Remove(burn); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	c.eventually(60*time.Second, "scaled down to the minimum", func() (bool, string) {
		n, st := c.replicasOf("burn")
		peak = max(peak, n)
		return n == lo, fmt.Sprintf("replicas %d, last decision %v", n, st)
	})
	took := time.Since(stopped)
	t.Logf("scaled down to %d in %s after the load stopped", lo, took.Round(100*time.Millisecond))
	if took < 3*time.Second {
		t.Fatalf("scaled down %s after the load stopped: the 4s stabilisation window was not kept", took)
	}
	if peak > hi {
		t.Fatalf("replicas reached %d, above the maximum of %d", peak, hi)
	}
}

// runningPerNodeAny counts a service's running tasks per node, healthy or
// not (these tasks have no health check).
func (c *cluster) runningPerNodeAny(name string) map[string]int {
	out := map[string]int{}
	for _, t := range c.serviceTasks(name) {
		if t.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING && t.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING {
			out[t.GetNodeId()]++
		}
	}
	return out
}

// TestAutoscaleLeaderKilled kills the leader in the middle of a scale-up:
// the new leader has figures again within a few heartbeats, finishes the
// scale-up without passing the maximum, and after the load stops waits a
// full window of its own before scaling down.
func TestAutoscaleLeaderKilled(t *testing.T) {
	c := newCluster(t)
	c.addManagers(3)
	c.addWorkers(1)
	burn := filepath.Join(c.base, "burn")
	if err := os.WriteFile(burn, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	const lo, hi = 1, 4
	const window = 6 * time.Second
	spec := burnSpec("burn", burn, lo, hi)
	spec.Autoscale.DownscaleWindow = int64(window)
	c.createService(spec)

	peak := uint64(0)
	watch := func() uint64 {
		n, _ := c.replicasOf("burn")
		peak = max(peak, n)
		return n
	}
	c.eventually(60*time.Second, "a first scale-up", func() (bool, string) {
		n := watch()
		return n >= 2, fmt.Sprint(n)
	})
	old := c.leader()
	c.stopManager(old)
	killed := time.Now()
	leader := c.leader()
	elected := time.Now()
	c.eventually(30*time.Second, "the new leader's figures", func() (bool, string) {
		ctx, cancel := c.ctx()
		defer cancel()
		resp, err := c.control(leader).TaskStats(ctx, &pb.TaskStatsRequest{Service: "burn"})
		if err != nil {
			return false, err.Error()
		}
		for _, st := range resp.GetStats() {
			if st.GetUsage().GetCpuWindow() > 0 {
				return true, ""
			}
		}
		return false, fmt.Sprint(resp.GetStats())
	})
	t.Logf("leader killed; a new one in %s, with figures %s later", elected.Sub(killed).Round(100*time.Millisecond), time.Since(elected).Round(100*time.Millisecond))
	c.eventually(60*time.Second, "scaled up to the maximum under the new leader", func() (bool, string) {
		n := watch()
		return n == hi, fmt.Sprint(n)
	})
	if err := os.Remove(burn); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	c.eventually(60*time.Second, "scaled down to the minimum", func() (bool, string) {
		n := watch()
		return n == lo, fmt.Sprint(n)
	})
	took := time.Since(stopped)
	t.Logf("scaled down %s after the load stopped; peak %d", took.Round(100*time.Millisecond), peak)
	if took < window-time.Second {
		t.Fatalf("scaled down %s after the load stopped, within the %s window", took, window)
	}
	if peak > hi {
		t.Fatalf("replicas reached %d, above the maximum of %d", peak, hi)
	}
}
