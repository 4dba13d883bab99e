package worker

import (
	"context"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// comingAndGoing is a runtime whose availability the test switches.
type comingAndGoing struct {
	Runtime
	name string
	up   atomic.Bool
}

func (r *comingAndGoing) Name() string    { return r.name }
func (r *comingAndGoing) Available() bool { return r.up.Load() }

func TestOfferedRuntimesFollowAvailability(t *testing.T) {
	always := &comingAndGoing{name: "process"}
	always.up.Store(true)
	engine := &comingAndGoing{name: "docker"}
	engine.up.Store(true)
	a := &Agent{log: slog.New(slog.DiscardHandler), runtimes: map[string]Runtime{"process": always, "docker": engine},
		runtimeNames: []string{"process", "docker"}}

	cases := []struct {
		engineUp bool
		want     []string
	}{
		{true, []string{"process", "docker"}},
		{false, []string{"process"}},
		{true, []string{"process", "docker"}},
	}
	for _, tc := range cases {
		engine.up.Store(tc.engineUp)
		if got := a.offered(); !slices.Equal(got, tc.want) {
			t.Fatalf("engine up %v: offered %v, want %v", tc.engineUp, got, tc.want)
		}
	}

	// A change ends the session, so the next one re-advertises.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ended atomic.Bool
	done := make(chan struct{})
	initial := a.offered()
	go func() {
		a.watchRuntimes(ctx, func() { ended.Store(true); cancel() }, initial)
		close(done)
	}()
	engine.up.Store(false)
	select {
	case <-done:
	case <-time.After(3 * runtimeCheckInterval):
		t.Fatal("the session was not ended when the Engine went away")
	}
	if !ended.Load() {
		t.Fatal("watchRuntimes returned without ending the session")
	}
}
