package dispatcher

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: every
// session a test opens, and every store subscription, must be gone once
// the test has ended.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
