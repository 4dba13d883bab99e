package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/shoal-cluster/shoal/internal/clientcreds"
	"github.com/shoal-cluster/shoal/internal/mesh"
	"github.com/shoal-cluster/shoal/internal/rpc"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/process"
)

// The routing mesh: a load generator on loopback against three small HTTP
// backends, directly and through a node's mesh (the same proxy code a
// node runs, in this process), with keep-alive connections and with one
// connection per request (runMesh); the same with wrk (meshwrk.go); and
// the time an endpoint change takes from its cause to a node's datapath
// (runEndpointChange). `-only mesh` runs all three.
const (
	meshClients  = 16
	meshBackends = 3
)

func runMesh(ctx context.Context, e *env) ([]series, error) {
	var backends []string
	for range meshBackends {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok\n") })}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		backends = append(backends, ln.Addr().String())
	}
	m := mesh.New(mesh.Config{IP: "127.0.0.1", Log: slog.New(slog.DiscardHandler)})
	defer m.Close()
	port, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	se := &pb.ServiceEndpoints{ServiceId: "bench", ServiceName: "bench",
		Ports: []*pb.PortConfig{{TargetPort: 80, PublishedPort: uint32(port)}}}
	for i, b := range backends {
		_, p, _ := net.SplitHostPort(b)
		hp, _ := strconv.Atoi(p)
		se.Tasks = append(se.Tasks, &pb.TaskEndpoint{TaskId: fmt.Sprint(i), Ip: "127.0.0.1",
			Ports: []*pb.PortBinding{{TargetPort: 80, HostIp: "127.0.0.1", HostPort: uint32(hp)}}})
	}
	m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{se}})
	meshAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if errs := m.Errors(); len(errs) > 0 {
		return nil, errs[0]
	}

	dur := e.opts.duration / 3
	if dur < time.Second {
		dur = time.Second
	}
	names := []string{"direct keep-alive", "mesh keep-alive", "direct new-conn", "mesh new-conn"}
	rps := make([]series, len(names))
	p99 := make([]series, len(names))
	for i, n := range names {
		rps[i] = series{name: "mesh: " + n + " throughput", unit: "req/s"}
		p99[i] = series{name: "mesh: " + n + " p99 latency", unit: "ms"}
	}
	for run := range e.opts.runs {
		for i, n := range names {
			targets := backends
			if i%2 == 1 {
				targets = []string{meshAddr}
			}
			r, err := loadHTTP(ctx, targets, i >= 2, dur)
			if err != nil {
				return nil, fmt.Errorf("%s run %d: %w", n, run+1, err)
			}
			rps[i].samples = append(rps[i].samples, r.rps)
			p99[i].samples = append(p99[i].samples, r.p99)
		}
	}
	var out []series
	for i := range names {
		out = append(out, rps[i], p99[i])
	}
	return out, nil
}

type loadResult struct{ rps, p99 float64 }

// loadHTTP runs meshClients clients for d, each asking one of targets in
// turn, and returns the request rate and the 99th percentile latency.
func loadHTTP(ctx context.Context, targets []string, newConn bool, d time.Duration) (loadResult, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for c := range meshClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := &http.Transport{DisableKeepAlives: newConn, MaxIdleConnsPerHost: 1}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
			var mine []time.Duration
			for i := c; ctx.Err() == nil; i++ {
				t0 := time.Now()
				resp, err := client.Get("http://" + targets[i%len(targets)] + "/")
				if err != nil {
					if ctx.Err() == nil {
						mu.Lock()
						if firstErr == nil {
							firstErr = err
						}
						mu.Unlock()
					}
					break
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return loadResult{}, firstErr
	}
	if len(lat) == 0 {
		return loadResult{}, errors.New("no request completed")
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return loadResult{rps: float64(len(lat)) / elapsed.Seconds(), p99: ms(lat[len(lat)*99/100])}, nil
}

func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// runEndpointChange measures, with a manager and a worker in this
// process, how long an endpoint change takes to reach a worker's proxy:
// from kill -9 of a task's process to its endpoint leaving the proxy (the
// worker reports the exit, the leader commits it and pushes the new set),
// and from its replacement's RUNNING commit to its endpoint joining.
func runEndpointChange(ctx context.Context, e *env) ([]series, error) {
	p, err := e.startInProcessManager(ctx, "mesh", slog.LevelInfo)
	if err != nil {
		return nil, err
	}
	defer p.close()
	m, dir, port, logger, token := p.m, p.dir, p.port, p.logger, p.token
	st := m.Store()
	wdir := filepath.Join(dir, "w1")
	wcfg := worker.Config{DataDir: wdir, Hostname: "w1", AdvertiseIP: workerIP, APIPort: port, Logger: logger.With("who", "w1")}
	var rt *process.Runtime
	wcfg.Runtimes = func() ([]worker.Runtime, error) {
		r, err := process.New(process.Config{Dir: filepath.Join(wdir, "worker", "process"), AdvertiseIP: workerIP,
			SupervisorCommand: e.supervisorCommand(), Logger: wcfg.Logger})
		if err != nil {
			return nil, err
		}
		rt = r
		return []worker.Runtime{r}, nil
	}
	a, err := worker.Join(ctx, wcfg, m.APIAddr(), token)
	if err != nil {
		return nil, fmt.Errorf("worker.Join: %w", err)
	}
	defer func() {
		a.Close()
		if rt != nil {
			if _, err := removeAllTasks(rt); err != nil {
				e.notef("mesh: cleaning up tasks: %v", err)
			}
		}
	}()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = a.WaitConnected(wctx)
	cancel()
	if err != nil {
		return nil, err
	}

	// A published service of one /bin/sleep task restarted at once: each
	// sample kills the task's process (its endpoint must go) and waits for
	// the replacement's RUNNING commit (its endpoint must come).
	published, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	admin, err := clientcreds.Admin(filepath.Join(dir, "m1"))
	if err != nil {
		return nil, err
	}
	conn, err := rpc.Dial(m.APIAddr(), admin)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	spec := &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: "mesh-bench"},
		Task: &pb.TaskSpec{Runtime: "process",
			Container: &pb.ContainerSpec{Image: "/bin/sleep", Args: []string{"1000"}, StopGracePeriod: int64(time.Second)},
			Restart:   &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY, Delay: int64(time.Millisecond)}},
		Mode:     &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: 1}},
		Endpoint: &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80, PublishedPort: uint32(published)}}},
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = pb.NewControlClient(conn).CreateService(cctx, &pb.CreateServiceRequest{Spec: spec})
	cancel()
	if err != nil {
		return nil, err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = pb.NewControlClient(conn).RemoveService(rctx, &pb.RemoveServiceRequest{Ref: "mesh-bench"})
		_ = poll(rctx, 10*time.Second, 20*time.Millisecond, "the bench service's task to stop", func(context.Context) (bool, error) {
			n := 0
			st.View(func(tx *raftstore.Tx) { n = len(tx.Tasks().List()) })
			return n == 0, nil
		})
	}()

	addr := net.JoinHostPort(workerIP, strconv.Itoa(published))
	mAddr := net.JoinHostPort(managerIPs[0], strconv.Itoa(published))
	// waitOn waits, without polling, until a node's mesh sends addr's
	// connections (on its datapath, kernel or proxy) to a set of
	// endpoints that satisfies ok.
	waitOn := func(who string, mm *mesh.Mesh, addr, what string, ok func([]string) bool) error {
		deadline := time.After(20 * time.Second)
		for {
			changed := mm.Changed()
			if ok(mm.Backends(addr)) {
				return nil
			}
			select {
			case <-changed:
			case <-deadline:
				return fmt.Errorf("the %s's mesh did not %s", who, what)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	waitFor := func(what string, ok func([]string) bool) error { return waitOn("worker", a.Mesh(), addr, what, ok) }
	endpointOf := func(t *pb.Task) string {
		for _, b := range t.GetStatus().GetPorts() {
			if b.GetTargetPort() == 80 {
				return net.JoinHostPort(b.GetHostIp(), strconv.Itoa(int(b.GetHostPort())))
			}
		}
		return ""
	}
	running := func() *pb.Task {
		var out *pb.Task
		st.View(func(tx *raftstore.Tx) {
			for _, t := range tx.Tasks().List() {
				if t.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING && t.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING {
					out = t
				}
			}
		})
		return out
	}
	if err := waitFor("reach one endpoint", func(b []string) bool { return len(b) == 1 }); err != nil {
		return nil, err
	}
	in := series{name: "mesh: endpoint added (RUNNING commit → worker proxy)", unit: "ms"}
	// The worker that ran the task takes it out of its own datapath as
	// soon as it sees the exit; another node (here the manager's own
	// mesh) waits for the managers: the worker's report, the commit, the
	// endpoint feed.
	out := series{name: "mesh: endpoint removed (kill -9 of the task → worker proxy)", unit: "ms"}
	outOther := series{name: "mesh: endpoint removed (kill -9 of the task → another node's (the manager's) datapath)", unit: "ms"}
	n := 20
	if e.opts.quick {
		n = 8
	}
	type seen struct {
		task    *pb.Task
		at      time.Time // its RUNNING commit
		addedAt time.Time // its endpoint in the worker's mesh
	}
	for i := range n {
		// Samples are apart by more than the feed's 100 ms interval, as
		// isolated changes are; a change in a burst may wait up to 100 ms
		// more to be batched with the others.
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return nil, err
		}
		victim := running()
		if victim == nil {
			return nil, errors.New("no running task")
		}
		gone := endpointOf(victim)
		sub := st.Watch(func(ev raftstore.Event) bool {
			t, ok := ev.Object.(*pb.Task)
			return ok && t.GetId() != victim.GetId() && t.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING
		})
		// The replacement's RUNNING commit is timed as it arrives, and so is
		// its endpoint's arrival in the worker's mesh, even while the
		// removal is still being waited for.
		replaced := make(chan seen, 1)
		addedIn := make(chan error, 1)
		go func() {
			ev, ok := <-sub.C()
			if !ok {
				return
			}
			r := seen{task: ev.Object.(*pb.Task), at: time.Now()}
			added := endpointOf(r.task)
			err := waitFor("add the replacement's endpoint", func(b []string) bool { return slices.Contains(b, added) })
			r.addedAt = time.Now()
			replaced <- r
			addedIn <- err
		}()
		// The manager's mesh is watched meanwhile (from when it has the
		// endpoint: the replacement reaches it after the worker).
		if err := waitOn("manager", m.Mesh(), mAddr, "add the task's endpoint", func(b []string) bool { return slices.Contains(b, gone) }); err != nil {
			sub.Close()
			return nil, fmt.Errorf("sample %d: %w", i+1, err)
		}
		otherGone := make(chan error, 1)
		otherAt := make(chan time.Time, 1)
		go func() {
			err := waitOn("manager", m.Mesh(), mAddr, "drop the killed task's endpoint", func(b []string) bool { return !slices.Contains(b, gone) })
			otherAt <- time.Now()
			otherGone <- err
		}()
		t0 := time.Now()
		if err := syscall.Kill(int(victim.GetStatus().GetPid()), syscall.SIGKILL); err != nil {
			sub.Close()
			return nil, fmt.Errorf("kill task %d: %w", i+1, err)
		}
		if err := waitFor("drop the killed task's endpoint", func(b []string) bool { return !slices.Contains(b, gone) }); err != nil {
			sub.Close()
			return nil, fmt.Errorf("sample %d: %w", i+1, err)
		}
		out.samples = append(out.samples, ms(time.Since(t0)))
		if err := <-otherGone; err != nil {
			sub.Close()
			return nil, fmt.Errorf("sample %d: %w", i+1, err)
		}
		outOther.samples = append(outOther.samples, ms((<-otherAt).Sub(t0)))
		var r seen
		select {
		case r = <-replaced:
		case <-time.After(20 * time.Second):
			sub.Close()
			return nil, fmt.Errorf("sample %d: no replacement task running", i+1)
		}
		err := <-addedIn
		sub.Close()
		if err != nil {
			return nil, fmt.Errorf("sample %d: %w", i+1, err)
		}
		in.samples = append(in.samples, ms(r.addedAt.Sub(r.at)))
	}
	return []series{in, out, outOther}, nil
}
