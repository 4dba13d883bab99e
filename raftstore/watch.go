package raftstore

import (
	"errors"
	"sync"
)

// EventKind says what happened to an object.
type EventKind int

// Event kinds.
const (
	EventCreate EventKind = iota + 1
	EventUpdate
	EventDelete
)

func (k EventKind) String() string {
	switch k {
	case EventCreate:
		return "create"
	case EventUpdate:
		return "update"
	case EventDelete:
		return "delete"
	}
	return "unknown"
}

// Event is one committed change. Object is the new state (the removed one
// for deletes) and Old the state before (nil for creates). Both are shared
// with the store and must not be modified.
type Event struct {
	Kind   EventKind
	Table  Kind
	Object Object
	Old    Object
	// Index is the Raft index of the transaction that made the change.
	Index uint64
	// Time is the transaction's timestamp (Unix nanoseconds, the
	// proposer's clock), the same on every replica.
	Time int64
}

// Errors that end a subscription.
var (
	// ErrWatchOverflow means the subscriber fell too far behind.
	ErrWatchOverflow = errors.New("watch: subscriber fell behind; list the state again and resubscribe")
	// ErrWatchReset means the state was replaced by a snapshot restore.
	ErrWatchReset = errors.New("watch: state replaced by a snapshot; list the state again and resubscribe")
)

// maxQueuedEvents bounds how far a subscriber may fall behind.
const maxQueuedEvents = 1 << 18

// Subscription delivers committed events in commit order. Close it when
// done; after its channel closes, Err says why.
type Subscription struct {
	hub    *hub
	filter func(Event) bool
	ch     chan Event

	mu     sync.Mutex
	queue  []Event
	signal chan struct{}
	err    error
	done   chan struct{}
	once   sync.Once
}

// C is the event channel; it closes when the subscription ends.
func (s *Subscription) C() <-chan Event { return s.ch }

// Err is why the subscription ended: nil after Close, ErrWatchOverflow,
// ErrWatchReset or ErrClosed.
func (s *Subscription) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close ends the subscription and releases its goroutine.
func (s *Subscription) Close() {
	s.hub.remove(s)
	s.end(nil)
}

func (s *Subscription) end(err error) {
	s.once.Do(func() {
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
		close(s.done)
	})
}

// push queues events without blocking the FSM.
func (s *Subscription) push(evs []Event) bool {
	s.mu.Lock()
	for _, e := range evs {
		if s.filter == nil || s.filter(e) {
			s.queue = append(s.queue, e)
		}
	}
	overflow := len(s.queue) > maxQueuedEvents
	s.mu.Unlock()
	if overflow {
		return false
	}
	select {
	case s.signal <- struct{}{}:
	default:
	}
	return true
}

// pump moves queued events to the channel.
func (s *Subscription) pump() {
	defer close(s.ch)
	for {
		s.mu.Lock()
		batch := s.queue
		s.queue = nil
		s.mu.Unlock()
		for _, e := range batch {
			select {
			case s.ch <- e:
			case <-s.done:
				return
			}
		}
		if len(batch) > 0 {
			continue
		}
		select {
		case <-s.signal:
		case <-s.done:
			return
		}
	}
}

// hub fans committed events out to subscribers.
type hub struct {
	mu   sync.Mutex
	subs map[*Subscription]struct{}
}

func newHub() *hub { return &hub{subs: map[*Subscription]struct{}{}} }

func (h *hub) subscribe(filter func(Event) bool) *Subscription {
	s := &Subscription{hub: h, filter: filter, ch: make(chan Event, 64), signal: make(chan struct{}, 1), done: make(chan struct{})}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	go s.pump()
	return s
}

func (h *hub) remove(s *Subscription) {
	h.mu.Lock()
	delete(h.subs, s)
	h.mu.Unlock()
}

func (h *hub) publish(evs []Event) {
	if len(evs) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if !s.push(evs) {
			delete(h.subs, s)
			s.end(ErrWatchOverflow)
		}
	}
}

// closeAll ends every subscription with err.
func (h *hub) closeAll(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		delete(h.subs, s)
		s.end(err)
	}
}
