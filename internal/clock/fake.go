package clock

import (
	"context"
	"sync"
	"time"
)

// Fake is a Clock whose time moves only when Advance is called. Every
// timer, ticker and AfterFunc fires inside Advance, in deadline order, with
// Now at its deadline; a timer made with a duration of zero or less fires
// at the next Advance (Advance(0) will do). AfterFunc callbacks run in the
// goroutine that calls Advance, so once Advance returns they have run.
// Advance from one goroutine at a time.
type Fake struct {
	mu    sync.Mutex
	now   time.Time
	seq   uint64
	armed map[*fakeTimer]struct{}
	// changed is closed and replaced whenever a timer is armed.
	changed chan struct{}
}

// NewFake returns a fake clock reading start.
func NewFake(start time.Time) *Fake {
	return &Fake{now: start, armed: map[*fakeTimer]struct{}{}, changed: make(chan struct{})}
}

// Now is the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// NewTimer returns a timer that fires once Advance reaches now+d.
func (f *Fake) NewTimer(d time.Duration) Timer {
	t := &fakeTimer{f: f, ch: make(chan time.Time, 1)}
	f.arm(t, d)
	return t
}

// AfterFunc calls fn from Advance once it reaches now+d.
func (f *Fake) AfterFunc(d time.Duration, fn func()) Timer {
	t := &fakeTimer{f: f, fn: fn}
	f.arm(t, d)
	return t
}

// NewTicker returns a ticker that fires every d of fake time.
func (f *Fake) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("clock: non-positive interval for NewTicker")
	}
	t := &fakeTimer{f: f, ch: make(chan time.Time, 1), period: d}
	f.arm(t, d)
	return fakeTicker{t}
}

// Advance moves the time forward by d, firing every timer due by then.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	target := f.now.Add(d)
	f.mu.Unlock()
	for {
		f.mu.Lock()
		t := f.earliestLocked()
		if t == nil || t.when.After(target) {
			if target.After(f.now) {
				f.now = target
			}
			f.mu.Unlock()
			return
		}
		if t.when.After(f.now) {
			f.now = t.when
		}
		if t.period > 0 {
			t.when = t.when.Add(t.period)
		} else {
			delete(f.armed, t)
		}
		if t.ch != nil {
			select {
			case t.ch <- f.now:
			default: // a ticker nobody read: the tick is missed, as with time.Ticker
			}
		}
		fn := t.fn
		f.mu.Unlock()
		if fn != nil {
			fn()
		}
	}
}

// Next reports how long until the earliest armed timer fires, and whether
// any is armed.
func (f *Fake) Next() (time.Duration, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.earliestLocked()
	if t == nil {
		return 0, false
	}
	return max(t.when.Sub(f.now), 0), true
}

// WaitForTimer blocks until a timer is armed that fires within the given
// duration of the fake time (within < 0 means any timer), or ctx ends. A
// test calls it to know that a loop has armed the timer it waits on before
// advancing past it.
func (f *Fake) WaitForTimer(ctx context.Context, within time.Duration) error {
	for {
		f.mu.Lock()
		found := false
		for t := range f.armed {
			if within < 0 || !t.when.After(f.now.Add(within)) {
				found = true
				break
			}
		}
		changed := f.changed
		f.mu.Unlock()
		if found {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// earliestLocked returns the armed timer due first (the first armed among
// equals), or nil.
func (f *Fake) earliestLocked() *fakeTimer {
	var first *fakeTimer
	for t := range f.armed {
		if first == nil || t.when.Before(first.when) || (t.when.Equal(first.when) && t.seq < first.seq) {
			first = t
		}
	}
	return first
}

// arm (re)arms t to fire after d, dropping a time it sent but nobody
// received, as time.Timer does since Go 1.23.
func (f *Fake) arm(t *fakeTimer, d time.Duration) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	t.drainLocked()
	_, was := f.armed[t]
	f.seq++
	t.seq = f.seq
	t.when = f.now.Add(max(d, 0))
	f.armed[t] = struct{}{}
	close(f.changed)
	f.changed = make(chan struct{})
	return was
}

func (f *Fake) disarm(t *fakeTimer) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, was := f.armed[t]
	delete(f.armed, t)
	t.drainLocked()
	return was
}

type fakeTimer struct {
	f      *Fake
	ch     chan time.Time
	fn     func()
	period time.Duration
	// when and seq are guarded by f.mu.
	when time.Time
	seq  uint64
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool { return t.f.disarm(t) }

func (t *fakeTimer) Reset(d time.Duration) bool { return t.f.arm(t, d) }

type fakeTicker struct{ t *fakeTimer }

func (t fakeTicker) C() <-chan time.Time { return t.t.ch }
func (t fakeTicker) Stop()               { t.t.f.disarm(t.t) }

// drainLocked drops a time sent but not received; Advance sends under the
// same lock, so none can slip in between.
func (t *fakeTimer) drainLocked() {
	if t.ch == nil {
		return
	}
	select {
	case <-t.ch:
	default:
	}
}
