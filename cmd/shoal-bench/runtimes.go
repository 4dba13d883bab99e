package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/container"
	"github.com/shoal-cluster/shoal/worker/docker"
	"github.com/shoal-cluster/shoal/worker/imagestore"
	"github.com/shoal-cluster/shoal/worker/process"
)

// runtimesBatch is how many tasks the runtimes benchmark starts at once.
const runtimesBatch = 20

// runRuntimes compares the container, docker and process runtimes on the
// same program, shoal/hello (cmd/hello; for the container runtime the
// Engine's image saved with `docker save` and loaded into an image store
// of its own), through the runtime API the agent uses: Prepare+Start of
// one task until it runs, its Stop (SIGTERM: it exits), the resident
// memory of everything that runs for a task (supervisor, runc and the
// program; the Engine's shim and the program, dockerd and containerd not
// counted), and 20 tasks prepared and started at once until all run.
func runRuntimes(ctx context.Context, e *env) ([]series, error) {
	if _, err := container.Check(""); err != nil {
		e.notef("runtimes: this machine cannot run the container runtime (%v): skipped", err)
		return nil, nil
	}
	dir := filepath.Join(e.tmp, "runtimes")
	hello, tarball, err := helloArtifacts(ctx, e, "runtimes", dir)
	if err != nil || hello == "" {
		return nil, err
	}
	store, err := imagestore.Open(filepath.Join(dir, "images"), slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	defer store.Close()
	if _, err := store.Load(ctx, tarball); err != nil {
		return nil, err
	}
	log := slog.New(slog.DiscardHandler)
	sup := e.supervisorCommand()
	ctr, err := container.New(container.Config{Dir: filepath.Join(dir, "container"), Images: container.StoreImages(store),
		AdvertiseIP: workerIP, SupervisorCommand: sup, CgroupParent: "shoal-bench-runtimes", Logger: log})
	if err != nil {
		return nil, err
	}
	proc, err := process.New(process.Config{Dir: filepath.Join(dir, "process"), AdvertiseIP: workerIP, SupervisorCommand: sup, Logger: log})
	if err != nil {
		return nil, err
	}
	dock, err := docker.New(ctx, docker.Config{NodeID: "bench-runtimes-" + strconv.Itoa(os.Getpid()), AdvertiseIP: workerIP, Logger: log})
	if err != nil {
		e.notef("runtimes: no Docker Engine (%v): skipped", err)
		return nil, nil
	}
	defer dock.Close()

	var out []series
	for _, rc := range []struct {
		name string
		rt   worker.Runtime
		spec *pb.ContainerSpec
		// root is the process whose tree is all that runs for the task.
		root func(info worker.TaskInfo) int
	}{
		{container.Name, ctr, &pb.ContainerSpec{Image: "shoal/hello:v1"}, func(info worker.TaskInfo) int { return parentPid(info.Pid) }},
		{docker.Name, dock, &pb.ContainerSpec{Image: "shoal/hello:v1"}, func(info worker.TaskInfo) int {
			b, _ := exec.Command("docker", "inspect", "-f", "{{.State.Pid}}", info.ContainerID).Output()
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			return parentPid(pid)
		}},
		{process.Name, proc, &pb.ContainerSpec{Command: []string{hello}}, func(info worker.TaskInfo) int { return parentPid(info.Pid) }},
	} {
		seq := 0
		task := func() *pb.Task {
			seq++
			return &pb.Task{Id: fmt.Sprintf("bench-%s-%d-%d", rc.name, os.Getpid(), seq), ServiceName: "web", Slot: uint64(seq),
				Spec:     &pb.TaskSpec{Runtime: rc.name, Container: rc.spec},
				Endpoint: &pb.Endpoint{Spec: &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80}}}}}
		}
		start := func(tk *pb.Task) error {
			if err := rc.rt.Prepare(ctx, tk, worker.TaskFiles{}); err != nil {
				return err
			}
			return rc.rt.Start(ctx, tk.Id)
		}
		var starts, stops []float64
		for i := range assignSamples(e.opts.quick) + 1 {
			tk := task()
			begin := time.Now()
			if err := start(tk); err != nil {
				return nil, fmt.Errorf("%s: %w", rc.name, err)
			}
			took := time.Since(begin)
			begin = time.Now()
			if err := rc.rt.Stop(ctx, tk.Id, 10*time.Second); err != nil {
				return nil, fmt.Errorf("%s: %w", rc.name, err)
			}
			stopped := time.Since(begin)
			if err := rc.rt.Remove(ctx, tk.Id); err != nil {
				return nil, fmt.Errorf("%s: %w", rc.name, err)
			}
			if i > 0 { // the first warms the caches
				starts, stops = append(starts, ms(took)), append(stops, ms(stopped))
			}
		}

		var tasks []*pb.Task
		for range runtimesBatch {
			tasks = append(tasks, task())
		}
		begin := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, len(tasks))
		for _, tk := range tasks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := start(tk); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		batch := time.Since(begin)
		close(errs)
		var firstErr error
		for err := range errs {
			firstErr = err
		}
		var mem int64
		if firstErr == nil {
			if err := sleepCtx(ctx, time.Second); err != nil { // settle before measuring
				firstErr = err
			}
			for _, tk := range tasks {
				info, err := rc.rt.Inspect(ctx, tk.Id)
				if err != nil {
					firstErr = err
					break
				}
				mem += treeRSS(rc.root(info))
			}
		}
		for _, tk := range tasks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = rc.rt.Remove(context.WithoutCancel(ctx), tk.Id)
			}()
		}
		wg.Wait()
		if firstErr != nil {
			return nil, fmt.Errorf("%s: %d at once: %w", rc.name, runtimesBatch, firstErr)
		}
		e.log.Info("runtime measured", "runtime", rc.name, "median_start_ms", round1(medianOf(starts)), "batch", batch.Round(time.Millisecond))
		out = append(out,
			series{name: rc.name + " runtime: Prepare+Start of one task → running (shoal/hello)", unit: "ms", samples: starts},
			series{name: rc.name + " runtime: Stop of one task (SIGTERM, it exits)", unit: "ms", samples: stops},
			series{name: rc.name + " runtime: resident memory per running task", unit: "MiB", samples: []float64{float64(mem) / float64(len(tasks)) / (1 << 20)}},
			series{name: fmt.Sprintf("%s runtime: %d tasks prepared and started at once → all running", rc.name, runtimesBatch), unit: "ms", samples: []float64{ms(batch)}},
		)
	}
	return out, nil
}

// helloArtifacts builds what the runtime benchmarks run: shoal/hello:v1
// in the Docker Engine, the hello binary (for the process runtime) and
// the image saved with `docker save` (for the container runtime's store),
// in dir. With no Engine to build the image in it notes why and returns
// "" (the benchmark is skipped).
func helloArtifacts(ctx context.Context, e *env, bench, dir string) (hello, tarball string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	if out, err := exec.CommandContext(ctx, filepath.Join(e.moduleRoot, "scripts", "images.sh"), "v1").CombinedOutput(); err != nil {
		e.notef("%s: cannot build shoal/hello:v1 in the Docker Engine (%v: %s): skipped", bench, err, strings.TrimSpace(string(out)))
		return "", "", nil
	}
	hello = filepath.Join(dir, "hello")
	build := exec.CommandContext(ctx, "go", "build", "-o", hello, "./cmd/hello")
	build.Dir = e.moduleRoot
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("go build cmd/hello: %v: %s", err, out)
	}
	tarball = filepath.Join(dir, "hello.tar")
	if out, err := exec.CommandContext(ctx, "docker", "save", "-o", tarball, "shoal/hello:v1").CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("docker save shoal/hello:v1: %v: %s", err, out)
	}
	return hello, tarball, nil
}

// parentPid is pid's parent (0 when unknown).
func parentPid(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// treeRSS is the resident memory of pid and its descendants.
func treeRSS(pid int) int64 {
	if pid <= 1 {
		return 0
	}
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, en := range ents {
		if p, err := strconv.Atoi(en.Name()); err == nil {
			pp := parentPid(p)
			children[pp] = append(children[pp], p)
		}
	}
	var total int64
	var walk func(int)
	walk = func(p int) {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		for _, line := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				total += kb << 10
			}
		}
		for _, c := range children[p] {
			walk(c)
		}
	}
	walk(pid)
	return total
}
