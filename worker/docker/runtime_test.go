package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/shoal-cluster/shoal/internal/poll"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
)

// RequireEnv makes tests fail, rather than skip, without an Engine.
const RequireEnv = "SHOAL_REQUIRE_DOCKER"

// engine returns a client of the local Engine, or skips the test when none
// answers (fails it when SHOAL_REQUIRE_DOCKER=1).
func engine(t *testing.T) *client.Client {
	t.Helper()
	cli, err := NewClient("")
	if err == nil {
		err = Ping(context.Background(), cli)
		if err != nil {
			cli.Close()
		}
	}
	if err != nil {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("%s=1 but the Docker Engine does not answer: %v", RequireEnv, err)
		}
		t.Skipf("no Docker Engine: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	ensureImages(t, cli)
	return cli
}

var imagesOnce sync.Once

// ensureImages builds the sample images with scripts/images.sh when one
// is missing. They stay: they are the images `make images` builds.
func ensureImages(t *testing.T, cli *client.Client) {
	t.Helper()
	var err error
	imagesOnce.Do(func() {
		for _, tag := range []string{"v1", "v2", "unhealthy"} {
			if _, ierr := cli.ImageInspect(context.Background(), "shoal/hello:"+tag); ierr != nil {
				out, berr := exec.Command("../../scripts/images.sh").CombinedOutput()
				if berr != nil {
					err = errors.New(berr.Error() + ": " + string(out))
				}
				return
			}
		}
	})
	if err != nil {
		t.Fatalf("build the sample images: %v", err)
	}
}

func randomID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// openRuntime makes a runtime with the tests' defaults for what cfg leaves
// unset; closing it is the caller's.
func openRuntime(t *testing.T, cfg Config) *Runtime {
	t.Helper()
	if cfg.NodeName == "" {
		cfg.NodeName = "test-node"
	}
	if cfg.AdvertiseIP == "" {
		cfg.AdvertiseIP = "127.0.0.1"
	}
	if cfg.PingInterval == 0 {
		cfg.PingInterval = 200 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// newRuntime makes a runtime for a fresh node ID, removing its containers
// when the test ends.
func newRuntime(t *testing.T, cli *client.Client, nodeID string) *Runtime {
	t.Helper()
	r := openRuntime(t, Config{NodeID: nodeID})
	t.Cleanup(func() {
		r.Close()
		removeNodeContainers(cli, nodeID)
	})
	return r
}

func removeNodeContainers(cli *client.Client, nodeID string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := client.Filters{}
	f.Add("label", LabelNodeID+"="+nodeID)
	res, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return
	}
	for _, c := range res.Items {
		_, _ = cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	}
}

func helloTask(id, image string) *pb.Task {
	return &pb.Task{
		Id: id, ServiceName: "hello", ServiceId: "svc", Slot: 1,
		Spec:     &pb.TaskSpec{Runtime: Name, Container: &pb.ContainerSpec{Image: image, StopGracePeriod: int64(2 * time.Second)}},
		Endpoint: &pb.Endpoint{Spec: &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80}}}},
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestContainerAndImageHealth: a task is a container named and configured
// as Shoal names it, serving on its published port; a command probe runs
// inside it, and the image's own HEALTHCHECK reports its health. The
// steps themselves (idempotence, states, logs, stop, remove) are the
// conformance suite's.
func TestContainerAndImageHealth(t *testing.T) {
	cli := engine(t)
	r := newRuntime(t, cli, "node-"+randomID())
	ctx := ctxT(t)
	id := "task" + randomID()
	task := helloTask(id, "shoal/hello:v1")
	if err := r.Prepare(ctx, task, worker.TaskFiles{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	info, err := r.Inspect(ctx, id)
	if err != nil || info.State != worker.RunRunning || info.ContainerID == "" || len(info.Ports) != 1 {
		t.Fatalf("after start: %+v %v", info, err)
	}
	c, err := cli.ContainerInspect(ctx, info.ContainerID, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Container.Name != "/hello.1."+id || c.Container.HostConfig.RestartPolicy.Name != "no" {
		t.Fatalf("container %s restart %v", c.Container.Name, c.Container.HostConfig.RestartPolicy)
	}
	p := info.Ports[0]
	if p.GetTargetPort() != 80 || p.GetHostIp() != "127.0.0.1" || p.GetHostPort() == 0 {
		t.Fatalf("port binding %v", p)
	}
	addr := net.JoinHostPort(p.GetHostIp(), strconv.Itoa(int(p.GetHostPort())))
	body := httpGet(t, "http://"+addr+"/")
	if !strings.Contains(body, "hello from hello.1."+id+" (v1)") {
		t.Fatalf("answer %q", body)
	}

	code, out, err := r.ProbeCommand(ctx, id, []string{"/hello", "-healthcheck", "http://127.0.0.1:80/healthz"}, 3*time.Second)
	if err != nil || code != 0 {
		t.Fatalf("probe: %d %q %v", code, out, err)
	}
	code, out, err = r.ProbeCommand(ctx, id, []string{"/hello", "-healthcheck", "http://127.0.0.1:81/healthz"}, 3*time.Second)
	if err != nil || code != 1 || !strings.Contains(out, "refused") {
		t.Fatalf("failing probe: %d %q %v", code, out, err)
	}
	if code, out, err := r.ProbeCommand(ctx, id, []string{"/no/such/program"}, 3*time.Second); err == nil && code == 0 {
		t.Fatalf("a missing health program passed: %q", out)
	}
	var state pb.HealthState
	waitFor(t, 20*time.Second, "the image's health check to pass", func() bool {
		var err error
		if state, out, err = r.Health(ctx, id); err != nil {
			t.Fatal(err)
		}
		return state == pb.HealthState_HEALTH_STATE_HEALTHY
	}, func() string { return fmt.Sprintf("health %v %q", state, out) })
}

// httpGet GETs url, retrying while the published port does not answer yet.
func httpGet(t *testing.T, url string) string {
	t.Helper()
	var body string
	var last error
	waitFor(t, 10*time.Second, "GET "+url, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			last = err
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		return true
	}, func() string { return fmt.Sprint(last) })
	return body
}

func TestMissingImageAndBadMount(t *testing.T) {
	cli := engine(t)
	r := newRuntime(t, cli, "node-"+randomID())
	ctx := ctxT(t)
	// An image the node lacks is pulled; one no registry has fails the
	// task (not rejected: the restart policy decides) with the reason.
	err := r.Prepare(ctx, helloTask("t"+randomID(), "shoal/no-such-image:v0"), worker.TaskFiles{})
	var perm *worker.PermanentError
	if err == nil || errors.As(err, &perm) || !strings.Contains(err.Error(), "pull shoal/no-such-image:v0 on node test-node: ") {
		t.Fatalf("missing image: %v", err)
	}
	task := helloTask("t"+randomID(), "shoal/hello:v1")
	task.Spec.Container.Mounts = []*pb.Mount{{Type: pb.MountType_MOUNT_TYPE_BIND, Source: "/no/such/dir/for/shoal", Target: "/data"}}
	if err := r.Prepare(ctx, task, worker.TaskFiles{}); !errors.As(err, &perm) || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("bad mount: %v", err)
	}
	// A limit the Engine refuses is a rejection too.
	task = helloTask("t"+randomID(), "shoal/hello:v1")
	task.Spec.Resources = &pb.ResourceRequirements{Limits: &pb.Resources{MemoryBytes: 1 << 20}}
	if err := r.Prepare(ctx, task, worker.TaskFiles{}); !errors.As(err, &perm) {
		t.Fatalf("tiny memory limit: %v", err)
	}
	if infos, err := r.List(ctx); err != nil || len(infos) != 0 {
		t.Fatalf("failed prepares left containers: %+v %v", infos, err)
	}
}

// A new runtime (a restarted agent) finds the containers of its node, and
// only those, and learns how one killed behind its back ended. The rest
// of a restart is the conformance suite's.
func TestRestartFindsContainers(t *testing.T) {
	cli := engine(t)
	node := "node-" + randomID()
	r1 := newRuntime(t, cli, node)
	other := newRuntime(t, cli, "node-"+randomID())
	ctx := ctxT(t)
	id, otherID := "task"+randomID(), "task"+randomID()
	for rt, tid := range map[*Runtime]string{r1: id, other: otherID} {
		if err := rt.Prepare(ctx, helloTask(tid, "shoal/hello:v1"), worker.TaskFiles{}); err != nil {
			t.Fatal(err)
		}
		if err := rt.Start(ctx, tid); err != nil {
			t.Fatal(err)
		}
	}
	r1.Close()
	r2 := newRuntime(t, cli, node)
	infos, err := r2.List(ctx)
	if err != nil || len(infos) != 1 || infos[0].TaskID != id || infos[0].State != worker.RunRunning {
		t.Fatalf("list after restart: %+v %v", infos, err)
	}
	if _, err := cli.ContainerKill(ctx, infos[0].ContainerID, client.ContainerKillOptions{Signal: "SIGKILL"}); err != nil {
		t.Fatal(err)
	}
	ex, err := r2.Wait(ctx, id)
	if err != nil || ex.Code != 137 || !strings.Contains(ex.Message, "signal: killed") {
		t.Fatalf("exit %+v, %v", ex, err)
	}
	if info, err := other.Inspect(ctx, otherID); err != nil || info.State != worker.RunRunning {
		t.Fatalf("the other node's container: %+v %v", info, err)
	}
}

// A container removed behind Shoal's back ends its Wait with a message.
func TestContainerRemovedByHand(t *testing.T) {
	cli := engine(t)
	r := newRuntime(t, cli, "node-"+randomID())
	ctx := ctxT(t)
	id := "task" + randomID()
	if err := r.Prepare(ctx, helloTask(id, "shoal/hello:v1"), worker.TaskFiles{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	info, _ := r.Inspect(ctx, id)
	exited := make(chan worker.Exit, 1)
	go func() {
		ex, err := r.Wait(ctx, id)
		if err != nil {
			t.Error(err)
		}
		exited <- ex
	}()
	if _, err := cli.ContainerRemove(ctx, info.ContainerID, client.ContainerRemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	select {
	case ex := <-exited:
		if ex.Code == 0 {
			t.Fatalf("exit %+v", ex)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not see the removal")
	}
	if _, err := r.Inspect(ctx, id); !errors.Is(err, worker.ErrTaskNotFound) {
		t.Fatalf("inspect: %v", err)
	}
}

// sockProxy forwards a unix socket to the Engine's, so that a test can
// make "the Engine" go away and come back.
type sockProxy struct {
	path, target string
	mu           sync.Mutex
	l            net.Listener
	conns        []net.Conn
	wg           sync.WaitGroup
}

func (p *sockProxy) start(t *testing.T) {
	t.Helper()
	l, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.l = l
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("unix", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); io.Copy(up, c); up.Close() }()
			go func() { defer p.wg.Done(); io.Copy(c, up); c.Close() }()
		}
	}()
}

// stop closes the socket and every connection through it.
func (p *sockProxy) stop() {
	p.mu.Lock()
	if p.l != nil {
		p.l.Close()
		p.l = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

// The Engine going away mid-task fails the task's Wait and makes the
// runtime unavailable until the Engine answers again.
func TestEngineGoesAway(t *testing.T) {
	cli := engine(t)
	target, ok := strings.CutPrefix(cli.DaemonHost(), "unix://")
	if !ok {
		t.Skipf("the Engine is not on a unix socket (%s)", cli.DaemonHost())
	}
	p := &sockProxy{path: filepath.Join(t.TempDir(), "docker.sock"), target: target}
	p.start(t)
	t.Cleanup(p.stop)
	node := "node-" + randomID()
	r, err := New(context.Background(), Config{
		NodeID: node, Host: "unix://" + p.path, AdvertiseIP: "127.0.0.1", PingInterval: 100 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Close()
		removeNodeContainers(cli, node)
	})
	ctx := ctxT(t)
	id := "task" + randomID()
	if err := r.Prepare(ctx, helloTask(id, "shoal/hello:v1"), worker.TaskFiles{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	// Start registered the task's wait with the Engine, through the
	// proxy: a Wait is in progress before the Engine goes.
	waitErr := make(chan error, 1)
	go func() {
		_, err := r.Wait(ctx, id)
		waitErr <- err
	}()
	p.stop()
	select {
	case err := <-waitErr:
		if err == nil || ctx.Err() != nil {
			t.Fatalf("Wait with the Engine gone: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not notice the Engine going away")
	}
	waitFor(t, 10*time.Second, "the runtime unavailable", func() bool { return !r.Available() }, nil)
	if _, err := r.Inspect(ctx, id); err == nil || errors.Is(err, worker.ErrTaskNotFound) {
		t.Fatalf("inspect with the Engine gone: %v", err)
	}
	p.start(t)
	waitFor(t, 10*time.Second, "the runtime available again", r.Available, nil)
	if info, err := r.Inspect(ctx, id); err != nil || info.State != worker.RunRunning {
		t.Fatalf("inspect with the Engine back: %+v %v", info, err)
	}
}

// waitFor polls cond until it holds, failing the test after d (with
// detail, if any, saying what was last seen).
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool, detail func() string) {
	t.Helper()
	poll.Until(t, d, what, poll.Bool(cond, detail))
}

// A host port that is taken fails the start (retried as a new task, not
// rejected), with the Engine's reason.
func TestHostPortClash(t *testing.T) {
	cli := engine(t)
	r := newRuntime(t, cli, "node-"+randomID())
	ctx := ctxT(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	id := "task" + randomID()
	task := helloTask(id, "shoal/hello:v1")
	task.Endpoint = &pb.Endpoint{Spec: &pb.EndpointSpec{Ports: []*pb.PortConfig{
		{TargetPort: 80, PublishMode: pb.PublishMode_PUBLISH_MODE_HOST, PublishedPort: uint32(port)},
	}}}
	if err := r.Prepare(ctx, task, worker.TaskFiles{}); err != nil {
		t.Fatal(err)
	}
	err = r.Start(ctx, id)
	var perm *worker.PermanentError
	if err == nil || errors.As(err, &perm) || !strings.Contains(err.Error(), strconv.Itoa(port)) {
		t.Fatalf("start on a taken port: %v", err)
	}
	t.Log(err)
}
