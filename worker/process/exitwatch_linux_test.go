package process

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/worker"
)

var _ worker.ExitWatcher = (*Runtime)(nil)

// TestWatchExit: the watch fires when the task's process is killed; a
// watch whose context ends never fires; one of a process gone already
// fires at once.
func TestWatchExit(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, newStateDir(t))
	task := shTask(`echo ready; exec sleep 1000`)
	mustRun(t, r, task)
	waitLog(t, r, task.Id, "ready")
	info := mustInspect(t, r, task.Id)

	cancelled, cancel := context.WithCancel(context.Background())
	never, err := r.WatchExit(cancelled, task.Id)
	if err != nil {
		t.Fatalf("WatchExit: %v", err)
	}
	cancel()
	gone, err := r.WatchExit(testCtx(t, 20*time.Second), task.Id)
	if err != nil {
		t.Fatalf("WatchExit: %v", err)
	}
	select {
	case <-gone:
		t.Fatal("the watch fired while the task runs")
	case <-time.After(100 * time.Millisecond):
	}
	if err := syscall.Kill(info.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("the watch did not fire after the task was killed")
	}
	mustWait(t, r, task.Id)
	select {
	case <-never:
		t.Fatal("a watch whose context ended fired")
	default:
	}
	// The process is gone: a new watch fires at once (or finds no
	// process to watch once the exit is recorded).
	if again, err := r.WatchExit(testCtx(t, 5*time.Second), task.Id); err == nil {
		select {
		case <-again:
		case <-time.After(5 * time.Second):
			t.Fatal("a watch of a gone process did not fire")
		}
	}
}
