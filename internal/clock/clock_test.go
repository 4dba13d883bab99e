package clock

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// received reports what a timer channel holds right now.
func received(c <-chan time.Time) (time.Time, bool) {
	select {
	case v := <-c:
		return v, true
	default:
		return time.Time{}, false
	}
}

func TestFakeTimerFiresAtItsDeadline(t *testing.T) {
	f := NewFake(epoch)
	tm := f.NewTimer(10 * time.Second)
	f.Advance(9 * time.Second)
	if _, ok := received(tm.C()); ok {
		t.Fatal("timer fired before its deadline")
	}
	f.Advance(2 * time.Second)
	v, ok := received(tm.C())
	if !ok || !v.Equal(epoch.Add(10*time.Second)) {
		t.Fatalf("timer sent %v, %v; want its deadline", v, ok)
	}
	if got := f.Now(); !got.Equal(epoch.Add(11 * time.Second)) {
		t.Fatalf("Now = %v after advancing 11s", got)
	}
	if tm.Stop() {
		t.Error("Stop of a fired timer reported it armed")
	}
}

func TestFakeTimerStopAndReset(t *testing.T) {
	f := NewFake(epoch)
	tm := f.NewTimer(time.Second)
	if !tm.Stop() {
		t.Error("Stop of an armed timer reported it idle")
	}
	f.Advance(time.Hour)
	if _, ok := received(tm.C()); ok {
		t.Fatal("a stopped timer fired")
	}
	if tm.Reset(time.Minute) {
		t.Error("Reset of a stopped timer reported it armed")
	}
	f.Advance(time.Minute)
	if _, ok := received(tm.C()); !ok {
		t.Fatal("a reset timer did not fire")
	}
	// A fired value nobody read is dropped by Reset and Stop.
	tm.Reset(time.Second)
	f.Advance(time.Second)
	tm.Reset(time.Second)
	if _, ok := received(tm.C()); ok {
		t.Fatal("Reset left a stale value in the channel")
	}
	f.Advance(time.Second)
	tm.Stop()
	if _, ok := received(tm.C()); ok {
		t.Fatal("Stop left a stale value in the channel")
	}
}

func TestFakeZeroTimerFiresAtNextAdvance(t *testing.T) {
	f := NewFake(epoch)
	tm := f.NewTimer(0)
	if _, ok := received(tm.C()); ok {
		t.Fatal("a zero timer fired outside Advance")
	}
	f.Advance(0)
	if _, ok := received(tm.C()); !ok {
		t.Fatal("a zero timer did not fire at Advance(0)")
	}
}

func TestFakeAfterFuncRunsInOrderInsideAdvance(t *testing.T) {
	f := NewFake(epoch)
	var order []string
	var at []time.Time
	f.AfterFunc(3*time.Second, func() { order = append(order, "c"); at = append(at, f.Now()) })
	f.AfterFunc(time.Second, func() { order = append(order, "a"); at = append(at, f.Now()) })
	f.AfterFunc(2*time.Second, func() { order = append(order, "b"); at = append(at, f.Now()) })
	stopped := f.AfterFunc(2*time.Second, func() { order = append(order, "stopped") })
	stopped.Stop()
	f.Advance(10 * time.Second)
	if got := len(order); got != 3 || order[0] != "a" || order[1] != "b" || order[2] != "c" {
		t.Fatalf("callbacks ran %v, want [a b c]", order)
	}
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 3 * time.Second} {
		if !at[i].Equal(epoch.Add(want)) {
			t.Errorf("callback %s saw Now = %v, want its deadline", order[i], at[i])
		}
	}
	// A callback may arm another timer; it fires in the same Advance if due.
	fired := false
	f.AfterFunc(time.Second, func() { f.AfterFunc(time.Second, func() { fired = true }) })
	f.Advance(2 * time.Second)
	if !fired {
		t.Error("a timer armed by a callback, due within the Advance, did not fire")
	}
}

func TestFakeTicker(t *testing.T) {
	f := NewFake(epoch)
	tk := f.NewTicker(time.Second)
	for i := 1; i <= 3; i++ {
		f.Advance(time.Second)
		v, ok := received(tk.C())
		if !ok || !v.Equal(epoch.Add(time.Duration(i)*time.Second)) {
			t.Fatalf("tick %d: %v, %v", i, v, ok)
		}
	}
	// Ticks nobody reads are missed, not queued.
	f.Advance(5 * time.Second)
	if _, ok := received(tk.C()); !ok {
		t.Fatal("no tick after 5s")
	}
	if _, ok := received(tk.C()); ok {
		t.Fatal("missed ticks were queued")
	}
	tk.Stop()
	f.Advance(time.Minute)
	if _, ok := received(tk.C()); ok {
		t.Fatal("a stopped ticker ticked")
	}
	defer func() {
		if recover() == nil {
			t.Error("NewTicker(0) did not panic")
		}
	}()
	f.NewTicker(0)
}

func TestFakeNextAndWaitForTimer(t *testing.T) {
	f := NewFake(epoch)
	if _, ok := f.Next(); ok {
		t.Fatal("Next reports a timer on a new clock")
	}
	long := f.NewTimer(time.Hour)
	if d, ok := f.Next(); !ok || d != time.Hour {
		t.Fatalf("Next = %v, %v; want 1h", d, ok)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := f.WaitForTimer(ctx, time.Minute); err == nil {
		t.Fatal("WaitForTimer found a timer due within a minute; only one due in an hour is armed")
	}
	if err := f.WaitForTimer(context.Background(), -1); err != nil {
		t.Fatalf("WaitForTimer(any) = %v with a timer armed", err)
	}
	// A timer armed by another goroutine releases the wait.
	done := make(chan error, 1)
	go func() { done <- f.WaitForTimer(context.Background(), 10*time.Millisecond) }()
	short := f.NewTimer(10 * time.Millisecond)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if d, _ := f.Next(); d != 10*time.Millisecond {
		t.Fatalf("Next = %v, want 10ms", d)
	}
	short.Stop()
	long.Stop()
	if _, ok := f.Next(); ok {
		t.Fatal("Next reports a stopped timer")
	}
}

func TestRealClock(t *testing.T) {
	c := Real()
	if d := time.Since(c.Now()); d < 0 || d > time.Minute {
		t.Fatalf("Real().Now() is %v away from time.Now()", d)
	}
	tm := c.NewTimer(time.Millisecond)
	<-tm.C()
	done := make(chan struct{})
	af := c.AfterFunc(time.Millisecond, func() { close(done) })
	<-done
	if af.C() != nil {
		t.Error("an AfterFunc timer has a channel")
	}
	if af.Reset(time.Hour) {
		t.Error("Reset of a fired AfterFunc timer reported it armed")
	}
	if !af.Stop() {
		t.Error("Stop of an armed AfterFunc timer reported it idle")
	}
	tk := c.NewTicker(time.Millisecond)
	<-tk.C()
	tk.Stop()
}
