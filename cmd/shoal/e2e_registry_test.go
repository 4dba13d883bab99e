package main

// The journey "Images from a registry" through the CLI: `shoal` daemons
// whose workers run containers on this machine's Docker Engine, a real
// registry (Debian's docker-registry) started on loopback, and images that
// no node has until a worker pulls them.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
	"github.com/shoal-cluster/shoal/internal/registrytest"
	dockerrt "github.com/shoal-cluster/shoal/worker/docker"
)

// regTask is the part of a task `service ps --format json` prints that the
// registry journeys look at.
type regTask struct {
	NodeID       string `json:"node_id"`
	DesiredState string `json:"desired_state"`
	Spec         struct {
		Container struct {
			Image string `json:"image"`
		} `json:"container"`
	} `json:"spec"`
	Status struct {
		State   string `json:"state"`
		Message string `json:"message"`
		Err     string `json:"err"`
	} `json:"status"`
}

// regCluster is a manager and docker workers as `shoal` processes.
type regCluster struct {
	t       *testing.T
	engine  *client.Client
	manager *node
	nodeIDs []string
}

// requireEngine returns a client of the local Docker Engine with the sample
// images built, or skips (fails with SHOAL_REQUIRE_DOCKER=1).
func requireEngine(t *testing.T) *client.Client {
	t.Helper()
	cli, err := dockerrt.NewClient("")
	if err == nil {
		if err = dockerrt.Ping(context.Background(), cli); err != nil {
			cli.Close()
		}
	}
	if err != nil {
		if os.Getenv(registrytest.RequireEnv) == "1" {
			t.Fatalf("%s=1 but the Docker Engine does not answer: %v", registrytest.RequireEnv, err)
		}
		t.Skipf("no Docker Engine (set %s=1 to require one): %v", registrytest.RequireEnv, err)
	}
	t.Cleanup(func() { cli.Close() })
	registrytest.Need(t)
	for _, tag := range []string{"v1", "v2"} {
		if _, err := cli.ImageInspect(context.Background(), "shoal/hello:"+tag); err != nil {
			if out, err := exec.Command("../../scripts/images.sh", "v1", "v2").CombinedOutput(); err != nil {
				t.Fatalf("build the sample images: %v\n%s", err, out)
			}
			break
		}
	}
	return cli
}

// startRegCluster starts a manager and n workers that offer the docker
// runtime on ips[0] and the next addresses. Before the daemons stop, every
// service is removed and the containers of its workers with it.
func startRegCluster(t *testing.T, engine *client.Client, ips []string) *regCluster {
	base := t.TempDir()
	port := freePort(t, ips...)
	c := &regCluster{t: t, engine: engine}
	mdir := filepath.Join(base, "m1")
	c.manager = startDaemon(t, ips[0], port, mdir, "init", "--data-dir", mdir, "--advertise", fmt.Sprintf("%s:%d", ips[0], port),
		"--hostname", "m1", "--gossip-fast", "--heartbeat-period", "500ms")
	var token string
	eventually(t, 20*time.Second, "the worker token", func() (bool, string) {
		out, errOut, code := cli(t, "cluster", "join-token", "-q", "worker", "--host", c.manager.addr(), "--timeout", "2s")
		token = strings.TrimSpace(out)
		return code == 0 && strings.HasPrefix(token, "SHOAL-1-"), errOut
	})
	var names []string
	for i, ip := range ips[1:] {
		name := fmt.Sprintf("w%d", i+1)
		names = append(names, name)
		dir := filepath.Join(base, name)
		startDaemon(t, ip, port, dir, "join", "--data-dir", dir, "--advertise", fmt.Sprintf("%s:%d", ip, port),
			"--hostname", name, "--gossip-fast", "--token", token, c.manager.addr())
	}
	eventually(t, 45*time.Second, "Ready workers offering the docker runtime", func() (bool, string) {
		out, errOut, code := cli(t, append([]string{"node", "inspect", "--host", c.manager.addr(), "--timeout", "2s"}, names...)...)
		if code != 0 {
			return false, errOut
		}
		var nodes []struct {
			ID          string `json:"id"`
			Description struct {
				Runtimes []string `json:"runtimes"`
			} `json:"description"`
			Status struct {
				State string `json:"state"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(out), &nodes); err != nil {
			return false, err.Error()
		}
		c.nodeIDs = c.nodeIDs[:0]
		for _, n := range nodes {
			if n.Status.State == "NODE_STATE_READY" && slices.Contains(n.Description.Runtimes, "docker") {
				c.nodeIDs = append(c.nodeIDs, n.ID)
			}
		}
		return len(c.nodeIDs) == len(names), out
	})
	// Runs first, while the daemons still run.
	t.Cleanup(c.removeAll)
	return c
}

// removeAll removes every service and whatever containers they left.
func (c *regCluster) removeAll() {
	ids, _, code := cli(c.t, "service", "ls", "-q", "--host", c.manager.addr(), "--timeout", "5s")
	if code == 0 && strings.TrimSpace(ids) != "" {
		cli(c.t, append([]string{"service", "rm", "--host", c.manager.addr(), "--timeout", "5s"}, strings.Fields(ids)...)...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, id := range c.nodeIDs {
		f := client.Filters{}
		f.Add("label", dockerrt.LabelNodeID+"="+id)
		res, err := c.engine.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
		if err != nil {
			c.t.Logf("list containers: %v", err)
			continue
		}
		for _, ct := range res.Items {
			if _, err := c.engine.ContainerRemove(ctx, ct.ID, client.ContainerRemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
				c.t.Logf("remove container %s: %v", ct.ID, err)
			}
		}
	}
}

// svc runs `shoal service SUB --host MANAGER ARGS...`.
func (c *regCluster) svc(sub string, args ...string) (string, string, int) {
	c.t.Helper()
	return cliWithin(c.t, 90*time.Second, append([]string{"service", sub, "--host", c.manager.addr(), "--timeout", "75s"}, args...)...)
}

// ok runs `shoal service SUB ARGS...` and returns its output, failing the
// test unless it exited 0.
func (c *regCluster) ok(sub string, args ...string) string {
	c.t.Helper()
	out, errOut, code := c.svc(sub, args...)
	return c.must("service "+sub+" "+strings.Join(args, " "), out, errOut, code)
}

// must fails the test unless a command exited 0.
func (c *regCluster) must(what string, out, errOut string, code int) string {
	c.t.Helper()
	if code != 0 {
		c.t.Fatalf("%s: exit %d\nstdout:\n%s\nstderr:\n%s", what, code, out, errOut)
	}
	return out
}

// tasks is `service ps --format json NAME`.
func (c *regCluster) tasks(name string) []regTask {
	c.t.Helper()
	out := c.ok("ps", "--format", "json", name)
	var tasks []regTask
	if err := json.Unmarshal([]byte(out), &tasks); err != nil {
		c.t.Fatalf("service ps --format json: %v\n%s", err, out)
	}
	return tasks
}

// image is the image `service inspect` shows for a service.
func (c *regCluster) image(name string) string {
	c.t.Helper()
	out := c.ok("inspect", name)
	var svcs []struct {
		Spec struct {
			Task struct {
				Container struct {
					Image string `json:"image"`
				} `json:"container"`
			} `json:"task"`
		} `json:"spec"`
	}
	if err := json.Unmarshal([]byte(out), &svcs); err != nil || len(svcs) != 1 {
		c.t.Fatalf("service inspect: %v\n%s", err, out)
	}
	return svcs[0].Spec.Task.Container.Image
}

// runningOn checks that want tasks of a service run the image, and on how
// many nodes.
func (c *regCluster) runningOn(name, image string, want int) int {
	c.t.Helper()
	nodes := map[string]bool{}
	n := 0
	for _, tk := range c.tasks(name) {
		if tk.DesiredState == "TASK_STATE_RUNNING" && tk.Status.State == "TASK_STATE_RUNNING" {
			if tk.Spec.Container.Image != image {
				c.t.Errorf("a running task of %s runs %s, want %s", name, tk.Spec.Container.Image, image)
			}
			nodes[tk.NodeID] = true
			n++
		}
	}
	if n != want {
		c.t.Fatalf("%d running tasks of %s, want %d", n, name, want)
	}
	return len(nodes)
}

// failedWith waits until at least n tasks of a service have failed with
// an error holding every one of words, and returns one such error.
func (c *regCluster) failedWith(name string, n int, words ...string) string {
	c.t.Helper()
	var seen string
	eventually(c.t, 60*time.Second, fmt.Sprintf("%d failed tasks of %s saying %q", n, name, words), func() (bool, string) {
		count := 0
		var errs []string
		for _, tk := range c.tasks(name) {
			errs = append(errs, tk.Status.State+": "+tk.Status.Err)
			if tk.Status.State != "TASK_STATE_FAILED" {
				continue
			}
			all := true
			for _, w := range words {
				all = all && strings.Contains(tk.Status.Err, w)
			}
			if all {
				count++
				seen = tk.Status.Err
			}
		}
		return count >= n, strings.Join(errs, "\n")
	})
	return seen
}

// TestRegistryJourney: a service from an image in a registry that no node
// has, pinned to its digest at create, each worker pulling it; an update to
// v2 pins v2; an image the registry lacks is refused; a registry that is
// down leaves the service unpinned with a warning and its tasks failing
// with the reason, retried by the restart policy.
func TestRegistryJourney(t *testing.T) {
	engine := requireEngine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	reg := registrytest.StartT(t, registrytest.Options{})
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		if err := reg.RemoveFromEngine(cctx, engine); err != nil {
			t.Logf("remove pulled images: %v", err)
		}
	})
	v1, d1, err := reg.Push(ctx, engine, "shoal/hello:v1", "shoal/hello:v1", "", "")
	if err != nil {
		t.Fatal(err)
	}
	v2, d2, err := reg.Push(ctx, engine, "shoal/hello:v2", "shoal/hello:v2", "", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{v1, v2} {
		if _, err := engine.ImageInspect(ctx, ref); err == nil {
			t.Fatalf("%s is on the Engine before any worker pulled it", ref)
		}
	}
	c := startRegCluster(t, engine, []string{"127.0.0.41", "127.0.0.42", "127.0.0.43", "127.0.0.44"})

	out, errOut, code := c.svc("create", "--name", "web", "--replicas", "6", "--update-parallelism", "3", "--update-monitor", "1s", v1)
	c.must("service create", out, errOut, code)
	if strings.Contains(errOut, "warning") {
		t.Errorf("create warned: %s", errOut)
	}
	if got := c.image("web"); got != v1+"@"+d1 {
		t.Fatalf("service inspect shows image %s, want %s@%s", got, v1, d1)
	}
	if nodes := c.runningOn("web", v1+"@"+d1, 6); nodes != 3 {
		t.Errorf("6 tasks on %d nodes, want 3", nodes)
	}
	pretty := c.ok("inspect", "--pretty", "web")
	for _, want := range []string{v1 + "@" + d1, "Tag:", "Digest:", d1} {
		if !strings.Contains(pretty, want) {
			t.Errorf("inspect --pretty lacks %q:\n%s", want, pretty)
		}
	}

	c.ok("update", "--image", v2, "web")
	if got := c.image("web"); got != v2+"@"+d2 {
		t.Fatalf("after the update service inspect shows %s, want %s@%s", got, v2, d2)
	}
	c.runningOn("web", v2+"@"+d2, 6)

	// An image the registry does not have: one line, nothing created.
	_, errOut, code = c.svc("create", "--name", "ghost", "--detach", reg.Host+"/shoal/hello:v9")
	if code == 0 || !strings.Contains(errOut, "not found in the registry") || !strings.Contains(errOut, "--resolve-image never") ||
		strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
		t.Errorf("create from a tag the registry lacks: exit %d, stderr %q", code, errOut)
	}
	if ls := c.ok("ls"); strings.Contains(ls, "ghost") {
		t.Errorf("the refused service exists:\n%s", ls)
	}

	// A registry that cannot be reached: created unpinned, with Docker's
	// warning; each pull fails with the reason and is retried.
	down := "127.0.0.1:1/shoal/hello:v1"
	out, errOut, code = c.svc("create", "--name", "down", "--detach", "--restart-delay", "200ms", down)
	c.must("service create (registry down)", out, errOut, code)
	if !strings.Contains(errOut, "warning: image "+down+" could not be accessed on a registry to record its digest") {
		t.Errorf("no warning for an unreachable registry: %q", errOut)
	}
	if got := c.image("down"); got != down {
		t.Errorf("image %s, want it unpinned: %s", got, down)
	}
	c.failedWith("down", 2, "pull "+down+" on node w", "connection refused")
}

// TestPrivateRegistryJourney: a registry behind TLS (its CA where the
// Engine trusts it) with htpasswd users. A wrong password is refused at
// create, or, unpinned, fails the tasks with the registry's reason; `service update --with-registry-auth` with
// the right one (read from the Docker client config) pins the image and
// runs it, and the credentials never show.
func TestPrivateRegistryJourney(t *testing.T) {
	engine := requireEngine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const password = "pw-7f3a-right"
	reg := registrytest.StartT(t, registrytest.Options{TLS: true, Users: map[string]string{"alice": password}})
	if err := reg.Trust("/etc/docker/certs.d"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		if err := reg.RemoveFromEngine(cctx, engine); err != nil {
			t.Logf("remove pulled images: %v", err)
		}
	})
	ref, digest, err := reg.Push(ctx, engine, "shoal/hello:v1", "shoal/hello:v1", "alice", password)
	if err != nil {
		t.Fatal(err)
	}
	// The CLI's user: a Docker client config of their own.
	home := t.TempDir()
	t.Setenv("HOME", home)
	dockerConfig := filepath.Join(home, ".docker")
	t.Setenv("DOCKER_CONFIG", dockerConfig)
	if _, err := reg.DockerConfig(dockerConfig, "alice", "wrong"); err != nil {
		t.Fatal(err)
	}
	c := startRegCluster(t, engine, []string{"127.0.0.51", "127.0.0.52", "127.0.0.53"})

	// --with-registry-auth before any `docker login`: one line, nothing made.
	if err := os.Rename(filepath.Join(dockerConfig, "config.json"), filepath.Join(dockerConfig, "saved.json")); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := c.svc("create", "--name", "private", "--with-registry-auth", "--detach", ref)
	if code == 0 || !strings.Contains(errOut, "docker login "+reg.Host) {
		t.Errorf("--with-registry-auth without credentials: exit %d, %q", code, errOut)
	}
	if err := os.Rename(filepath.Join(dockerConfig, "saved.json"), filepath.Join(dockerConfig, "config.json")); err != nil {
		t.Fatal(err)
	}

	// A wrong password: the managers' digest lookup is refused with it, so
	// the create is refused in one line and nothing is made.
	_, errOut, code = c.svc("create", "--name", "private", "--with-registry-auth", "--detach", ref)
	if code == 0 || !strings.Contains(errOut, "--with-registry-auth") || !strings.Contains(errOut, "docker login "+reg.Host) {
		t.Errorf("--with-registry-auth with a wrong password: exit %d, %q", code, errOut)
	}
	if ls := c.ok("ls", "-q"); strings.TrimSpace(ls) != "" {
		t.Fatalf("a refused create left a service: %q", ls)
	}
	// Without the managers' lookup (--resolve-image never) the workers
	// cannot pull: the tasks fail with the registry's reason, again and again.
	out, errOut, code := c.svc("create", "--name", "private", "--with-registry-auth", "--resolve-image", "never", "--detach", "--restart-delay", "200ms", ref)
	c.must("service create --with-registry-auth --resolve-image never (wrong password)", out, errOut, code)
	reason := c.failedWith("private", 2, "pull "+ref+" on node w", "unauthorized: authentication required")
	t.Logf("a wrong password fails the task with: %s", reason)

	// The right password: the update sends it, the managers pin the image
	// and the workers pull it.
	if _, err := reg.DockerConfig(dockerConfig, "alice", password); err != nil {
		t.Fatal(err)
	}
	c.ok("update", "--with-registry-auth", "private")
	if got := c.image("private"); got != ref+"@"+digest {
		t.Fatalf("service inspect shows %s, want %s@%s", got, ref, digest)
	}
	c.runningOn("private", ref+"@"+digest, 1)
	inspect := c.ok("inspect", "private")
	pretty := c.ok("inspect", "--pretty", "private")
	if !strings.Contains(pretty, "Registry auth:") || !strings.Contains(pretty, reg.Host) {
		t.Errorf("inspect --pretty does not say the service has registry credentials:\n%s", pretty)
	}
	for _, shown := range []string{inspect, pretty} {
		if strings.Contains(shown, password) || strings.Contains(shown, "sealed_registry_auth") {
			t.Errorf("service inspect shows the credentials:\n%s", shown)
		}
	}
}
