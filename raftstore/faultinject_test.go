//go:build faultinject

package raftstore

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestSlowLogStoreReadsItsDelayFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "delay")
	t.Setenv(DiskDelayFileEnv, path)
	inner := raft.NewInmemStore()
	s, ok := wrapLogStore(inner).(*slowLogStore)
	if !ok {
		t.Fatal("with the variable set the log store is not wrapped")
	}
	for _, tc := range []struct {
		content string
		want    time.Duration
	}{{"", 0}, {"25ms", 25 * time.Millisecond}, {" 1s\n", time.Second}, {"soon", 0}, {"-5ms", 0}} {
		if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := s.currentDelay(); got != tc.want {
			t.Errorf("delay file %q: got %s, want %s", tc.content, got, tc.want)
		}
	}
	os.Remove(path)
	if got := s.currentDelay(); got != 0 {
		t.Errorf("no delay file: got %s", got)
	}
	if err := s.StoreLogs([]*raft.Log{{Index: 1, Term: 1, Data: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	var got raft.Log
	if err := inner.GetLog(1, &got); err != nil || string(got.Data) != "x" {
		t.Fatalf("the write did not reach the wrapped store: %v", err)
	}
	t.Setenv(DiskDelayFileEnv, "")
	if _, wrapped := wrapLogStore(inner).(*slowLogStore); wrapped {
		t.Fatal("without the variable the log store is wrapped")
	}
}
