// Package updater rolls a service's tasks to its new spec: a batch of
// tasks at a time (parallelism), stop-first or start-first, waiting for
// each new task to run (and be healthy) and watching it for the monitor
// period, with a delay between batches. When too many new tasks fail it
// pauses, continues or rolls back, as the update config says. It runs on
// the leader only and picks up an update where the previous leader left it.
package updater

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/shoal-cluster/shoal/internal/clock"
	"github.com/shoal-cluster/shoal/internal/taskhealth"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/protobuf/proto"
)

// Updater supervises the rolling updates of every service.
type Updater struct {
	store raftstore.StateStore
	clock clock.Clock
	log   *slog.Logger

	mu      sync.Mutex
	running map[string]*job // by service ID
	wg      sync.WaitGroup
}

// job is the goroutine driving one service's rollout.
type job struct {
	specVersion uint64
	cancel      context.CancelFunc
	done        chan struct{}
}

// New returns an updater over the store; clk times the monitor periods,
// the delays between batches and the polls.
func New(store raftstore.StateStore, clk clock.Clock, log *slog.Logger) *Updater {
	return &Updater{store: store, clock: clk, log: log.With("component", "updater"), running: map[string]*job{}}
}

// updating reports whether a service has a rollout to drive.
func updating(s *pb.Service) bool {
	switch s.GetUpdateStatus().GetState() {
	case pb.UpdateState_UPDATE_STATE_UPDATING, pb.UpdateState_UPDATE_STATE_ROLLBACK_STARTED:
		return true
	}
	return false
}

// Run starts a rollout for every service being updated until ctx ends.
func (u *Updater) Run(ctx context.Context) {
	defer u.stopAll()
	for ctx.Err() == nil {
		var services []*pb.Service
		sub := u.store.ViewAndWatch(func(tx *raftstore.Tx) { services = tx.Services().List() },
			func(ev raftstore.Event) bool { return ev.Table == raftstore.KindService })
		for _, s := range services {
			u.sync(ctx, s, false)
		}
		for open := true; open; {
			select {
			case <-ctx.Done():
				sub.Close()
				return
			case ev, ok := <-sub.C():
				if !ok {
					open = false
					break
				}
				u.sync(ctx, ev.Object.(*pb.Service), ev.Kind == raftstore.EventDelete)
			}
		}
		sub.Close()
	}
}

// sync starts, restarts or stops the rollout of one service.
func (u *Updater) sync(ctx context.Context, s *pb.Service, deleted bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	r := u.running[s.GetId()]
	if r != nil {
		select {
		case <-r.done:
			delete(u.running, s.GetId())
			r = nil
		default:
		}
	}
	want := !deleted && updating(s)
	// A new spec version replaces the rollout at once; a rollout whose
	// update ended (often by its own write) notices and stops by itself.
	if r != nil && (deleted || r.specVersion != s.GetSpecVersion()) {
		r.cancel()
		<-r.done
		delete(u.running, s.GetId())
		r = nil
	}
	if !want || r != nil {
		return
	}
	rctx, cancel := context.WithCancel(ctx)
	r = &job{specVersion: s.GetSpecVersion(), cancel: cancel, done: make(chan struct{})}
	u.running[s.GetId()] = r
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		defer close(r.done)
		u.drive(rctx, u.newRollout(s.GetId(), s.GetSpecVersion()))
	}()
}

func (u *Updater) stopAll() {
	u.mu.Lock()
	for id, r := range u.running {
		r.cancel()
		delete(u.running, id)
	}
	u.mu.Unlock()
	u.wg.Wait()
}

// pollInterval is how often a rollout looks at its tasks.
const pollInterval = 100 * time.Millisecond

// rollout is one service's update to spec version v, taken a step at a
// time: each step decides from the store's state what to do (replace a
// batch, hand tasks over, record the outcome) and how long to wait before
// the next step (a poll, the monitor period and delay after a batch).
type rollout struct {
	u         *Updater
	log       *slog.Logger
	serviceID string
	v         uint64
	failed    map[string]bool // new tasks seen failing
	updated   int             // tasks replaced so far
	// waiting is set while the last batch replaced is not all up yet;
	// pause is then how long to watch it once up (monitor plus delay).
	waiting bool
	pause   time.Duration
}

func (u *Updater) newRollout(serviceID string, v uint64) *rollout {
	return &rollout{u: u, log: u.log.With("service", serviceID, "spec_version", v), serviceID: serviceID, v: v, failed: map[string]bool{}}
}

// drive runs a rollout until it is over or ctx is done, waiting on the
// clock between steps.
func (u *Updater) drive(ctx context.Context, r *rollout) {
	r.log.Info("rolling update started")
	for ctx.Err() == nil {
		wait, done := r.step(ctx)
		if done || !sleep(ctx, u.clock, wait) {
			return
		}
	}
}

// step takes the rollout one step further. It returns how long to wait
// before the next step, or done once the rollout is over: completed,
// failed (paused or rolled back), superseded by a newer spec, or its
// service gone.
func (r *rollout) step(ctx context.Context) (wait time.Duration, done bool) {
	if r.waiting {
		return r.waitBatch(ctx), false
	}
	u := r.u
	svc, tasks, ok := u.read(r.serviceID)
	if !ok || svc.GetSpecVersion() != r.v || !updating(svc) {
		return 0, true
	}
	cfg := config(svc)
	rollingBack := svc.GetUpdateStatus().GetState() == pb.UpdateState_UPDATE_STATE_ROLLBACK_STARTED

	// Failures among the new tasks decide whether to go on.
	for _, t := range tasks {
		if t.GetSpecVersion() == r.v && isFailure(t) {
			r.failed[t.GetId()] = true
		}
	}
	if len(r.failed) > 0 && float64(len(r.failed)) > float64(max(r.updated, 1))*float64(cfg.GetMaxFailureRatio()) &&
		cfg.GetFailureAction() != pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_CONTINUE {
		u.onFailure(ctx, svc, cfg, rollingBack, fmt.Sprintf("%d of %d updated tasks failed", len(r.failed), max(r.updated, len(r.failed))))
		return 0, true
	}

	old := outdated(tasks, r.v, svc.GetSpec().GetTask())
	if len(old) == 0 {
		if !u.settled(tasks, r.v, svc) {
			return pollInterval, false
		}
		u.finish(ctx, svc, rollingBack)
		return 0, true
	}
	batch := int(cfg.GetParallelism())
	if batch <= 0 || batch > len(old) {
		batch = len(old)
	}
	if err := u.replace(ctx, svc, old[:batch], cfg.GetOrder()); err != nil {
		r.log.Warn("replace tasks", "err", err)
		return time.Second, false
	}
	r.updated += batch
	// Wait for the batch to run (healthy where checked), then watch it.
	r.waiting = true
	r.pause = time.Duration(cfg.GetMonitor()) + time.Duration(cfg.GetDelay())
	return 0, false
}

// waitBatch is a step while the last batch is not all up: it completes
// the hand-overs (stop-first successors start once their predecessor
// stopped; start-first predecessors stop once their successor runs) and
// checks the new tasks. Once every one is up the rollout pauses for the
// monitor period and delay; a failed one ends the wait at once (the
// failure counts at the next step).
func (r *rollout) waitBatch(ctx context.Context) time.Duration {
	u := r.u
	_, tasks, ok := u.read(r.serviceID)
	if !ok {
		r.waiting = false
		return 0
	}
	if err := u.promote(ctx, r.serviceID, r.v); err != nil {
		u.log.Warn("hand over tasks", "service", r.serviceID, "err", err)
	}
	up := true
	for _, t := range tasks {
		if t.GetSpecVersion() != r.v {
			continue
		}
		// A failed new task counts even once the orchestrator replaced it.
		if isFailure(t) {
			r.waiting = false
			return 0
		}
		if t.GetDesiredState() > pb.TaskState_TASK_STATE_RUNNING {
			continue
		}
		if !taskhealth.Up(t) {
			up = false
		}
	}
	if !up {
		return pollInterval
	}
	r.waiting = false
	return r.pause
}

// read loads a service and its tasks.
func (u *Updater) read(id string) (*pb.Service, []*pb.Task, bool) {
	var (
		svc   *pb.Service
		tasks []*pb.Task
		ok    bool
	)
	u.store.View(func(tx *raftstore.Tx) {
		svc, ok = tx.Services().Get(id)
		tasks = tx.Tasks().Find(raftstore.IndexService, id)
	})
	return svc, tasks, ok
}

// config is the update config in force: the rollback config while rolling back.
func config(s *pb.Service) *pb.UpdateConfig {
	if s.GetUpdateStatus().GetState() == pb.UpdateState_UPDATE_STATE_ROLLBACK_STARTED && s.GetSpec().GetRollback() != nil {
		return s.GetSpec().GetRollback()
	}
	if c := s.GetSpec().GetUpdate(); c != nil {
		return c
	}
	return &pb.UpdateConfig{Parallelism: 1}
}

// isFailure reports whether a task failed (as opposed to being stopped).
func isFailure(t *pb.Task) bool {
	switch t.GetStatus().GetState() {
	case pb.TaskState_TASK_STATE_FAILED, pb.TaskState_TASK_STATE_REJECTED:
		return true
	}
	return false
}

// outdated lists what the rollout must replace, in slot order: active
// tasks on an older spec, and for slots (or global nodes) with no active
// task, the last task when it ended on an older spec (a rollback refills
// the slots whose new task failed).
func outdated(tasks []*pb.Task, v uint64, spec *pb.TaskSpec) []*pb.Task {
	var out []*pb.Task
	live := map[string]bool{}
	latest := map[string]*pb.Task{}
	for _, t := range tasks {
		k := group(t)
		if t.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING {
			live[k] = true
			// A task already running this spec (a rollback to the spec it
			// never left) stays.
			if t.GetSpecVersion() != v && !proto.Equal(t.GetSpec(), spec) {
				out = append(out, t)
			}
			continue
		}
		if t.GetDesiredState() >= pb.TaskState_TASK_STATE_REMOVE {
			continue
		}
		if l := latest[k]; l == nil || t.GetMeta().GetCreatedAt() > l.GetMeta().GetCreatedAt() {
			latest[k] = t
		}
	}
	for k, t := range latest {
		if !live[k] && t.GetSpecVersion() != v {
			out = append(out, t)
		}
	}
	sortBySlot(out)
	return out
}

// group is a task's slot, or its node for global tasks.
func group(t *pb.Task) string {
	if t.GetSlot() != 0 {
		return fmt.Sprint(t.GetSlot())
	}
	return "node/" + t.GetNodeId()
}

// settled reports whether every active task of version v runs.
func (u *Updater) settled(tasks []*pb.Task, v uint64, svc *pb.Service) bool {
	for _, t := range tasks {
		if t.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING && t.GetSpecVersion() == v && !taskhealth.Up(t) {
			return false
		}
	}
	return true
}

// replace swaps a batch of old tasks for new ones in the same slots.
// Stop-first: the old task is told to stop and its successor waits in
// READY until it has; start-first: the successor starts at once and the
// old task stops once the successor runs (see promote).
func (u *Updater) replace(ctx context.Context, svc *pb.Service, batch []*pb.Task, order pb.UpdateOrder) error {
	_, err := u.store.Update(ctx, func(tx *raftstore.Tx) error {
		cur, ok := tx.Services().Get(svc.GetId())
		if !ok || cur.GetSpecVersion() != svc.GetSpecVersion() {
			return nil
		}
		now := u.clock.Now().UnixNano()
		// Groups that already have a live task on the new version: read once.
		done := map[string]bool{}
		for _, o := range tx.Tasks().Find(raftstore.IndexService, cur.GetId()) {
			if o.GetSpecVersion() == cur.GetSpecVersion() && o.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING {
				done[group(o)] = true
			}
		}
		for _, old := range batch {
			t, ok := tx.Tasks().Get(old.GetId())
			if !ok || t.GetDesiredState() >= pb.TaskState_TASK_STATE_REMOVE || done[group(t)] {
				continue
			}
			done[group(t)] = true
			desired := pb.TaskState_TASK_STATE_RUNNING
			if t.GetDesiredState() > pb.TaskState_TASK_STATE_RUNNING {
				// An ended slot: nothing to stop, just refill it.
			} else if order == pb.UpdateOrder_UPDATE_ORDER_STOP_FIRST {
				t.DesiredState = pb.TaskState_TASK_STATE_SHUTDOWN
				if err := tx.Tasks().Update(t); err != nil {
					return err
				}
				if t.GetStatus().GetState() >= pb.TaskState_TASK_STATE_ASSIGNED && t.GetStatus().GetState() <= pb.TaskState_TASK_STATE_RUNNING {
					desired = pb.TaskState_TASK_STATE_READY
				}
			}
			nt := &pb.Task{
				Id: tx.NewID(), ServiceId: cur.GetId(), ServiceName: cur.GetSpec().GetAnnotations().GetName(),
				Slot: t.GetSlot(), Spec: proto.Clone(cur.GetSpec().GetTask()).(*pb.TaskSpec), SpecVersion: cur.GetSpecVersion(),
				DesiredState: desired, Endpoint: proto.Clone(cur.GetEndpoint()).(*pb.Endpoint),
				Status: &pb.TaskStatus{Timestamp: now, State: pb.TaskState_TASK_STATE_PENDING, Message: "pending (update)"},
			}
			if cur.GetSpec().GetGlobal() != nil {
				nt.NodeId = t.GetNodeId()
			}
			if err := tx.Tasks().Create(nt); err != nil {
				return err
			}
		}
		return nil
	})
	return err
}

// promote completes hand-overs between old and new tasks of each slot.
func (u *Updater) promote(ctx context.Context, id string, v uint64) error {
	_, err := u.store.Update(ctx, func(tx *raftstore.Tx) error {
		tasks := tx.Tasks().Find(raftstore.IndexService, id)
		bySlot := map[string][]*pb.Task{}
		for _, t := range tasks {
			bySlot[group(t)] = append(bySlot[group(t)], t)
		}
		for _, group := range bySlot {
			for _, nt := range group {
				if nt.GetSpecVersion() != v {
					continue
				}
				for _, old := range group {
					if old.GetSpecVersion() == v {
						continue
					}
					switch {
					case nt.GetDesiredState() == pb.TaskState_TASK_STATE_READY && stopped(old):
						nt.DesiredState = pb.TaskState_TASK_STATE_RUNNING
						if err := tx.Tasks().Update(nt); err != nil {
							return err
						}
					case old.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING && taskhealth.Up(nt):
						old.DesiredState = pb.TaskState_TASK_STATE_SHUTDOWN
						if err := tx.Tasks().Update(old); err != nil {
							return err
						}
					}
				}
			}
		}
		return nil
	})
	return err
}

// stopped reports whether nothing runs for an old task any more.
func stopped(t *pb.Task) bool {
	return t.GetDesiredState() > pb.TaskState_TASK_STATE_RUNNING &&
		(t.GetStatus().GetState() > pb.TaskState_TASK_STATE_RUNNING || t.GetStatus().GetState() < pb.TaskState_TASK_STATE_ASSIGNED)
}

// onFailure applies the failure action.
func (u *Updater) onFailure(ctx context.Context, svc *pb.Service, cfg *pb.UpdateConfig, rollingBack bool, why string) {
	action := cfg.GetFailureAction()
	if rollingBack && action == pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK {
		action = pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_PAUSE
	}
	_, err := u.store.Update(ctx, func(tx *raftstore.Tx) error {
		cur, ok := tx.Services().Get(svc.GetId())
		if !ok || cur.GetSpecVersion() != svc.GetSpecVersion() || !updating(cur) {
			return nil
		}
		now := u.clock.Now().UnixNano()
		if action == pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK && cur.GetPreviousSpec() != nil {
			prev := cur.GetPreviousSpec()
			cur.PreviousSpec, cur.Spec = cur.GetSpec(), prev
			cur.SpecVersion++
			cur.UpdateStatus = &pb.UpdateStatus{State: pb.UpdateState_UPDATE_STATE_ROLLBACK_STARTED, StartedAt: now,
				Message: "update failed (" + why + "); rolling back automatically"}
			return tx.Services().Update(cur)
		}
		state := pb.UpdateState_UPDATE_STATE_PAUSED
		if rollingBack {
			state = pb.UpdateState_UPDATE_STATE_ROLLBACK_PAUSED
		}
		cur.UpdateStatus = &pb.UpdateStatus{State: state, StartedAt: cur.GetUpdateStatus().GetStartedAt(),
			Message: "update paused: " + why + "; fix the spec and update again, or roll back"}
		return tx.Services().Update(cur)
	})
	if err != nil {
		u.log.Warn("record update failure", "service", svc.GetId(), "err", err)
		return
	}
	u.log.Warn("rolling update failed", "service", svc.GetSpec().GetAnnotations().GetName(), "action", action.String(), "why", why)
}

// finish records a completed rollout.
func (u *Updater) finish(ctx context.Context, svc *pb.Service, rollingBack bool) {
	_, err := u.store.Update(ctx, func(tx *raftstore.Tx) error {
		cur, ok := tx.Services().Get(svc.GetId())
		if !ok || cur.GetSpecVersion() != svc.GetSpecVersion() || !updating(cur) {
			return nil
		}
		state, msg := pb.UpdateState_UPDATE_STATE_COMPLETED, "update completed"
		if rollingBack {
			state, msg = pb.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED, "rollback completed"
			if m := cur.GetUpdateStatus().GetMessage(); m != "" && m != "manually requested rollback" {
				msg = m + "; rollback completed"
			}
		}
		cur.UpdateStatus = &pb.UpdateStatus{State: state, StartedAt: cur.GetUpdateStatus().GetStartedAt(), CompletedAt: u.clock.Now().UnixNano(), Message: msg}
		return tx.Services().Update(cur)
	})
	if err != nil {
		u.log.Warn("record update completion", "service", svc.GetId(), "err", err)
		return
	}
	u.log.Info("rolling update finished", "service", svc.GetSpec().GetAnnotations().GetName(), "rollback", rollingBack)
}

// sleep waits d on clk; it reports false when ctx ended first.
func sleep(ctx context.Context, clk clock.Clock, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}

func sortBySlot(ts []*pb.Task) {
	for i := 1; i < len(ts); i++ {
		for j := i; j > 0 && ts[j].GetSlot() < ts[j-1].GetSlot(); j-- {
			ts[j], ts[j-1] = ts[j-1], ts[j]
		}
	}
}
