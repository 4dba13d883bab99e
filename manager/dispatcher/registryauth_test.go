package dispatcher

import (
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/poll"
	"github.com/shoal-cluster/shoal/internal/registry"
	"github.com/shoal-cluster/shoal/manager/sealer"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/protobuf/proto"
)

type fixedKey struct{ k *sealer.Key }

func (f fixedKey) Key() (*sealer.Key, error) { return f.k, nil }

// TestRegistryAuthOnlyToItsWorkers: a service's sealed registry
// credentials reach, opened, only the worker running one of its tasks, and
// new credentials reach it again.
func TestRegistryAuthOnlyToItsWorkers(t *testing.T) {
	key, err := sealer.Generate()
	if err != nil {
		t.Fatal(err)
	}
	seal := func(password string) []byte {
		raw, err := proto.Marshal(&pb.RegistryAuth{Server: "127.0.0.1:5443", Username: "alice", Password: password})
		if err != nil {
			t.Fatal(err)
		}
		sealed, err := key.Seal(registry.AuthSecretID("svc1"), raw)
		if err != nil {
			t.Fatal(err)
		}
		return sealed
	}
	task := &pb.Task{Id: "t1", ServiceId: "svc1", NodeId: "w1", DesiredState: pb.TaskState_TASK_STATE_RUNNING,
		Spec:   &pb.TaskSpec{Runtime: "docker", Container: &pb.ContainerSpec{Image: "127.0.0.1:5443/shoal/hello:v1", WithRegistryAuth: true}},
		Status: &pb.TaskStatus{State: pb.TaskState_TASK_STATE_ASSIGNED}}
	h := newKeyedHarness(t, []*pb.Node{worker("w1", pb.NodeState_NODE_STATE_UNKNOWN, ""), worker("w2", pb.NodeState_NODE_STATE_UNKNOWN, "")},
		[]*pb.Task{task}, fixedKey{key})
	h.update(func(tx *raftstore.Tx) error {
		return tx.Services().Create(&pb.Service{Id: "svc1", Spec: &pb.ServiceSpec{Annotations: &pb.Annotations{Name: "private"}}, SealedRegistryAuth: seal("first")})
	})

	// passwords returns the registry passwords a session received, in order.
	passwords := func(s *session) []string {
		s.stream.mu.Lock()
		defer s.stream.mu.Unlock()
		var out []string
		for _, m := range s.stream.sent {
			for _, v := range m.GetSecrets().GetUpdated() {
				if v.GetId() != registry.AuthSecretID("svc1") {
					t.Errorf("unexpected value %s", v.GetId())
					continue
				}
				var a pb.RegistryAuth
				if err := proto.Unmarshal(v.GetData(), &a); err != nil {
					t.Fatalf("the value sent is not the credentials: %v", err)
				}
				out = append(out, a.GetPassword())
			}
		}
		return out
	}
	w1, w2 := h.open("w1"), h.open("w2")
	if got := passwords(w1); len(got) != 1 || got[0] != "first" {
		t.Fatalf("w1 (runs a task of the service) got %q, want [first]", got)
	}
	if got := passwords(w2); len(got) != 0 {
		t.Fatalf("w2 (runs none) got credentials %q", got)
	}

	h.update(func(tx *raftstore.Tx) error {
		svc, _ := tx.Services().Get("svc1")
		svc.SealedRegistryAuth = seal("second")
		return tx.Services().Update(svc)
	})
	poll.Until(t, 10*time.Second, "the new credentials on w1", func() (bool, string) {
		got := passwords(w1)
		return len(got) == 2 && got[1] == "second", ""
	})
	if got := passwords(w2); len(got) != 0 {
		t.Fatalf("w2 got credentials %q after the change", got)
	}
}

// update writes to the harness's store.
func (h *harness) update(f func(tx *raftstore.Tx) error) {
	h.t.Helper()
	if _, err := h.store.Update(h.ctx, f); err != nil {
		h.t.Fatal(err)
	}
}
