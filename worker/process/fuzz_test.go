package process

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
	"google.golang.org/protobuf/proto"
)

// FuzzPrepareTask feeds arbitrary task assignments (what a manager sends a
// worker) to Prepare: no panic, and whatever the task's ID, paths, user or
// environment, nothing is written outside the runtime's own directory.
func FuzzPrepareTask(f *testing.F) {
	base := f.TempDir()
	cfg := testConfig(f, filepath.Join(base, "rt"))
	cfg.Logger = slog.New(slog.DiscardHandler)
	r, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	escape := shTask("true")
	escape.Id = "../escape"
	user := shTask("true")
	user.Spec.Container.User = "nosuchuser"
	user.Spec.Container.Dir = "/nonexistent"
	ports := shTask("true", "A=1", "=bad")
	ports.Endpoint = &pb.Endpoint{Ports: []*pb.PortConfig{{TargetPort: 80}, {TargetPort: 53, Protocol: pb.PortProtocol_PORT_PROTOCOL_UDP}}}
	for _, task := range []*pb.Task{shTask("echo hi", "B=2"), escape, user, ports, {Id: "t"}} {
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
		ctx := context.Background()
		if err := r.Prepare(ctx, &task, worker.TaskFiles{}); err == nil {
			if err := r.Remove(ctx, task.GetId()); err != nil {
				t.Fatalf("remove a prepared task: %v", err)
			}
		}
		entries, err := os.ReadDir(base)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Name() != "rt" {
				t.Fatalf("preparing task %q wrote %s outside the runtime's directory", task.GetId(), e.Name())
			}
		}
	})
}
