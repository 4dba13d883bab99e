package autoscaler

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/shoal-cluster/shoal/internal/clock"
	"github.com/shoal-cluster/shoal/manager/usage"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/protobuf/proto"
)

// Samples are the leader's task samples.
type Samples interface {
	Snapshot() map[string]usage.Sample
}

// Tick is how often the loop looks for services due a decision.
const Tick = 250 * time.Millisecond

// Autoscaler is the leader loop. Its history lives in memory: a new
// leader starts each service's downscale window afresh, seeded with the
// current replicas, so a failover never starts a scale-down storm, and its
// first decision comes one sync period after it took over (when every
// worker has sent it fresh figures).
type Autoscaler struct {
	store   raftstore.StateStore
	samples Samples
	clock   clock.Clock
	stale   time.Duration
	log     *slog.Logger

	services map[string]*serviceState
}

type serviceState struct {
	history  History
	nextSync time.Time
}

// New returns an autoscaler; samples older than stale count as missing
// (three heartbeat periods is right: a live worker sends one a period).
func New(store raftstore.StateStore, samples Samples, clk clock.Clock, stale time.Duration, log *slog.Logger) *Autoscaler {
	return &Autoscaler{store: store, samples: samples, clock: clk, stale: stale,
		log: log.With("component", "autoscaler"), services: map[string]*serviceState{}}
}

// Run decides every Tick until ctx ends.
func (a *Autoscaler) Run(ctx context.Context) {
	t := a.clock.NewTicker(Tick)
	defer t.Stop()
	for {
		a.Step(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

// Step decides for every autoscaled service whose sync is due.
func (a *Autoscaler) Step(ctx context.Context) {
	now := a.clock.Now()
	type due struct {
		svc   *pb.Service
		tasks []*pb.Task
	}
	var work []due
	seen := map[string]bool{}
	a.store.View(func(tx *raftstore.Tx) {
		for _, svc := range tx.Services().List() {
			as := svc.GetSpec().GetAutoscale()
			if as == nil || svc.GetSpec().GetReplicated() == nil {
				continue
			}
			seen[svc.GetId()] = true
			st, ok := a.services[svc.GetId()]
			if !ok {
				st = a.first(svc, now)
				a.services[svc.GetId()] = st
			}
			if now.Before(st.nextSync) {
				continue
			}
			st.nextSync = now.Add(Sync(as))
			work = append(work, due{svc, tx.Tasks().Find(raftstore.IndexService, svc.GetId())})
		}
	})
	for id := range a.services {
		if !seen[id] {
			delete(a.services, id) // removed, or no longer autoscaled
		}
	}
	if len(work) == 0 {
		return
	}
	samples := a.samples.Snapshot()
	for _, w := range work {
		st := a.services[w.svc.GetId()]
		d := Decide(Input{Now: now, Service: w.svc, Tasks: w.tasks, Samples: samples, Stale: a.stale, History: st.history})
		st.history = prune(st.history, w.svc.GetSpec().GetAutoscale(), now)
		if d.Recommended {
			st.history.Recommendations = append(st.history.Recommendations, Recommendation{At: now, Replicas: d.Recommendation})
		}
		name := w.svc.GetSpec().GetAnnotations().GetName()
		if !d.Change() {
			a.log.Debug("autoscaler holds", "service", name, "replicas", d.Current, "reason", d.Reason)
			continue
		}
		if err := a.apply(ctx, w.svc, d, now); err != nil {
			a.log.Warn("autoscaler decision not written", "service", name, "from", d.Current, "to", d.Replicas, "err", err)
			st.nextSync = now // try again at the next tick
			continue
		}
		a.log.Info(fmt.Sprintf("%s %d → %d: %s", name, d.Current, d.Replicas, d.Reason),
			"service", name, "from", d.Current, "to", d.Replicas, "utilisation_percent", int(d.Utilisation))
		if d.Replicas > d.Current {
			st.history.ScaleUps = append(st.history.ScaleUps, ScaleUp{At: now, Added: d.Replicas - d.Current})
		}
	}
}

// first is a service's state when this leader first sees it: the window
// holds the current replicas (no scale-down before a full window of this
// leader's own figures), a scale-up the previous leader recorded within
// the period still counts against the limit, and the first decision is
// one sync period away.
func (a *Autoscaler) first(svc *pb.Service, now time.Time) *serviceState {
	as := svc.GetSpec().GetAutoscale()
	st := &serviceState{nextSync: now.Add(Sync(as))}
	st.history.Recommendations = []Recommendation{{At: now, Replicas: svc.GetSpec().GetReplicated().GetReplicas()}}
	if s := svc.GetAutoscaleStatus(); s != nil && s.GetToReplicas() > s.GetFromReplicas() {
		at := time.Unix(0, s.GetDecidedAt())
		if at.After(now.Add(-Sync(as))) {
			st.history.ScaleUps = []ScaleUp{{At: at, Added: s.GetToReplicas() - s.GetFromReplicas()}}
		}
	}
	return st
}

// prune drops history older than the windows.
func prune(h History, as *pb.AutoscaleSpec, now time.Time) History {
	var out History
	for _, r := range h.Recommendations {
		if r.At.After(now.Add(-DownscaleWindow(as))) {
			out.Recommendations = append(out.Recommendations, r)
		}
	}
	for _, u := range h.ScaleUps {
		if u.At.After(now.Add(-Sync(as))) {
			out.ScaleUps = append(out.ScaleUps, u)
		}
	}
	return out
}

// apply writes the new replicas and the decision, unless the service
// changed since it was read (the next sync decides again).
func (a *Autoscaler) apply(ctx context.Context, read *pb.Service, d Decision, now time.Time) error {
	_, err := a.store.Update(ctx, func(tx *raftstore.Tx) error {
		cur, ok := tx.Services().Get(read.GetId())
		if !ok || cur.GetSpec().GetAutoscale() == nil || cur.GetSpec().GetReplicated().GetReplicas() != d.Current ||
			!proto.Equal(cur.GetSpec().GetAutoscale(), read.GetSpec().GetAutoscale()) {
			return errChanged
		}
		svc := proto.Clone(cur).(*pb.Service)
		svc.Spec.GetReplicated().Replicas = d.Replicas
		svc.AutoscaleStatus = &pb.AutoscaleStatus{DecidedAt: now.UnixNano(), FromReplicas: d.Current, ToReplicas: d.Replicas, Reason: d.Reason}
		return tx.Services().Update(svc)
	})
	return err
}

var errChanged = fmt.Errorf("the service changed meanwhile")
