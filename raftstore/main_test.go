package raftstore

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when goroutines outlive the tests: every
// Store, Subscription and raft connection must be released by Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
