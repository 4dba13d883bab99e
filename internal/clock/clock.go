// Package clock is the one source of time for the manager's leader loops:
// Real reads the system clock, and Fake is a clock a test moves forward by
// hand, so that delays, periods and batching windows are exercised without
// waiting for them.
package clock

import "time"

// Clock tells the time and makes timers, as the time package does.
type Clock interface {
	// Now is the current time.
	Now() time.Time
	// NewTimer returns a timer that sends the time on its channel once d
	// has passed.
	NewTimer(d time.Duration) Timer
	// AfterFunc calls f in its own goroutine once d has passed. The
	// returned timer's C is nil.
	AfterFunc(d time.Duration, f func()) Timer
	// NewTicker returns a ticker that sends the time every d; d must be
	// positive.
	NewTicker(d time.Duration) Ticker
}

// Timer is a single event, as time.Timer.
type Timer interface {
	// C delivers the time the timer fired (nil for AfterFunc timers).
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it was armed.
	// No stale time is received from C after Stop returns.
	Stop() bool
	// Reset arms the timer again to fire after d; it reports whether it was
	// armed. No stale time is received from C after Reset returns.
	Reset(d time.Duration) bool
}

// Ticker is a periodic event, as time.Ticker.
type Ticker interface {
	// C delivers the ticks; a slow reader misses ticks rather than queueing them.
	C() <-chan time.Time
	// Stop turns the ticker off.
	Stop()
}

// Real returns the system clock.
func Real() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

func (realClock) AfterFunc(d time.Duration, f func()) Timer { return realTimer{time.AfterFunc(d, f)} }

func (realClock) NewTicker(d time.Duration) Ticker { return realTicker{time.NewTicker(d)} }

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time        { return r.t.C }
func (r realTimer) Stop() bool                 { return r.t.Stop() }
func (r realTimer) Reset(d time.Duration) bool { return r.t.Reset(d) }

type realTicker struct{ t *time.Ticker }

func (r realTicker) C() <-chan time.Time { return r.t.C }
func (r realTicker) Stop()               { r.t.Stop() }
