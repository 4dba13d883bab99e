// Package host reads what a node has: CPUs and memory.
package host

import (
	"bufio"
	"os"
	"runtime"
	"strconv"
	"strings"

	pb "github.com/shoal-cluster/shoal/proto"
)

// Resources reports this machine's CPUs and memory.
func Resources() *pb.Resources {
	return &pb.Resources{NanoCpus: int64(runtime.NumCPU()) * 1e9, MemoryBytes: TotalMemory()}
}

// TotalMemory reads MemTotal from /proc/meminfo (0 when unknown).
func TotalMemory() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(fields[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}
