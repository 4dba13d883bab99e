package tests

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/container"
	"github.com/shoal-cluster/shoal/worker/imagestore"
)

var (
	tarballsOnce sync.Once
	tarballsDir  string
	tarballsErr  error
)

// helloTarballs saves the sample images as `docker save` tarballs, once
// per run: the Engine only builds them; the container runtime's nodes
// load the tarballs into their own stores.
func helloTarballs(t *testing.T) map[string]string {
	t.Helper()
	dockerEngine(t) // builds the images
	tarballsOnce.Do(func() {
		tarballsDir, tarballsErr = os.MkdirTemp("", "shoal-hello-tarballs-")
		if tarballsErr != nil {
			return
		}
		for _, ref := range []string{helloV1, helloV2, helloUnhealthy} {
			p := filepath.Join(tarballsDir, strings.NewReplacer("/", "-", ":", "-").Replace(ref)+".tar")
			if out, err := exec.Command("docker", "save", "-o", p, ref).CombinedOutput(); err != nil {
				tarballsErr = fmt.Errorf("docker save %s: %v: %s", ref, err, out)
				return
			}
		}
	})
	if tarballsErr != nil {
		t.Fatal(tarballsErr)
	}
	out := map[string]string{}
	for _, ref := range []string{helloV1, helloV2, helloUnhealthy} {
		out[ref] = filepath.Join(tarballsDir, strings.NewReplacer("/", "-", ":", "-").Replace(ref)+".tar")
	}
	return out
}

// ccluster is a test cluster whose workers run the container runtime (on a
// task network, with the sample images loaded into their stores) besides
// the process runtime. Its containers are removed when the test ends.
type ccluster struct {
	*cluster
	tarballs map[string]string

	mu       sync.Mutex
	runtimes map[*wrk]*container.Runtime
}

func newContainerCluster(t *testing.T) *ccluster {
	if _, err := container.Check(""); err != nil {
		if os.Getenv(requireDockerEnv) == "1" {
			t.Fatalf("%s=1 but this node cannot run containers: %v", requireDockerEnv, err)
		}
		t.Skipf("cannot run containers here: %v", err)
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skipf("no task networks without nft: %v", err)
	}
	cc := &ccluster{cluster: newCluster(t), tarballs: helloTarballs(t), runtimes: map[*wrk]*container.Runtime{}}
	cc.taskNetworks = true
	t.Cleanup(cc.cleanup) // before the cluster's own cleanup
	return cc
}

// cleanup stops the agents, then removes every container they left.
func (cc *ccluster) cleanup() {
	for _, w := range cc.workers {
		if w.a != nil {
			w.a.Close()
			w.a = nil
		}
	}
	// Connections to removed tasks' addresses would never close.
	defer http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	cc.mu.Lock()
	defer cc.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, r := range cc.runtimes {
		list, _ := r.List(ctx)
		for _, info := range list {
			if err := r.Remove(ctx, info.TaskID); err != nil {
				cc.t.Logf("remove container %s: %v", info.TaskID, err)
			}
		}
	}
}

// containerWorkerConfig is workerConfig with the container runtime added.
func (cc *ccluster) containerWorkerConfig(i int, w *wrk) worker.Config {
	cfg := cc.workerConfig(i, w)
	processRuntimes := cfg.Runtimes
	cfg.Runtimes = func() ([]worker.Runtime, error) {
		rts, err := processRuntimes()
		if err != nil {
			return nil, err
		}
		store, err := imagestore.Open(filepath.Join(cfg.DataDir, "worker", "images"), slog.New(slog.DiscardHandler))
		if err != nil {
			return nil, err
		}
		for _, p := range cc.tarballs {
			if _, err := store.Load(context.Background(), p); err != nil {
				return nil, fmt.Errorf("load %s: %w", p, err)
			}
		}
		r, err := container.New(container.Config{
			Dir:               filepath.Join(cfg.DataDir, "worker", "container"),
			Images:            container.StoreImages(store),
			Network:           container.TaskNetwork(w.taskNet),
			AdvertiseIP:       cfg.AdvertiseIP,
			SupervisorCommand: []string{os.Args[0]},
			SupervisorEnv:     []string{superviseEnv + "=1", "GORACE=atexit_sleep_ms=0"},
			CgroupParent:      "shoal-tests-" + filepath.Base(cc.base),
			Logger:            cfg.Logger,
		})
		if err != nil {
			return nil, err
		}
		cc.mu.Lock()
		cc.runtimes[w] = r
		cc.mu.Unlock()
		return append(rts, r), nil
	}
	w.cfg = cfg
	return cfg
}

// addContainerWorkers starts n workers with both runtimes.
func (cc *ccluster) addContainerWorkers(n int) {
	cc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tok := cc.token(pb.NodeRole_NODE_ROLE_WORKER)
	for range n {
		i := len(cc.workers) + 1
		w := &wrk{}
		a, err := worker.Join(ctx, cc.containerWorkerConfig(i, w), cc.live()[0].cfg.APIAddr(), tok)
		if err != nil {
			cc.t.Fatalf("start worker %d: %v", i, err)
		}
		w.a = a
		cc.workers = append(cc.workers, w)
		if err := a.WaitConnected(ctx); err != nil {
			cc.t.Fatal(err)
		}
	}
}

// TestContainerRuntimeServiceRollingUpdateAndRollback runs shoal/hello as a
// replicated service on the container runtime, from images loaded into
// each worker's own store (no container of the Docker Engine is made):
// each task at its own address, all reached through the routing mesh; then
// a rolling update v1 -> v2 and an automatic rollback from the unhealthy
// image.
func TestContainerRuntimeServiceRollingUpdateAndRollback(t *testing.T) {
	cc := newContainerCluster(t)
	cc.addManagers(1)
	cc.addContainerWorkers(2)
	cc.addWorkers(1) // process runtime only: no container goes there
	procOnly := cc.workers[2].a.ID()
	d := &dcluster{cluster: cc.cluster}

	published := uint32(cc.freePort()) + 3
	spec := dockerSpec("web", helloV1, 3)
	spec.Task.Runtime = container.Name
	spec.Task.Container.Healthcheck = helloCheck()
	spec.Endpoint = &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80, PublishedPort: published}}}
	cc.createService(spec)
	d.answersAll("web", "v1", 3)
	seen := map[string]bool{}
	for _, tk := range d.runningTasks("web") {
		p := tk.GetStatus().GetPorts()
		if tk.GetNodeId() == procOnly || len(p) != 1 || p[0].GetHostPort() != 80 || seen[p[0].GetHostIp()] ||
			!strings.HasPrefix(p[0].GetHostIp(), "10.") {
			t.Fatalf("task %s on %s with ports %v: want a container worker and an address of its own", tk.GetId(), tk.GetNodeId(), p)
		}
		seen[p[0].GetHostIp()] = true
	}
	// Through the mesh: the published port on every node reaches every
	// task, on its own node or another.
	for _, w := range cc.workers {
		want := 3
		url := fmt.Sprintf("http://%s:%d/", w.cfg.AdvertiseIP, published)
		answered := map[string]bool{}
		cc.eventually(30*time.Second, fmt.Sprintf("the mesh on %s reaching %d tasks", url, want), func() (bool, string) {
			c := http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			resp, err := c.Get(url)
			if err != nil {
				return false, fmt.Sprintf("%v (answered: %v)", err, answered)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			answered[strings.TrimSpace(string(body))] = true
			return len(answered) >= want, fmt.Sprint(answered)
		})
	}
	// No Docker Engine in the path.
	cli := dockerEngine(t)
	ctx, cancel := cc.ctx()
	defer cancel()
	for _, ref := range []string{helloV1, helloV2, helloUnhealthy} {
		f := client.Filters{}
		f.Add("ancestor", ref)
		res, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range res.Items {
			for _, tk := range cc.serviceTasks("web") {
				if strings.Contains(strings.Join(c.Names, ","), tk.GetId()) {
					t.Fatalf("the Engine has a container of task %s: %v", tk.GetId(), c.Names)
				}
			}
		}
	}

	d.updateService("web", func(s *pb.ServiceSpec) { s.Task.Container.Image = helloV2 })
	cc.eventually(90*time.Second, "the update to v2", func() (bool, string) {
		st := cc.updateState("web")
		return st.GetState() == pb.UpdateState_UPDATE_STATE_COMPLETED, st.String()
	})
	d.answersAll("web", "v2", 3)

	d.updateService("web", func(s *pb.ServiceSpec) { s.Task.Container.Image = helloUnhealthy })
	cc.eventually(120*time.Second, "an automatic rollback", func() (bool, string) {
		st := cc.updateState("web")
		return st.GetState() == pb.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED, st.String()
	})
	d.answersAll("web", "v2", 3)
	failed := 0
	for _, tk := range cc.serviceTasks("web") {
		if tk.GetSpec().GetContainer().GetImage() == helloUnhealthy && tk.GetStatus().GetHealth() == pb.HealthState_HEALTH_STATE_UNHEALTHY {
			failed++
		}
	}
	if failed == 0 {
		t.Fatal("no task of the unhealthy image was seen unhealthy")
	}
}
