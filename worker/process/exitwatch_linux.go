package process

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/shoal-cluster/shoal/worker/process/supervise"
	"golang.org/x/sys/unix"
)

// WatchExit returns a channel closed as soon as a running task's main
// process ends, through a pidfd the runtime's poller waits on: before the
// supervisor has recorded the exit and itself exited, which Wait waits
// for (several milliseconds on a busy host). It implements
// worker.ExitWatcher. Should the pid have been reused already (the task
// ended long ago), the channel closes when that other process ends, or
// never; Wait still reports the exit.
func (r *Runtime) WatchExit(ctx context.Context, id string) (<-chan struct{}, error) {
	dir, ok := r.taskDir(id)
	if !ok {
		return nil, notFound(id)
	}
	var st supervise.StateRecord
	if ok, err := supervise.ReadJSON(dir, supervise.StateFile, &st); err != nil {
		return nil, err
	} else if !ok || st.Pid <= 0 {
		return nil, fmt.Errorf("task %s has no process to watch", id)
	}
	ch, err := watchPid(ctx, st.Pid)
	if err != nil {
		return nil, fmt.Errorf("watch task %s: %w", id, err)
	}
	return ch, nil
}

// watchPid returns a channel closed when process pid ends (at once when
// there is no such process), through a pidfd the runtime's poller waits
// on. Cancelling ctx ends the watch and leaves the channel open.
func watchPid(ctx context.Context, pid int) (<-chan struct{}, error) {
	done := make(chan struct{})
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.ESRCH) {
		close(done) // gone already
		return done, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	go func() {
		defer f.Close()
		stop := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(deadlinePast) })
		defer stop()
		// A pidfd turns readable when its process ends.
		err := rc.Read(func(fd uintptr) bool {
			p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(p, 0)
			return err == nil && n > 0
		})
		if err == nil && ctx.Err() == nil {
			close(done)
		}
	}()
	return done, nil
}
