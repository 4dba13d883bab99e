package process

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/process/supervise"
)

// Usage reads a task's CPU and memory use from its cgroup: cgroup v1's
// cpuacct.usage and memory.usage_in_bytes, cgroup v2's cpu.stat usage_usec
// and memory.current. Memory excludes the inactive page cache, as `docker
// stats` does. A task without cgroups (the agent is not root) has no
// figures: Usage returns an error.
func (r *Runtime) Usage(_ context.Context, id string) (worker.Usage, error) {
	dir, ok := r.taskDir(id)
	if !ok {
		return worker.Usage{}, worker.ErrTaskNotFound
	}
	var plan supervise.CgroupPlan
	ok, err := supervise.ReadJSON(dir, supervise.CgroupFile, &plan)
	if err != nil {
		return worker.Usage{}, fmt.Errorf("task %s: %w", id, err)
	}
	if !ok {
		return worker.Usage{}, fmt.Errorf("task %s has no cgroup: its use cannot be measured", id)
	}
	u, err := usage(&plan)
	if err != nil {
		return worker.Usage{}, fmt.Errorf("task %s: %w", id, err)
	}
	return u, nil
}

// usage reads the plan's cgroup files.
func usage(p *supervise.CgroupPlan) (worker.Usage, error) {
	u := worker.Usage{MemoryLimit: p.MemoryBytes}
	var cpuOK, memOK, acct bool
	for _, e := range p.Entries {
		acct = acct || e.Controller == "cpuacct"
	}
	for _, e := range p.Entries {
		switch {
		case p.Version == 2:
			cpu, err := readCPUStatV2(filepath.Join(e.Dir, "cpu.stat"))
			if err != nil {
				return u, err
			}
			mem, err := readMemoryV2(e.Dir)
			if err != nil {
				return u, err
			}
			u.CPUTotal, u.MemoryBytes, cpuOK, memOK = cpu, mem, true, true
		case e.Controller == "memory":
			mem, err := readMemoryV1(e.Dir)
			if err != nil {
				return u, err
			}
			u.MemoryBytes, memOK = mem, true
		case e.Controller == "cpuacct" || (e.Controller == "cpu" && !acct):
			// cpu and cpuacct are often mounted together; then the cpu
			// entry's directory has cpuacct.usage.
			cpu, err := readUint(filepath.Join(e.Dir, "cpuacct.usage"))
			if err != nil {
				if e.Controller == "cpu" && errors.Is(err, os.ErrNotExist) {
					continue
				}
				return u, err
			}
			u.CPUTotal, cpuOK = cpu, true
		}
	}
	if !cpuOK || !memOK {
		return u, errors.New("the task's cgroup has no CPU accounting or no memory controller")
	}
	return u, nil
}

// readCPUStatV2 reads usage_usec from a cgroup v2 cpu.stat, in nanoseconds.
func readCPUStatV2(path string) (uint64, error) {
	v, ok, err := readKeyed(path, "usage_usec")
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("%s has no usage_usec", path)
	}
	return v * 1000, nil
}

// readMemoryV2 is memory.current less memory.stat's inactive_file.
func readMemoryV2(dir string) (int64, error) {
	cur, err := readUint(filepath.Join(dir, "memory.current"))
	if err != nil {
		return 0, err
	}
	inactive, _, _ := readKeyed(filepath.Join(dir, "memory.stat"), "inactive_file")
	return workingSet(cur, inactive), nil
}

// readMemoryV1 is memory.usage_in_bytes less memory.stat's
// total_inactive_file.
func readMemoryV1(dir string) (int64, error) {
	cur, err := readUint(filepath.Join(dir, "memory.usage_in_bytes"))
	if err != nil {
		return 0, err
	}
	inactive, _, _ := readKeyed(filepath.Join(dir, "memory.stat"), "total_inactive_file")
	return workingSet(cur, inactive), nil
}

func workingSet(usage, inactive uint64) int64 {
	if inactive < usage {
		usage -= inactive
	}
	return int64(usage)
}

// readUint reads a file holding one unsigned number.
func readUint(path string) (uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return v, nil
}

// readKeyed reads the value of key from a flat-keyed file ("key value"
// lines, as cpu.stat and memory.stat).
func readKeyed(path, key string) (uint64, bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if !ok || k != key {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return 0, false, fmt.Errorf("parse %s %s: %w", path, key, err)
		}
		return n, true, nil
	}
	return 0, false, sc.Err()
}
