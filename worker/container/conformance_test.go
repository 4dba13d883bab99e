package container

import (
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/runtimetest"
)

// TestConformance runs the runtime conformance suite against the container
// runtime: each behaviour on a state directory of its own, the "agent
// restarting" being a second Runtime on that directory, and the tasks
// containers of an image holding the conformance task program.
func TestConformance(t *testing.T) {
	requireRunc(t)
	imgs := testImages(t)
	runtimetest.Run(t, runtimetest.Factory{
		Fresh: func(t *testing.T) runtimetest.Opener {
			dir := newStateDir(t, imgs)
			return func(t *testing.T) worker.Runtime { return newRuntime(t, dir, imgs) }
		},
		Spec: func(_ *testing.T, p runtimetest.Program) *pb.ContainerSpec {
			return &pb.ContainerSpec{Image: "task:1", Args: p.Args()}
		},
		Missing: func(*testing.T) *pb.ContainerSpec {
			return &pb.ContainerSpec{Image: "shoal/No-Such-Image:v0"}
		},
	})
}
