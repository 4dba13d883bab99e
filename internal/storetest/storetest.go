// Package storetest opens stores for the tests of the packages that run on
// one: a real single-server Raft store, or a memory store.
package storetest

import (
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/raftstore"
)

// OpenLeader starts a one-server store on a free loopback port in a temp
// dir, waits until it leads, and closes it when the test ends.
func OpenLeader(t testing.TB) *raftstore.Store {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s, err := raftstore.Open(raftstore.Config{ID: "n1", Dir: t.TempDir(), BindAddr: addr,
		Timing: raftstore.TimingFromElection(100 * time.Millisecond), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.Bootstrap(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !s.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("store did not become leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s
}

// Memory returns a memory store whose transactions are stamped by now
// (time.Now when nil), closed when the test ends.
func Memory(t testing.TB, now func() time.Time) *raftstore.MemoryStore {
	t.Helper()
	s := raftstore.NewMemoryStore(raftstore.MemoryConfig{Now: now})
	t.Cleanup(func() { s.Close() })
	return s
}
