// Package endpoints keeps the endpoint set of every service (which
// running, healthy tasks serve it, and on which host ports) current from
// the store, for the node's own routing mesh and for the leader's worker
// sessions to push; and it allocates services' virtual IPs and checks
// their ingress ports on this host.
package endpoints

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/shoal-cluster/shoal/internal/mesh"
	"github.com/shoal-cluster/shoal/internal/taskhealth"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Feed keeps the endpoint set of every service current from the local
// store: which running, healthy tasks serve it and on which ports. Every
// manager runs one; its own mesh and, on the leader, each worker session
// read it, so workers are told of changes instead of polling.
type Feed struct {
	store    raftstore.StateStore
	mu       sync.Mutex
	services map[string]*pb.ServiceEndpoints // by service ID; replaced, never mutated
	changed  chan struct{}                   // closed and replaced on every change
}

// NewFeed returns a feed of the store's endpoint sets; Run keeps it current.
func NewFeed(store raftstore.StateStore) *Feed {
	return &Feed{store: store, services: map[string]*pb.ServiceEndpoints{}, changed: make(chan struct{})}
}

// Snapshot returns the current sets and a channel closed at the next change.
func (f *Feed) Snapshot() (map[string]*pb.ServiceEndpoints, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]*pb.ServiceEndpoints, len(f.services))
	for id, s := range f.services {
		out[id] = s
	}
	return out, f.changed
}

// Diff is the update that takes a receiver from sent to now. Sets are
// compared by pointer: the feed replaces a set only when it changed.
func Diff(sent, now map[string]*pb.ServiceEndpoints) *pb.EndpointUpdate {
	u := &pb.EndpointUpdate{}
	for id, s := range now {
		if sent[id] != s {
			u.Updated = append(u.Updated, s)
		}
	}
	for id := range sent {
		if _, ok := now[id]; !ok {
			u.Removed = append(u.Removed, id)
		}
	}
	sort.Slice(u.Updated, func(i, j int) bool { return u.Updated[i].GetServiceId() < u.Updated[j].GetServiceId() })
	sort.Strings(u.Removed)
	return u
}

// Complete is the whole set, for a receiver starting from nothing.
func Complete(now map[string]*pb.ServiceEndpoints) *pb.EndpointUpdate {
	u := Diff(nil, now)
	u.Complete = true
	return u
}

// Run follows the store until ctx ends or the store closes.
func (f *Feed) Run(ctx context.Context) {
	for ctx.Err() == nil {
		sub := f.store.ViewAndWatch(func(tx *raftstore.Tx) {
			all := map[string]bool{}
			for _, s := range tx.Services().List() {
				all[s.GetId()] = true
			}
			f.mu.Lock()
			for id := range f.services {
				all[id] = true
			}
			f.mu.Unlock()
			f.refresh(tx, all)
		}, func(ev raftstore.Event) bool {
			switch ev.Object.(type) {
			case *pb.Task, *pb.Service, *pb.Node:
				return true // a node's state decides whether its lost tasks linger
			}
			return false
		})
		f.follow(ctx, sub)
		sub.Close()
		if errors.Is(sub.Err(), raftstore.ErrClosed) {
			return
		}
	}
}

// feedInterval spaces the feed's changes: events arriving within it of
// the last refresh that changed a set are gathered into the next one, so
// a burst of task changes (a rolling update of thousands of tasks) costs
// each session one message per interval rather than one per commit. A
// refresh that changed nothing (a task went PREPARING or STARTING) sent
// nothing and does not count: the commit that makes the task RUNNING is
// not held back by its task's own earlier steps.
const feedInterval = 100 * time.Millisecond

// follow applies events until the subscription ends; the services touched
// by the events of one interval are recomputed together.
func (f *Feed) follow(ctx context.Context, sub *raftstore.Subscription) {
	var last time.Time
	for {
		touched := map[string]bool{}
		nodes := map[string]bool{}
		note := func(ev raftstore.Event) {
			switch o := ev.Object.(type) {
			case *pb.Task:
				if o.GetServiceId() != "" {
					touched[o.GetServiceId()] = true
				}
			case *pb.Service:
				touched[o.GetId()] = true
			case *pb.Node:
				nodes[o.GetId()] = true
			}
		}
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-sub.C():
			if !ok {
				return
			}
			note(ev)
		}
		// Gather until the interval since the last refresh has passed.
		if wait := time.Until(last.Add(feedInterval)); wait > 0 {
			timer := time.NewTimer(wait)
		gather:
			for {
				select {
				case <-ctx.Done():
					timer.Stop()
					return
				case ev, ok := <-sub.C():
					if !ok {
						timer.Stop()
						return
					}
					note(ev)
				case <-timer.C:
					break gather
				}
			}
		}
	drain:
		for {
			select {
			case more, ok := <-sub.C():
				if !ok {
					break drain
				}
				note(more)
			default:
				break drain
			}
		}
		f.store.View(func(tx *raftstore.Tx) {
			for id := range nodes {
				for _, t := range tx.Tasks().Find(raftstore.IndexNode, id) {
					if t.GetServiceId() != "" {
						touched[t.GetServiceId()] = true
					}
				}
			}
			if f.refresh(tx, touched) {
				last = time.Now()
			}
		})
	}
}

// refresh recomputes the given services and announces a change if any set
// differs from before; it reports whether one did.
func (f *Feed) refresh(tx *raftstore.Tx, ids map[string]bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	changed := false
	for id := range ids {
		svc, ok := tx.Services().Get(id)
		if !ok {
			if _, had := f.services[id]; had {
				delete(f.services, id)
				changed = true
			}
			continue
		}
		next := serviceEndpoints(tx, svc)
		if old, had := f.services[id]; had && proto.Equal(old, next) {
			continue
		}
		f.services[id] = next
		changed = true
	}
	if changed {
		close(f.changed)
		f.changed = make(chan struct{})
	}
	return changed
}

// Routable reports whether a task belongs in its service's endpoint set:
// meant to run, and up (running, and healthy when its health is checked;
// a checked task runs with health STARTING until its check first passes,
// and reports UNHEALTHY before it is stopped).
func Routable(t *pb.Task) bool {
	return t.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING && taskhealth.Up(t)
}

// lingers reports whether a task the managers failed because its node went
// Down stays in the endpoint set (make before break): a node cut off from
// the managers may still serve, so a task that was routable when its node
// was lost (markDown keeps its ports then) is routed to until its slot
// (or, for a global service, its node) has a routable replacement, or the
// node is back (and stops it), or the task is being removed. A task that
// really is gone is skipped by each proxy as soon as a dial to it fails.
func lingers(t *pb.Task, node *pb.Node, replaced bool) bool {
	return t.GetStatus().GetNodeLost() && len(t.GetStatus().GetPorts()) > 0 &&
		t.GetDesiredState() == pb.TaskState_TASK_STATE_SHUTDOWN && !replaced &&
		node != nil && node.GetStatus().GetState() != pb.NodeState_NODE_STATE_READY
}

// slotKey groups a service's tasks by what replaces what: the slot of a
// replicated task, the node of a global one.
func slotKey(t *pb.Task) string {
	if t.GetSlot() == 0 {
		return "node/" + t.GetNodeId()
	}
	return fmt.Sprintf("slot/%d", t.GetSlot())
}

// serviceEndpoints computes one service's endpoint set: its routable tasks.
func serviceEndpoints(tx *raftstore.Tx, svc *pb.Service) *pb.ServiceEndpoints {
	se := &pb.ServiceEndpoints{
		ServiceId:   svc.GetId(),
		ServiceName: svc.GetSpec().GetAnnotations().GetName(),
		VirtualAddr: svc.GetEndpoint().GetVirtualAddr(),
		Ports:       svc.GetSpec().GetEndpoint().GetPorts(),
		Aliases:     Aliases(svc.GetSpec()),
	}
	// A service without ports is only ever resolved (tasks.<service>
	// wants addresses): one entry per node then, so the set, and the
	// messages carrying it, follow the nodes rather than every task.
	perNode := len(se.GetPorts()) == 0
	tasks := tx.Tasks().Find(raftstore.IndexService, svc.GetId())
	replaced := map[string]bool{}
	for _, t := range tasks {
		if Routable(t) {
			replaced[slotKey(t)] = true
		}
	}
	nodes := map[string]*pb.Node{}
	nodeOf := func(id string) *pb.Node {
		n, ok := nodes[id]
		if !ok {
			n, _ = tx.Nodes().Get(id)
			nodes[id] = n
		}
		return n
	}
	seenNode := map[string]bool{}
	for _, t := range tasks {
		if !Routable(t) && !lingers(t, nodeOf(t.GetNodeId()), replaced[slotKey(t)]) {
			continue
		}
		var ip string
		if n := nodeOf(t.GetNodeId()); n != nil {
			ip, _, _ = net.SplitHostPort(n.GetApiAddr())
		}
		if perNode {
			if !seenNode[t.GetNodeId()] {
				seenNode[t.GetNodeId()] = true
				se.Tasks = append(se.Tasks, &pb.TaskEndpoint{NodeId: t.GetNodeId(), Ip: ip})
			}
			continue
		}
		se.Tasks = append(se.Tasks, &pb.TaskEndpoint{
			TaskId: t.GetId(),
			NodeId: t.GetNodeId(),
			Slot:   t.GetSlot(),
			Ip:     ip,
			Ports:  t.GetStatus().GetPorts(),
		})
	}
	sort.Slice(se.Tasks, func(i, j int) bool {
		a, b := se.Tasks[i], se.Tasks[j]
		if a.GetSlot() != b.GetSlot() {
			return a.GetSlot() < b.GetSlot()
		}
		if a.GetTaskId() != b.GetTaskId() {
			return a.GetTaskId() < b.GetTaskId()
		}
		return a.GetNodeId() < b.GetNodeId()
	})
	return se
}

// AllocateVIP returns the lowest virtual IP no service holds (see
// internal/mesh for the address plan).
func AllocateVIP(tx *raftstore.Tx, clusterID string) (string, error) {
	used := map[string]bool{}
	for _, s := range tx.Services().List() {
		if va := s.GetEndpoint().GetVirtualAddr(); va != "" {
			used[va] = true
		}
	}
	for n := 0; n < mesh.VIPsPerCluster; n++ {
		if ip := mesh.VIP(clusterID, n); !used[ip] {
			return ip, nil
		}
	}
	return "", status.Errorf(codes.ResourceExhausted, "no virtual IP left: the cluster holds %d services; remove some first", mesh.VIPsPerCluster)
}

// CheckHostPorts tries to bind each new ingress TCP port on this manager's
// address, so a port another program holds here is refused at the edge
// instead of failing silently in the mesh. (Other hosts report a clash in
// their logs.)
func CheckHostPorts(ip string, spec *pb.ServiceSpec, old *pb.ServiceSpec) error {
	had := map[uint32]bool{}
	for _, p := range old.GetEndpoint().GetPorts() {
		if p.GetPublishMode() == pb.PublishMode_PUBLISH_MODE_INGRESS {
			had[p.GetPublishedPort()] = true
		}
	}
	for _, p := range spec.GetEndpoint().GetPorts() {
		if p.GetPublishMode() != pb.PublishMode_PUBLISH_MODE_INGRESS || p.GetProtocol() != pb.PortProtocol_PORT_PROTOCOL_TCP ||
			p.GetPublishedPort() == 0 || had[p.GetPublishedPort()] {
			continue
		}
		addr := net.JoinHostPort(ip, fmt.Sprint(p.GetPublishedPort()))
		ln, err := net.Listen("tcp4", addr)
		if err != nil {
			if errors.Is(err, syscall.EADDRINUSE) {
				return status.Errorf(codes.FailedPrecondition, "port %d is already in use on %s by another program; publish another port", p.GetPublishedPort(), ip)
			}
			if errors.Is(err, syscall.EACCES) {
				return status.Errorf(codes.FailedPrecondition, "port %d needs privileges on %s; publish a port above 1023 or run Shoal as root", p.GetPublishedPort(), ip)
			}
			continue
		}
		_ = ln.Close()
	}
	return nil
}

// Aliases are the distinct names a service's network attachments add to
// its own in DNS, in order (its own name, in any case, is not one).
func Aliases(spec *pb.ServiceSpec) []string {
	var out []string
	seen := map[string]bool{strings.ToLower(spec.GetAnnotations().GetName()): true}
	for _, a := range spec.GetTask().GetNetworks() {
		for _, al := range a.GetAliases() {
			if k := strings.ToLower(al); !seen[k] {
				seen[k] = true
				out = append(out, al)
			}
		}
	}
	return out
}
