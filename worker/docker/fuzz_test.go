package docker

import (
	"net/netip"
	"regexp"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
	"google.golang.org/protobuf/proto"
)

// dockerName is what the Docker Engine accepts as a container name.
var dockerName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// FuzzBuildSpec feeds arbitrary task assignments (what a manager sends a
// worker) to the container spec builder: no panic, and a task it accepts
// gets a container name the Engine accepts.
func FuzzBuildSpec(f *testing.F) {
	for _, task := range []*pb.Task{
		{Id: "t1", ServiceName: "web", Slot: 2, Spec: &pb.TaskSpec{Runtime: "docker", Container: &pb.ContainerSpec{Image: "shoal/hello:v1",
			Env: []string{"A=1"}, Mounts: []*pb.Mount{{Type: pb.MountType_MOUNT_TYPE_BIND, Source: "/tmp", Target: "/data", ReadOnly: true}},
			Healthcheck: &pb.HealthCheck{HttpGet: "/healthz", Interval: 1e9}}},
			Endpoint: &pb.Endpoint{Ports: []*pb.PortConfig{{TargetPort: 80, PublishedPort: 8080}}}},
		{Id: "../x", ServiceName: "-a b", NodeId: "n1", Spec: &pb.TaskSpec{Container: &pb.ContainerSpec{Image: "img", Env: []string{"=x"},
			Mounts: []*pb.Mount{{Type: pb.MountType_MOUNT_TYPE_TMPFS, Target: "relative"}}}}},
		{},
	} {
		data, err := proto.Marshal(task)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	hostIP := netip.MustParseAddr("10.0.0.1")
	f.Fuzz(func(t *testing.T, data []byte) {
		var task pb.Task
		if err := proto.Unmarshal(data, &task); err != nil {
			return
		}
		if name := ContainerName(&task); !dockerName.MatchString(name) {
			t.Fatalf("task %q gets container name %q, which the Engine refuses", task.GetId(), name)
		}
		_, _ = buildSpec(&task, "node1", hostIP, worker.TaskFiles{})
		_, _ = buildSpec(&task, "node1", netip.Addr{}, worker.TaskFiles{})
	})
}
