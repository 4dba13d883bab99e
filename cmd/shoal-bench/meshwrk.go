package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shoal-cluster/shoal/internal/mesh"
	pb "github.com/shoal-cluster/shoal/proto"
)

// The mesh measured with wrk (Debian's package): the Go load generator
// above saturates before the mesh does, so these rows are the ones to
// compare datapaths with. One backend straight, then a published port in
// front of the three backends on the kernel datapath (nftables) and on
// the user-space proxy; 16 connections, keep-alive and a new connection
// per request (Connection: close).

// wrkMaxRuns caps the wrk runs per row: each takes its full duration
// and the rows are many.
const wrkMaxRuns = 3

// wrkResult is one wrk run's request rate, 99th percentile latency and
// requests completed.
type wrkResult struct{ rps, p99, requests float64 }

// runWrk runs wrk against url for d.
func runWrk(ctx context.Context, url string, closeEach bool, d time.Duration) (wrkResult, error) {
	args := []string{"-t2", fmt.Sprintf("-c%d", meshClients), fmt.Sprintf("-d%ds", int(d.Round(time.Second)/time.Second)), "--latency"}
	if closeEach {
		args = append(args, "-H", "Connection: close")
	}
	out, err := exec.CommandContext(ctx, "wrk", append(args, url)...).CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk %s: %v: %s", url, err, out)
	}
	return parseWrk(out)
}

// parseWrk reads "Requests/sec:" and the "99%" latency line of wrk's
// --latency output.
func parseWrk(out []byte) (wrkResult, error) {
	var r wrkResult
	var haveRPS, haveP99 bool
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "Requests/sec:":
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				return r, fmt.Errorf("wrk: requests/sec %q: %w", f[1], err)
			}
			r.rps, haveRPS = v, true
		case len(f) >= 5 && f[1] == "requests" && f[2] == "in":
			if v, err := strconv.ParseFloat(f[0], 64); err == nil {
				r.requests = v
			}
		case len(f) == 2 && f[0] == "99%":
			v, err := parseWrkDuration(f[1])
			if err != nil {
				return r, err
			}
			r.p99, haveP99 = v, true
		case len(f) >= 2 && f[0] == "Socket" && f[1] == "errors:":
			line := sc.Text()
			if strings.Contains(line, "connect ") && !strings.Contains(line, "connect 0,") {
				return r, fmt.Errorf("wrk: %s", strings.TrimSpace(line))
			}
		}
	}
	if !haveRPS || !haveP99 {
		return r, fmt.Errorf("wrk: no rate or latency in its output: %s", out)
	}
	return r, nil
}

// parseWrkDuration turns wrk's "512.00us", "1.23ms" or "1.01s" into ms.
func parseWrkDuration(s string) (float64, error) {
	for _, u := range []struct {
		suffix string
		ms     float64
	}{{"us", 1e-3}, {"ms", 1}, {"m", 60e3}, {"s", 1e3}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, fmt.Errorf("wrk: latency %q: %w", s, err)
			}
			return f * u.ms, nil
		}
	}
	return 0, fmt.Errorf("wrk: latency %q has no unit", s)
}

// startHTTPBackends starts n small HTTP backends on loopback ports of
// their own and returns their addresses and a function stopping them.
func startHTTPBackends(n int) ([]string, func(), error) {
	var addrs []string
	var srvs []*http.Server
	stop := func() {
		for _, s := range srvs {
			_ = s.Close()
		}
	}
	for range n {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			stop()
			return nil, nil, err
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok\n") })}
		go func() { _ = srv.Serve(ln) }()
		srvs = append(srvs, srv)
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, stop, nil
}

// runMeshWrk is the mesh-wrk benchmark: 5 s per wrk run (2 s quick).
func runMeshWrk(ctx context.Context, e *env) ([]series, error) {
	dur := 5 * time.Second
	if e.opts.quick {
		dur = 2 * time.Second
	}
	return meshWrkRows(ctx, e, dur)
}

// meshWrkRows measures one backend directly and the published port on
// each datapath this host offers, with wrk; nothing (and a note) without
// wrk. The kernel datapath is measured in front of the same single
// backend too (the datapath's own cost, like for like) and in front of
// three (the comparison: the mesh over three backends against a
// single direct one); every backend is an HTTP server in this process.
// The targets take turns within each run (in a rotating order), so that
// what else the host runs weighs on all of them alike. Every run gets
// backends on fresh ports: at thousands of new connections a second the
// client's ports come round within seconds, and a backend's TIME_WAIT
// sockets from a run through another path (whose TCP timestamps differ)
// would refuse reused ports (PAWS), costing 1 s SYN retransmits that have
// nothing to do with the path measured. Besides wrk's figures, each row
// has this process's CPU time per request (user and system: the
// backends, and the proxy on the user-space datapath), which other load
// on the host disturbs far less than the rate or the latency.
func meshWrkRows(ctx context.Context, e *env, dur time.Duration) ([]series, error) {
	if _, err := exec.LookPath("wrk"); err != nil {
		e.notef("mesh: wrk is not installed (apt-get install wrk): the wrk rows are skipped")
		return nil, nil
	}
	nodeID := fmt.Sprintf("bench%08x", rand.Uint32())
	type target struct {
		name     string
		m        *mesh.Mesh // nil: one backend directly
		port     int
		backends int
	}
	targets := []target{{name: "direct, one backend", backends: 1}}
	for _, dp := range []string{mesh.DatapathAuto, mesh.DatapathUserspace} {
		m := mesh.New(mesh.Config{IP: "127.0.0.1", NodeID: nodeID, Datapath: dp, Log: slog.New(slog.DiscardHandler)})
		defer m.Close()
		got := m.Datapath()
		if dp == mesh.DatapathAuto && got.Name != mesh.DatapathKernel {
			e.notef("mesh: no kernel datapath here (%s): its wrk rows are skipped", got.Reason)
			continue
		}
		port, err := freeLoopbackPort()
		if err != nil {
			return nil, err
		}
		if got.Name == mesh.DatapathKernel {
			// The same published port, before the three-backend row's
			// turn: one backend behind it.
			targets = append(targets, target{name: "mesh kernel, one backend", m: m, port: port, backends: 1})
		}
		targets = append(targets, target{name: "mesh " + got.Name, m: m, port: port, backends: meshBackends})
	}
	// url starts a run's backends and points the target at them.
	url := func(tg target) (string, func(), error) {
		backends, stop, err := startHTTPBackends(tg.backends)
		if err != nil {
			return "", nil, err
		}
		if tg.m == nil {
			return "http://" + backends[0] + "/", stop, nil
		}
		se := &pb.ServiceEndpoints{ServiceId: "bench", ServiceName: "bench",
			Ports: []*pb.PortConfig{{TargetPort: 80, PublishedPort: uint32(tg.port)}}}
		for i, b := range backends {
			_, p, _ := net.SplitHostPort(b)
			hp, _ := strconv.Atoi(p)
			se.Tasks = append(se.Tasks, &pb.TaskEndpoint{TaskId: fmt.Sprint(i), NodeId: nodeID, Ip: "127.0.0.1",
				Ports: []*pb.PortBinding{{TargetPort: 80, HostIp: "127.0.0.1", HostPort: uint32(hp)}}})
		}
		tg.m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{se}})
		if errs := tg.m.Errors(); len(errs) > 0 {
			stop()
			return "", nil, errs[0]
		}
		return fmt.Sprintf("http://127.0.0.1:%d/", tg.port), stop, nil
	}
	var out []series
	for _, closeEach := range []bool{false, true} {
		mode := "keep-alive"
		if closeEach {
			mode = "new-conn"
		}
		rps := make([]series, len(targets))
		p99 := make([]series, len(targets))
		cpu := make([]series, len(targets))
		for i, tg := range targets {
			rps[i] = series{name: fmt.Sprintf("mesh (wrk): %s %s throughput", tg.name, mode), unit: "req/s"}
			p99[i] = series{name: fmt.Sprintf("mesh (wrk): %s %s p99 latency", tg.name, mode), unit: "ms"}
			cpu[i] = series{name: fmt.Sprintf("mesh (wrk): %s %s CPU per request (backends and proxy)", tg.name, mode), unit: "µs"}
		}
		for run := range min(e.opts.runs, wrkMaxRuns) {
			for j := range targets {
				i := (run + j) % len(targets)
				u, stop, err := url(targets[i])
				if err != nil {
					return nil, err
				}
				cpu0, cpuErr := processCPU()
				r, err := runWrk(ctx, u, closeEach, dur)
				cpu1, cpuErr1 := processCPU()
				stop()
				if err != nil {
					return nil, fmt.Errorf("%s run %d: %w", rps[i].name, run+1, err)
				}
				rps[i].samples = append(rps[i].samples, r.rps)
				p99[i].samples = append(p99[i].samples, r.p99)
				if cpuErr == nil && cpuErr1 == nil && r.requests > 0 {
					cpu[i].samples = append(cpu[i].samples, float64((cpu1-cpu0).Microseconds())/r.requests)
				}
			}
		}
		for i := range targets {
			out = append(out, rps[i], p99[i])
			if len(cpu[i].samples) > 0 {
				out = append(out, cpu[i])
			}
		}
	}
	return out, nil
}

// processCPU is the CPU time (user and system) this process used so far.
func processCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
