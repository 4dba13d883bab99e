package controlapi

import (
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// minAutoscaleSync is the shortest sync period a service may ask for.
const minAutoscaleSync = 500 * time.Millisecond

// validateAutoscale checks a spec's autoscaler: a replicated service with
// a CPU reservation, a target, and bounds in order. The replicas start
// within the bounds.
func validateAutoscale(spec *pb.ServiceSpec) error {
	as := spec.GetAutoscale()
	if as == nil {
		return nil
	}
	name := spec.GetAnnotations().GetName()
	bad := func(format string, args ...any) error {
		return status.Errorf(codes.InvalidArgument, format, args...)
	}
	if spec.GetReplicated() == nil {
		return bad("service %s is %s: only replicated services can be autoscaled", name, modeName(spec))
	}
	if spec.GetTask().GetResources().GetReservations().GetNanoCpus() <= 0 {
		return bad("service %s cannot be autoscaled on CPU without a CPU reservation to measure it against: add --reserve-cpu (e.g. --reserve-cpu 0.5)", name)
	}
	if t := as.GetTargetCpuPercent(); t == 0 || t > 10000 {
		return bad("--autoscale-cpu %d%%: use a target from 1%% to 10000%% of the CPU reservation, e.g. 70%%", t)
	}
	if as.GetMinReplicas() < 1 {
		return bad("--autoscale-min must be at least 1")
	}
	if as.GetMaxReplicas() < as.GetMinReplicas() {
		return bad("--autoscale-max (%d) is below --autoscale-min (%d)", as.GetMaxReplicas(), as.GetMinReplicas())
	}
	if as.GetMaxReplicas() > maxReplicas {
		return bad("--autoscale-max %d is more than the %d replicas a service may have", as.GetMaxReplicas(), maxReplicas)
	}
	if d := as.GetSyncPeriod(); d != 0 && time.Duration(d) < minAutoscaleSync {
		return bad("--autoscale-sync %s is too short: use at least %s", time.Duration(d), minAutoscaleSync)
	}
	if as.GetDownscaleWindow() < 0 {
		return bad("--autoscale-downscale-window must not be negative")
	}
	r := spec.GetReplicated()
	r.Replicas = min(max(r.GetReplicas(), as.GetMinReplicas()), as.GetMaxReplicas())
	return nil
}

// autoscaledReplicas settles an update of an autoscaled service's
// replicas: the autoscaler owns them, so an update keeps the current
// count (clamped to new bounds) and a manual change is refused with how
// to change the bounds instead.
func autoscaledReplicas(svc *pb.Service, next *pb.ServiceSpec, rollback bool) error {
	cur, as := svc.GetSpec(), next.GetAutoscale()
	if cur.GetAutoscale() == nil || as == nil || next.GetReplicated() == nil {
		return nil
	}
	have := cur.GetReplicated().GetReplicas()
	if !rollback && next.GetReplicated().GetReplicas() != have {
		name := cur.GetAnnotations().GetName()
		return status.Errorf(codes.FailedPrecondition,
			"service %s is autoscaled (CPU %d%% of its reservation, %d to %d tasks): change its bounds with `shoal service update --autoscale-min N --autoscale-max M %s`, or stop autoscaling with `--autoscale-cpu none`",
			name, cur.GetAutoscale().GetTargetCpuPercent(), cur.GetAutoscale().GetMinReplicas(), cur.GetAutoscale().GetMaxReplicas(), name)
	}
	next.GetReplicated().Replicas = have
	return nil
}
