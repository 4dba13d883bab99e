package dispatcher

import (
	"fmt"
	"log/slog"

	"github.com/shoal-cluster/shoal/internal/registry"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

// valueTracker follows which secrets (or configs) one worker's tasks need,
// so that a session sends a value only to a node that runs a task using
// it, and tells the node to forget it once no task there needs it. One
// tracker serves each kind; valueKind says what differs.
type valueTracker[T raftstore.Object] struct {
	kind   valueKind[T]
	store  raftstore.StateStore
	log    *slog.Logger
	nodeID string
	uses   map[string][]string // task ID -> object IDs, for live tasks
	sent   map[string]bool     // object IDs the worker holds
	failed map[string]bool     // object IDs that could not be sent (logged once)
}

// valueKind is what a valueTracker needs to know of secrets or configs.
type valueKind[T raftstore.Object] struct {
	noun string
	// refs are the IDs of the objects a task uses.
	refs func(t *pb.Task) []string
	// get reads a stored object by ID.
	get func(tx *raftstore.Tx, id string) (T, bool)
	// value is what the worker receives for a stored object.
	value func(o T) (*pb.SecretValue, error)
}

func newValueTracker[T raftstore.Object](d *Dispatcher, kind valueKind[T], nodeID string) *valueTracker[T] {
	return &valueTracker[T]{kind: kind, store: d.store, log: d.log, nodeID: nodeID, uses: map[string][]string{}, sent: map[string]bool{}, failed: map[string]bool{}}
}

// newSecretTracker follows the secrets of a node's tasks; their values are
// opened from their sealed form only when sent.
func (d *Dispatcher) newSecretTracker(nodeID string) *valueTracker[*pb.Secret] {
	return newValueTracker(d, valueKind[*pb.Secret]{
		noun: "secret",
		refs: func(t *pb.Task) []string {
			var ids []string
			for _, r := range t.GetSpec().GetContainer().GetSecrets() {
				ids = append(ids, r.GetSecretId())
			}
			if t.GetSpec().GetContainer().GetWithRegistryAuth() {
				// The service's registry credentials travel as one more secret.
				ids = append(ids, registry.AuthSecretID(t.GetServiceId()))
			}
			return ids
		},
		get: func(tx *raftstore.Tx, id string) (*pb.Secret, bool) {
			if svcID, ok := registry.AuthSecretService(id); ok {
				sec := registryAuthSecret(tx, svcID)
				return sec, sec != nil
			}
			return tx.Secrets().Get(id)
		},
		value: func(sec *pb.Secret) (*pb.SecretValue, error) {
			key, err := d.keys.Key()
			if err != nil {
				return nil, err
			}
			data, err := key.Open(sec.GetId(), sec.GetSealedData())
			if err != nil {
				return nil, fmt.Errorf("secret %q: %w", sec.GetSpec().GetAnnotations().GetName(), err)
			}
			return &pb.SecretValue{Id: sec.GetId(), Name: sec.GetSpec().GetAnnotations().GetName(), Data: data}, nil
		},
	}, nodeID)
}

// newConfigTracker follows the configs of a node's tasks.
func (d *Dispatcher) newConfigTracker(nodeID string) *valueTracker[*pb.Config] {
	return newValueTracker(d, valueKind[*pb.Config]{
		noun: "config",
		refs: func(t *pb.Task) []string {
			var ids []string
			for _, r := range t.GetSpec().GetContainer().GetConfigs() {
				ids = append(ids, r.GetConfigId())
			}
			return ids
		},
		get: func(tx *raftstore.Tx, id string) (*pb.Config, bool) { return tx.Configs().Get(id) },
		value: func(c *pb.Config) (*pb.SecretValue, error) {
			return &pb.SecretValue{Id: c.GetId(), Name: c.GetSpec().GetAnnotations().GetName(), Data: c.GetSpec().GetData()}, nil
		},
	}, nodeID)
}

// needsValues reports whether a task, as stored, still needs its secrets
// and configs on its node: assigned there, meant to run, not ended. A task
// that is being stopped already has its files in place.
func needsValues(t *pb.Task, nodeID string) bool {
	return t.GetNodeId() == nodeID && isAssigned(t) &&
		t.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING &&
		t.GetStatus().GetState() < pb.TaskState_TASK_STATE_COMPLETE
}

// note records a task's new state (deleted: it is gone).
func (s *valueTracker[T]) note(t *pb.Task, deleted bool) {
	var ids []string
	if !deleted && needsValues(t, s.nodeID) {
		ids = s.kind.refs(t)
	}
	if len(ids) == 0 {
		delete(s.uses, t.GetId())
		return
	}
	s.uses[t.GetId()] = ids
}

// stale marks a value the worker holds as changed in the store (a
// service's new registry credentials): the next changes sends it again if
// a task still needs it.
func (s *valueTracker[T]) stale(id string) {
	delete(s.sent, id)
}

// changes returns what the worker must learn: with COMPLETE every value
// it needs, with INCREMENTAL the ones it lacks and the ones it should
// forget; nil when nothing changed.
func (s *valueTracker[T]) changes(kind pb.AssignmentsType) *pb.SecretAssignments {
	need := map[string]bool{}
	for _, ids := range s.uses {
		for _, id := range ids {
			need[id] = true
		}
	}
	out := &pb.SecretAssignments{Type: kind}
	for id := range s.sent {
		if !need[id] {
			out.Removed = append(out.Removed, id)
			delete(s.sent, id)
		}
	}
	var missing []string
	for id := range need {
		if !s.sent[id] {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		var stored []T
		s.store.View(func(tx *raftstore.Tx) {
			for _, id := range missing {
				if o, ok := s.kind.get(tx, id); ok {
					stored = append(stored, o)
				} else if !s.failed[id] {
					s.failed[id] = true
					s.log.Warn("a task needs a "+s.kind.noun+" that no longer exists; it waits in preparing", s.kind.noun, id, "worker", s.nodeID)
				}
			}
		})
		for _, o := range stored {
			v, err := s.kind.value(o)
			if err != nil {
				if !s.failed[o.GetId()] {
					s.failed[o.GetId()] = true
					s.log.Error("cannot send a "+s.kind.noun+" to a worker", "worker", s.nodeID, "err", err)
				}
				continue
			}
			delete(s.failed, o.GetId())
			s.sent[o.GetId()] = true
			out.Updated = append(out.Updated, v)
		}
	}
	if kind == pb.AssignmentsType_ASSIGNMENTS_TYPE_COMPLETE {
		out.Removed = nil // a complete set replaces whatever the worker held
		return out
	}
	if len(out.Updated) == 0 && len(out.Removed) == 0 {
		return nil
	}
	return out
}

// maxValueBytes bounds the secret and config bytes one session message
// carries, well under the 16 MiB a worker accepts in one message: a node
// whose tasks use more gets them in messages of their own that follow.
const maxValueBytes = 8 << 20

// splitValues returns msg with at most budget bytes of secret and config
// values (at least one value, whatever its size), followed by as many
// messages as the rest needs, each an incremental update the worker adds
// to what it holds. msg keeps the update's type and its removals.
func splitValues(msg *pb.SessionMessage, budget int) []*pb.SessionMessage {
	out := []*pb.SessionMessage{msg}
	cur, used := msg, 0
	for _, field := range []func(*pb.SessionMessage) **pb.SecretAssignments{
		func(m *pb.SessionMessage) **pb.SecretAssignments { return &m.Secrets },
		func(m *pb.SessionMessage) **pb.SecretAssignments { return &m.Configs },
	} {
		sa := *field(msg)
		if sa == nil {
			continue
		}
		values := sa.Updated
		sa.Updated = nil
		for _, v := range values {
			if n := len(v.GetData()); used > 0 && used+n > budget {
				cur, used = &pb.SessionMessage{SessionId: msg.GetSessionId()}, 0
				out = append(out, cur)
			}
			used += len(v.GetData())
			dst := field(cur)
			if *dst == nil {
				*dst = &pb.SecretAssignments{Type: pb.AssignmentsType_ASSIGNMENTS_TYPE_INCREMENTAL}
			}
			(*dst).Updated = append((*dst).Updated, v)
		}
	}
	return out
}

// registryAuthSecret presents a service's sealed registry credentials as a
// secret under their own ID (see registry.AuthSecretID), sealed to it, or
// nil when the service has none.
func registryAuthSecret(tx *raftstore.Tx, serviceID string) *pb.Secret {
	svc, ok := tx.Services().Get(serviceID)
	if !ok || len(svc.GetSealedRegistryAuth()) == 0 {
		return nil
	}
	return &pb.Secret{
		Id:         registry.AuthSecretID(serviceID),
		Spec:       &pb.SecretSpec{Annotations: &pb.Annotations{Name: "registry credentials of " + svc.GetSpec().GetAnnotations().GetName()}},
		SealedData: svc.GetSealedRegistryAuth(),
	}
}
