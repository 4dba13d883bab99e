package main

// Service flags about rolling updates and rollbacks: how many tasks change
// at once, in which order, how long each is watched, and what a failure
// does.

import (
	"math"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/pflag"
)

// defaultUpdateMonitor is the update and rollback monitor every create sends.
const defaultUpdateMonitor = 5 * time.Second

func defaultUpdateConfig() *pb.UpdateConfig {
	return &pb.UpdateConfig{Parallelism: 1, Monitor: int64(defaultUpdateMonitor)}
}

// rolloutFlags are the --update-* and --rollback-* flags, the same on
// create and update.
type rolloutFlags struct {
	onUpdate, onRollback updateConfigFlags
}

func (f *rolloutFlags) registerCreate(fs *pflag.FlagSet) {
	f.onUpdate.register(fs, "update", "update")
	f.onRollback.register(fs, "rollback", "roll back")
}

func (f *rolloutFlags) registerUpdate(fs *pflag.FlagSet) { f.registerCreate(fs) }

func (f *rolloutFlags) create(spec *pb.ServiceSpec, set map[string]bool) error {
	return f.apply(spec, set)
}

func (f *rolloutFlags) update(spec *pb.ServiceSpec, set map[string]bool) error {
	return f.apply(spec, set)
}

func (f *rolloutFlags) apply(spec *pb.ServiceSpec, set map[string]bool) error {
	if err := f.onUpdate.apply(&spec.Update, "update", set); err != nil {
		return err
	}
	return f.onRollback.apply(&spec.Rollback, "rollback", set)
}

// updateConfigFlags are the --update-* or --rollback-* flags.
type updateConfigFlags struct {
	parallelism     int64
	delay           time.Duration
	failureAction   string
	monitor         time.Duration
	maxFailureRatio float64
	order           string
}

func (u *updateConfigFlags) register(fs *pflag.FlagSet, prefix, verb string) {
	actions := "pause, continue or rollback"
	if prefix == "rollback" {
		actions = "pause or continue"
	}
	fs.Int64Var(&u.parallelism, prefix+"-parallelism", 1, "how many tasks to "+verb+" at once (0: all at once)")
	fs.DurationVar(&u.delay, prefix+"-delay", 0, "time to wait between two batches of tasks to "+verb)
	fs.StringVar(&u.failureAction, prefix+"-failure-action", "pause", "what to do when a task fails to "+verb+": "+actions)
	fs.DurationVar(&u.monitor, prefix+"-monitor", defaultUpdateMonitor, "how long to watch each new task for a failure")
	fs.Float64Var(&u.maxFailureRatio, prefix+"-max-failure-ratio", 0, "share of tasks that may fail before the failure action (0 to 1)")
	fs.StringVar(&u.order, prefix+"-order", "stop-first", "stop-first (stop the old task, then start the new) or start-first")
}

func (u *updateConfigFlags) apply(cfg **pb.UpdateConfig, prefix string, set map[string]bool) error {
	given := false
	for _, n := range []string{"parallelism", "delay", "failure-action", "monitor", "max-failure-ratio", "order"} {
		if set[prefix+"-"+n] {
			given = true
		}
	}
	if !given {
		return nil
	}
	if *cfg == nil {
		*cfg = defaultUpdateConfig()
	}
	c := *cfg
	if set[prefix+"-parallelism"] {
		if u.parallelism < 0 {
			return usagef("--%s-parallelism %d: use 0 (all at once) or more", prefix, u.parallelism)
		}
		c.Parallelism = uint64(u.parallelism)
	}
	if set[prefix+"-delay"] {
		if u.delay < 0 {
			return usagef("--%s-delay %s: must not be negative", prefix, u.delay)
		}
		c.Delay = int64(u.delay)
	}
	if set[prefix+"-monitor"] {
		if u.monitor < 0 {
			return usagef("--%s-monitor %s: must not be negative", prefix, u.monitor)
		}
		c.Monitor = int64(u.monitor)
	}
	if set[prefix+"-failure-action"] {
		switch u.failureAction {
		case "pause":
			c.FailureAction = pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_PAUSE
		case "continue":
			c.FailureAction = pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_CONTINUE
		case "rollback":
			if prefix == "rollback" {
				return usagef("--rollback-failure-action %q: use pause or continue", u.failureAction)
			}
			c.FailureAction = pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK
		default:
			if prefix == "rollback" {
				return usagef("--rollback-failure-action %q: use pause or continue", u.failureAction)
			}
			return usagef("--%s-failure-action %q: use pause, continue or rollback", prefix, u.failureAction)
		}
	}
	if set[prefix+"-max-failure-ratio"] {
		if u.maxFailureRatio < 0 || u.maxFailureRatio > 1 || math.IsNaN(u.maxFailureRatio) {
			return usagef("--%s-max-failure-ratio %g: use a number from 0 to 1", prefix, u.maxFailureRatio)
		}
		c.MaxFailureRatio = float32(u.maxFailureRatio)
	}
	if set[prefix+"-order"] {
		switch u.order {
		case "stop-first":
			c.Order = pb.UpdateOrder_UPDATE_ORDER_STOP_FIRST
		case "start-first":
			c.Order = pb.UpdateOrder_UPDATE_ORDER_START_FIRST
		default:
			return usagef("--%s-order %q: use stop-first or start-first", prefix, u.order)
		}
	}
	return nil
}

// validateSpec checks what depends on several fields at once. create runs
// every check (changed is nil); update only those about what its flags
// changed, so that a service made some other way can still be updated.
