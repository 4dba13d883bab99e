package main

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"time"
)

// cpuSample is the machine's busy CPU time and this process's own, its
// reaped children's included (the manager and worker processes a
// benchmark started are reaped when it ends), at one moment.
type cpuSample struct {
	at          time.Time
	machineBusy time.Duration // all CPUs, from /proc/stat
	self        time.Duration // utime+stime+cutime+cstime of this process
}

func readCPUSample() (cpuSample, error) {
	s := cpuSample{at: time.Now()}
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s, err
	}
	line, _, _ := strings.Cut(string(stat), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return s, errors.New("/proc/stat: unexpected first line")
	}
	// user nice system idle iowait irq softirq steal: all but idle and iowait.
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return s, err
		}
		s.machineBusy += time.Duration(v) * clockTick
	}
	self, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return s, err
	}
	i := strings.LastIndexByte(string(self), ')')
	if i < 0 {
		return s, errors.New("/proc/self/stat: unexpected format")
	}
	g := strings.Fields(string(self[i+1:]))
	if len(g) < 15 {
		return s, errors.New("/proc/self/stat: too few fields")
	}
	// g[11..14] are fields 14-17: utime, stime, cutime, cstime.
	for _, v := range g[11:15] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return s, err
		}
		s.self += time.Duration(n) * clockTick
	}
	return s, nil
}

// otherCPU is the CPU other processes on the machine used between two
// samples, as a share of one core (1 = one core busy the whole time).
func otherCPU(a, b cpuSample) float64 {
	wall := b.at.Sub(a.at)
	if wall <= 0 {
		return 0
	}
	other := (b.machineBusy - a.machineBusy) - (b.self - a.self)
	return max(float64(other)/float64(wall), 0)
}

// idleLoad is the CPU the machine used over d while the bench itself
// waits, as a share of one core: other processes' load before a
// benchmark starts.
func idleLoad(ctx context.Context, d time.Duration) (float64, error) {
	a, err := readCPUSample()
	if err != nil {
		return 0, err
	}
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(d):
	}
	b, err := readCPUSample()
	if err != nil {
		return 0, err
	}
	return otherCPU(a, b), nil
}
