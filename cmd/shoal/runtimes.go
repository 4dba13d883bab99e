package main

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/mesh"
	"github.com/shoal-cluster/shoal/worker"
	dockerrt "github.com/shoal-cluster/shoal/worker/docker"
	"github.com/shoal-cluster/shoal/worker/process"
)

// supervisorCommand is the hidden subcommand the process runtime re-executes
// this binary with, to supervise one task outside the agent.
const supervisorCommand = process.SupervisorSubcommand

// newRuntimes builds the runtimes a worker offers: always the process
// runtime, and the docker runtime when the local Docker Engine answers.
func newRuntimes(dataDir, advertiseIP, dnsAddr string, log *slog.Logger) ([]worker.Runtime, error) {
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
