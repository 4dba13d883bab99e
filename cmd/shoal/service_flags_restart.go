package main

// Service flags about the restart policy: when and how soon a task that
// ended is replaced (tasks are never restarted in place).

import (
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/pflag"
)

// defaultRestartDelay is the restart delay every create sends.
const defaultRestartDelay = 5 * time.Second

// restartFlags are the --restart-* flags, the same on create and update.
type restartFlags struct {
	condition string
	delay     time.Duration
	max       int64
	window    time.Duration
}

func (f *restartFlags) registerCreate(fs *pflag.FlagSet) {
	fs.StringVar(&f.condition, "restart-condition", "any", "when to replace a task that ended: none, on-failure or any")
	fs.DurationVar(&f.delay, "restart-delay", defaultRestartDelay, "wait before replacing a task that ended")
	fs.Int64Var(&f.max, "restart-max-attempts", 0, "give up after this many restarts in the window (0: never)")
	fs.DurationVar(&f.window, "restart-window", 0, "window the restart attempts are counted in (0: forever)")
}

func (f *restartFlags) registerUpdate(fs *pflag.FlagSet) { f.registerCreate(fs) }

func (f *restartFlags) create(spec *pb.ServiceSpec, set map[string]bool) error {
	return f.apply(spec, set)
}

func (f *restartFlags) update(spec *pb.ServiceSpec, set map[string]bool) error {
	return f.apply(spec, set)
}

func defaultRestartPolicy() *pb.RestartPolicy {
	return &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY, Delay: int64(defaultRestartDelay)}
}

func (f *restartFlags) apply(spec *pb.ServiceSpec, set map[string]bool) error {
	if !set["restart-condition"] && !set["restart-delay"] && !set["restart-max-attempts"] && !set["restart-window"] {
		return nil
	}
	if spec.Task.Restart == nil {
		spec.Task.Restart = defaultRestartPolicy()
	}
	r := spec.Task.Restart
	if set["restart-condition"] {
		switch f.condition {
		case "any":
			r.Condition = pb.RestartCondition_RESTART_CONDITION_ANY
		case "on-failure":
			r.Condition = pb.RestartCondition_RESTART_CONDITION_ON_FAILURE
		case "none":
			r.Condition = pb.RestartCondition_RESTART_CONDITION_NONE
		default:
			return usagef("--restart-condition %q: use none, on-failure or any", f.condition)
		}
	}
	if set["restart-delay"] {
		if f.delay < 0 {
			return usagef("--restart-delay %s: must not be negative", f.delay)
		}
		r.Delay = int64(f.delay)
	}
	if set["restart-max-attempts"] {
		if f.max < 0 {
			return usagef("--restart-max-attempts %d: use 0 (no limit) or more", f.max)
		}
		r.MaxAttempts = uint64(f.max)
	}
	if set["restart-window"] {
		if f.window < 0 {
			return usagef("--restart-window %s: must not be negative", f.window)
		}
		r.Window = int64(f.window)
	}
	return nil
}
