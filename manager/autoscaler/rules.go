// Package autoscaler is the leader loop that sets an autoscaled service's
// replicas from its tasks' CPU use, with the Kubernetes horizontal pod
// autoscaler's rules and defaults:
//
//   - desired = ceil(tasks × average utilisation / target), utilisation
//     being CPU used over the tasks' CPU reservation; no change while the
//     ratio is within 0.1 of 1 (the tolerance);
//   - tasks that are not running yet or not healthy, and tasks without a
//     fresh sample, are handled as Kubernetes handles unready pods and
//     pods without metrics: the assumption that argues against the
//     change (0 % on a scale-up, 100 % of the reservation on a
//     scale-down for tasks without figures; unready tasks are ignored
//     unless scaling up, when they count as idle);
//   - a decision every sync period (15 s);
//   - scale-down stabilisation: the highest recommendation of the last
//     downscale window (300 s) wins;
//   - scale-up limit: at most max(100 %, 4 tasks) more per sync period;
//   - never below min nor above max.
//
// The rules are pure functions of the service, its tasks, their samples,
// the recent recommendations and the time (Decide); the loop (Autoscaler)
// keeps the history in memory and writes decisions to the store.
package autoscaler

import (
	"fmt"
	"math"
	"time"

	"github.com/shoal-cluster/shoal/manager/usage"
	pb "github.com/shoal-cluster/shoal/proto"
)

// Kubernetes' defaults.
const (
	// Tolerance is the ratio within which no change is made.
	Tolerance = 0.1
	// DefaultSync is how often the autoscaler decides; it is also the
	// period of the scale-up limit.
	DefaultSync = 15 * time.Second
	// DefaultDownscaleWindow is the scale-down stabilisation window.
	DefaultDownscaleWindow = 300 * time.Second
	// scaleUpPods and scaleUpPercent are the scale-up limit per period:
	// the larger of the two wins.
	scaleUpPods    = 4
	scaleUpPercent = 100
)

// Sync is a spec's sync period.
func Sync(a *pb.AutoscaleSpec) time.Duration {
	if d := time.Duration(a.GetSyncPeriod()); d > 0 {
		return d
	}
	return DefaultSync
}

// DownscaleWindow is a spec's scale-down stabilisation window.
func DownscaleWindow(a *pb.AutoscaleSpec) time.Duration {
	if a.GetDownscaleWindow() > 0 {
		return time.Duration(a.GetDownscaleWindow())
	}
	if a.GetDownscaleWindow() < 0 {
		return 0
	}
	return DefaultDownscaleWindow
}

// Recommendation is a replica count the rules recommended at a time.
type Recommendation struct {
	At       time.Time
	Replicas uint64
}

// ScaleUp is a scale-up the autoscaler made.
type ScaleUp struct {
	At    time.Time
	Added uint64
}

// History is what the rules remember of a service: recommendations within
// the downscale window and scale-ups within the sync period.
type History struct {
	Recommendations []Recommendation
	ScaleUps        []ScaleUp
}

// Input is everything one decision depends on.
type Input struct {
	Now     time.Time
	Service *pb.Service
	// Tasks are the service's tasks (any state).
	Tasks []*pb.Task
	// Samples are the leader's latest samples by task ID.
	Samples map[string]usage.Sample
	// Stale is the age past which a sample counts as missing.
	Stale   time.Duration
	History History
}

// Decision is the rules' answer.
type Decision struct {
	// Current is the service's replicas; Replicas what it should have.
	Current, Replicas uint64
	// Recommendation is the raw recommendation before stabilisation and
	// limits (recorded in the history); valid when Recommended.
	Recommendation uint64
	Recommended    bool
	// Utilisation is the average CPU use in % of the reservation over the
	// ready tasks with figures (-1: none).
	Utilisation float64
	// Reason says why, in words, e.g. "average CPU 142% of the 70% target".
	Reason string
}

// Change reports whether the decision changes the replicas.
func (d Decision) Change() bool { return d.Replicas != d.Current }

// Decide applies the rules.
func Decide(in Input) Decision {
	spec := in.Service.GetSpec()
	as := spec.GetAutoscale()
	current := spec.GetReplicated().GetReplicas()
	d := Decision{Current: current, Replicas: current, Utilisation: -1}
	lo, hi := as.GetMinReplicas(), as.GetMaxReplicas()
	switch {
	case current > hi:
		d.Replicas, d.Reason = hi, fmt.Sprintf("above the maximum of %d", hi)
		return d
	case current < lo:
		d.Replicas, d.Reason = lo, fmt.Sprintf("below the minimum of %d", lo)
		return d
	}
	rec, util, why, ok := recommend(in, current)
	d.Utilisation = util
	if !ok {
		d.Reason = why
		return d
	}
	d.Recommendation, d.Recommended = rec, true
	d.Reason = why

	// Stabilisation: a scale-down takes the highest recommendation of the
	// window (this one included); a scale-up takes this one (Kubernetes'
	// default scale-up window is 0).
	window := DownscaleWindow(as)
	down := rec
	for _, r := range in.History.Recommendations {
		if r.At.After(in.Now.Add(-window)) && r.Replicas > down {
			down = r.Replicas
		}
	}
	next := current
	if next < rec {
		next = rec
	}
	if next > down {
		next = down
	}
	if rec < current && next > rec {
		d.Reason += fmt.Sprintf("; held at %d by the scale-down window (highest recommendation of the last %s)", next, window)
	}

	// The scale-up limit: max(100 %, 4 tasks) over the replicas at the
	// start of the period.
	if next > current {
		period := Sync(as)
		var added uint64
		for _, u := range in.History.ScaleUps {
			if u.At.After(in.Now.Add(-period)) {
				added += u.Added
			}
		}
		start := current - min(added, current)
		limit := max(start+scaleUpPods, uint64(math.Ceil(float64(start)*(1+scaleUpPercent/100.0))))
		if next > limit {
			next = max(limit, current)
			d.Reason += fmt.Sprintf("; limited to %d (at most max(%d%%, %d tasks) more per %s)", next, scaleUpPercent, scaleUpPods, period)
		}
	}
	switch {
	case next > hi:
		next = hi
		d.Reason += fmt.Sprintf("; capped at the maximum of %d", hi)
	case next < lo:
		next = lo
		d.Reason += fmt.Sprintf("; kept at the minimum of %d", lo)
	}
	d.Replicas = next
	return d
}

// taskClass is how the rules see a task.
type taskClass int

const (
	ignored  taskClass = iota // not meant to run, or ended
	unready                   // starting or not healthy
	missing                   // ready but without a fresh sample
	measured                  // ready with a fresh sample
)

func classify(t *pb.Task, samples map[string]usage.Sample, now time.Time, stale time.Duration) (taskClass, float64) {
	if t.GetDesiredState() != pb.TaskState_TASK_STATE_RUNNING || t.GetStatus().GetState() > pb.TaskState_TASK_STATE_RUNNING {
		return ignored, 0
	}
	if t.GetStatus().GetState() < pb.TaskState_TASK_STATE_RUNNING {
		return unready, 0
	}
	switch t.GetStatus().GetHealth() {
	case pb.HealthState_HEALTH_STATE_STARTING, pb.HealthState_HEALTH_STATE_UNHEALTHY:
		return unready, 0
	}
	s, ok := samples[t.GetId()]
	// A sample counts only from the node the task runs on (a worker
	// cannot speak for another node's tasks).
	if !ok || s.NodeID != t.GetNodeId() || s.Usage.GetCpuWindow() <= 0 || now.Sub(s.At) > stale {
		return missing, 0
	}
	return measured, float64(s.Usage.GetCpuNanoCores())
}

// recommend is Kubernetes' replica calculator for a resource utilisation
// target: the raw recommendation, the measured utilisation (% of the
// reservation), and why.
func recommend(in Input, current uint64) (uint64, float64, string, bool) {
	as := in.Service.GetSpec().GetAutoscale()
	target := float64(as.GetTargetCpuPercent()) / 100
	type entry struct{ used, reserved float64 }
	var measuredTasks, missingTasks, unreadyTasks []entry
	for _, t := range in.Tasks {
		class, used := classify(t, in.Samples, in.Now, in.Stale)
		if class == ignored {
			continue
		}
		reserved := float64(t.GetSpec().GetResources().GetReservations().GetNanoCpus())
		if reserved <= 0 {
			return 0, -1, fmt.Sprintf("task %s.%d has no CPU reservation (an older spec?): no decision", t.GetServiceName(), t.GetSlot()), false
		}
		e := entry{used, reserved}
		switch class {
		case unready:
			unreadyTasks = append(unreadyTasks, e)
		case missing:
			missingTasks = append(missingTasks, e)
		case measured:
			measuredTasks = append(measuredTasks, e)
		}
	}
	if len(measuredTasks) == 0 {
		return 0, -1, fmt.Sprintf("no CPU figures yet (%d tasks starting, %d without a fresh sample): no decision", len(unreadyTasks), len(missingTasks)), false
	}
	// As Kubernetes: the utilisation in whole percent, over the target.
	ratio := func(es ...[]entry) float64 {
		var used, reserved float64
		for _, list := range es {
			for _, e := range list {
				used += e.used
				reserved += e.reserved
			}
		}
		return math.Floor(used*100/reserved) / 100 / target
	}
	within := func(r float64) bool { return math.Abs(1-r) <= Tolerance+1e-9 }
	usageRatio := ratio(measuredTasks)
	util := usageRatio * target * 100
	why := fmt.Sprintf("average CPU %.0f%% of the %d%% target", util, as.GetTargetCpuPercent())
	scaleUpWithUnready := len(unreadyTasks) > 0 && usageRatio > 1
	if !scaleUpWithUnready && len(missingTasks) == 0 {
		if within(usageRatio) {
			return current, util, why + " (within the tolerance)", true
		}
		return uint64(math.Ceil(usageRatio * float64(len(measuredTasks)))), util, why, true
	}
	all := [][]entry{measuredTasks}
	var assumed []string
	if len(missingTasks) > 0 {
		filled := make([]entry, len(missingTasks))
		for i, e := range missingTasks {
			filled[i] = entry{0, e.reserved}
			if usageRatio < 1 {
				filled[i].used = e.reserved // a scale-down assumes they use all they reserved
			}
		}
		all = append(all, filled)
		if usageRatio < 1 {
			assumed = append(assumed, fmt.Sprintf("%d without figures counted at 100%%", len(missingTasks)))
		} else {
			assumed = append(assumed, fmt.Sprintf("%d without figures counted idle", len(missingTasks)))
		}
	}
	if scaleUpWithUnready {
		filled := make([]entry, len(unreadyTasks))
		for i, e := range unreadyTasks {
			filled[i] = entry{0, e.reserved}
		}
		all = append(all, filled)
		assumed = append(assumed, fmt.Sprintf("%d starting counted idle", len(unreadyTasks)))
	}
	n := 0
	for _, l := range all {
		n += len(l)
	}
	newRatio := ratio(all...)
	for i, a := range assumed {
		if i == 0 {
			why += " ("
		} else {
			why += ", "
		}
		why += a
	}
	if len(assumed) > 0 {
		why += ")"
	}
	if within(newRatio) || (usageRatio < 1 && newRatio > 1) || (usageRatio > 1 && newRatio < 1) {
		return current, util, why + ": no change", true
	}
	next := uint64(math.Ceil(newRatio * float64(n)))
	if (newRatio < 1 && next > current) || (newRatio > 1 && next < current) {
		return current, util, why + ": no change", true
	}
	return next, util, why, true
}
