package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// taskController drives one task through its states, one step at a time,
// never past its desired state. Each step is idempotent, so a controller
// started on a task a previous agent left half-way just carries on.
type taskController struct {
	a      *Agent
	id     string
	poke   chan struct{} // the managers changed the task: look again
	cancel context.CancelFunc
	done   chan struct{}
}

const defaultStopGrace = 10 * time.Second

// runtimeFor returns the runtime a task asks for.
func (a *Agent) runtimeFor(t *pb.Task) (Runtime, error) {
	name := t.GetSpec().GetRuntime()
	if name == "" {
		name = "process"
	}
	if rt, ok := a.runtimes[name]; ok {
		return rt, nil
	}
	return nil, &PermanentError{Err: fmt.Errorf("runtime %q is not available on node %s", name, a.id.NodeID)}
}

func (c *taskController) run(ctx context.Context) {
	defer close(c.done)
	for {
		t := c.a.task(c.id)
		if t == nil {
			return
		}
		next, wait := c.step(ctx, t)
		if next != nil {
			c.a.setStatus(c.id, next)
			if next.GetState() >= pb.TaskState_TASK_STATE_COMPLETE {
				c.a.dropFiles(c.id) // the task ended: its secrets and configs go
			}
			continue
		}
		if !wait {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-c.poke:
		}
	}
}

// wake tells the controller the task changed; it never blocks.
func (c *taskController) wake() {
	select {
	case c.poke <- struct{}{}:
	default:
	}
}

// newStatus makes a status for the next state.
func newStatus(state pb.TaskState, msg string) *pb.TaskStatus {
	return &pb.TaskStatus{Timestamp: time.Now().UnixNano(), State: state, Message: msg}
}

// step takes one step. It returns the next status, or nil and whether to
// wait for a change from the managers before looking again.
func (c *taskController) step(ctx context.Context, t *pb.Task) (*pb.TaskStatus, bool) {
	cur, desired := t.GetStatus().GetState(), t.GetDesiredState()
	if cur >= pb.TaskState_TASK_STATE_COMPLETE {
		c.a.dropFiles(t.GetId()) // idempotent: a restarted agent may find them
		return nil, true         // terminal: nothing to do until the task is removed
	}
	rt, err := c.a.runtimeFor(t)
	if err != nil {
		s := newStatus(pb.TaskState_TASK_STATE_REJECTED, "rejected")
		s.Err = err.Error()
		return s, false
	}
	if desired >= pb.TaskState_TASK_STATE_SHUTDOWN {
		return c.shutdown(ctx, rt, t), false
	}
	switch {
	case cur < pb.TaskState_TASK_STATE_ACCEPTED:
		return newStatus(pb.TaskState_TASK_STATE_ACCEPTED, "accepted"), false
	case cur == pb.TaskState_TASK_STATE_ACCEPTED:
		return newStatus(pb.TaskState_TASK_STATE_PREPARING, "preparing"), false
	case cur == pb.TaskState_TASK_STATE_PREPARING:
		files, ok, err := c.a.writeFiles(t)
		if err != nil {
			return failure(err, "prepare secrets and configs"), false
		}
		if !ok {
			return nil, true // a secret's or config's value has not arrived yet
		}
		if err := rt.Prepare(c.progressContext(ctx), t, files); err != nil {
			if ctx.Err() != nil {
				return nil, true
			}
			c.a.metrics.runtimeError(rt, "prepare")
			return failure(err, "prepare"), false
		}
		return newStatus(pb.TaskState_TASK_STATE_READY, "prepared"), false
	case cur == pb.TaskState_TASK_STATE_READY:
		if desired < pb.TaskState_TASK_STATE_RUNNING {
			return nil, true // not past the desired state
		}
		return newStatus(pb.TaskState_TASK_STATE_STARTING, "starting"), false
	case cur == pb.TaskState_TASK_STATE_STARTING:
		info, err := rt.Inspect(ctx, t.GetId())
		if err == nil && info.State == RunExited {
			return exitStatus(info.Exit), false
		}
		if err != nil || info.State == RunCreated {
			if !c.a.filesPresent(t) {
				s := newStatus(pb.TaskState_TASK_STATE_FAILED, "secrets lost")
				s.Err = "the task's secret or config files are gone (the node restarted since it was prepared); it will be replaced"
				return s, false
			}
			if err := rt.Start(ctx, t.GetId()); err != nil {
				if ctx.Err() != nil {
					return nil, true
				}
				c.a.metrics.runtimeError(rt, "start")
				return failure(err, "start"), false
			}
			info, _ = rt.Inspect(ctx, t.GetId())
		}
		s := newStatus(pb.TaskState_TASK_STATE_RUNNING, "started")
		s.Pid, s.ContainerId, s.Ports = int32(info.Pid), info.ContainerID, info.Ports
		s.Health = initialHealth(ctx, rt, t)
		return s, false
	case cur == pb.TaskState_TASK_STATE_RUNNING:
		return c.waitRunning(ctx, rt, t)
	}
	return nil, true
}

// progressContext reports a preparing task's progress (an image pull) as
// its status message, which `service ps` shows; each new line is one
// status report, so a runtime reports only when the line changes.
func (c *taskController) progressContext(ctx context.Context) context.Context {
	return WithProgress(ctx, func(msg string) {
		cur := c.a.task(c.id)
		if cur == nil || cur.GetStatus().GetState() != pb.TaskState_TASK_STATE_PREPARING || cur.GetStatus().GetMessage() == msg {
			return
		}
		// The state's time stays when it began: only the message moves.
		s := proto.Clone(cur.GetStatus()).(*pb.TaskStatus)
		s.Message = msg
		c.a.setStatus(c.id, s)
	})
}

// waitRunning waits for a running task to exit or to be told to stop.
func (c *taskController) waitRunning(ctx context.Context, rt Runtime, t *pb.Task) (*pb.TaskStatus, bool) {
	if _, err := rt.Inspect(ctx, t.GetId()); errors.Is(err, ErrTaskNotFound) {
		s := newStatus(pb.TaskState_TASK_STATE_FAILED, "lost")
		s.Err = "the task's process is gone and left no exit status (the node may have restarted)"
		return s, false
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		exit Exit
		err  error
	}
	exited := make(chan result, 1)
	go func() {
		e, err := rt.Wait(wctx, t.GetId())
		exited <- result{e, err}
	}()
	// The mesh hears of the end first: new connections stop reaching
	// the task before its exit is even recorded.
	if ew, ok := rt.(ExitWatcher); ok && c.a.mesh != nil {
		if gone, err := ew.WatchExit(wctx, t.GetId()); err == nil {
			go func() {
				select {
				case <-gone:
					c.a.taskGone(t.GetId())
				case <-wctx.Done():
				}
			}()
		} else {
			c.a.log.Debug("no early exit watch for the task", "task", t.GetId(), "err", err)
		}
	}
	var health chan healthEvent
	if healthCheck(t) != nil {
		health = make(chan healthEvent)
		go c.a.watchHealth(wctx, rt, t, t.GetStatus(), health)
	} else if hr, ok := healthReporter(rt, t); ok {
		health = make(chan healthEvent) // the task's own check (an image HEALTHCHECK)
		go watchReportedHealth(wctx, hr, t.GetId(), health)
	}
	for {
		select {
		case e := <-health:
			if e.state == pb.HealthState_HEALTH_STATE_UNHEALTHY {
				// A task that died fails its health check too: report how it
				// ended rather than "unhealthy".
				if info, err := rt.Inspect(ctx, t.GetId()); err == nil && info.State == RunExited {
					select {
					case r := <-exited:
						if r.err == nil {
							return exitStatus(r.exit), false
						}
					case <-time.After(time.Second):
					}
					return exitStatus(info.Exit), false
				}
				c.a.log.Warn("task unhealthy; stopping it", "task", t.GetId(), "output", e.output)
				// Report it unhealthy before the stop, which may take the
				// whole grace period: the managers take it out of the
				// mesh's rotation at once.
				if cur := c.a.task(c.id); cur != nil {
					s := proto.Clone(cur.GetStatus()).(*pb.TaskStatus)
					s.Health = pb.HealthState_HEALTH_STATE_UNHEALTHY
					s.Message = "unhealthy; stopping"
					s.Err = "task is unhealthy: " + e.output
					c.a.setStatus(c.id, s)
				}
				grace := time.Duration(t.GetSpec().GetContainer().GetStopGracePeriod())
				if grace <= 0 {
					grace = defaultStopGrace
				}
				if err := rt.Stop(ctx, t.GetId(), grace); err != nil && !errors.Is(err, ErrTaskNotFound) {
					c.a.log.Warn("stop unhealthy task", "task", t.GetId(), "err", err)
				}
				s := newStatus(pb.TaskState_TASK_STATE_FAILED, "unhealthy")
				s.Err = "task is unhealthy: " + e.output
				s.Health = pb.HealthState_HEALTH_STATE_UNHEALTHY
				return s, false
			}
			if cur := c.a.task(c.id); cur != nil && cur.GetStatus().GetHealth() != e.state {
				s := proto.Clone(cur.GetStatus()).(*pb.TaskStatus)
				s.Health = e.state
				if e.state == pb.HealthState_HEALTH_STATE_HEALTHY {
					s.Message = "healthy"
				}
				c.a.setStatus(c.id, s)
			}
		case <-ctx.Done():
			return nil, true
		case r := <-exited:
			if r.err != nil {
				if ctx.Err() != nil {
					return nil, true
				}
				return failure(r.err, "wait"), false
			}
			return exitStatus(r.exit), false
		case <-c.poke:
			if now := c.a.task(c.id); now == nil || now.GetDesiredState() >= pb.TaskState_TASK_STATE_SHUTDOWN {
				return nil, false // the next step stops it
			}
		}
	}
}

// shutdown stops a task that should no longer run.
func (c *taskController) shutdown(ctx context.Context, rt Runtime, t *pb.Task) *pb.TaskStatus {
	cur := t.GetStatus().GetState()
	if cur < pb.TaskState_TASK_STATE_STARTING {
		return newStatus(pb.TaskState_TASK_STATE_SHUTDOWN, "shut down before it started")
	}
	grace := time.Duration(t.GetSpec().GetContainer().GetStopGracePeriod())
	if grace <= 0 {
		grace = defaultStopGrace
	}
	if err := rt.Stop(ctx, t.GetId(), grace); err != nil && !errors.Is(err, ErrTaskNotFound) {
		c.a.log.Warn("stop task", "task", t.GetId(), "err", err)
	}
	s := newStatus(pb.TaskState_TASK_STATE_SHUTDOWN, "shut down")
	if info, err := rt.Inspect(ctx, t.GetId()); err == nil && info.State == RunExited {
		s.ExitCode = int32(info.Exit.Code)
	}
	return s
}

// exitStatus turns a process exit into the task's final status.
func exitStatus(e Exit) *pb.TaskStatus {
	if e.Code == 0 && e.Signal == "" {
		s := newStatus(pb.TaskState_TASK_STATE_COMPLETE, "finished")
		return s
	}
	s := newStatus(pb.TaskState_TASK_STATE_FAILED, "exited")
	s.ExitCode = int32(e.Code)
	switch {
	case e.Message != "":
		s.Err = e.Message
	case e.Signal != "":
		s.Err = fmt.Sprintf("task was killed by signal %s", e.Signal)
	default:
		s.Err = fmt.Sprintf("task exited with code %d", e.Code)
	}
	return s
}

// failure turns a runtime error into FAILED, or REJECTED when permanent.
func failure(err error, what string) *pb.TaskStatus {
	state := pb.TaskState_TASK_STATE_FAILED
	var perm *PermanentError
	if errors.As(err, &perm) {
		state = pb.TaskState_TASK_STATE_REJECTED
	}
	s := newStatus(state, what+" failed")
	s.Err = err.Error()
	return s
}

// merged combines the managers' view of a task (desired state, spec) with
// the local record. The local status is the truth about the local process:
// the managers may have failed the task meanwhile (its node was Down), but
// if it still runs here it must still be stopped.
func merged(local, remote *pb.Task) *pb.Task {
	next := proto.Clone(remote).(*pb.Task)
	if local != nil {
		next.Status = local.GetStatus()
	}
	return next
}
