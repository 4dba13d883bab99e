package main

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/mesh"
	"github.com/shoal-cluster/shoal/worker"
	dockerrt "github.com/shoal-cluster/shoal/worker/docker"
	"github.com/shoal-cluster/shoal/worker/process"
	"github.com/shoal-cluster/shoal/worker/tasknet"
)

// supervisorCommand is the hidden subcommand the process runtime re-executes
// this binary with, to supervise one task outside the agent.
const supervisorCommand = process.SupervisorSubcommand

// newTaskNetwork returns the node's task network (tasks in their own
// network namespaces, each with its own address on the node's bridge), or
// nil, logging why, when this node cannot have one: it needs root, the nft
// command and runc (the runtime that runs such tasks). The tasks' resolver
// is the node's containers' resolver, which answers with addresses a task
// can reach.
func newTaskNetwork(dataDir string, log *slog.Logger) *tasknet.Node {
	if os.Geteuid() != 0 {
		log.Info("no task network: the agent does not run as root")
		return nil
	}
	for _, tool := range []string{"nft", "runc"} {
		if _, err := exec.LookPath(tool); err != nil {
			log.Info("no task network: the "+tool+" command is missing", "err", err)
			return nil
		}
	}
	id, err := datadir.Load(dataDir)
	if err != nil {
		log.Warn("no task network: cannot read the node's identity", "err", err)
		return nil
	}
	dns := netip.AddrPortFrom(netip.MustParseAddr(mesh.ContainerResolverIP(id.ClusterID)), 53)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tn, err := tasknet.NewNode(ctx, tasknet.Config{StateDir: tasknet.StateDirOf(dataDir), DNS: dns, Log: log})
	if err != nil {
		log.Error("no task network", "err", err)
		return nil
	}
	return tn
}

// newRuntimes builds the runtimes a worker offers: always the process
// runtime, and the docker runtime when the local Docker Engine answers.
// taskNet is the node's task network (nil without one), for runtimes that
// give tasks their own network namespaces.
func newRuntimes(dataDir, advertiseIP, dnsAddr string, taskNet *tasknet.Node, log *slog.Logger) ([]worker.Runtime, error) {
	_ = taskNet // the container runtime's
	proc, err := process.New(process.Config{
		Dir:               filepath.Join(dataDir, "worker", "process"),
		AdvertiseIP:       advertiseIP,
		DNSAddr:           dnsAddr,
		SupervisorCommand: []string{selfExecutable(), supervisorCommand},
		Logger:            log,
	})
	if err != nil {
		return nil, err
	}
	rts := []worker.Runtime{proc}
	if d := newDockerRuntime(dataDir, advertiseIP, log); d != nil {
		rts = append(rts, d)
	}
	return rts, nil
}

// newDockerRuntime returns the docker runtime, or nil (logging why) when
// the Engine does not answer: the node then does not advertise it.
func newDockerRuntime(dataDir, advertiseIP string, log *slog.Logger) worker.Runtime {
	id, err := datadir.Load(dataDir)
	if err != nil {
		log.Warn("docker runtime not offered: cannot read the node's identity", "err", err)
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d, err := dockerrt.New(ctx, dockerrt.Config{NodeID: id.NodeID, NodeName: id.Hostname, AdvertiseIP: advertiseIP,
		DNS: []string{mesh.ContainerResolverIP(id.ClusterID)}, Logger: log})
	if err != nil {
		log.Info("docker runtime not offered: no Docker Engine answers on this node", "err", err)
		return nil
	}
	return d
}
