package keylock

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestLock(t *testing.T) {
	tests := []struct {
		name      string
		holdFirst bool   // the key is held when the second Lock comes
		secondKey string // the key the second Lock asks for
		wantErr   error  // what the second Lock returns under a short deadline
	}{
		{name: "free key", holdFirst: false, secondKey: "a"},
		{name: "other key while held", holdFirst: true, secondKey: "b"},
		{name: "same key while held waits out its context", holdFirst: true, secondKey: "a", wantErr: context.DeadlineExceeded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var k Map
			var unlockFirst func()
			if tc.holdFirst {
				var err error
				if unlockFirst, err = k.Lock(context.Background(), "a"); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			defer cancel()
			unlock, err := k.Lock(ctx, tc.secondKey)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Lock(%q) = %v, want %v", tc.secondKey, err, tc.wantErr)
			}
			if unlock != nil {
				unlock()
			}
			if unlockFirst != nil {
				unlockFirst()
			}
			if n := k.held(); n != 0 {
				t.Fatalf("%d keys still tracked after every holder and waiter left", n)
			}
		})
	}
}

func TestLockHandsOver(t *testing.T) {
	var k Map
	unlock, err := k.Lock(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		u, err := k.Lock(context.Background(), "a")
		if err == nil {
			u()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("second Lock returned (%v) while the first held the key", err)
	case <-time.After(10 * time.Millisecond):
	}
	unlock()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second Lock did not get the key after the first unlocked")
	}
	if n := k.held(); n != 0 {
		t.Fatalf("%d keys still tracked", n)
	}
}
