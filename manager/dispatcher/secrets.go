package dispatcher

import (
	"fmt"
	"log/slog"

	"github.com/shoal-cluster/shoal/internal/registry"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

// secretTracker follows which secrets one worker's tasks need, so that a
// session sends a secret's value only to a node that runs a task using it,
// and tells the node to forget it once no task there needs it.
type secretTracker struct {
	store  raftstore.StateStore
	keys   SecretsKey
	log    *slog.Logger
	nodeID string
	uses   map[string][]string // task ID -> secret IDs, for live tasks
	sent   map[string]bool     // secret IDs the worker holds
	failed map[string]bool     // secret IDs that could not be sent (logged once)
}

func (d *Dispatcher) newSecretTracker(nodeID string) *secretTracker {
	return &secretTracker{store: d.store, keys: d.keys, log: d.log, nodeID: nodeID, uses: map[string][]string{}, sent: map[string]bool{}, failed: map[string]bool{}}
}

// needsSecrets reports whether a task, as stored, still needs its secrets
// on its node: assigned there, meant to run, not ended. A task that is
// being stopped already has its secrets in place.
func needsSecrets(t *pb.Task, nodeID string) bool {
	return t.GetNodeId() == nodeID && isAssigned(t) &&
		t.GetDesiredState() <= pb.TaskState_TASK_STATE_RUNNING &&
		t.GetStatus().GetState() < pb.TaskState_TASK_STATE_COMPLETE &&
		(len(t.GetSpec().GetContainer().GetSecrets()) > 0 || t.GetSpec().GetContainer().GetWithRegistryAuth())
}

// note records a task's new state (deleted: it is gone).
func (s *secretTracker) note(t *pb.Task, deleted bool) {
	if deleted || !needsSecrets(t, s.nodeID) {
		delete(s.uses, t.GetId())
		return
	}
	refs := t.GetSpec().GetContainer().GetSecrets()
	ids := make([]string, 0, len(refs))
	for _, r := range refs {
		ids = append(ids, r.GetSecretId())
	}
	if t.GetSpec().GetContainer().GetWithRegistryAuth() {
		// The service's registry credentials travel as one more value.
		ids = append(ids, registry.AuthSecretID(t.GetServiceId()))
	}
	s.uses[t.GetId()] = ids
}

// stale marks a value the worker holds as changed in the store (a
// service's new registry credentials): the next changes sends it again if
// a task still needs it.
func (s *secretTracker) stale(id string) {
	delete(s.sent, id)
}

// changes returns what the worker must learn: with COMPLETE every secret
// it needs, with INCREMENTAL the ones it lacks and the ones it should
// forget; nil when nothing changed.
func (s *secretTracker) changes(kind pb.AssignmentsType) *pb.SecretAssignments {
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
		var stored []*pb.Secret
		s.store.View(func(tx *raftstore.Tx) {
			for _, id := range missing {
				if svcID, ok := registry.AuthSecretService(id); ok {
					if sec := registryAuthSecret(tx, svcID); sec != nil {
						stored = append(stored, sec)
					} else if !s.failed[id] {
						s.failed[id] = true
						s.log.Warn("a task needs its service's registry credentials, which are gone; it waits in preparing", "service", svcID, "worker", s.nodeID)
					}
					continue
				}
				if sec, ok := tx.Secrets().Get(id); ok {
					stored = append(stored, sec)
				} else if !s.failed[id] {
					s.failed[id] = true
					s.log.Warn("a task needs a secret that no longer exists; it waits in preparing", "secret", id, "worker", s.nodeID)
				}
			}
		})
		for _, sec := range stored {
			data, err := s.open(sec)
			if err != nil {
				if !s.failed[sec.GetId()] {
					s.failed[sec.GetId()] = true
					s.log.Error("cannot send a secret to a worker", "worker", s.nodeID, "err", err)
				}
				continue
			}
			delete(s.failed, sec.GetId())
			s.sent[sec.GetId()] = true
			out.Updated = append(out.Updated, &pb.SecretValue{Id: sec.GetId(), Name: sec.GetSpec().GetAnnotations().GetName(), Data: data})
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

// open returns a stored secret's plaintext, for the worker, which runs a
// task using it.
func (s *secretTracker) open(sec *pb.Secret) ([]byte, error) {
	key, err := s.keys.Key()
	if err != nil {
		return nil, err
	}
	data, err := key.Open(sec.GetId(), sec.GetSealedData())
	if err != nil {
		return nil, fmt.Errorf("secret %q: %w", sec.GetSpec().GetAnnotations().GetName(), err)
	}
	return data, nil
}

// registryAuthSecret presents a service's sealed registry credentials as a
// secret under their own ID (see registry.AuthSecretID), or nil when the
// service has none.
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
