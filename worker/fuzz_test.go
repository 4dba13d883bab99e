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
// to the writing and removal of a task's secret and config files: whatever
// the task ID and the references' targets, nothing outside the secrets and
// configs roots is written or removed.
func FuzzSecretFiles(f *testing.F) {
	for _, task := range []*pb.Task{
		{Id: "t1", Spec: &pb.TaskSpec{Container: &pb.ContainerSpec{Secrets: []*pb.SecretReference{{SecretId: "s1", SecretName: "db", Target: "db", Mode: 0o440}}}}},
		{Id: "../outside", Spec: &pb.TaskSpec{Container: &pb.ContainerSpec{Secrets: []*pb.SecretReference{{SecretId: "s1", Target: "x"}}}}},
		{Id: "t2", Spec: &pb.TaskSpec{Container: &pb.ContainerSpec{Secrets: []*pb.SecretReference{{SecretId: "s1", Target: "../../etc/passwd"}}}}},
		{Id: "..", Spec: &pb.TaskSpec{Container: &pb.ContainerSpec{Secrets: []*pb.SecretReference{{SecretId: "s1", Target: "a"}, {SecretId: "s2", Target: "a"}}}}},
		{Id: "t3", Spec: &pb.TaskSpec{Container: &pb.ContainerSpec{Configs: []*pb.ConfigReference{{ConfigId: "c1", Target: "/etc/app.conf"}, {ConfigId: "c2", Target: "/../../x"}}}}},
		{Id: "t4", Spec: &pb.TaskSpec{Container: &pb.ContainerSpec{Configs: []*pb.ConfigReference{{ConfigId: "c1", Target: "/a"}, {ConfigId: "c2", Target: "/a/b"}, {ConfigId: "c3", Target: "relative"}}}}},
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
		values := map[string][]byte{}
		for _, r := range task.GetSpec().GetContainer().GetSecrets() {
			values[r.GetSecretId()] = []byte("value")
		}
		for _, r := range task.GetSpec().GetContainer().GetConfigs() {
			values[r.GetConfigId()] = []byte("value")
		}
		for _, s := range []*taskFiles{newSecretFiles(filepath.Join(base, "secrets")), newConfigFiles(filepath.Join(base, "configs"))} {
			_, _, _ = s.write(&task, values)
			_ = s.remove(task.GetId())
		}
		entries, err := os.ReadDir(base)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		extra := slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == "canary" || n == "secrets" || n == "configs" })
		if !slices.Contains(names, "canary") || len(extra) > 0 {
			t.Fatalf("task %q with targets %v touched the roots' parent: %v", task.GetId(), targets(&task), names)
		}
	})
}

func targets(t *pb.Task) []string {
	var out []string
	for _, r := range t.GetSpec().GetContainer().GetSecrets() {
		out = append(out, r.GetTarget())
	}
	for _, r := range t.GetSpec().GetContainer().GetConfigs() {
		out = append(out, r.GetTarget())
	}
	return out
}
