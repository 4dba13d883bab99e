package tests

import (
	"strings"
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// TestServiceRuntimeFollowsImage drives the control API with specs that
// name no runtime: each gets the one its image asks for, stored
// explicitly; a runtime no worker offers is refused with who offers what
// once workers exist (not before), at create and at an update that changes
// the runtime, not at one that keeps it.
func TestServiceRuntimeFollowsImage(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	ctx, cancel := c.ctx()
	defer cancel()
	cl := c.control(c.leader())
	spec := func(name, image, runtime string) *pb.ServiceSpec {
		return &pb.ServiceSpec{
			Annotations: &pb.Annotations{Name: name},
			Task:        &pb.TaskSpec{Runtime: runtime, Container: &pb.ContainerSpec{Image: image}},
			Mode:        &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{}},
		}
	}
	create := func(s *pb.ServiceSpec) (*pb.Service, error) {
		resp, err := cl.CreateService(ctx, &pb.CreateServiceRequest{Spec: s})
		return resp.GetService(), err
	}

	// No worker yet: the service waits for one, whatever its runtime.
	early, err := create(spec("early", "nginx", ""))
	if err != nil || early.GetSpec().GetTask().GetRuntime() != "docker" {
		t.Fatalf("create nginx with no worker: runtime %q, %v; want docker", early.GetSpec().GetTask().GetRuntime(), err)
	}

	c.addWorkers(2) // the harness's workers offer the process runtime only
	c.eventually(20*time.Second, "two workers with their runtimes", func() (bool, string) {
		resp, err := cl.ListNodes(ctx, &pb.ListNodesRequest{})
		n := 0
		for _, node := range resp.GetNodes() {
			if len(node.GetDescription().GetRuntimes()) > 0 {
				n++
			}
		}
		return err == nil && n == 2, "workers not registered yet"
	})
	if _, err := create(spec("x", "/bin/sleep", "")); err != nil {
		t.Fatalf("create /bin/sleep: %v", err)
	}
	_, err = create(spec("rel", "./relative", "")) // a relative path, not an image no registry has
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "absolute path") {
		t.Errorf("create ./relative: %v; want the process runtime's absolute path error", err)
	}
	want := "no node offers the docker runtime (w1, w2 offer process; start the Docker Engine on a worker or use --runtime process with an absolute path)"
	for _, image := range []string{"shoal/hello:v1", "nginx"} {
		_, err := create(spec("img", image, ""))
		if status.Code(err) != codes.FailedPrecondition || status.Convert(err).Message() != want {
			t.Errorf("create %s: %v; want FailedPrecondition %q", image, err, want)
		}
	}
	got, err := cl.GetService(ctx, &pb.GetServiceRequest{Ref: "x"})
	if err != nil || got.GetService().GetSpec().GetTask().GetRuntime() != "process" {
		t.Fatalf("service x (/bin/sleep): runtime %q, %v; want process stored", got.GetService().GetSpec().GetTask().GetRuntime(), err)
	}

	// An update that moves x to a runtime no worker offers is refused; one
	// that keeps early's is not.
	to := proto.Clone(got.GetService().GetSpec()).(*pb.ServiceSpec)
	to.Task.Runtime, to.Task.Container.Image = "docker", "nginx"
	if _, err := cl.UpdateService(ctx, &pb.UpdateServiceRequest{Ref: "x", Spec: to}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("update x to the docker runtime: %v; want FailedPrecondition", err)
	}
	scaled := proto.Clone(early.GetSpec()).(*pb.ServiceSpec)
	scaled.GetReplicated().Replicas = 0
	scaled.Task.Container.Image = "nginx:2"
	if _, err := cl.UpdateService(ctx, &pb.UpdateServiceRequest{Ref: "early", Spec: scaled}); err != nil {
		t.Errorf("update early, keeping its runtime: %v", err)
	}
}
