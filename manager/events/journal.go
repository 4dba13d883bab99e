package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultLimit is how many events a Journal keeps.
const DefaultLimit = 10000

// Source is the replica a Journal reads.
type Source interface {
	ViewAndWatch(fn func(tx *raftstore.Tx), filter func(raftstore.Event) bool) *raftstore.Subscription
}

// position orders events: by Raft index, then by seq within one index.
type position struct {
	index uint64
	seq   uint32
}

func (p position) less(q position) bool {
	return p.index < q.index || (p.index == q.index && p.seq < q.seq)
}

func positionOf(e *pb.ClusterEvent) position { return position{e.GetIndex(), e.GetSeq()} }

// Journal keeps the latest events this manager's replica committed and
// streams them. Every manager runs one, leader or not.
type Journal struct {
	src   Source
	limit int
	log   *slog.Logger

	mu     sync.Mutex
	events []*pb.ClusterEvent // in position order
	// from is the position after which every event is kept: older ones
	// were trimmed, or happened before this journal started.
	from    position
	started bool
	changed chan struct{} // closed and replaced on every append
	streams int           // streams following now (for tests and a gauge)
}

// New makes a journal of up to limit events (DefaultLimit when 0).
func New(src Source, limit int, log *slog.Logger) *Journal {
	if limit <= 0 {
		limit = DefaultLimit
	}
	return &Journal{src: src, limit: limit, log: log, changed: make(chan struct{})}
}

// Run follows the replica until ctx ends. When its subscription is lost
// (it fell behind, or a snapshot replaced the state) it starts again from
// the current state, and streams that asked for events from before then
// are told so.
func (j *Journal) Run(ctx context.Context) {
	for ctx.Err() == nil {
		var at uint64
		sub := j.src.ViewAndWatch(func(tx *raftstore.Tx) { at = tx.Index() }, nil)
		j.mu.Lock()
		if !j.started || len(j.events) == 0 || j.events[len(j.events)-1].GetIndex() < at {
			// Events between what we hold and at are unknown: forget
			// everything up to at.
			j.events = nil
			j.from = position{index: at, seq: ^uint32(0)}
		}
		j.started = true
		j.notifyLocked()
		j.mu.Unlock()
		j.follow(ctx, sub)
		sub.Close()
		if err := sub.Err(); err != nil && ctx.Err() == nil {
			j.log.Warn("event journal lost its subscription; starting again from the current state", "err", err)
		}
	}
}

// follow appends the events of one subscription until it ends.
func (j *Journal) follow(ctx context.Context, sub *raftstore.Subscription) {
	var (
		lastIndex uint64
		seq       uint32
	)
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-sub.C():
			if !ok {
				return
			}
			if ev.Index != lastIndex {
				lastIndex, seq = ev.Index, 0
			}
			out := Translate(ev)
			for _, e := range out {
				e.Seq = seq
				seq++
			}
			j.append(out)
		}
	}
}

func (j *Journal) append(evs []*pb.ClusterEvent) {
	if len(evs) == 0 {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, e := range evs {
		if n := len(j.events); n > 0 && !positionOf(j.events[n-1]).less(positionOf(e)) {
			continue // replayed: already held
		}
		j.events = append(j.events, e)
	}
	if over := len(j.events) - j.limit; over > 0 {
		j.from = positionOf(j.events[over-1])
		j.events = slices.Clone(j.events[over:])
	}
	j.notifyLocked()
}

func (j *Journal) notifyLocked() {
	close(j.changed)
	j.changed = make(chan struct{})
}

// ErrTooOld is returned to a stream whose resume position is older than the
// events this manager keeps.
var ErrTooOld = errors.New("events: too old")

// Stream sends the events req selects to send: the kept ones, then new ones
// as they are committed, until ctx ends, send fails or req.Until passes.
// Without a position or a since time it starts with the next event.
func (j *Journal) Stream(ctx context.Context, req *pb.EventsRequest, send func(*pb.ClusterEvent) error) error {
	types := map[string]bool{}
	for _, t := range req.GetTypes() {
		if !slices.Contains(Types, t) {
			return status.Errorf(codes.InvalidArgument, "unknown event type %q: use one of %v", t, Types)
		}
		types[t] = true
	}
	if req.GetUntil() != 0 && req.GetSince() != 0 && req.GetUntil() < req.GetSince() {
		return status.Error(codes.InvalidArgument, "--until is before --since")
	}
	j.mu.Lock()
	pos := position{req.GetSinceIndex(), req.GetSinceSeq()}
	switch {
	case req.GetSinceIndex() != 0:
		if pos.less(j.from) {
			from := j.from
			j.mu.Unlock()
			return tooOld(pos, from)
		}
	case req.GetSince() != 0:
		pos = j.from
	default:
		pos = j.endLocked()
	}
	j.streams++
	j.mu.Unlock()
	defer func() {
		j.mu.Lock()
		j.streams--
		j.mu.Unlock()
	}()

	var until <-chan time.Time
	if u := req.GetUntil(); u != 0 {
		t := time.NewTimer(time.Until(time.Unix(0, u)))
		defer t.Stop()
		until = t.C
	}
	for {
		j.mu.Lock()
		if pos.less(j.from) {
			from := j.from
			j.mu.Unlock()
			return tooOld(pos, from)
		}
		i := sort.Search(len(j.events), func(i int) bool { return pos.less(positionOf(j.events[i])) })
		batch := j.events[i:len(j.events):len(j.events)]
		changed := j.changed
		j.mu.Unlock()
		for _, e := range batch {
			pos = positionOf(e)
			if req.GetSince() != 0 && e.GetTime() < req.GetSince() {
				continue
			}
			if req.GetUntil() != 0 && e.GetTime() > req.GetUntil() {
				return nil
			}
			if len(types) > 0 && !types[e.GetType()] {
				continue
			}
			if err := send(e); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-until:
			return nil
		case <-changed:
		}
	}
}

// endLocked is the position of the newest event held.
func (j *Journal) endLocked() position {
	if n := len(j.events); n > 0 {
		return positionOf(j.events[n-1])
	}
	return j.from
}

func tooOld(pos, from position) error {
	return status.Error(codes.OutOfRange, fmt.Sprintf("%v: this manager keeps events after index %d only, and the stream asked to resume after index %d (seq %d); list the state again and follow events from now", ErrTooOld, from.index, pos.index, pos.seq))
}
