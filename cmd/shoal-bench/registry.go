package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/shoal-cluster/shoal/internal/registrytest"
	pb "github.com/shoal-cluster/shoal/proto"
	dockerrt "github.com/shoal-cluster/shoal/worker/docker"
)

// Registry images: one manager process and three worker processes that
// run containers on this machine's Docker Engine, and Debian's
// docker-registry on loopback. Each run pushes an image no node has (the
// sample image plus a layer unique to the run), creates a 6-replica
// service from it through the Control API (the manager pins the tag to its
// digest) and polls ListServices until 6 tasks run; the service and the
// pulled image are removed before the next run. The three workers share
// one Engine, so the image is pulled once per run, as on one machine.
const (
	rgReplicas = 6
	rgWorkers  = 3
	rgWait     = 2 * time.Minute
	rgPoll     = 20 * time.Millisecond
)

// rgWorkerIPs are the workers' loopback addresses.
var rgWorkerIPs = []string{"127.0.0.4", "127.0.0.5", "127.0.0.6"}

func rgRuns(quick bool) int {
	if quick {
		return 2
	}
	return 5
}

func runRegistry(ctx context.Context, e *env) ([]series, error) {
	if _, err := registrytest.Binary(); err != nil {
		return nil, err
	}
	engine, err := dockerrt.NewClient("")
	if err != nil {
		return nil, err
	}
	defer engine.Close()
	if err := dockerrt.Ping(ctx, engine); err != nil {
		return nil, fmt.Errorf("the registry benchmark needs the Docker Engine: %w", err)
	}
	if _, err := engine.ImageInspect(ctx, "shoal/hello:v1"); err != nil {
		if out, err := exec.CommandContext(ctx, filepath.Join(e.moduleRoot, "scripts", "images.sh"), "v1").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build shoal/hello:v1: %v: %s", err, out)
		}
	}
	reg, err := registrytest.Start(ctx, filepath.Join(e.tmp, "registry"), registrytest.Options{})
	if err != nil {
		return nil, err
	}
	defer reg.Stop()
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := reg.RemoveFromEngine(cctx, engine); err != nil {
			e.notef("registry: remove pulled images: %v", err)
		}
	}()

	port, err := rgFreePort(e)
	if err != nil {
		return nil, err
	}
	c, err := e.newClusterN(ctx, "registry", 1, port, []string{"--heartbeat-period", "500ms"})
	if err != nil {
		return nil, err
	}
	defer e.closeClusters()
	for i := range rgWorkers {
		w, err := c.startWorkerAt(ctx, "w"+strconv.Itoa(i+1), rgWorkerIPs[i], nil)
		if err != nil {
			return nil, err
		}
		defer w.stop()
		if err := rgWaitDocker(ctx, c, w); err != nil {
			return nil, err
		}
	}
	ctl := pb.NewControlClient(c.conn(c.members[0].api))

	var allMs, createMs, localMs []float64
	for r := range rgRuns(e.opts.quick) {
		ref, _, err := reg.Push(ctx, engine, "shoal/hello:v1", "shoal/hello:run"+strconv.Itoa(r+1), "", "")
		if err != nil {
			return nil, err
		}
		created, all, err := rgCreateRunning(ctx, ctl, "reg"+strconv.Itoa(r+1), ref, pb.ResolveImage_RESOLVE_IMAGE_ALWAYS)
		if err != nil {
			return nil, fmt.Errorf("run %d: %w", r+1, err)
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = reg.RemoveFromEngine(cctx, engine)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("run %d: %w", r+1, err)
		}
		// The same with the image already on the Engine: what the pull adds.
		_, local, err := rgCreateRunning(ctx, ctl, "loc"+strconv.Itoa(r+1), "shoal/hello:v1", pb.ResolveImage_RESOLVE_IMAGE_NEVER)
		if err != nil {
			return nil, fmt.Errorf("run %d (local image): %w", r+1, err)
		}
		allMs, createMs, localMs = append(allMs, ms(all)), append(createMs, ms(created)), append(localMs, ms(local))
		e.log.Info("registry run", "run", r+1, "create_call", created.Round(time.Millisecond), "all_running", all.Round(time.Millisecond),
			"all_running_local_image", local.Round(time.Millisecond))
	}
	return []series{
		{name: "registry: service create → 6/6 running, image on no node (1 manager, 3 workers on one Engine)", unit: "ms", samples: allMs},
		{name: "registry: the CreateService call (the manager pins the tag to its digest)", unit: "ms", samples: createMs},
		{name: "registry: the same with the image already on the Engine (no pull, not pinned)", unit: "ms", samples: localMs},
	}, nil
}

// rgCreateRunning creates a 6-replica docker service from image, waits
// until all its tasks run, and removes it; it returns how long the
// CreateService call and the whole took.
func rgCreateRunning(ctx context.Context, ctl pb.ControlClient, name, image string, resolve pb.ResolveImage) (created, all time.Duration, err error) {
	spec := &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: name},
		Task: &pb.TaskSpec{Runtime: "docker", Container: &pb.ContainerSpec{Image: image, StopGracePeriod: int64(time.Second)},
			Restart: &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY, Delay: int64(100 * time.Millisecond)}},
		Mode: &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: rgReplicas}},
	}
	t0 := time.Now()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	resp, err := ctl.CreateService(cctx, &pb.CreateServiceRequest{Spec: spec, ResolveImage: resolve})
	cancel()
	if err != nil {
		return 0, 0, fmt.Errorf("CreateService: %w", err)
	}
	created = time.Since(t0)
	svc := resp.GetService()
	if resolve != pb.ResolveImage_RESOLVE_IMAGE_NEVER && svc.GetSpec().GetTask().GetContainer().GetImage() == image {
		return 0, 0, fmt.Errorf("the image was not pinned (warnings: %q)", resp.GetWarnings())
	}
	err = poll(ctx, rgWait, rgPoll, fmt.Sprintf("%d running tasks", rgReplicas), func(ctx context.Context) (bool, error) {
		cts, err := serviceCounts(ctx, ctl, svc.GetId())
		if err != nil {
			return false, err
		}
		if cts.GetRunning() == rgReplicas {
			return true, nil
		}
		return false, fmt.Errorf("%d of %d running", cts.GetRunning(), cts.GetDesired())
	})
	if err != nil {
		return 0, 0, err
	}
	all = time.Since(t0)
	return created, all, rgRemove(ctx, ctl, svc.GetId())
}

// rgFreePort picks a base port free on the manager's and every worker's
// address.
func rgFreePort(e *env) (int, error) {
	for range 50 {
		base, err := e.freePort()
		if err != nil {
			return 0, err
		}
		ok := true
		for _, ip := range rgWorkerIPs {
			ok = ok && portsFreeOn(ip, base)
		}
		if ok {
			return base, nil
		}
	}
	return 0, errors.New("no port range free on the manager and worker addresses")
}

// rgWaitDocker waits until a worker offers the docker runtime.
func rgWaitDocker(ctx context.Context, c *cluster, w *workerNode) error {
	return poll(ctx, 30*time.Second, 50*time.Millisecond, w.name+" to offer the docker runtime", func(ctx context.Context) (bool, error) {
		n, err := c.nodeByHostname(ctx, w.name)
		if err != nil || n == nil {
			return false, err
		}
		for _, rt := range n.GetDescription().GetRuntimes() {
			if rt == "docker" {
				return true, nil
			}
		}
		return false, fmt.Errorf("%s offers %v", w.name, n.GetDescription().GetRuntimes())
	})
}

// rgRemove removes a service and waits until none of its tasks is left.
func rgRemove(ctx context.Context, ctl pb.ControlClient, id string) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := ctl.RemoveService(cctx, &pb.RemoveServiceRequest{Ref: id}); err != nil {
		return fmt.Errorf("RemoveService: %w", err)
	}
	return poll(ctx, rgWait, 50*time.Millisecond, "the service's tasks to go", func(ctx context.Context) (bool, error) {
		resp, err := ctl.ListTasks(ctx, &pb.ListTasksRequest{})
		if err != nil {
			return false, err
		}
		for _, t := range resp.GetTasks() {
			if t.GetServiceId() == id {
				return false, fmt.Errorf("task %s still %s", t.GetId(), t.GetStatus().GetState())
			}
		}
		return true, nil
	})
}
