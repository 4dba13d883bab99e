package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

var (
	helloOnce sync.Once
	helloPath string
	helloErr  error
)

// helloBinary builds the sample app once per test run.
func helloBinary(t *testing.T) string {
	t.Helper()
	helloOnce.Do(func() {
		dir, err := os.MkdirTemp("", "shoal-hello-bin")
		if err != nil {
			helloErr = err
			return
		}
		helloPath = filepath.Join(dir, "hello")
		out, err := exec.Command("go", "build", "-o", helloPath, "../cmd/hello").CombinedOutput()
		if err != nil {
			helloErr = err
			helloPath = string(out)
		}
	})
	if helloErr != nil {
		t.Fatalf("build hello: %v: %s", helloErr, helloPath)
	}
	return helloPath
}

// createHelloTask assigns a hello task with an HTTP health check.
func (c *cluster) createHelloTask(nodeID string, env ...string) string {
	c.t.Helper()
	id := raftstore.NewID()
	t := &pb.Task{
		Id: id, ServiceName: "hello", Slot: 1, NodeId: nodeID,
		Spec: &pb.TaskSpec{Runtime: "process", Container: &pb.ContainerSpec{
			Image: helloBinary(c.t), Env: env, StopGracePeriod: int64(2 * time.Second),
			Healthcheck: &pb.HealthCheck{HttpGet: "/healthz", Interval: int64(200 * time.Millisecond), Retries: 2},
		}},
		Endpoint:     &pb.Endpoint{Spec: &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80}}}},
		DesiredState: pb.TaskState_TASK_STATE_RUNNING,
		Status:       &pb.TaskStatus{State: pb.TaskState_TASK_STATE_ASSIGNED, Timestamp: time.Now().UnixNano()},
	}
	c.update(func(tx *raftstore.Tx) error { return tx.Tasks().Create(t) })
	return id
}

func TestHealthChecks(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(1)
	w := c.workers[0]

	healthy := c.createHelloTask(w.a.ID())
	c.eventually(20*time.Second, "the task healthy", func() (bool, string) {
		tk := c.task(healthy)
		return tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING && tk.GetStatus().GetHealth() == pb.HealthState_HEALTH_STATE_HEALTHY,
			tk.GetStatus().String()
	})

	sick := c.createHelloTask(w.a.ID(), "HELLO_UNHEALTHY=1")
	failed := c.waitTaskState(sick, pb.TaskState_TASK_STATE_FAILED, 20*time.Second)
	if failed.GetStatus().GetHealth() != pb.HealthState_HEALTH_STATE_UNHEALTHY || !strings.Contains(failed.GetStatus().GetErr(), "unhealthy") {
		t.Fatalf("unhealthy task: %+v", failed.GetStatus())
	}
	if tk := c.task(healthy); tk.GetStatus().GetState() != pb.TaskState_TASK_STATE_RUNNING {
		t.Fatalf("the healthy task was disturbed: %+v", tk.GetStatus())
	}
}
