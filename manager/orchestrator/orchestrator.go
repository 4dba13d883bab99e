// Package orchestrator keeps services' tasks in line with their specs: it
// creates tasks for missing replicas (or nodes, for global services),
// shuts down extra ones, replaces tasks that ended according to the
// restart policy, moves tasks off drained and lost nodes, and trims task
// history. It runs on the leader only; see docs/design/services.md.
package orchestrator

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/shoal-cluster/shoal/internal/clock"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

// DefaultHistoryLimit is how many ended tasks a slot keeps when the
// cluster spec says nothing.
const DefaultHistoryLimit = 5

// maxServicesPerTx bounds how many services one reconcile transaction
// covers, keeping entries well below Raft's size limit.
const maxServicesPerTx = 32

// Loop timings.
const (
	// gatherWindow is how long the loop collects a burst of changes before
	// reconciling the services they touch.
	gatherWindow = 10 * time.Millisecond
	// safetyPeriod is how often every service is reconciled whatever changed.
	safetyPeriod = 10 * time.Second
)

// Orchestrator reconciles services to tasks.
type Orchestrator struct {
	store raftstore.StateStore
	clock clock.Clock
	log   *slog.Logger

	mu     sync.Mutex
	timers map[string]clock.Timer // delayed restarts by task ID
	wake   chan string            // service IDs whose timer fired

	// onPass, if set (tests), is called after every reconcile of the loop
	// with the services it covered and whether it wrote anything.
	onPass func(services []string, wrote bool)
}

// New returns an orchestrator over the store, timing restart delays with clk.
func New(store raftstore.StateStore, clk clock.Clock, log *slog.Logger) *Orchestrator {
	return &Orchestrator{
		store:  store,
		clock:  clk,
		log:    log.With("component", "orchestrator"),
		timers: map[string]clock.Timer{},
		wake:   make(chan string, 1024),
	}
}

// Run reconciles until ctx ends: everything at start, then the services
// that changes touch, batched.
func (o *Orchestrator) Run(ctx context.Context) {
	defer o.stopTimers()
	for ctx.Err() == nil {
		var services []string
		sub := o.store.ViewAndWatch(func(tx *raftstore.Tx) {
			for _, s := range tx.Services().List() {
				services = append(services, s.GetId())
			}
			// Services deleted while their tasks linger.
			seen := map[string]bool{}
			for _, id := range services {
				seen[id] = true
			}
			for _, t := range tx.Tasks().List() {
				if !seen[t.GetServiceId()] && t.GetServiceId() != "" {
					seen[t.GetServiceId()] = true
					services = append(services, t.GetServiceId())
				}
			}
		}, relevant)
		o.reconcile(ctx, services)
		o.follow(ctx, sub)
		sub.Close()
	}
}

// relevant selects the events the orchestrator reacts to.
func relevant(ev raftstore.Event) bool {
	switch ev.Table {
	case raftstore.KindService, raftstore.KindTask, raftstore.KindNode, raftstore.KindCluster:
		return true
	}
	return false
}

// follow reacts to events until the subscription ends or ctx is done.
func (o *Orchestrator) follow(ctx context.Context, sub *raftstore.Subscription) {
	safety := o.clock.NewTicker(safetyPeriod)
	defer safety.Stop()
	for {
		dirty := map[string]bool{}
		allGlobal := false
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-sub.C():
			if !ok {
				o.log.Info("store subscription ended; reading the state again", "reason", sub.Err())
				return
			}
			allGlobal = o.mark(ev, dirty) || allGlobal
		case id := <-o.wake:
			dirty[id] = true
		case <-safety.C():
			o.ReconcileAll(ctx)
			continue
		}
		// Gather the burst: many events usually come together.
		timer := o.clock.NewTimer(gatherWindow)
	gather:
		for {
			select {
			case ev, ok := <-sub.C():
				if !ok {
					break gather
				}
				allGlobal = o.mark(ev, dirty) || allGlobal
			case id := <-o.wake:
				dirty[id] = true
			case <-timer.C():
				break gather
			case <-ctx.Done():
				timer.Stop()
				return
			}
		}
		timer.Stop()
		if allGlobal {
			o.store.View(func(tx *raftstore.Tx) {
				for _, s := range tx.Services().List() {
					if isGlobal(s) {
						dirty[s.GetId()] = true
					}
				}
			})
		}
		ids := make([]string, 0, len(dirty))
		for id := range dirty {
			ids = append(ids, id)
		}
		o.reconcile(ctx, ids)
	}
}

// mark records which services an event touches; it reports whether every
// global service must be looked at (a node changed).
func (o *Orchestrator) mark(ev raftstore.Event, dirty map[string]bool) bool {
	switch obj := ev.Object.(type) {
	case *pb.Service:
		dirty[obj.GetId()] = true
	case *pb.Task:
		if obj.GetServiceId() != "" { // standalone tasks are not the orchestrator's
			dirty[obj.GetServiceId()] = true
		}
	case *pb.Node:
		// A node's state or availability moves tasks of every service on it.
		o.store.View(func(tx *raftstore.Tx) {
			for _, t := range tx.Tasks().Find(raftstore.IndexNode, obj.GetId()) {
				if t.GetServiceId() != "" {
					dirty[t.GetServiceId()] = true
				}
			}
		})
		return true
	case *pb.Cluster:
		return false
	}
	return false
}

// ReconcileAll reconciles every service once, and the tasks of deleted
// ones, as the loop does every safetyPeriod. Tests of the loops that work
// alongside the orchestrator drive it pass by pass with this rather than
// run its loop.
func (o *Orchestrator) ReconcileAll(ctx context.Context) {
	var ids []string
	o.store.View(func(tx *raftstore.Tx) {
		seen := map[string]bool{}
		for _, s := range tx.Services().List() {
			seen[s.GetId()] = true
			ids = append(ids, s.GetId())
		}
		for _, t := range tx.Tasks().List() {
			if !seen[t.GetServiceId()] && t.GetServiceId() != "" {
				seen[t.GetServiceId()] = true
				ids = append(ids, t.GetServiceId())
			}
		}
	})
	o.reconcile(ctx, ids)
}

// reconcile brings the given services in line, a few per transaction.
func (o *Orchestrator) reconcile(ctx context.Context, ids []string) {
	wrote := false
	if o.onPass != nil {
		defer func(services []string) { o.onPass(services, wrote) }(ids)
	}
	for len(ids) > 0 && ctx.Err() == nil {
		n := min(len(ids), maxServicesPerTx)
		batch := ids[:n]
		ids = ids[n:]
		var (
			delays []delayed
			read   uint64
		)
		index, err := o.store.Update(ctx, func(tx *raftstore.Tx) error {
			delays = delays[:0]
			read = tx.Index()
			now := o.clock.Now()
			st := newSnapshot(tx)
			for _, id := range batch {
				d, err := o.reconcileService(tx, st, id, now)
				if err != nil {
					return err
				}
				delays = append(delays, d...)
			}
			return nil
		})
		if err != nil {
			if ctx.Err() == nil {
				o.log.Warn("reconcile services", "services", len(batch), "err", err)
			}
			continue
		}
		wrote = wrote || index != read
		for _, d := range delays {
			o.schedule(d)
		}
	}
}

// delayed is a restart waiting for its delay.
type delayed struct {
	serviceID, taskID string
	at                time.Time
}

// schedule wakes the service's reconcile when a delayed restart is due.
func (o *Orchestrator) schedule(d delayed) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.timers[d.taskID]; ok {
		return
	}
	o.timers[d.taskID] = o.clock.AfterFunc(max(d.at.Sub(o.clock.Now()), 0), func() {
		o.mu.Lock()
		delete(o.timers, d.taskID)
		o.mu.Unlock()
		select {
		case o.wake <- d.serviceID:
		default:
		}
	})
}

func (o *Orchestrator) stopTimers() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for id, t := range o.timers {
		t.Stop()
		delete(o.timers, id)
	}
}

// isGlobal reports whether a service runs one task per node: a global
// service or a global job.
func isGlobal(s *pb.Service) bool {
	return s.GetSpec().GetGlobal() != nil || s.GetSpec().GetGlobalJob() != nil
}

// isJob reports whether a service's tasks run to completion.
func isJob(s *pb.Service) bool {
	return s.GetSpec().GetReplicatedJob() != nil || s.GetSpec().GetGlobalJob() != nil
}
