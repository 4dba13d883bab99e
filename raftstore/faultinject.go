//go:build faultinject

package raftstore

import (
	"os"
	"strings"
	"time"

	"github.com/hashicorp/raft"
)

// wrapLogStore slows the Raft log's writes down when asked to.
func wrapLogStore(s raft.LogStore) raft.LogStore {
	path := os.Getenv(DiskDelayFileEnv)
	if path == "" {
		return s
	}
	return &slowLogStore{LogStore: s, path: path}
}

// slowLogStore sleeps before each write for the duration in its file.
type slowLogStore struct {
	raft.LogStore
	path string
}

// currentDelay reads the delay file; no file or a bad one means none.
func (s *slowLogStore) currentDelay() time.Duration {
	data, err := os.ReadFile(s.path)
	if err != nil {
		return 0
	}
	d, err := time.ParseDuration(strings.TrimSpace(string(data)))
	if err != nil || d < 0 {
		return 0
	}
	return d
}

func (s *slowLogStore) delay() {
	if d := s.currentDelay(); d > 0 {
		time.Sleep(d)
	}
}

// StoreLog delays, then writes one entry.
func (s *slowLogStore) StoreLog(l *raft.Log) error {
	s.delay()
	return s.LogStore.StoreLog(l)
}

// StoreLogs delays, then writes a batch of entries.
func (s *slowLogStore) StoreLogs(logs []*raft.Log) error {
	s.delay()
	return s.LogStore.StoreLogs(logs)
}
