package tests

import (
	"context"
	"fmt"
	"github.com/shoal-cluster/shoal/internal/clientcreds"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/rpc"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"github.com/shoal-cluster/shoal/worker"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestClusterOfManagersAndWorkersForms(t *testing.T) {
	c := newCluster(t)
	c.addManagers(3)
	c.addWorkers(3)

	// Gossip shows all six on every node.
	for _, m := range c.managers {
		c.eventually(40*time.Second, "six gossip members on "+m.cfg.Hostname, func() (bool, string) {
			n := len(m.m.Gossip().Members())
			return n == 6, fmt.Sprintf("%d members", n)
		})
	}
	for _, w := range c.workers {
		c.eventually(40*time.Second, "six gossip members on "+w.cfg.Hostname, func() (bool, string) {
			n := len(w.a.Gossip().Members())
			return n == 6, fmt.Sprintf("%d members", n)
		})
		if len(w.a.Gossip().Managers()) != 3 {
			t.Fatalf("%s sees %d managers in gossip", w.cfg.Hostname, len(w.a.Gossip().Managers()))
		}
	}
	// node ls alike on every manager: six nodes, workers Ready with resources.
	for _, m := range c.managers {
		c.eventually(20*time.Second, "node ls on "+m.cfg.Hostname, func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			resp, err := c.control(m).ListNodes(ctx, &pb.ListNodesRequest{})
			if err != nil {
				return false, err.Error()
			}
			ready := 0
			for _, n := range resp.GetNodes() {
				if n.GetStatus().GetState() == pb.NodeState_NODE_STATE_READY {
					ready++
				}
				if n.GetRole() == pb.NodeRole_NODE_ROLE_WORKER &&
					(n.GetDescription().GetResources().GetNanoCpus() == 0 || len(n.GetDescription().GetRuntimes()) == 0) {
					return false, "worker without resources or runtimes: " + n.GetId()
				}
			}
			return len(resp.GetNodes()) == 6 && ready == 6, fmt.Sprintf("%d nodes, %d ready", len(resp.GetNodes()), ready)
		})
	}
}

func TestTaskRunsStopsAndReportsExit(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(1)
	w := c.workers[0]

	// A long task starts, runs, and stops when its desired state changes.
	id := c.createTask(w.a.ID(), `echo "hello from $SHOAL_TASK_ID"; trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done`)
	running := c.waitTaskState(id, pb.TaskState_TASK_STATE_RUNNING, 20*time.Second)
	pid := int(running.GetStatus().GetPid())
	if pid <= 0 || !processAlive(pid) {
		t.Fatalf("running task has pid %d, alive=%v", pid, processAlive(pid))
	}
	c.eventually(10*time.Second, "the task's log", func() (bool, string) {
		out := readLogs(t, w, id)
		return strings.Contains(out, "hello from "+id), out
	})
	c.update(func(tx *raftstore.Tx) error {
		tk, _ := tx.Tasks().Get(id)
		tk.DesiredState = pb.TaskState_TASK_STATE_SHUTDOWN
		return tx.Tasks().Update(tk)
	})
	stopped := c.waitTaskState(id, pb.TaskState_TASK_STATE_SHUTDOWN, 20*time.Second)
	if stopped.GetStatus().GetExitCode() != 0 {
		t.Fatalf("graceful stop exit code %d", stopped.GetStatus().GetExitCode())
	}
	c.eventually(5*time.Second, "the process gone", func() (bool, string) { return !processAlive(pid), "alive" })
	if out := readLogs(t, w, id); !strings.Contains(out, "bye") {
		t.Fatalf("task did not get SIGTERM first; log:\n%s", out)
	}

	cases := []struct {
		name      string
		script    string
		image     string
		state     pb.TaskState
		exitCode  int32
		errSubstr string
	}{
		{name: "success", script: "exit 0", state: pb.TaskState_TASK_STATE_COMPLETE},
		{name: "failure", script: "echo failing; exit 7", state: pb.TaskState_TASK_STATE_FAILED, exitCode: 7, errSubstr: "code 7"},
		{name: "missing executable", image: "/no/such/program", state: pb.TaskState_TASK_STATE_REJECTED, errSubstr: "/no/such/program"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := &pb.ContainerSpec{Image: "/bin/sh", Args: []string{"-c", tc.script}}
			if tc.image != "" {
				spec = &pb.ContainerSpec{Image: tc.image}
			}
			id := c.createTaskSpec(w.a.ID(), spec)
			got := waitState(t, c, id, tc.state)
			if got.GetStatus().GetExitCode() != tc.exitCode || !strings.Contains(got.GetStatus().GetErr(), tc.errSubstr) {
				t.Fatalf("status %+v; want exit %d and error containing %q", got.GetStatus(), tc.exitCode, tc.errSubstr)
			}
		})
	}
}

// waitState is waitTaskState for subtests (failing the subtest only).
func waitState(t *testing.T, c *cluster, id string, want pb.TaskState) *pb.Task {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		tk := c.task(id)
		if tk.GetStatus().GetState() == want {
			return tk
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s is %s (%s), want %s", id, tk.GetStatus().GetState(), tk.GetStatus().GetErr(), want)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func readLogs(t *testing.T, w *wrk, id string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rc, err := w.runtime.Logs(ctx, id, worker.LogOptions{})
	if err != nil {
		return err.Error()
	}
	defer rc.Close()
	data, _ := io.ReadAll(rc)
	return string(data)
}

func TestWorkerDownThenBackKnowsItsTasks(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(1)
	w := c.workers[0]
	m := c.managers[0]
	id := c.createTask(w.a.ID(), "while true; do sleep 0.1; done")
	pid := int(c.waitTaskState(id, pb.TaskState_TASK_STATE_RUNNING, 20*time.Second).GetStatus().GetPid())

	// The agent stops (its process would be killed): no more heartbeats.
	start := time.Now()
	w.a.Close()
	c.eventually(10*time.Second, "the worker Down", func() (bool, string) {
		s := c.nodeState(m, w.a.ID())
		return s == pb.NodeState_NODE_STATE_DOWN, s.String()
	})
	t.Logf("worker marked Down %s after its agent stopped (deadline %s)", time.Since(start).Round(time.Millisecond), 3*testHeartbeat)
	failed := c.waitTaskState(id, pb.TaskState_TASK_STATE_FAILED, 5*time.Second)
	if failed.GetDesiredState() != pb.TaskState_TASK_STATE_SHUTDOWN || !strings.Contains(failed.GetStatus().GetErr(), "down") {
		t.Fatalf("task of a Down node: %+v", failed)
	}

	// Back again: Ready, still knows the task, and stops it (it was replaced).
	c.restartWorker(w)
	c.eventually(10*time.Second, "the worker Ready", func() (bool, string) {
		s := c.nodeState(m, w.a.ID())
		return s == pb.NodeState_NODE_STATE_READY, s.String()
	})
	known := false
	for _, tk := range w.a.Tasks() {
		known = known || tk.GetId() == id
	}
	if !known {
		t.Fatalf("restarted worker forgot task %s", id)
	}
	c.eventually(15*time.Second, "the replaced task's process stopped", func() (bool, string) {
		return !processAlive(pid), fmt.Sprintf("pid %d alive", pid)
	})
}

func TestWorkerReconnectsWhenItsManagerDies(t *testing.T) {
	c := newCluster(t)
	c.addManagers(3)
	c.addWorkers(1)
	w := c.workers[0]
	old := c.leader()
	c.stopManager(old)
	var other *mgr
	for _, m := range c.live() {
		other = m
	}
	// The worker finds the new leader by itself and stays Ready.
	c.eventually(20*time.Second, "a new leader", func() (bool, string) {
		for _, m := range c.live() {
			if m.m.IsLeader() {
				return true, ""
			}
		}
		return false, "none"
	})
	c.eventually(20*time.Second, "the worker heartbeating to the new leader", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		resp, err := c.control(other).GetNode(ctx, &pb.GetNodeRequest{Ref: w.a.ID()})
		if err != nil {
			return false, err.Error()
		}
		st := resp.GetNode().GetStatus()
		fresh := time.Since(time.Unix(0, st.GetLastHeartbeat())) < 3*testHeartbeat
		return st.GetState() == pb.NodeState_NODE_STATE_READY && fresh, fmt.Sprintf("%s, last heartbeat %s ago", st.GetState(), time.Since(time.Unix(0, st.GetLastHeartbeat())))
	})
	// New work reaches it through the new leader.
	id := c.createTask(w.a.ID(), "sleep 30")
	c.waitTaskState(id, pb.TaskState_TASK_STATE_RUNNING, 20*time.Second)
}

func TestAgentRestartDoesNotStartTasksTwice(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(1)
	w := c.workers[0]
	id := c.createTask(w.a.ID(), `echo started; while [ ! -e "$HOME/finish" ]; do sleep 0.05; done; exit 4`)
	running := c.waitTaskState(id, pb.TaskState_TASK_STATE_RUNNING, 20*time.Second)
	pid := int(running.GetStatus().GetPid())

	w.a.Close()
	c.restartWorker(w)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.a.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	info, err := w.runtime.Inspect(ctx, id)
	if err != nil || info.State != worker.RunRunning || info.Pid != pid {
		t.Fatalf("after agent restart: %+v %v; want the same process %d still running", info, err, pid)
	}
	// Let the task finish while the new agent watches it.
	if err := touch(w, id); err != nil {
		t.Fatal(err)
	}
	done := c.waitTaskState(id, pb.TaskState_TASK_STATE_FAILED, 20*time.Second)
	if done.GetStatus().GetExitCode() != 4 {
		t.Fatalf("exit code %d, want 4", done.GetStatus().GetExitCode())
	}
	if n := strings.Count(readLogs(t, w, id), "started"); n != 1 {
		t.Fatalf("task started %d times", n)
	}
}

// touch creates the "finish" file in a task's home directory.
func touch(w *wrk, id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := w.runtime.Inspect(ctx, id)
	if err != nil {
		return err
	}
	env, err := readEnviron(info.Pid)
	if err != nil {
		return err
	}
	home := env["HOME"]
	if home == "" {
		return fmt.Errorf("task has no HOME")
	}
	return writeFile(home+"/finish", "")
}

func TestDispatcherRefusesImpostors(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(2)
	a, b := c.workers[0], c.workers[1]
	leader := c.leader()
	idB, err := datadir.Load(b.cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	// Connect with b's own certificate, over a real TLS handshake.
	credsB, _, err := clientcreds.Find(b.cfg.DataDir, "")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := rpc.Dial(leader.cfg.APIAddr(), credsB)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	d := pb.NewDispatcherClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// A worker claiming another node's ID is refused.
	stream, err := d.Session(ctx, &pb.SessionRequest{NodeId: a.a.ID()})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("impostor session: %v", err)
	}
	// Status for a task assigned to another node is refused and not recorded.
	taskOfA := c.createTask(a.a.ID(), "sleep 30")
	c.waitTaskState(taskOfA, pb.TaskState_TASK_STATE_RUNNING, 20*time.Second)
	b.a.Close() // take over b's session with b's own credentials
	stream, err = d.Session(ctx, &pb.SessionRequest{NodeId: idB.NodeID})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.UpdateTaskStatus(ctx, &pb.UpdateTaskStatusRequest{
		SessionId: first.GetSessionId(), NodeId: idB.NodeID,
		Updates: []*pb.TaskStatusUpdate{{TaskId: taskOfA, Status: &pb.TaskStatus{State: pb.TaskState_TASK_STATE_FAILED, Err: "forged"}}},
	})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("status for another node's task: %v", err)
	}
	if got := c.task(taskOfA); got.GetStatus().GetState() != pb.TaskState_TASK_STATE_RUNNING {
		t.Fatalf("forged status was recorded: %+v", got.GetStatus())
	}
	// Nor may it claim a node ID the cluster never admitted.
	stream, err = d.Session(ctx, &pb.SessionRequest{NodeId: "nosuchnode"})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("unknown node: %v", err)
	}
}
