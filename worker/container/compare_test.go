package container

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/docker"
	"github.com/shoal-cluster/shoal/worker/imagestore"
	"github.com/shoal-cluster/shoal/worker/process"
)

// compareEnv runs TestCompareRuntimes (a measurement, not a check: it
// takes a minute and needs the Docker Engine with the sample images).
const compareEnv = "SHOAL_COMPARE_RUNTIMES"

// TestCompareRuntimes measures the container, docker and process runtimes
// on the same program, shoal/hello (cmd/hello): Prepare+Start of one task
// to running, Stop (SIGTERM, it exits), memory per running task (the
// resident memory of everything that runs for it: supervisor, runc and
// the program; the Engine's shim and the program), and 20 tasks prepared
// and started at once until all run. It logs a table.
func TestCompareRuntimes(t *testing.T) {
	if os.Getenv(compareEnv) == "" {
		t.Skipf("a measurement: set %s=1 to run it", compareEnv)
	}
	requireRunc(t)
	dir := t.TempDir()
	// The program as an executable and as an image.
	hello := filepath.Join(dir, "hello")
	build := exec.Command("go", "build", "-o", hello, "github.com/shoal-cluster/shoal/cmd/hello")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build hello: %v\n%s", err, out)
	}
	tarball := filepath.Join(dir, "hello.tar")
	if out, err := exec.Command("docker", "save", "-o", tarball, "shoal/hello:v1").CombinedOutput(); err != nil {
		t.Fatalf("docker save shoal/hello:v1 (make images first): %v\n%s", err, out)
	}
	store, err := imagestore.Open(filepath.Join(dir, "images"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if _, err := store.Load(context.Background(), tarball); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	log := slog.New(slog.DiscardHandler)
	ctr, err := New(Config{Dir: filepath.Join(dir, "container"), Images: StoreImages(store), AdvertiseIP: "127.0.0.1",
		SupervisorCommand: []string{exe}, SupervisorEnv: []string{"SHOAL_SUPERVISE=1"}, CgroupParent: testCgroupParent, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	proc, err := process.New(process.Config{Dir: filepath.Join(dir, "process"), AdvertiseIP: "127.0.0.1",
		SupervisorCommand: []string{exe}, SupervisorEnv: []string{"SHOAL_SUPERVISE=1"}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dock, err := docker.New(ctx, docker.Config{NodeID: "compare-" + randomSuffix(), AdvertiseIP: "127.0.0.1", Logger: log})
	if err != nil {
		t.Fatalf("docker runtime: %v", err)
	}
	defer dock.Close()

	type result struct {
		name               string
		start, stop        time.Duration
		memPerTask         int64
		twenty, twentyStop time.Duration
	}
	var results []result
	for _, rc := range []struct {
		name string
		rt   worker.Runtime
		spec *pb.ContainerSpec
		// mainPid is the pid whose parent's tree is the task's footprint.
		root func(info worker.TaskInfo) int
	}{
		{Name, ctr, &pb.ContainerSpec{Image: "shoal/hello:v1"}, func(info worker.TaskInfo) int { return parentOf(info.Pid) }},
		{docker.Name, dock, &pb.ContainerSpec{Image: "shoal/hello:v1"}, func(info worker.TaskInfo) int {
			out, _ := exec.Command("docker", "inspect", "-f", "{{.State.Pid}}", info.ContainerID).Output()
			pid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
			return parentOf(pid)
		}},
		{process.Name, proc, &pb.ContainerSpec{Command: []string{hello}}, func(info worker.TaskInfo) int { return parentOf(info.Pid) }},
	} {
		task := func(i int) *pb.Task {
			return &pb.Task{Id: fmt.Sprintf("cmp-%s-%d-%s", rc.name, i, randomSuffix()), ServiceName: "web", Slot: uint64(i + 1),
				Spec:     &pb.TaskSpec{Runtime: rc.name, Container: rc.spec},
				Endpoint: &pb.Endpoint{Spec: &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80}}}}}
		}
		run := func(tk *pb.Task) error {
			if err := rc.rt.Prepare(ctx, tk, worker.TaskFiles{}); err != nil {
				return err
			}
			return rc.rt.Start(ctx, tk.Id)
		}
		var r result
		r.name = rc.name
		// One at a time, after a warm-up.
		var starts, stops []time.Duration
		for i := range 6 {
			tk := task(i)
			begin := time.Now()
			if err := run(tk); err != nil {
				t.Fatalf("%s: %v", rc.name, err)
			}
			took := time.Since(begin)
			begin = time.Now()
			if err := rc.rt.Stop(ctx, tk.Id, 10*time.Second); err != nil {
				t.Fatalf("%s: %v", rc.name, err)
			}
			stopped := time.Since(begin)
			if err := rc.rt.Remove(ctx, tk.Id); err != nil {
				t.Fatalf("%s: %v", rc.name, err)
			}
			if i > 0 {
				starts, stops = append(starts, took), append(stops, stopped)
			}
		}
		r.start, r.stop = median(starts), median(stops)

		// 20 at once.
		var tasks []*pb.Task
		for i := range 20 {
			tasks = append(tasks, task(100+i))
		}
		begin := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, len(tasks))
		for _, tk := range tasks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := run(tk); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		r.twenty = time.Since(begin)
		close(errs)
		for err := range errs {
			t.Fatalf("%s: %v", rc.name, err)
		}
		time.Sleep(time.Second) // let them settle before measuring
		var total int64
		for _, tk := range tasks {
			info, err := rc.rt.Inspect(ctx, tk.Id)
			if err != nil {
				t.Fatal(err)
			}
			total += treeRSS(rc.root(info))
		}
		r.memPerTask = total / int64(len(tasks))
		begin = time.Now()
		for _, tk := range tasks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = rc.rt.Remove(ctx, tk.Id)
			}()
		}
		wg.Wait()
		r.twentyStop = time.Since(begin)
		results = append(results, r)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n| runtime | start one (median of 5) | stop one | memory per running task | 20 at once: all running | 20: all removed |\n|---|---|---|---|---|---|\n")
	for _, r := range results {
		fmt.Fprintf(&b, "| %s | %s | %s | %.1f MiB | %s | %s |\n", r.name, r.start.Round(time.Millisecond), r.stop.Round(time.Millisecond),
			float64(r.memPerTask)/(1<<20), r.twenty.Round(time.Millisecond), r.twentyStop.Round(time.Millisecond))
	}
	t.Log(b.String())
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// parentOf is pid's parent (0 when unknown).
func parentOf(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(data), ')')
	f := strings.Fields(string(data)[i+2:])
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
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		children[parentOf(p)] = append(children[parentOf(p)], p)
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
