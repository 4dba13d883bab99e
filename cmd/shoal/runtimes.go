package main

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/mesh"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/container"
	dockerrt "github.com/shoal-cluster/shoal/worker/docker"
	"github.com/shoal-cluster/shoal/worker/imagestore"
	"github.com/shoal-cluster/shoal/worker/process"
)

// supervisorCommand is the hidden subcommand the process runtime re-executes
// this binary with, to supervise one task outside the agent.
const supervisorCommand = process.SupervisorSubcommand

// newRuntimes builds the runtimes a worker offers: always the process
// runtime, the docker runtime when the local Docker Engine answers, and
// the container runtime when this node can run containers with runc. It
// also returns, by name, those it does not offer and why.
func newRuntimes(dataDir, advertiseIP, dnsAddr string, log *slog.Logger) ([]worker.Runtime, map[string]string, error) {
	proc, err := process.New(process.Config{
		Dir:               filepath.Join(dataDir, "worker", "process"),
		AdvertiseIP:       advertiseIP,
		DNSAddr:           dnsAddr,
		SupervisorCommand: []string{selfExecutable(), supervisorCommand},
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
	if c, why := newContainerRuntime(dataDir, advertiseIP, log); c != nil {
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
// OverlayFS and runc be installed. Its tasks share the node's network,
// their ports allocated on the node, until the node has a task network.
func newContainerRuntime(dataDir, advertiseIP string, log *slog.Logger) (worker.Runtime, string) {
	if _, err := container.Check(""); err != nil {
		log.Info("container runtime not offered", "reason", err.Error())
		return nil, err.Error()
	}
	store, err := imagestore.Open(filepath.Join(dataDir, "worker", "images"), log)
	if err != nil {
		log.Warn("container runtime not offered: cannot open the node's image store", "err", err)
		return nil, "cannot open the node's image store: " + err.Error()
	}
	c, err := container.New(container.Config{
		Dir:               filepath.Join(dataDir, "worker", "container"),
		Images:            container.StoreImages(store),
		AdvertiseIP:       advertiseIP,
		SupervisorCommand: []string{selfExecutable(), supervisorCommand},
		Logger:            log,
	})
	if err != nil {
		store.Close()
		log.Warn("container runtime not offered", "err", err)
		return nil, err.Error()
	}
	return c, ""
}
