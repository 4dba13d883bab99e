package process

import (
	"os"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/runtimetest"
)

// conformanceTaskEnv makes the test binary the conformance task program.
const conformanceTaskEnv = "SHOAL_CONFORMANCE_TASK"

// TestConformance runs the runtime conformance suite against the process
// runtime: each behaviour on a state directory of its own, the "agent
// restarting" being a second Runtime on that directory, and the tasks this
// test binary itself (see TestMain).
func TestConformance(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	runtimetest.Run(t, runtimetest.Factory{
		Fresh: func(t *testing.T) runtimetest.Opener {
			dir := newStateDir(t)
			return func(t *testing.T) worker.Runtime { return newRuntime(t, dir) }
		},
		Spec: func(_ *testing.T, p runtimetest.Program) *pb.ContainerSpec {
			return &pb.ContainerSpec{
				Command: append([]string{exe}, p.Args()...),
				// A race-enabled binary sleeps a second at exit by default.
				Env: []string{conformanceTaskEnv + "=1", "SHOAL_TEST_MARKER=" + testMarker, "GORACE=atexit_sleep_ms=0"},
			}
		},
		Missing: func(*testing.T) *pb.ContainerSpec {
			return &pb.ContainerSpec{Command: []string{"/nonexistent/conformance-task"}}
		},
	})
}
