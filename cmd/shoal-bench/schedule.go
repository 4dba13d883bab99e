package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shoal-cluster/shoal/manager/scheduler"
)

// Scheduling throughput: scheduler.Throughput opens a real single-manager
// store (Raft on 127.0.0.1, bolt log in a temp dir) inside this process,
// creates simulated Ready nodes, runs the leader's scheduler and creates
// pending tasks in transactions of 1,000 while it runs; the figure is the
// tasks ASSIGNED per second of wall clock, commits included. The bench
// process's peak RSS over each run (VmHWM, reset before the run through
// /proc/self/clear_refs) is the store and scheduler holding that many
// tasks: the "manager memory" rows.
const schedNodes = 1000

// schedSizes are the task counts measured and how many runs each gets.
func schedSizes(quick bool) []schedSize {
	if quick {
		// A 100k run takes a few seconds (about 2s on two cores): it fits
		// the quick budget and keeps the large memory row.
		return []schedSize{{10_000, 1}, {100_000, 1}}
	}
	return []schedSize{{10_000, 3}, {100_000, 3}}
}

type schedSize struct{ tasks, runs int }

func runSchedule(ctx context.Context, e *env) ([]series, error) {
	var out []series
	resetOK := true
	for _, sz := range schedSizes(e.opts.quick) {
		var perSec, peakRSS, peakHeap []float64
		for run := 1; run <= sz.runs; run++ {
			if err := ctx.Err(); err != nil {
				return nil, context.Cause(ctx)
			}
			// Start each run from a small process: earlier benchmarks'
			// garbage collected and returned to the OS, the peak reset.
			runtime.GC()
			debug.FreeOSMemory()
			base, _ := procStatusKB("VmRSS:")
			if err := resetPeakRSS(); err != nil {
				resetOK = false
			}
			stopSampling := sampleHeap()
			t0 := time.Now()
			r, err := throughputCtx(ctx, sz.tasks, schedNodes)
			d := time.Since(t0)
			heap := stopSampling()
			if err != nil {
				return nil, fmt.Errorf("%d tasks on %d nodes, run %d: %w", sz.tasks, schedNodes, run, err)
			}
			hwm, err := procStatusKB("VmHWM:")
			if err != nil {
				return nil, err
			}
			perSec = append(perSec, r)
			peakRSS = append(peakRSS, float64(hwm)/1024)
			peakHeap = append(peakHeap, float64(heap)/(1<<20))
			e.log.Info("scheduling throughput", "tasks", sz.tasks, "nodes", schedNodes, "run", run,
				"tasks/s", round1(r), "peak_rss_mib", round1(float64(hwm)/1024), "rss_before_mib", round1(float64(base)/1024),
				"peak_heap_mib", round1(float64(heap)/(1<<20)), "took", d.Round(time.Millisecond))
		}
		k := kilo(sz.tasks)
		out = append(out,
			series{name: fmt.Sprintf("schedule: %s tasks on %d nodes placed", k, schedNodes), unit: "tasks/s", samples: perSec},
			series{name: fmt.Sprintf("schedule: manager memory, peak RSS, %s tasks", k), unit: "MiB", samples: peakRSS},
			series{name: fmt.Sprintf("schedule: manager memory, peak Go heap in use, %s tasks", k), unit: "MiB", samples: peakHeap},
		)
	}
	if !resetOK {
		e.notef("schedule: /proc/self/clear_refs could not reset the peak RSS: the peak RSS rows include earlier benchmarks' peak")
	}
	return out, nil
}

// throughputCtx runs scheduler.Throughput, which takes no context, and
// gives up waiting when ctx ends (the run itself stops at its own
// 10-minute limit).
func throughputCtx(ctx context.Context, tasks, nodes int) (float64, error) {
	type result struct {
		v   float64
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := scheduler.Throughput(tasks, nodes)
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	}
}

func kilo(n int) string {
	if n%1000 == 0 {
		return strconv.Itoa(n/1000) + "k"
	}
	return strconv.Itoa(n)
}

// resetPeakRSS resets this process's VmHWM to its current RSS (Linux 4.0+).
func resetPeakRSS() error {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// procStatusKB reads one kB field of /proc/self/status.
func procStatusKB(field string) (int64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == field {
			return strconv.ParseInt(fields[1], 10, 64)
		}
	}
	return 0, errors.New("/proc/self/status: no " + field)
}

// heapInUse is the Go heap's in-use spans (runtime.MemStats.HeapInuse),
// read through runtime/metrics, which does not stop the world.
func heapInUse() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
	metrics.Read(s)
	var n uint64
	for _, x := range s {
		if x.Value.Kind() == metrics.KindUint64 {
			n += x.Value.Uint64()
		}
	}
	return n
}

// sampleHeap samples heapInUse every 20ms until the returned function is
// called, which returns the peak.
func sampleHeap() func() uint64 {
	var (
		mu   sync.Mutex
		peak = heapInUse()
		done = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				h := heapInUse()
				mu.Lock()
				peak = max(peak, h)
				mu.Unlock()
			}
		}
	}()
	return func() uint64 {
		close(done)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return max(peak, heapInUse())
	}
}
