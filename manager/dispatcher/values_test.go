package dispatcher

import (
	"slices"
	"sort"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

func configTask(id, node string, state pb.TaskState, configs ...string) *pb.Task {
	c := &pb.ContainerSpec{Image: "/bin/true"}
	for _, cfg := range configs {
		c.Configs = append(c.Configs, &pb.ConfigReference{ConfigId: cfg, ConfigName: "name-" + cfg, Target: "/" + cfg})
	}
	return &pb.Task{Id: id, NodeId: node, ServiceId: "svc", DesiredState: pb.TaskState_TASK_STATE_RUNNING,
		Spec: &pb.TaskSpec{Container: c}, Status: &pb.TaskStatus{State: state}}
}

func valueIDs(sa *pb.SecretAssignments) (updated []string, data map[string]string) {
	data = map[string]string{}
	for _, v := range sa.GetUpdated() {
		updated = append(updated, v.GetId())
		data[v.GetId()] = string(v.GetData())
	}
	sort.Strings(updated)
	return updated, data
}

// TestConfigTrackerSendsOnlyWhatTheNodeRuns: a session sends a node the
// configs of its own live tasks only (not another node's, not a pending or
// ended task's), with their data, then only what changed: configs to add
// when a task arrives, to forget when the last task using them ends.
func TestConfigTrackerSendsOnlyWhatTheNodeRuns(t *testing.T) {
	h := newHarness(t, []*pb.Node{worker("n1", pb.NodeState_NODE_STATE_READY, ""), worker("n2", pb.NodeState_NODE_STATE_READY, "")}, nil)
	if _, err := h.store.Update(h.ctx, func(tx *raftstore.Tx) error {
		for _, id := range []string{"c1", "c2", "c3", "c4"} {
			if err := tx.Configs().Create(&pb.Config{Id: id, Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: "name-" + id}, Data: []byte("data of " + id)}}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	tr := h.d.newConfigTracker("n1")
	for _, tk := range []*pb.Task{
		configTask("t1", "n1", pb.TaskState_TASK_STATE_RUNNING, "c1", "c2"),
		configTask("t2", "n2", pb.TaskState_TASK_STATE_RUNNING, "c3"),
		configTask("t3", "", pb.TaskState_TASK_STATE_PENDING, "c3"),
		configTask("t4", "n1", pb.TaskState_TASK_STATE_FAILED, "c4"),
		configTask("t5", "n1", pb.TaskState_TASK_STATE_ASSIGNED, "c2"),
	} {
		tr.note(tk, false)
	}
	first := tr.changes(pb.AssignmentsType_ASSIGNMENTS_TYPE_COMPLETE)
	got, data := valueIDs(first)
	if first.GetType() != pb.AssignmentsType_ASSIGNMENTS_TYPE_COMPLETE || !slices.Equal(got, []string{"c1", "c2"}) || data["c1"] != "data of c1" {
		t.Fatalf("complete set: %v %v, want c1 and c2 with their data", first.GetType(), data)
	}
	if again := tr.changes(pb.AssignmentsType_ASSIGNMENTS_TYPE_INCREMENTAL); again != nil {
		t.Fatalf("nothing changed, yet the tracker sends %v", again)
	}

	steps := []struct {
		name             string
		task             *pb.Task
		deleted          bool
		updated, removed []string
	}{
		{"a task using c3 comes to n1", configTask("t6", "n1", pb.TaskState_TASK_STATE_ASSIGNED, "c3"), false, []string{"c3"}, nil},
		{"t1 ends: c1 goes, c2 stays for t5", configTask("t1", "n1", pb.TaskState_TASK_STATE_COMPLETE, "c1", "c2"), false, nil, []string{"c1"}},
		{"t5 moves to n2: c2 goes", configTask("t5", "n2", pb.TaskState_TASK_STATE_ASSIGNED, "c2"), false, nil, []string{"c2"}},
		{"t6 is deleted: c3 goes", configTask("t6", "n1", pb.TaskState_TASK_STATE_ASSIGNED, "c3"), true, nil, []string{"c3"}},
		{"a task on n2 changes nothing here", configTask("t7", "n2", pb.TaskState_TASK_STATE_ASSIGNED, "c4"), false, nil, nil},
	}
	for _, s := range steps {
		tr.note(s.task, s.deleted)
		inc := tr.changes(pb.AssignmentsType_ASSIGNMENTS_TYPE_INCREMENTAL)
		updated, _ := valueIDs(inc)
		removed := slices.Sorted(slices.Values(inc.GetRemoved()))
		if s.updated == nil && s.removed == nil {
			if inc != nil {
				t.Errorf("%s: sent %v, want nothing", s.name, inc)
			}
			continue
		}
		if !slices.Equal(updated, s.updated) || !slices.Equal(removed, s.removed) {
			t.Errorf("%s: updated %v removed %v, want %v and %v", s.name, updated, removed, s.updated, s.removed)
		}
	}
}

// TestSplitValues: values over the budget go in incremental messages that
// follow; the first keeps the type (a complete set still clears what the
// worker held), the removals and everything else; nothing is lost or sent
// twice, and a value larger than the budget still goes, alone.
func TestSplitValues(t *testing.T) {
	val := func(id string, n int) *pb.SecretValue { return &pb.SecretValue{Id: id, Data: make([]byte, n)} }
	complete := pb.AssignmentsType_ASSIGNMENTS_TYPE_COMPLETE
	for _, c := range []struct {
		name    string
		secrets []*pb.SecretValue
		configs []*pb.SecretValue
		want    [][]string // IDs per message, secrets then configs
	}{
		{"fits", []*pb.SecretValue{val("s1", 3)}, []*pb.SecretValue{val("c1", 4)}, [][]string{{"s1", "c1"}}},
		{"configs overflow", []*pb.SecretValue{val("s1", 6)}, []*pb.SecretValue{val("c1", 4), val("c2", 10), val("c3", 1)}, [][]string{{"s1", "c1"}, {"c2"}, {"c3"}}},
		{"one too large", nil, []*pb.SecretValue{val("c1", 25), val("c2", 2)}, [][]string{{"c1"}, {"c2"}}},
		{"only configs, none", nil, nil, [][]string{{}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			msg := &pb.SessionMessage{SessionId: "s", Node: &pb.Node{Id: "n1"},
				Secrets: &pb.SecretAssignments{Type: complete, Updated: c.secrets, Removed: []string{"old"}},
				Configs: &pb.SecretAssignments{Type: complete, Updated: c.configs}}
			out := splitValues(msg, 10)
			if len(out) != len(c.want) || out[0] != msg || out[0].GetNode().GetId() != "n1" ||
				out[0].GetSecrets().GetType() != complete || out[0].GetConfigs().GetType() != complete || !slices.Equal(out[0].GetSecrets().GetRemoved(), []string{"old"}) {
				t.Fatalf("split into %d messages, first %v; want %d, the first keeping the node, types and removals", len(out), out[0], len(c.want))
			}
			for i, m := range out {
				var ids []string
				for _, sa := range []*pb.SecretAssignments{m.GetSecrets(), m.GetConfigs()} {
					if i > 0 && sa != nil && (sa.GetType() != pb.AssignmentsType_ASSIGNMENTS_TYPE_INCREMENTAL || len(sa.GetRemoved()) > 0) {
						t.Errorf("message %d: %v, want an incremental update without removals", i, sa)
					}
					for _, v := range sa.GetUpdated() {
						ids = append(ids, v.GetId())
					}
				}
				if i > 0 && (m.GetSessionId() != "s" || m.GetNode() != nil) {
					t.Errorf("message %d: %v, want the session ID and values only", i, m)
				}
				if !slices.Equal(ids, c.want[i]) && !(len(ids) == 0 && len(c.want[i]) == 0) {
					t.Errorf("message %d carries %v, want %v", i, ids, c.want[i])
				}
			}
		})
	}
}
