package process

import (
	"context"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/process/supervise"
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

// TestWaitWatchesTheSupervisor: Wait learns of a task's end from its
// supervisor's exit, also for a task an earlier agent started (no
// supervisor channel there), without polling the task's files: with the
// poll slowed to an hour, the exit still arrives within the test's
// deadline.
func TestWaitWatchesTheSupervisor(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		script   string
		kill     bool // SIGKILL the supervisor once the task runs
		wantCode int
	}{
		{"the task exits", `sleep 0.3; exit 3`, false, 3},
		{"the supervisor is killed", `sleep 1000`, true, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := newStateDir(t)
			task := shTask(tc.script)
			mustRun(t, newRuntime(t, dir), task)
			later := newRuntime(t, dir) // as after an agent restart
			later.watchedPoll = time.Hour
			waited := make(chan worker.Exit, 1)
			go func() {
				ex, err := later.Wait(testCtx(t, 20*time.Second), task.Id)
				if err != nil {
					t.Errorf("Wait: %v", err)
				}
				waited <- ex
			}()
			if tc.kill {
				var sup supervise.SupervisorRecord
				if ok, err := supervise.ReadJSON(filepath.Join(dir, task.Id), supervise.SupervisorFile, &sup); !ok || err != nil {
					t.Fatalf("supervisor.json: %v", err)
				}
				if err := syscall.Kill(sup.Pid, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
			if ex := <-waited; ex.Code != tc.wantCode {
				t.Errorf("exit %+v, want code %d", ex, tc.wantCode)
			}
		})
	}
}
