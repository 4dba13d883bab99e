//go:build !faultinject

package raftstore

import "github.com/hashicorp/raft"

// wrapLogStore returns the log store unchanged: disk faults are only built
// into test binaries (the faultinject build tag).
func wrapLogStore(s raft.LogStore) raft.LogStore { return s }
