package raftstore

import (
	"crypto/rand"
	"encoding/base32"
	"errors"
	"strings"
)

// Errors the store returns. FSM errors are deterministic: every replica
// refuses the same transaction for the same reason.
var (
	// ErrNotLeader means this manager cannot write; send the call to the leader.
	ErrNotLeader = errors.New("this manager is not the Raft leader")
	// ErrNoLeader means no leader is known: an election is under way or quorum is lost.
	ErrNoLeader = errors.New("no Raft leader: an election is in progress or a majority of managers is unreachable")
	// ErrOutcomeUnknown means leadership was lost while a write was in flight:
	// it may or may not have been committed. Retrying with the same request ID is safe.
	ErrOutcomeUnknown = errors.New("leadership lost while the write was in flight; its outcome is unknown, retry with the same request ID")
	// ErrVersionConflict means an object changed since it was read.
	ErrVersionConflict = errors.New("the object was changed by someone else since it was read; read it again and retry")
	// ErrNotFound means no object has that ID.
	ErrNotFound = errors.New("not found")
	// ErrExists means an object with that ID already exists.
	ErrExists = errors.New("already exists")
	// ErrNameConflict means a unique name is taken.
	ErrNameConflict = errors.New("name already in use")
	// ErrMissingID means an object was written without an ID.
	ErrMissingID = errors.New("object has no ID")
	// ErrReadOnly means a write was staged inside View.
	ErrReadOnly = errors.New("write inside a read-only transaction")
	// ErrTooLarge means a transaction exceeds the Raft entry size limit.
	ErrTooLarge = errors.New("transaction too large for one Raft entry; split it into batches")
	// ErrClosed means the store was shut down.
	ErrClosed = errors.New("store is closed")
)

const idLength = 25

var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// NewID returns a random 25-character lower-case object ID.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("raftstore: no randomness: " + err.Error())
	}
	return strings.ToLower(idEncoding.EncodeToString(b[:]))[:idLength]
}
