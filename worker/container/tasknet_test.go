package container

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/runtimetest"
	"github.com/shoal-cluster/shoal/worker/tasknet"
)

// testTaskNetwork is a real task network (a bridge on a random /24 of
// 10.251.0.0/16), destroyed when the test ends.
func testTaskNetwork(t *testing.T) Network {
	t.Helper()
	subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 251, byte(rand.IntN(250)), 0}), 24)
	cfg := tasknet.Config{Subnet: subnet, StateDir: filepath.Join(t.TempDir(), "tasknet"), Log: slog.New(slog.DiscardHandler)}
	n, err := tasknet.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("task network: %v", err)
	}
	t.Cleanup(func() { _ = tasknet.DestroyState(context.Background(), cfg.StateDir, slog.New(slog.DiscardHandler)) })
	return TaskNetwork(n)
}

// TestConformanceTaskNetwork runs the conformance suite with each task in
// its own network namespace on a task network: its ports are reached at
// its own address.
func TestConformanceTaskNetwork(t *testing.T) {
	requireRunc(t)
	imgs := testImages(t)
	network := testTaskNetwork(t)
	runtimetest.Run(t, runtimetest.Factory{
		Fresh: func(t *testing.T) runtimetest.Opener {
			dir := newStateDir(t, imgs, withNetwork(network))
			return func(t *testing.T) worker.Runtime { return newRuntime(t, dir, imgs, withNetwork(network)) }
		},
		Spec: func(_ *testing.T, p runtimetest.Program) *pb.ContainerSpec {
			return &pb.ContainerSpec{Image: "task:1", Args: p.Args()}
		},
		Missing: func(*testing.T) *pb.ContainerSpec {
			return &pb.ContainerSpec{Image: "shoal/No-Such-Image:v0"}
		},
	})
}

// TestOwnAddress checks that a task on the task network has its own
// address, which its port bindings name.
func TestOwnAddress(t *testing.T) {
	requireRunc(t)
	imgs := testImages(t)
	network := testTaskNetwork(t)
	r := newRuntime(t, newStateDir(t, imgs, withNetwork(network)), imgs, withNetwork(network))
	task := probeTask("addr-"+randomSuffix(), "addrs")
	ex, out := runToEnd(t, r, task, worker.TaskFiles{})
	info, err := r.Inspect(context.Background(), task.Id)
	if err != nil {
		t.Fatal(err)
	}
	var rec taskRecord
	if _, err := readJSON(r.bundle(task.Id), taskFile, &rec); err != nil || rec.IP == "" {
		t.Fatalf("task record %+v, %v; want an address", rec, err)
	}
	if ex.Code != 0 || !strings.Contains(out, " "+rec.IP+"/24") || !strings.Contains(out, "127.0.0.1/8") {
		t.Errorf("exit %+v, addresses %q; want the loopback and %s/24", ex, out, rec.IP)
	}
	hostAddrs, _ := net.InterfaceAddrs()
	for _, a := range hostAddrs {
		if ip, ok := a.(*net.IPNet); ok && ip.IP.To4() != nil && !ip.IP.IsLoopback() && strings.Contains(out, " "+a.String()) {
			t.Errorf("the task sees the node's address %s: %q", a, out)
		}
	}
	if len(info.Ports) != 0 {
		t.Errorf("ports %v; the task publishes none", info.Ports)
	}
}
