// Package metrics is a manager's Prometheus metrics: Raft's state and
// indexes, the store's objects, writes and conflicts, the scheduler's
// placements, the dispatcher's sessions and heartbeats, tasks by service
// and state. Gauges are read from the replica when scraped; counters of
// what happened in the cluster (placements, nodes going Down, leader
// changes) are counted from the committed changes this manager applies, so
// every manager reports the same figures from the time it started.
package metrics

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

// Store is what the metrics read of the manager's Raft store.
type Store interface {
	View(fn func(tx *raftstore.Tx))
	Status() raftstore.Status
	Watch(filter func(raftstore.Event) bool) *raftstore.Subscription
}

// Dispatcher reports its worker sessions and heartbeats.
type Dispatcher interface {
	Stats() (sessions int, heartbeats uint64)
}

// Manager collects a manager's metrics. Make it with New before the store
// opens (the store takes its Observer), then Attach the parts.
type Manager struct {
	mu    sync.Mutex
	store Store
	disp  Dispatcher

	commits     *prometheus.HistogramVec
	conflicts   prometheus.Counter
	transitions prometheus.Counter
	placements  prometheus.Counter
	placeDelay  prometheus.Histogram
	nodesDown   prometheus.Counter
	leaders     prometheus.Counter

	raftState, raftTerm, raftCommit, raftApplied, raftLast *prometheus.Desc
	objects, nodes, tasks, pending                         *prometheus.Desc
	sessions, heartbeats                                   *prometheus.Desc
}

// New makes a manager's metrics.
func New() *Manager {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &Manager{
		commits: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "shoal_raft_apply_duration_seconds",
			Help:    "Time from proposing a store transaction to its being applied on this manager (the leader), by outcome.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"outcome"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_store_conflict_retries_total",
			Help: "Store transactions refused for a version conflict and run again on the new state.",
		}),
		transitions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_raft_leadership_transitions_total",
			Help: "Times this manager gained or lost the leadership.",
		}),
		placements: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_scheduler_placements_total",
			Help: "Tasks assigned to a node, counted from the committed changes.",
		}),
		placeDelay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "shoal_scheduler_placement_latency_seconds",
			Help:    "Time from a task's creation to its assignment to a node.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		nodesDown: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_dispatcher_nodes_down_total",
			Help: "Times a node was marked Down, counted from the committed changes.",
		}),
		leaders: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_raft_leader_changes_total",
			Help: "Leader elections recorded in the cluster's history since this manager started.",
		}),
		raftState:   desc("shoal_raft_state", "This manager's Raft state: 1 for the current one.", "state"),
		raftTerm:    desc("shoal_raft_term", "This manager's current Raft term."),
		raftCommit:  desc("shoal_raft_commit_index", "This manager's Raft commit index."),
		raftApplied: desc("shoal_raft_applied_index", "This manager's last applied Raft index."),
		raftLast:    desc("shoal_raft_last_index", "This manager's last Raft log index."),
		objects:     desc("shoal_store_objects", "Objects in this manager's replica, by kind.", "kind"),
		nodes:       desc("shoal_nodes", "Nodes by state, role and availability.", "state", "role", "availability"),
		tasks:       desc("shoal_tasks", "Tasks in the store by service and observed state (history included).", "service", "state"),
		pending:     desc("shoal_scheduler_tasks_pending", "Tasks waiting for a node, by the scheduler's reason.", "reason"),
		sessions:    desc("shoal_dispatcher_sessions", "Worker sessions open on this manager (the leader)."),
		heartbeats:  desc("shoal_dispatcher_heartbeats_total", "Worker heartbeats this manager received."),
	}
}

// Observer is what the store tells of its writes.
func (m *Manager) Observer() *raftstore.Observer {
	return &raftstore.Observer{
		Committed: func(d time.Duration, err error) {
			outcome := "committed"
			switch {
			case err == nil:
			case errors.Is(err, raftstore.ErrVersionConflict):
				outcome = "conflict"
			case errors.Is(err, raftstore.ErrNotLeader), errors.Is(err, raftstore.ErrOutcomeUnknown):
				outcome = "leadership_lost"
			default:
				outcome = "refused"
			}
			m.commits.WithLabelValues(outcome).Observe(d.Seconds())
		},
		Conflict: m.conflicts.Inc,
	}
}

// Attach gives the metrics the parts they read when scraped.
func (m *Manager) Attach(store Store, disp Dispatcher) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.store, m.disp = store, disp
}

// LeadershipChanged counts a gain or loss of leadership.
func (m *Manager) LeadershipChanged() { m.transitions.Inc() }

// Run counts placements, nodes going Down and leader changes from the
// committed changes until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	m.mu.Lock()
	store := m.store
	m.mu.Unlock()
	for ctx.Err() == nil {
		sub := store.Watch(nil)
		m.count(ctx, sub)
		sub.Close()
	}
}

func (m *Manager) count(ctx context.Context, sub *raftstore.Subscription) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-sub.C():
			if !ok {
				return
			}
			m.countEvent(ev)
		}
	}
}

func (m *Manager) countEvent(ev raftstore.Event) {
	if ev.Kind == raftstore.EventDelete {
		return
	}
	switch o := any(ev.Object).(type) {
	case *pb.Task:
		old, _ := any(ev.Old).(*pb.Task)
		if old.GetNodeId() == "" && o.GetNodeId() != "" {
			m.placements.Inc()
			if c := o.GetMeta().GetCreatedAt(); c > 0 && ev.Time >= c {
				m.placeDelay.Observe(time.Duration(ev.Time - c).Seconds())
			}
		}
	case *pb.Node:
		old, _ := any(ev.Old).(*pb.Node)
		if o.GetStatus().GetState() == pb.NodeState_NODE_STATE_DOWN && old.GetStatus().GetState() != pb.NodeState_NODE_STATE_DOWN && old != nil {
			m.nodesDown.Inc()
		}
	case *pb.Cluster:
		old, _ := any(ev.Old).(*pb.Cluster)
		if o.GetLeader() != "" && (o.GetLeader() != old.GetLeader() || o.GetLeaderTerm() != old.GetLeaderTerm()) {
			m.leaders.Inc()
		}
	}
}

// Describe implements prometheus.Collector.
func (m *Manager) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.counters() {
		c.Describe(ch)
	}
	for _, d := range []*prometheus.Desc{m.raftState, m.raftTerm, m.raftCommit, m.raftApplied, m.raftLast,
		m.objects, m.nodes, m.tasks, m.pending, m.sessions, m.heartbeats} {
		ch <- d
	}
}

func (m *Manager) counters() []prometheus.Collector {
	return []prometheus.Collector{m.commits, m.conflicts, m.transitions, m.placements, m.placeDelay, m.nodesDown, m.leaders}
}

// raftStates are the states shoal_raft_state reports, one 1 and the rest 0.
var raftStates = []string{"Follower", "Candidate", "Leader", "Shutdown"}

// Collect implements prometheus.Collector.
func (m *Manager) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.counters() {
		c.Collect(ch)
	}
	m.mu.Lock()
	store, disp := m.store, m.disp
	m.mu.Unlock()
	if store == nil {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	st := store.Status()
	for _, s := range raftStates {
		v := 0.0
		if st.State == s {
			v = 1
		}
		gauge(m.raftState, v, strings.ToLower(s))
	}
	gauge(m.raftTerm, float64(st.Term))
	gauge(m.raftCommit, float64(st.CommitIndex))
	gauge(m.raftApplied, float64(st.AppliedIndex))
	gauge(m.raftLast, float64(st.LastIndex))

	type nodeKey struct{ state, role, availability string }
	type taskKey struct{ service, state string }
	nodes, tasks, pending := map[nodeKey]int{}, map[taskKey]int{}, map[string]int{}
	objects := map[string]int{}
	store.View(func(tx *raftstore.Tx) {
		for _, n := range tx.Nodes().List() {
			nodes[nodeKey{label(n.GetStatus().GetState().String(), "NODE_STATE_"), label(n.GetRole().String(), "NODE_ROLE_"),
				label(n.GetSpec().GetAvailability().String(), "NODE_AVAILABILITY_")}]++
		}
		for _, t := range tx.Tasks().List() {
			state := t.GetStatus().GetState()
			tasks[taskKey{t.GetServiceName(), label(state.String(), "TASK_STATE_")}]++
			if state == pb.TaskState_TASK_STATE_PENDING && t.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING {
				pending[pendingReason(t.GetPendingReason())]++
			}
		}
		objects["node"] = tx.Nodes().Len()
		objects["service"] = tx.Services().Len()
		objects["task"] = tx.Tasks().Len()
		objects["secret"] = tx.Secrets().Len()
		objects["config"] = tx.Configs().Len()
		objects["cluster"] = tx.Clusters().Len()
	})
	for k, v := range objects {
		gauge(m.objects, float64(v), k)
	}
	for k, v := range nodes {
		gauge(m.nodes, float64(v), k.state, k.role, k.availability)
	}
	for k, v := range tasks {
		gauge(m.tasks, float64(v), k.service, k.state)
	}
	for k, v := range pending {
		gauge(m.pending, float64(v), k)
	}
	if disp != nil {
		s, hb := disp.Stats()
		gauge(m.sessions, float64(s))
		ch <- prometheus.MustNewConstMetric(m.heartbeats, prometheus.CounterValue, float64(hb))
	}
}

// label turns an enum name into a label value: NODE_STATE_READY → ready.
func label(name, prefix string) string { return strings.ToLower(strings.TrimPrefix(name, prefix)) }

// pendingReason is a pending reason with its counts replaced by N, so
// "insufficient memory on 3 nodes" does not make a new series for every
// count.
func pendingReason(r string) string {
	if r == "" {
		return "unknown"
	}
	return counts.ReplaceAllString(r, "N")
}

var counts = regexp.MustCompile(`\b[0-9]+\b`)
