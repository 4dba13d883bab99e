package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// waitFor reports what the condition last found, not the deadline that
// cut its final attempt short.
func TestWaitForKeepsTheLastFinding(t *testing.T) {
	calls := 0
	err := waitFor(context.Background(), 250*time.Millisecond, "ready nodes", func(ctx context.Context) error {
		calls++
		if calls == 1 {
			return errors.New("2 of 6 nodes ready")
		}
		<-ctx.Done() // this attempt hangs until the deadline
		return ctx.Err()
	})
	if err == nil || !strings.Contains(err.Error(), "2 of 6 nodes ready") {
		t.Fatalf("waitFor: %v, want the last finding (2 of 6 nodes ready)", err)
	}
	if err := waitFor(context.Background(), time.Second, "x", func(context.Context) error { return nil }); err != nil {
		t.Fatalf("waitFor of a condition already true: %v", err)
	}
}
