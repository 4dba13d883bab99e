// Package events turns the store's committed changes into the cluster's
// event history, as `docker events` shows it: services created, scaled
// (by hand, or by the autoscaler with its reason),
// updated, rolled back and removed; tasks changing state; nodes joining,
// going Down or Ready, drained, promoted; leader changes. Every manager
// keeps the recent history from its own replica (a Journal) and streams it
// to clients; each event carries the Raft index of the change it comes
// from, so a client resumes on any manager without gaps or repeats.
package events

import (
	"strconv"
	"strings"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/protobuf/proto"
)

// Types are the event types a client may filter on.
var Types = []string{"service", "node", "task", "secret", "config", "network"}

// Translate derives the events one committed change gives; most changes
// give one, some none (a task's heartbeat-only update), a node change may
// give several (drained and demoted at once). seq is left to the caller.
func Translate(ev raftstore.Event) []*pb.ClusterEvent {
	var out []*pb.ClusterEvent
	add := func(typ, action, id, name string, attrs map[string]string) {
		out = append(out, &pb.ClusterEvent{Index: ev.Index, Time: ev.Time, Type: typ, Action: action, Id: id, Name: name, Attributes: attrs})
	}
	switch o := any(ev.Object).(type) {
	case *pb.Service:
		translateService(ev, o, add)
	case *pb.Task:
		translateTask(ev, o, add)
	case *pb.Node:
		translateNode(ev, o, add)
	case *pb.Secret:
		translateBlob(ev, "secret", o.GetId(), o.GetSpec().GetAnnotations().GetName(), add)
	case *pb.Config:
		translateBlob(ev, "config", o.GetId(), o.GetSpec().GetAnnotations().GetName(), add)
	case *pb.Network:
		translateBlob(ev, "network", o.GetId(), o.GetSpec().GetAnnotations().GetName(), add)
	case *pb.Cluster:
		old, _ := any(ev.Old).(*pb.Cluster)
		if o.GetLeader() != "" && (old.GetLeader() != o.GetLeader() || old.GetLeaderTerm() != o.GetLeaderTerm()) {
			add("node", "leader", o.GetLeader(), "", map[string]string{"term": strconv.FormatUint(o.GetLeaderTerm(), 10)})
		}
	}
	return out
}

type addFunc func(typ, action, id, name string, attrs map[string]string)

// translateBlob gives a secret's, config's or network's events: created
// and removed (they cannot change).
func translateBlob(ev raftstore.Event, typ, id, name string, add addFunc) {
	switch ev.Kind {
	case raftstore.EventCreate:
		add(typ, "create", id, name, nil)
	case raftstore.EventDelete:
		add(typ, "remove", id, name, nil)
	}
}

func translateService(ev raftstore.Event, s *pb.Service, add addFunc) {
	name := s.GetSpec().GetAnnotations().GetName()
	attrs := map[string]string{"image": s.GetSpec().GetTask().GetContainer().GetImage()}
	if r, ok := replicas(s.GetSpec()); ok {
		attrs["replicas"] = strconv.FormatUint(r, 10)
	}
	switch ev.Kind {
	case raftstore.EventCreate:
		add("service", "create", s.GetId(), name, attrs)
		return
	case raftstore.EventDelete:
		add("service", "remove", s.GetId(), name, nil)
		return
	}
	old, _ := any(ev.Old).(*pb.Service)
	st, was := s.GetUpdateStatus().GetState(), old.GetUpdateStatus().GetState()
	if proto.Equal(old.GetSpec(), s.GetSpec()) {
		// Not a spec change: a rolling update's progress.
		if st != was && st != pb.UpdateState_UPDATE_STATE_UNKNOWN {
			add("service", "update", s.GetId(), name, map[string]string{
				"updatestate": updateStateName(st), "message": s.GetUpdateStatus().GetMessage()})
		}
		return
	}
	if r, ok := replicas(s.GetSpec()); ok {
		if before, okOld := replicas(old.GetSpec()); okOld && before != r && sameExceptReplicas(old.GetSpec(), s.GetSpec()) {
			attrs["old_replicas"] = strconv.FormatUint(before, 10)
			if a := s.GetAutoscaleStatus(); a != nil && a.GetDecidedAt() != old.GetAutoscaleStatus().GetDecidedAt() {
				// The autoscaler's decision, with its reason.
				attrs["reason"] = a.GetReason()
				add("service", "autoscale", s.GetId(), name, attrs)
				return
			}
			add("service", "scale", s.GetId(), name, attrs)
			return
		}
	}
	if st == pb.UpdateState_UPDATE_STATE_ROLLBACK_STARTED && s.GetUpdateStatus().GetStartedAt() != old.GetUpdateStatus().GetStartedAt() {
		attrs["message"] = s.GetUpdateStatus().GetMessage()
		add("service", "rollback", s.GetId(), name, attrs)
		return
	}
	if oi := old.GetSpec().GetTask().GetContainer().GetImage(); oi != s.GetSpec().GetTask().GetContainer().GetImage() {
		attrs["old_image"] = oi
	}
	if st == pb.UpdateState_UPDATE_STATE_UPDATING && s.GetUpdateStatus().GetStartedAt() != old.GetUpdateStatus().GetStartedAt() {
		attrs["updatestate"] = updateStateName(st)
	}
	add("service", "update", s.GetId(), name, attrs)
}

// replicas is a replicated service's replica count.
func replicas(spec *pb.ServiceSpec) (uint64, bool) {
	if r := spec.GetReplicated(); r != nil {
		return r.GetReplicas(), true
	}
	return 0, false
}

// sameExceptReplicas reports whether two specs differ in nothing but the
// replica count.
func sameExceptReplicas(a, b *pb.ServiceSpec) bool {
	a2, b2 := proto.Clone(a).(*pb.ServiceSpec), proto.Clone(b).(*pb.ServiceSpec)
	a2.Mode, b2.Mode = nil, nil
	return proto.Equal(a2, b2)
}

func translateTask(ev raftstore.Event, t *pb.Task, add addFunc) {
	if ev.Kind == raftstore.EventDelete {
		return // history trimming: not news
	}
	old, _ := any(ev.Old).(*pb.Task)
	state := t.GetStatus().GetState()
	if ev.Kind == raftstore.EventUpdate && old.GetStatus().GetState() == state && old.GetNodeId() == t.GetNodeId() {
		return
	}
	attrs := map[string]string{
		"service": t.GetServiceName(),
		"state":   StateName(state),
	}
	if ev.Kind == raftstore.EventUpdate {
		attrs["old_state"] = StateName(old.GetStatus().GetState())
	}
	if t.GetSlot() != 0 {
		attrs["slot"] = strconv.FormatUint(t.GetSlot(), 10)
	}
	if t.GetNodeId() != "" {
		attrs["node"] = t.GetNodeId()
	}
	if e := t.GetStatus().GetErr(); e != "" {
		attrs["error"] = e
	}
	if t.GetStatus().GetNodeLost() {
		attrs["node_lost"] = "true"
	}
	add("task", "state", t.GetId(), taskName(t), attrs)
}

// taskName is the task's name as `service ps` shows it: web.3, or the
// service name and node for global tasks.
func taskName(t *pb.Task) string {
	if t.GetSlot() != 0 {
		return t.GetServiceName() + "." + strconv.FormatUint(t.GetSlot(), 10)
	}
	return t.GetServiceName() + "." + t.GetNodeId()
}

func translateNode(ev raftstore.Event, n *pb.Node, add addFunc) {
	name := n.GetDescription().GetHostname()
	attrs := func(kv ...string) map[string]string {
		m := map[string]string{"role": roleName(n.GetRole())}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	switch ev.Kind {
	case raftstore.EventCreate:
		add("node", "join", n.GetId(), name, attrs("addr", n.GetStatus().GetAddr()))
		return
	case raftstore.EventDelete:
		add("node", "remove", n.GetId(), name, attrs())
		return
	}
	old, _ := any(ev.Old).(*pb.Node)
	if st := n.GetStatus().GetState(); st != old.GetStatus().GetState() {
		add("node", nodeStateName(st), n.GetId(), name, attrs("old_state", nodeStateName(old.GetStatus().GetState()), "message", n.GetStatus().GetMessage()))
	}
	if av := n.GetSpec().GetAvailability(); av != old.GetSpec().GetAvailability() {
		add("node", availabilityName(av), n.GetId(), name, attrs())
	}
	if !sameExceptAvailability(old.GetSpec(), n.GetSpec()) {
		add("node", "update", n.GetId(), name, attrs())
	}
	if r := n.GetRole(); r != old.GetRole() {
		action := "demote"
		if r == pb.NodeRole_NODE_ROLE_MANAGER {
			action = "promote"
		}
		add("node", action, n.GetId(), name, attrs())
	}
}

// sameExceptAvailability reports whether two node specs differ in nothing
// but availability and desired role, which have events of their own.
func sameExceptAvailability(a, b *pb.NodeSpec) bool {
	a2, b2 := proto.Clone(a).(*pb.NodeSpec), proto.Clone(b).(*pb.NodeSpec)
	if a2 == nil || b2 == nil {
		return a2 == nil && b2 == nil
	}
	a2.Availability, b2.Availability = 0, 0
	a2.DesiredRole, b2.DesiredRole = 0, 0
	return proto.Equal(a2, b2)
}

// StateName is a task state as `service ps` prints it, in lower case.
func StateName(s pb.TaskState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "TASK_STATE_"))
}

func nodeStateName(s pb.NodeState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "NODE_STATE_"))
}

func availabilityName(a pb.NodeAvailability) string {
	return strings.ToLower(strings.TrimPrefix(a.String(), "NODE_AVAILABILITY_"))
}

func roleName(r pb.NodeRole) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "NODE_ROLE_"))
}

func updateStateName(s pb.UpdateState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "UPDATE_STATE_"))
}
