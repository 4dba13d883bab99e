package tests

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/mesh"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/docker"
	"google.golang.org/protobuf/proto"
)

// requireDockerEnv makes the Docker tests fail instead of skipping when no
// Engine answers; .ci/run sets it on machines where `docker info` works.
const requireDockerEnv = "SHOAL_REQUIRE_DOCKER"

// The sample images (scripts/images.sh, `make images`). Tests build them
// once per run and leave them in place afterwards.
const (
	helloV1        = "shoal/hello:v1"
	helloV2        = "shoal/hello:v2"
	helloUnhealthy = "shoal/hello:unhealthy"
)

var (
	imagesOnce sync.Once
	imagesErr  error
)

// dockerEngine returns a client of the local Engine (/var/run/docker.sock
// or $DOCKER_HOST) with the sample images present. Without an Engine the
// test is skipped, or fails when SHOAL_REQUIRE_DOCKER=1.
func dockerEngine(t *testing.T) *client.Client {
	t.Helper()
	cli, err := docker.NewClient("")
	if err == nil {
		if err = docker.Ping(context.Background(), cli); err != nil {
			cli.Close()
		}
	}
	if err != nil {
		if os.Getenv(requireDockerEnv) == "1" {
			t.Fatalf("%s=1 but the Docker Engine does not answer: %v", requireDockerEnv, err)
		}
		t.Skipf("no Docker Engine (set %s=1 to require one): %v", requireDockerEnv, err)
	}
	t.Cleanup(func() { cli.Close() })
	// Build the images once per run, so they hold the current hello (a
	// rebuild of unchanged sources reuses the cached layers).
	imagesOnce.Do(func() {
		out, err := exec.Command("../scripts/images.sh").CombinedOutput()
		if err != nil {
			imagesErr = fmt.Errorf("scripts/images.sh: %v: %s", err, out)
		}
	})
	if imagesErr != nil {
		t.Fatal(imagesErr)
	}
	return cli
}

// dcluster is a test cluster whose workers can run containers: workers
// added with addDockerWorkers have the docker runtime as well as the
// process runtime. Every container of its nodes, and the volumes it was
// told about, are removed when the test ends.
type dcluster struct {
	*cluster
	cli *client.Client

	mu        sync.Mutex
	clusterID string
	runtimes  map[*wrk]*docker.Runtime
	nodes     []string
	volumes   []string
}

func newDockerCluster(t *testing.T) *dcluster {
	cli := dockerEngine(t)
	d := &dcluster{cluster: newCluster(t), cli: cli, runtimes: map[*wrk]*docker.Runtime{}}
	t.Cleanup(d.cleanup) // before the cluster's own cleanup
	return d
}

// cleanup stops the agents, then removes the containers and volumes.
func (d *dcluster) cleanup() {
	for _, w := range d.workers {
		if w.a != nil {
			w.a.Close()
			w.a = nil
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range d.runtimes {
		r.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, node := range d.nodes {
		for _, c := range d.containers(ctx, docker.LabelNodeID+"="+node) {
			if _, err := d.cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
				d.t.Logf("remove container %s: %v", c.Names, err)
			}
		}
	}
	for _, v := range d.volumes {
		if _, err := d.cli.VolumeRemove(ctx, v, client.VolumeRemoveOptions{Force: true}); err != nil {
			d.t.Logf("remove volume %s: %v", v, err)
		}
	}
	if d.clusterID != "" {
		mesh.RemoveContainerAddrs(ctx, d.clusterID)
	}
}

// containers lists containers (running or not) with a label.
func (d *dcluster) containers(ctx context.Context, label string) []containerSummary {
	f := client.Filters{}
	f.Add("label", label)
	res, err := d.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		d.t.Logf("list containers: %v", err)
		return nil
	}
	var out []containerSummary
	for _, c := range res.Items {
		out = append(out, containerSummary{ID: c.ID, Names: c.Names, State: string(c.State), Labels: c.Labels})
	}
	return out
}

type containerSummary struct {
	ID     string
	Names  []string
	State  string
	Labels map[string]string
}

// dockerWorkerConfig is workerConfig with the docker runtime added.
func (d *dcluster) dockerWorkerConfig(i int, w *wrk) worker.Config {
	cfg := d.workerConfig(i, w)
	processRuntimes := cfg.Runtimes
	cfg.Runtimes = func() ([]worker.Runtime, error) {
		rts, err := processRuntimes()
		if err != nil {
			return nil, err
		}
		id, err := datadir.Load(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r, err := docker.New(ctx, docker.Config{NodeID: id.NodeID, NodeName: cfg.Hostname, AdvertiseIP: cfg.AdvertiseIP,
			DNS: []string{mesh.ContainerResolverIP(id.ClusterID)}, Logger: cfg.Logger})
		if err != nil {
			return nil, err
		}
		d.mu.Lock()
		if old := d.runtimes[w]; old != nil {
			old.Close()
		}
		d.runtimes[w] = r
		d.clusterID = id.ClusterID
		if !slices.Contains(d.nodes, id.NodeID) {
			d.nodes = append(d.nodes, id.NodeID)
		}
		d.mu.Unlock()
		return append(rts, r), nil
	}
	w.cfg = cfg
	return cfg
}

// addDockerWorkers starts n workers with both runtimes.
func (d *dcluster) addDockerWorkers(n int) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tok := d.token(pb.NodeRole_NODE_ROLE_WORKER)
	for range n {
		i := len(d.workers) + 1
		w := &wrk{}
		cfg := d.dockerWorkerConfig(i, w)
		a, err := worker.Join(ctx, cfg, d.live()[0].cfg.APIAddr(), tok)
		if err != nil {
			d.t.Fatalf("start worker %d: %v", i, err)
		}
		w.a = a
		d.workers = append(d.workers, w)
		if err := a.WaitConnected(ctx); err != nil {
			d.t.Fatal(err)
		}
	}
}

// restartDockerWorker stops a worker's agent (its containers keep
// running) and starts it again on its data dir.
func (d *dcluster) restartDockerWorker(w *wrk) {
	d.t.Helper()
	w.a.Close()
	w.a = nil
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := worker.Restart(ctx, d.dockerWorkerConfig(indexOf(d.workers, w)+1, w))
	if err != nil {
		d.t.Fatalf("restart worker: %v", err)
	}
	w.a = a
}

// dockerSpec is a replicated hello service of containers, port 80
// published, relying on the image's own HEALTHCHECK.
func dockerSpec(name, image string, replicas uint64) *pb.ServiceSpec {
	return &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: name},
		Task: &pb.TaskSpec{
			Runtime:   "docker",
			Container: &pb.ContainerSpec{Image: image, StopGracePeriod: int64(2 * time.Second)},
			Restart:   &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY, Delay: int64(100 * time.Millisecond)},
		},
		Mode:     &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: replicas}},
		Update:   &pb.UpdateConfig{Parallelism: 1, Monitor: int64(time.Second), FailureAction: pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK},
		Rollback: &pb.UpdateConfig{Parallelism: 3, Monitor: int64(100 * time.Millisecond)},
		Endpoint: &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80}}},
	}
}

// helloCheck is a service health check run inside the container.
func helloCheck() *pb.HealthCheck {
	return &pb.HealthCheck{
		Command:  []string{"/hello", "-healthcheck", "http://127.0.0.1:80/healthz"},
		Interval: int64(300 * time.Millisecond), Timeout: int64(2 * time.Second), Retries: 2,
	}
}

// runningTasks are a service's tasks that should run and do, healthy.
func (d *dcluster) runningTasks(name string) []*pb.Task {
	var out []*pb.Task
	for _, t := range d.serviceTasks(name) {
		if t.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING && t.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING &&
			t.GetStatus().GetHealth() == pb.HealthState_HEALTH_STATE_HEALTHY {
			out = append(out, t)
		}
	}
	return out
}

// get asks a task's first published port for its greeting.
func get(t *pb.Task) (string, error) {
	ports := t.GetStatus().GetPorts()
	if len(ports) == 0 {
		return "", fmt.Errorf("task %s reports no port", t.GetId())
	}
	addr := net.JoinHostPort(ports[0].GetHostIp(), strconv.Itoa(int(ports[0].GetHostPort())))
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// answersAll checks every running task answers with its name and version.
func (d *dcluster) answersAll(name, version string, want int) {
	d.t.Helper()
	d.eventually(30*time.Second, fmt.Sprintf("%d tasks of %s answering with %s", want, name, version), func() (bool, string) {
		tasks := d.runningTasks(name)
		if len(tasks) != want {
			return false, fmt.Sprintf("%d running", len(tasks))
		}
		for _, t := range tasks {
			body, err := get(t)
			if err != nil {
				return false, err.Error()
			}
			wantBody := fmt.Sprintf("hello from %s.%d.%s (%s)", name, t.GetSlot(), t.GetId(), version)
			if !strings.Contains(body, wantBody) {
				return false, fmt.Sprintf("%q, want %q", body, wantBody)
			}
		}
		return true, ""
	})
}

func (d *dcluster) updateService(name string, change func(*pb.ServiceSpec)) {
	d.t.Helper()
	ctx, cancel := d.ctx()
	defer cancel()
	cl := d.control(d.leader())
	got, err := cl.GetService(ctx, &pb.GetServiceRequest{Ref: name})
	if err != nil {
		d.t.Fatal(err)
	}
	spec := proto.Clone(got.GetService().GetSpec()).(*pb.ServiceSpec)
	change(spec)
	if _, err := cl.UpdateService(ctx, &pb.UpdateServiceRequest{Ref: name, Version: got.GetService().GetMeta().GetVersion(), Spec: spec}); err != nil {
		d.t.Fatal(err)
	}
}

func (d *dcluster) inspect(id string) (client.ContainerInspectResult, error) {
	ctx, cancel := d.ctx()
	defer cancel()
	return d.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
}

func TestDockerServiceRunsAsContainers(t *testing.T) {
	d := newDockerCluster(t)
	d.addManagers(1)
	d.addDockerWorkers(2)
	d.addWorkers(1) // process runtime only: no container goes there
	procOnly := d.workers[2].a.ID()

	d.createService(dockerSpec("web", helloV1, 3))
	d.answersAll("web", "v1", 3)

	for _, tk := range d.runningTasks("web") {
		if tk.GetNodeId() == procOnly {
			t.Fatalf("task %s placed on the node without the docker runtime", tk.GetId())
		}
		c, err := d.inspect(tk.GetStatus().GetContainerId())
		if err != nil {
			t.Fatal(err)
		}
		cfg := c.Container.Config
		wantName := fmt.Sprintf("/web.%d.%s", tk.GetSlot(), tk.GetId())
		if c.Container.Name != wantName || !c.Container.State.Running || cfg.Image != helloV1 ||
			cfg.Labels[docker.LabelTaskID] != tk.GetId() || cfg.Labels[docker.LabelServiceName] != "web" ||
			cfg.Labels[docker.LabelServiceID] != tk.GetServiceId() || cfg.Labels[docker.LabelNodeID] != tk.GetNodeId() ||
			c.Container.HostConfig.RestartPolicy.Name != "no" {
			t.Fatalf("container %s: %+v labels %v", c.Container.Name, c.Container.State, cfg.Labels)
		}
		if p := tk.GetStatus().GetPorts(); len(p) != 1 || p[0].GetTargetPort() != 80 || !strings.HasPrefix(p[0].GetHostIp(), "127.0.") {
			t.Fatalf("ports %v", p)
		}
	}

	// `docker kill` one: the task fails and a new one replaces it.
	victim := d.runningTasks("web")[0]
	ctx, cancel := d.ctx()
	defer cancel()
	if _, err := d.cli.ContainerKill(ctx, victim.GetStatus().GetContainerId(), client.ContainerKillOptions{Signal: "SIGKILL"}); err != nil {
		t.Fatal(err)
	}
	d.eventually(45*time.Second, "the killed container replaced", func() (bool, string) {
		replaced := false
		for _, tk := range d.runningTasks("web") {
			if tk.GetSlot() == victim.GetSlot() && tk.GetId() != victim.GetId() {
				replaced = true
			}
		}
		return replaced && len(d.runningTasks("web")) == 3, fmt.Sprint(len(d.runningTasks("web")))
	})
	if st := d.task(victim.GetId()).GetStatus(); st.GetState() != pb.TaskState_TASK_STATE_FAILED || st.GetExitCode() != 137 {
		t.Fatalf("the killed task: %v", st)
	}
	d.answersAll("web", "v1", 3)
}

func TestDockerRollingUpdateAndRollback(t *testing.T) {
	d := newDockerCluster(t)
	d.addManagers(1)
	d.addDockerWorkers(2)
	spec := dockerSpec("web", helloV1, 3)
	spec.Task.Container.Healthcheck = helloCheck()
	d.createService(spec)
	d.answersAll("web", "v1", 3)

	d.updateService("web", func(s *pb.ServiceSpec) { s.Task.Container.Image = helloV2 })
	d.eventually(60*time.Second, "the update to v2", func() (bool, string) {
		st := d.updateState("web")
		return st.GetState() == pb.UpdateState_UPDATE_STATE_COMPLETED, st.String()
	})
	d.answersAll("web", "v2", 3)
	for _, tk := range d.runningTasks("web") {
		c, err := d.inspect(tk.GetStatus().GetContainerId())
		if err != nil || c.Container.Config.Image != helloV2 || c.Container.State.Health == nil || c.Container.State.Health.Status != "healthy" {
			t.Fatalf("container of %s: %v %+v", tk.GetId(), err, c.Container.State)
		}
	}

	// The unhealthy variant never passes its check: the update rolls back.
	d.updateService("web", func(s *pb.ServiceSpec) { s.Task.Container.Image = helloUnhealthy })
	d.eventually(90*time.Second, "an automatic rollback", func() (bool, string) {
		st := d.updateState("web")
		return st.GetState() == pb.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED, st.String()
	})
	d.answersAll("web", "v2", 3)
	failed := 0
	for _, tk := range d.serviceTasks("web") {
		if tk.GetSpec().GetContainer().GetImage() == helloUnhealthy && tk.GetStatus().GetHealth() == pb.HealthState_HEALTH_STATE_UNHEALTHY {
			failed++
		}
	}
	if failed == 0 {
		t.Fatal("no task of the unhealthy image was seen unhealthy")
	}
}

func TestDockerWorkerRestartKeepsContainers(t *testing.T) {
	d := newDockerCluster(t)
	d.addManagers(1)
	d.addDockerWorkers(1)
	w := d.workers[0]
	d.createService(dockerSpec("web", helloV1, 2))
	d.answersAll("web", "v1", 2)
	before := map[string]string{}
	for _, tk := range d.runningTasks("web") {
		before[tk.GetId()] = tk.GetStatus().GetContainerId()
	}

	d.restartDockerWorker(w)
	// A container no task claims is removed when the worker starts.
	ctx, cancel := d.ctx()
	defer cancel()
	stray := "stray-" + randomHex(4)
	res, err := d.cli.ContainerCreate(ctx, client.ContainerCreateOptions{Name: stray, Config: &container.Config{
		Image: helloV1, Labels: map[string]string{docker.LabelNodeID: w.a.ID(), docker.LabelTaskID: "no-such-task"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	d.restartDockerWorker(w)
	if _, err := d.inspect(res.ID); err == nil {
		t.Fatal("the stray container was not removed")
	}

	// Watch for a while: the same tasks, the same containers, no others.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		var tasks []string
		for _, tk := range d.serviceTasks("web") {
			if tk.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING {
				tasks = append(tasks, tk.GetId())
			}
		}
		if slices.Sort(tasks); !slices.Equal(tasks, sortedKeys(before)) {
			t.Fatalf("tasks changed across the restart: %v, before %v", tasks, before)
		}
		var live []string
		for _, c := range d.containers(ctx, docker.LabelNodeID+"="+w.a.ID()) {
			if c.State == "running" {
				live = append(live, c.ID)
			}
		}
		if slices.Sort(live); !slices.Equal(live, sortedValues(before)) {
			t.Fatalf("running containers on the node: %v, want the same as before the restart: %v", live, before)
		}
	}
	d.answersAll("web", "v1", 2)
}

func sortedKeys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func sortedValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	slices.Sort(out)
	return out
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func TestDockerMountsAndLimits(t *testing.T) {
	d := newDockerCluster(t)
	d.addManagers(1)
	d.addDockerWorkers(1)
	dir := filepath.Join(d.base, "shared")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	vol := "shoal-test-" + randomHex(4)
	d.volumes = append(d.volumes, vol)

	spec := dockerSpec("store", helloV1, 1)
	c := spec.Task.Container
	c.Mounts = []*pb.Mount{
		{Type: pb.MountType_MOUNT_TYPE_BIND, Source: dir, Target: "/shared", ReadOnly: true},
		{Type: pb.MountType_MOUNT_TYPE_VOLUME, Source: vol, Target: "/data"},
		{Type: pb.MountType_MOUNT_TYPE_TMPFS, Target: "/scratch"},
	}
	c.Env = []string{"HELLO_VERSION=custom"}
	c.Labels = map[string]string{"team": "storage"}
	c.Healthcheck = helloCheck()
	spec.Task.Resources = &pb.ResourceRequirements{Limits: &pb.Resources{MemoryBytes: 64 << 20, NanoCpus: 5e8}}
	d.createService(spec)
	d.answersAll("store", "custom", 1)

	tk := d.runningTasks("store")[0]
	ci, err := d.inspect(tk.GetStatus().GetContainerId())
	if err != nil {
		t.Fatal(err)
	}
	host, cfg := ci.Container.HostConfig, ci.Container.Config
	if host.Memory != 64<<20 || host.NanoCPUs != 5e8 {
		t.Errorf("limits: memory %d nano CPUs %d", host.Memory, host.NanoCPUs)
	}
	if cfg.Labels["team"] != "storage" || !slices.Contains(cfg.Env, "HELLO_VERSION=custom") {
		t.Errorf("labels %v env %v", cfg.Labels, cfg.Env)
	}
	if hc := cfg.Healthcheck; hc == nil || !slices.Equal(hc.Test, append([]string{"CMD"}, helloCheck().GetCommand()...)) {
		t.Errorf("health check %+v", hc)
	}
	mounts := map[string]string{}
	for _, m := range ci.Container.Mounts {
		mounts[m.Destination] = fmt.Sprintf("%s %s rw=%v", m.Type, m.Name+m.Source, m.RW)
	}
	for target, want := range map[string]string{
		"/shared":  "bind " + dir + " rw=false",
		"/data":    "volume " + vol,
		"/scratch": "tmpfs",
	} {
		if !strings.HasPrefix(mounts[target], want) {
			t.Errorf("mount %s: %q, want %q", target, mounts[target], want)
		}
	}
}

func TestDockerBadInput(t *testing.T) {
	d := newDockerCluster(t)
	d.addManagers(1)
	d.addDockerWorkers(1)

	d.createService(dockerSpec("ghost", "shoal/hello:no-such-tag", 1))
	bad := dockerSpec("badmount", helloV1, 1)
	bad.Task.Container.Mounts = []*pb.Mount{{Type: pb.MountType_MOUNT_TYPE_BIND, Source: "/no/such/dir/shoal-test", Target: "/data"}}
	d.createService(bad)
	rejected := func(name, msg string) {
		d.eventually(30*time.Second, name+" rejected", func() (bool, string) {
			for _, tk := range d.serviceTasks(name) {
				if tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_REJECTED && strings.Contains(tk.GetStatus().GetErr(), msg) {
					return true, ""
				}
			}
			return false, "no rejected task with the message yet"
		})
	}
	// An image the node lacks is pulled; one no registry has fails the
	// task with the Engine's reason, and it is tried again.
	d.eventually(30*time.Second, "ghost failed", func() (bool, string) {
		for _, tk := range d.serviceTasks("ghost") {
			if tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_FAILED && strings.Contains(tk.GetStatus().GetErr(), "pull shoal/hello:no-such-tag on node w1: ") {
				return true, ""
			}
		}
		return false, "no failed task with the pull's reason yet"
	})
	rejected("badmount", "bind mount source /no/such/dir/shoal-test does not exist")

	// An image whose own HEALTHCHECK fails (no check in the spec): the
	// agent follows the container's health and fails the task.
	id := raftstore.NewID()
	task := &pb.Task{
		Id: id, ServiceName: "sick", Slot: 1, NodeId: d.workers[0].a.ID(),
		Spec:         &pb.TaskSpec{Runtime: "docker", Container: &pb.ContainerSpec{Image: helloUnhealthy, StopGracePeriod: int64(time.Second)}},
		DesiredState: pb.TaskState_TASK_STATE_RUNNING,
		Status:       &pb.TaskStatus{State: pb.TaskState_TASK_STATE_ASSIGNED, Timestamp: time.Now().UnixNano()},
	}
	d.update(func(tx *raftstore.Tx) error { return tx.Tasks().Create(task) })
	failed := d.waitTaskState(id, pb.TaskState_TASK_STATE_FAILED, 45*time.Second)
	if failed.GetStatus().GetHealth() != pb.HealthState_HEALTH_STATE_UNHEALTHY || !strings.Contains(failed.GetStatus().GetErr(), "health check") {
		t.Fatalf("unhealthy image: %+v", failed.GetStatus())
	}
}

func TestDockerServiceDiscovery(t *testing.T) {
	d := newDockerCluster(t)
	d.addManagers(1)
	d.addDockerWorkers(2)

	published := uint32(d.freePort()) + 3
	front := dockerSpec("front", helloV1, 1)
	front.Endpoint = &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80, PublishedPort: published}}}
	front.Task.Container.Healthcheck = helloCheck()
	api := dockerSpec("api", helloV1, 2)
	api.Task.Container.Healthcheck = helloCheck()
	d.createService(front)
	d.createService(api)

	// A container reaches another service by name: the node's container
	// resolver answers api's virtual IP and the proxy spreads over api's
	// replicas, on this node or the other.
	for _, w := range d.workers {
		d.callReaches(fmt.Sprintf("http://%s:%d/call/api/", w.cfg.AdvertiseIP, published), 2)
	}
}

// mountedFile checks that a task's container has path bind-mounted
// read-only from a file under dir on the node, and returns the file as the
// container sees it (read with the Engine: the image has no shell).
func (d *dcluster) mountedFile(tk *pb.Task, path, dir string) (*tar.Header, []byte) {
	d.t.Helper()
	ci, err := d.inspect(tk.GetStatus().GetContainerId())
	if err != nil {
		d.t.Fatal(err)
	}
	i := slices.IndexFunc(ci.Container.Mounts, func(m container.MountPoint) bool { return m.Destination == path })
	if i < 0 {
		d.t.Fatalf("no mount at %s: %+v", path, ci.Container.Mounts)
	}
	if m := ci.Container.Mounts[i]; string(m.Type) != "bind" || m.RW || !strings.HasPrefix(m.Source, dir+"/") {
		d.t.Errorf("mount at %s: type %s rw %v source %s; want a read-only bind from %s", path, m.Type, m.RW, m.Source, dir)
	}
	ctx, cancel := d.ctx()
	defer cancel()
	res, err := d.cli.CopyFromContainer(ctx, tk.GetStatus().GetContainerId(), client.CopyFromContainerOptions{SourcePath: path})
	if err != nil {
		d.t.Fatal(err)
	}
	defer res.Content.Close()
	tr := tar.NewReader(res.Content)
	hdr, err := tr.Next()
	if err != nil {
		d.t.Fatal(err)
	}
	data, err := io.ReadAll(tr)
	if err != nil {
		d.t.Fatal(err)
	}
	return hdr, data
}

// TestDockerSecretMounted: a container finds its secret read-only at
// /run/secrets/<target>, bind-mounted from the worker's tmpfs, and the
// file leaves the worker when the task ends.
func TestDockerSecretMounted(t *testing.T) {
	d := newDockerCluster(t)
	d.addManagers(1)
	d.addDockerWorkers(1)
	value := secretValue(t)
	d.createSecret("api-token", value)
	spec := dockerSpec("vault", helloV1, 1)
	spec.Task.Container.Healthcheck = helloCheck()
	spec.Task.Container.Secrets = []*pb.SecretReference{{SecretName: "api-token", Target: "token"}}
	d.createService(spec)
	d.answersAll("vault", "v1", 1)

	tk := d.runningTasks("vault")[0]
	w := d.workers[0]
	hdr, got := d.mountedFile(tk, "/run/secrets/token", w.a.SecretsDir())
	if !bytes.Equal(got, value) || hdr.FileInfo().Mode().Perm() != 0o400 {
		t.Errorf("/run/secrets/token in the container: %q mode %v; want the value, mode 0400", got, hdr.FileInfo().Mode().Perm())
	}

	d.scale("vault", 0)
	d.eventually(30*time.Second, "the secret gone from the worker", func() (bool, string) {
		held, files := w.a.HeldSecrets(), filesUnder(w.a.SecretsDir())
		return len(held) == 0 && len(files) == 0, fmt.Sprintf("holds %v, files %v", held, files)
	})
}

// TestDockerConfigMounted: a container finds its config read-only at its
// target with the mode and owner asked for, and the task reads it: the
// hello app reports the version the config file holds
// (HELLO_VERSION_FILE). The file leaves the worker when the task ends.
func TestDockerConfigMounted(t *testing.T) {
	d := newDockerCluster(t)
	d.addManagers(1)
	d.addDockerWorkers(1)
	d.createConfig(d.leader(), "hello-version", []byte("v7-from-config\n"))
	spec := dockerSpec("conf", helloV1, 1)
	spec.Task.Container.Healthcheck = helloCheck()
	spec.Task.Container.Env = []string{"HELLO_VERSION_FILE=/etc/hello/version"}
	spec.Task.Container.Configs = []*pb.ConfigReference{{ConfigName: "hello-version", Target: "/etc/hello/version", Mode: 0o440, Uid: "1000", Gid: "1000"}}
	d.createService(spec)
	d.answersAll("conf", "v7-from-config", 1)

	tk := d.runningTasks("conf")[0]
	w := d.workers[0]
	hdr, got := d.mountedFile(tk, "/etc/hello/version", w.a.ConfigsDir())
	if string(got) != "v7-from-config\n" || hdr.FileInfo().Mode().Perm() != 0o440 || hdr.Uid != 1000 || hdr.Gid != 1000 {
		t.Errorf("/etc/hello/version in the container: %q mode %v owner %d:%d; want the config, 0440, owned by 1000:1000", got, hdr.FileInfo().Mode().Perm(), hdr.Uid, hdr.Gid)
	}

	d.scale("conf", 0)
	d.eventually(30*time.Second, "the config gone from the worker", func() (bool, string) {
		held, files := w.a.HeldConfigs(), filesUnder(w.a.ConfigsDir())
		return len(held) == 0 && len(files) == 0, fmt.Sprintf("holds %v, files %v", held, files)
	})
}
