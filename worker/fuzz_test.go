package worker

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// FuzzSecretFiles feeds arbitrary task assignments (what a manager sends)
// to the writing and removal of a task's secret files: whatever the task
// ID and the references' targets, nothing outside the secrets root is
// written or removed.
func FuzzSecretFiles(f *testing.F) {
	for _, task := range []*pb.Task{
		{Id: "t1", Spec: &pb.TaskSpec{Container: &pb.ContainerSpec{Secrets: []*pb.SecretReference{{SecretId: "s1", SecretName: "db", Target: "db", Mode: 0o440}}}}},
		{Id: "../outside", Spec: &pb.TaskSpec{Container: &pb.ContainerSpec{Secrets: []*pb.SecretReference{{SecretId: "s1", Target: "x"}}}}},
		{Id: "t2", Spec: &pb.TaskSpec{Container: &pb.ContainerSpec{Secrets: []*pb.SecretReference{{SecretId: "s1", Target: "../../etc/passwd"}}}}},
		{Id: "..", Spec: &pb.TaskSpec{Container: &pb.ContainerSpec{Secrets: []*pb.SecretReference{{SecretId: "s1", Target: "a"}, {SecretId: "s2", Target: "a"}}}}},
	} {
		data, err := proto.Marshal(task)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var task pb.Task
		if err := proto.Unmarshal(data, &task); err != nil {
			return
		}
		base := t.TempDir()
		canary := filepath.Join(base, "canary")
		if err := os.WriteFile(canary, []byte("keep"), 0o600); err != nil {
			t.Fatal(err)
		}
		s := &secretFiles{root: filepath.Join(base, "secrets")}
		values := map[string][]byte{}
		for _, r := range task.GetSpec().GetContainer().GetSecrets() {
			values[r.GetSecretId()] = []byte("value")
		}
		_, _, _ = s.write(&task, values)
		_ = s.remove(task.GetId())
		entries, err := os.ReadDir(base)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if !slices.Contains(names, "canary") || len(names) > 2 || (len(names) == 2 && !slices.Contains(names, "secrets")) {
			t.Fatalf("task %q with targets %v touched the secrets root's parent: %v", task.GetId(), targets(&task), names)
		}
	})
}

func targets(t *pb.Task) []string {
	var out []string
	for _, r := range t.GetSpec().GetContainer().GetSecrets() {
		out = append(out, r.GetTarget())
	}
	return out
}
