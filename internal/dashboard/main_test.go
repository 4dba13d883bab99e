package dashboard

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: a
// follower of events or logs, a refresher, or a page's stream.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
