package main

import (
	"log/slog"
	"path/filepath"

	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/process"
)

// supervisorCommand is the hidden subcommand the process runtime re-executes
// this binary with, to supervise one task outside the agent.
const supervisorCommand = process.SupervisorSubcommand

// newRuntimes builds the runtimes a worker offers.
func newRuntimes(dataDir, advertiseIP string, log *slog.Logger) ([]worker.Runtime, error) {
	proc, err := process.New(process.Config{
		Dir:               filepath.Join(dataDir, "worker", "process"),
		AdvertiseIP:       advertiseIP,
		SupervisorCommand: []string{selfExecutable(), supervisorCommand},
		Logger:            log,
	})
	if err != nil {
		return nil, err
	}
	return []worker.Runtime{proc}, nil
}
