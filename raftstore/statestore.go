package raftstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// StateStore is the cluster state as the manager's loops use it: reads,
// transactional writes and the stream of committed changes, under the FSM's
// rules (version checks, request-ID deduplication, IDs derived from the
// request ID, the entry size limit, events in commit order). *Store
// replicates it with Raft; *MemoryStore keeps it in this process alone.
type StateStore interface {
	// Update runs fn in a write transaction and commits its changes as one
	// entry; see Store.Update.
	Update(ctx context.Context, fn func(tx *Tx) error) (uint64, error)
	// View runs fn on the local state.
	View(fn func(tx *Tx))
	// ViewConsistent runs fn on a state that includes every write
	// acknowledged before the call.
	ViewConsistent(ctx context.Context, fn func(tx *Tx)) error
	// Watch subscribes to committed changes.
	Watch(filter func(Event) bool) *Subscription
	// ViewAndWatch runs fn and subscribes atomically.
	ViewAndWatch(fn func(tx *Tx), filter func(Event) bool) *Subscription
}

var (
	_ StateStore = (*Store)(nil)
	_ StateStore = (*MemoryStore)(nil)
)

// committer is how a store gets a transaction committed and applied to its
// FSM: through Raft (Store) or at once (MemoryStore).
type committer interface {
	// awaitWritable returns nil once this store may write, or why not.
	awaitWritable(ctx context.Context) error
	// commit commits txn and returns the FSM's result once applied here.
	commit(ctx context.Context, txn *pb.Transaction) (*applyResult, error)
	// confirm returns nil if this store still leads with the state fn
	// read: an answer that commits nothing is a read, and must not come
	// from a deposed leader's out-of-date state.
	confirm(ctx context.Context) error
	// now stamps transactions (objects' created and updated times).
	now() time.Time
}

// optimisticAttempts is how many times Update tries before taking the
// contention lock.
const optimisticAttempts = 3

// maxConflictRetries bounds how often Update re-runs fn after a version
// conflict detected at commit time.
const maxConflictRetries = 64

// update is Update for both stores: fn runs on f's state under its read
// lock and its writes are committed through c; a commit refused for a
// version conflict runs fn again on the new state. contended is the
// store's one-slot contention lock.
func update(ctx context.Context, f *fsm, contended chan struct{}, c committer, fn func(tx *Tx) error) (uint64, error) {
	reqID := RequestID(ctx)
	if reqID == "" {
		reqID = NewID()
	}
	serialized := false
	defer func() {
		if serialized {
			<-contended
		}
	}()
	for attempt := 0; ; attempt++ {
		// Optimistic first; a writer that keeps losing to others retries
		// under the leader's contention lock, so hot objects serialise
		// instead of failing.
		if attempt == optimisticAttempts {
			select {
			case contended <- struct{}{}:
				serialized = true
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
		if err := c.awaitWritable(ctx); err != nil {
			return 0, err
		}
		f.mu.RLock()
		// A retry of a request that already committed (after
		// ErrOutcomeUnknown) succeeds without running fn again: fn would
		// see its own effects and might refuse them (a Create finding its
		// object, say) before the FSM could recognise the duplicate.
		if idx, done := f.st.requests.lookup(reqID); done {
			f.mu.RUnlock()
			return idx, nil
		}
		tx := newTx(f.st, true, reqID)
		err := fn(tx)
		index := tx.Index()
		f.mu.RUnlock()
		if err != nil {
			return 0, err
		}
		actions := tx.actions()
		if len(actions) == 0 {
			if err := confirmAnswer(ctx, c); err != nil {
				return 0, err
			}
			return index, nil
		}
		began := time.Now()
		res, err := c.commit(ctx, &pb.Transaction{RequestId: reqID, Timestamp: c.now().UnixNano(), Actions: actions})
		if err != nil {
			f.obs.committed(time.Since(began), err)
			return 0, err
		}
		f.obs.committed(time.Since(began), res.err)
		if errors.Is(res.err, ErrVersionConflict) && attempt < maxConflictRetries {
			f.obs.conflict()
			continue
		}
		return res.index, res.err
	}
}

// Observer hears of the writes made through Update, for metrics. Either
// function may be nil; both must be quick.
type Observer struct {
	// Committed is told of every transaction proposed: how long it took to
	// commit and apply here, and its outcome (nil, a refusal such as
	// ErrVersionConflict, or why it could not be committed).
	Committed func(d time.Duration, err error)
	// Conflict is told when a transaction was refused for a version
	// conflict and is about to run again on the new state.
	Conflict func()
}

func (o *Observer) committed(d time.Duration, err error) {
	if o != nil && o.Committed != nil {
		o.Committed(d, err)
	}
}

func (o *Observer) conflict() {
	if o != nil && o.Conflict != nil {
		o.Conflict()
	}
}

type confirmKey struct{}

// WithConfirmedAnswers marks a client's call: when Update finds nothing to
// change, it confirms with a quorum that the store still leads before it
// answers "done", so a deposed leader that has not heard of its successor
// yet never answers from its out-of-date state. (A refusal from fn is
// returned as it is: the caller confirms refusals, whichever read they
// came from; see Store.VerifyLeader.) Leader loops, which act only while
// they lead and answer nobody, leave it off.
func WithConfirmedAnswers(ctx context.Context) context.Context {
	return context.WithValue(ctx, confirmKey{}, true)
}

// confirmAnswer confirms leadership for a call marked WithConfirmedAnswers.
func confirmAnswer(ctx context.Context, c committer) error {
	if marked, _ := ctx.Value(confirmKey{}).(bool); !marked {
		return nil
	}
	return c.confirm(ctx)
}

// encodeTransaction encodes txn as one log entry; it refuses a transaction
// larger than MaxEntrySize, and one whose context is already done (it
// would never be submitted).
func encodeTransaction(ctx context.Context, txn *pb.Transaction) ([]byte, error) {
	data, err := proto.Marshal(txn)
	if err != nil {
		return nil, fmt.Errorf("encode transaction: %w", err)
	}
	if len(data) > MaxEntrySize {
		return nil, fmt.Errorf("%d bytes in %d actions: %w", len(data), len(txn.Actions), ErrTooLarge)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("write %s not submitted: %w", txn.RequestId, err)
	}
	return data, nil
}
