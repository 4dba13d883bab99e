package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/shoal-cluster/shoal/manager"
	"github.com/shoal-cluster/shoal/raftstore"
)

// inProcessManager is a one-manager cluster run in this process for a
// benchmark that joins an in-process worker to it, logging to
// DIR/in-process.log.
type inProcessManager struct {
	m      *manager.Manager
	dir    string
	port   int
	logger *slog.Logger
	token  string // the worker join token
	close  func() // stops the manager, then closes the log
}

// startInProcessManager starts it under e.tmp/name, logging at level, and
// waits until it leads and has a worker token.
func (e *env) startInProcessManager(ctx context.Context, name string, level slog.Level) (*inProcessManager, error) {
	port, err := e.freePortWithWorker()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(e.tmp, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dir, "in-process.log"))
	if err != nil {
		return nil, err
	}
	logger := slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: level}))
	m, err := manager.Init(ctx, manager.Config{
		DataDir: filepath.Join(dir, "m1"), Hostname: "m1", AdvertiseIP: managerIPs[0], APIPort: port,
		Timing: raftstore.TimingFromElection(e.opts.election), HeartbeatPeriod: time.Second, Logger: logger.With("who", "m1"),
	})
	if err != nil {
		logFile.Close()
		return nil, fmt.Errorf("manager.Init: %w", err)
	}
	p := &inProcessManager{m: m, dir: dir, port: port, logger: logger, close: func() { m.Close(); logFile.Close() }}
	err = poll(ctx, 30*time.Second, 20*time.Millisecond, "the cluster object", func(context.Context) (bool, error) {
		m.Store().View(func(tx *raftstore.Tx) {
			if c := tx.Cluster(); c != nil {
				p.token = c.GetJoinTokens().GetWorker()
			}
		})
		return m.IsLeader() && p.token != "", nil
	})
	if err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}
