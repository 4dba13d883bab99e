package main

// Service flags of the horizontal autoscaler: --autoscale-cpu (the target,
// in % of each task's CPU reservation, or none), --autoscale-min and
// --autoscale-max (the bounds), and the behaviour windows
// --autoscale-sync and --autoscale-downscale-window (Kubernetes'
// defaults: 15s and 5m).

import (
	"strconv"
	"strings"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/pflag"
)

type autoscaleFlags struct {
	cpu              string
	min, max         int64
	sync, downWindow time.Duration
}

func (f *autoscaleFlags) registerCreate(fs *pflag.FlagSet) {
	fs.StringVar(&f.cpu, "autoscale-cpu", "", "scale replicas to keep the tasks' average CPU at this `percent` of their --reserve-cpu (e.g. 70%); none turns it off")
	fs.Int64Var(&f.min, "autoscale-min", 1, "fewest tasks the autoscaler runs")
	fs.Int64Var(&f.max, "autoscale-max", 0, "most tasks the autoscaler runs (required with --autoscale-cpu)")
	fs.DurationVar(&f.sync, "autoscale-sync", 0, "how often the autoscaler decides, and the period of its scale-up limit (default 15s)")
	fs.DurationVar(&f.downWindow, "autoscale-downscale-window", 0, "scale-down stabilisation: the highest recommendation of this window wins (default 5m)")
}

func (f *autoscaleFlags) registerUpdate(fs *pflag.FlagSet) { f.registerCreate(fs) }

var autoscaleBounds = []string{"autoscale-min", "autoscale-max", "autoscale-sync", "autoscale-downscale-window"}

func (f *autoscaleFlags) create(spec *pb.ServiceSpec, set map[string]bool) error {
	if !set["autoscale-cpu"] || f.cpu == "none" {
		for _, name := range autoscaleBounds {
			if set[name] {
				return usagef("--%s needs --autoscale-cpu PERCENT (e.g. --autoscale-cpu 70%%)", name)
			}
		}
		return nil
	}
	return f.apply(spec, set, true)
}

func (f *autoscaleFlags) update(spec *pb.ServiceSpec, set map[string]bool) error {
	if set["autoscale-cpu"] && f.cpu == "none" {
		for _, name := range autoscaleBounds {
			if set[name] {
				return usagef("--%s cannot go with --autoscale-cpu none, which turns the autoscaler off", name)
			}
		}
		spec.Autoscale = nil
		return nil
	}
	given := set["autoscale-cpu"]
	for _, name := range autoscaleBounds {
		given = given || set[name]
	}
	if !given {
		return nil
	}
	if spec.Autoscale == nil && !set["autoscale-cpu"] {
		return usagef("service %s is not autoscaled: add --autoscale-cpu PERCENT (e.g. --autoscale-cpu 70%%) to turn the autoscaler on", spec.GetAnnotations().GetName())
	}
	return f.apply(spec, set, spec.Autoscale == nil)
}

// apply sets the flags given; fresh is a new autoscaler (its defaults
// apply, and --autoscale-max is required).
func (f *autoscaleFlags) apply(spec *pb.ServiceSpec, set map[string]bool, fresh bool) error {
	if spec.GetReplicated() == nil {
		return usagef("--autoscale-cpu: service %s is %s; only replicated services can be autoscaled", spec.GetAnnotations().GetName(), modeWord(spec))
	}
	if spec.GetTask().GetResources().GetReservations().GetNanoCpus() <= 0 {
		return usagef("--autoscale-cpu needs --reserve-cpu: the autoscaler measures each task's CPU use against its reservation (e.g. --reserve-cpu 0.5)")
	}
	if fresh {
		if !set["autoscale-max"] {
			return usagef("--autoscale-cpu needs --autoscale-max N, the most tasks the autoscaler may run")
		}
		spec.Autoscale = &pb.AutoscaleSpec{MinReplicas: 1}
	}
	as := spec.Autoscale
	if set["autoscale-cpu"] {
		p, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(f.cpu), "%")), 10, 32)
		if err != nil || p == 0 || p > 10000 {
			return usagef("--autoscale-cpu %q: use a percentage of the CPU reservation from 1%% to 10000%%, e.g. 70%%, or none", f.cpu)
		}
		as.TargetCpuPercent = uint32(p)
	}
	if set["autoscale-min"] {
		if f.min < 1 || f.min > maxReplicas {
			return usagef("--autoscale-min %d: use 1 to %d", f.min, maxReplicas)
		}
		as.MinReplicas = uint64(f.min)
	}
	if set["autoscale-max"] {
		if f.max < 1 || f.max > maxReplicas {
			return usagef("--autoscale-max %d: use 1 to %d", f.max, maxReplicas)
		}
		as.MaxReplicas = uint64(f.max)
	}
	if as.MaxReplicas < as.MinReplicas {
		return usagef("--autoscale-max (%d) is below --autoscale-min (%d)", as.MaxReplicas, as.MinReplicas)
	}
	if set["autoscale-sync"] {
		if f.sync < 500*time.Millisecond {
			return usagef("--autoscale-sync %s: use at least 500ms", f.sync)
		}
		as.SyncPeriod = int64(f.sync)
	}
	if set["autoscale-downscale-window"] {
		if f.downWindow < 0 {
			return usagef("--autoscale-downscale-window %s: use 0 or more", f.downWindow)
		}
		as.DownscaleWindow = int64(f.downWindow)
		if f.downWindow == 0 {
			as.DownscaleWindow = -1 // no window (0 means the default)
		}
	}
	return nil
}
