// Package poll is how Shoal's tests wait for something that happens on its
// own time (a task to start, a node to go Down, a leader to be elected):
// check a condition at short intervals until it holds or a deadline
// passes, and fail the test saying what was awaited and what was last
// seen. The tests' own helpers adapt their conditions to it.
package poll

import (
	"testing"
	"time"
)

// Interval is how often Until checks its condition.
const Interval = 20 * time.Millisecond

// Until calls cond every Interval until it reports done; once timeout has
// passed it fails t with what it waited for and cond's last word on why
// it was not done yet.
func Until(t testing.TB, timeout time.Duration, what string, cond func() (done bool, why string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		done, why := cond()
		if done {
			return
		}
		if time.Now().After(deadline) {
			if why == "" {
				t.Fatalf("timed out after %s waiting for %s", timeout, what)
			}
			t.Fatalf("timed out after %s waiting for %s; last: %s", timeout, what, why)
		}
		time.Sleep(Interval)
	}
}

// Bool adapts a condition that says nothing about why it does not hold;
// detail, if not nil, is asked instead.
func Bool(cond func() bool, detail func() string) func() (bool, string) {
	return func() (bool, string) {
		if cond() {
			return true, ""
		}
		if detail != nil {
			return false, detail()
		}
		return false, ""
	}
}

// Err adapts a condition that returns why not as an error (nil: done).
func Err(cond func() error) func() (bool, string) {
	return func() (bool, string) {
		if err := cond(); err != nil {
			return false, err.Error()
		}
		return true, ""
	}
}
