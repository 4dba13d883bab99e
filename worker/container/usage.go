package container

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/shoal-cluster/shoal/worker"
)

// cgroupRoot is where the cgroup hierarchies are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// cgroupUsage reads a container's CPU and memory use from its cgroup
// (parent/id in each hierarchy): cgroup v2's cpu.stat and memory.current,
// or v1's cpuacct.usage and memory.usage_in_bytes, less the inactive page
// cache, as `docker stats` counts.
func cgroupUsage(parent, id string) (worker.Usage, error) {
	var u worker.Usage
	if fileExistsAt(filepath.Join(cgroupRoot, "cgroup.controllers")) {
		dir := filepath.Join(cgroupRoot, parent, id)
		stat, err := readKeyed(filepath.Join(dir, "cpu.stat"))
		if err != nil {
			return u, fmt.Errorf("task %s: %w", id, err)
		}
		u.CPUTotal = stat["usage_usec"] * 1000
		cur, err := readUint(filepath.Join(dir, "memory.current"))
		if err != nil {
			return u, fmt.Errorf("task %s: %w", id, err)
		}
		mem, _ := readKeyed(filepath.Join(dir, "memory.stat"))
		u.MemoryBytes = workingSet(cur, mem["inactive_file"])
		if limit, err := readUint(filepath.Join(dir, "memory.max")); err == nil {
			u.MemoryLimit = int64(limit)
		}
		return u, nil
	}
	cpu, err := readUint(filepath.Join(cgroupRoot, "cpuacct", parent, id, "cpuacct.usage"))
	if err != nil {
		return u, fmt.Errorf("task %s: %w", id, err)
	}
	u.CPUTotal = cpu
	memDir := filepath.Join(cgroupRoot, "memory", parent, id)
	cur, err := readUint(filepath.Join(memDir, "memory.usage_in_bytes"))
	if err != nil {
		return u, fmt.Errorf("task %s: %w", id, err)
	}
	mem, _ := readKeyed(filepath.Join(memDir, "memory.stat"))
	u.MemoryBytes = workingSet(cur, mem["total_inactive_file"])
	if limit, err := readUint(filepath.Join(memDir, "memory.limit_in_bytes")); err == nil && limit < 1<<62 {
		u.MemoryLimit = int64(limit)
	}
	return u, nil
}

func workingSet(usage, inactive uint64) int64 {
	if inactive < usage {
		usage -= inactive
	}
	return int64(usage)
}

func readUint(path string) (uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
}

// readKeyed reads a flat-keyed cgroup file ("key value" lines).
func readKeyed(path string) (map[string]uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok {
			if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
				out[k] = n
			}
		}
	}
	return out, nil
}
