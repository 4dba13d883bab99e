package main

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/mesh"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/container"
	dockerrt "github.com/shoal-cluster/shoal/worker/docker"
	"github.com/shoal-cluster/shoal/worker/imagestore"
	"github.com/shoal-cluster/shoal/worker/process"
	"github.com/shoal-cluster/shoal/worker/process/supervise"
	"github.com/shoal-cluster/shoal/worker/tasknet"
)

// supervisorCommand is the hidden subcommand the runtimes re-execute this
// binary with, to supervise one task outside the agent, when no
// standalone supervisor is installed next to it.
const supervisorCommand = supervise.SupervisorSubcommand

// supervisorCommandLine is the command line the runtimes start each
// task's supervisor with: shoal-supervise next to this binary when it is
// there and built for this shoal (it starts in about a tenth of the CPU
// and memory), else this binary with supervisorCommand.
func supervisorCommandLine(log *slog.Logger) []string {
	cmd, err := supervise.CommandLine(context.Background(), selfExecutable())
	switch {
	case errors.Is(err, os.ErrNotExist):
		log.Info("tasks are supervised by shoal itself: install "+supervise.Binary+" next to it (make build does) for a lighter supervisor", "why", err)
	case err != nil:
		log.Warn("tasks are supervised by shoal itself: the standalone supervisor cannot be used", "err", err)
	}
	return cmd
}

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
// runtime, the docker runtime when the local Docker Engine answers, and
// the container runtime when this node can run containers with runc. It
// also returns, by name, those it does not offer and why. taskNet is the
// node's task network (nil without one), on which the container runtime
// gives each task its own network namespace and address.
func newRuntimes(dataDir, advertiseIP, dnsAddr string, taskNet *tasknet.Node, log *slog.Logger) ([]worker.Runtime, map[string]string, error) {
	sup := supervisorCommandLine(log)
	proc, err := process.New(process.Config{
		Dir:               filepath.Join(dataDir, "worker", "process"),
		AdvertiseIP:       advertiseIP,
		DNSAddr:           dnsAddr,
		SupervisorCommand: sup,
		Logger:            log,
	})
	if err != nil {
		return nil, nil, err
	}
	rts := []worker.Runtime{proc}
	notOffered := map[string]string{}
	if d, why := newDockerRuntime(dataDir, advertiseIP, log); d != nil {
		rts = append(rts, d)
	} else {
		notOffered[dockerrt.Name] = why
	}
	if c, why := newContainerRuntime(dataDir, advertiseIP, sup, taskNet, log); c != nil {
		rts = append(rts, c)
	} else {
		notOffered[container.Name] = why
	}
	return rts, notOffered, nil
}

// newDockerRuntime returns the docker runtime, or nil and why (logged)
// when the Engine does not answer: the node then does not advertise it.
func newDockerRuntime(dataDir, advertiseIP string, log *slog.Logger) (worker.Runtime, string) {
	id, err := datadir.Load(dataDir)
	if err != nil {
		log.Warn("docker runtime not offered: cannot read the node's identity", "err", err)
		return nil, "cannot read the node's identity: " + err.Error()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d, err := dockerrt.New(ctx, dockerrt.Config{NodeID: id.NodeID, NodeName: id.Hostname, AdvertiseIP: advertiseIP,
		DNS: []string{mesh.ContainerResolverIP(id.ClusterID)}, Logger: log})
	if err != nil {
		log.Info("docker runtime not offered: no Docker Engine answers on this node", "err", err)
		return nil, "no Docker Engine answers on this node: " + err.Error()
	}
	return d, ""
}

// newContainerRuntime returns the container runtime on the node's image
// store (DATA/worker/images), or nil and why (logged) when this node
// cannot run containers: the agent must run as root, the kernel have
// OverlayFS and runc be installed. Each task gets its own network
// namespace and address on taskNet; without one (nil), tasks share the
// node's network, their ports allocated on the node.
func newContainerRuntime(dataDir, advertiseIP string, sup []string, taskNet *tasknet.Node, log *slog.Logger) (worker.Runtime, string) {
	if _, err := container.Check(""); err != nil {
		log.Info("container runtime not offered", "reason", err.Error())
		return nil, err.Error()
	}
	store, err := imagestore.Open(filepath.Join(dataDir, "worker", "images"), log)
	if err != nil {
		log.Warn("container runtime not offered: cannot open the node's image store", "err", err)
		return nil, "cannot open the node's image store: " + err.Error()
	}
	cfg := container.Config{
		Dir:               filepath.Join(dataDir, "worker", "container"),
		Images:            container.StoreImages(store),
		AdvertiseIP:       advertiseIP,
		SupervisorCommand: sup,
		Logger:            log,
	}
	if taskNet != nil {
		cfg.Network = container.TaskNetwork(taskNet)
	} else {
		log.Info("container runtime: no task network on this node; its tasks share the node's network")
	}
	c, err := container.New(cfg)
	if err != nil {
		store.Close()
		log.Warn("container runtime not offered", "err", err)
		return nil, err.Error()
	}
	return c, ""
}
