package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker/container"
	"github.com/shoal-cluster/shoal/worker/docker"
	"github.com/shoal-cluster/shoal/worker/process"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The runtimes from `service create`: one manager process and one worker
// process (`shoal init`, `shoal join`, as a user runs them), with
// shoal/hello:v1 in the worker's image store (`shoal image load`) and in
// the Docker Engine. For each runtime a service of svcReplicas replicas,
// placed on the worker, is created through the Control API; the time runs
// from the CreateService call until the managers' event stream has
// reported every replica RUNNING; services of one replica are measured
// the same way first. Each
// service is then removed and its tasks waited out before
// the next runtime's turn. Container tasks get their own network
// namespace and address on the worker's task bridge, as in production.
const (
	svcReplicas = 20
	svcWait     = 60 * time.Second
	svcSettle   = time.Second // after the previous service's tasks are gone
)

func svcRuns(quick bool) int {
	if quick {
		return 1
	}
	return 3
}

func runRuntimesService(ctx context.Context, e *env) (_ []series, err error) {
	const name = "runtimes-service"
	if _, err := container.Check(""); err != nil {
		e.notef("%s: this machine cannot run the container runtime (%v): skipped", name, err)
		return nil, nil
	}
	hello, tarball, err := helloArtifacts(ctx, e, name, filepath.Join(e.tmp, name+"-artifacts"))
	if err != nil || hello == "" {
		return nil, err
	}
	port, err := e.freePortWithWorker()
	if err != nil {
		return nil, err
	}
	c, err := e.newClusterN(ctx, name, 1, port, nil)
	if err != nil {
		return nil, err
	}
	defer e.closeClusters()
	w, err := c.startWorker(ctx, "w1", nil)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	if out, err := exec.CommandContext(ctx, e.bin, "image", "load", "--data-dir", w.dataDir, tarball).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("shoal image load into w1: %v: %s", err, out)
	}
	node, err := c.nodeByHostname(ctx, w.name)
	if err != nil {
		return nil, err
	}
	offered := map[string]bool{}
	for _, r := range node.GetDescription().GetRuntimes() {
		offered[r] = true
	}
	for _, no := range node.GetDescription().GetRuntimesNotOffered() {
		e.notef("%s: w1 does not offer the %s runtime (%s): its row is missing", name, no.GetName(), no.GetReason())
	}
	ctl := pb.NewControlClient(c.conn(c.members[0].api))

	var out []series
	for _, rc := range []struct {
		runtime string
		spec    *pb.ContainerSpec
	}{
		{container.Name, &pb.ContainerSpec{Image: "shoal/hello:v1"}},
		{docker.Name, &pb.ContainerSpec{Image: "shoal/hello:v1"}},
		{process.Name, &pb.ContainerSpec{Image: hello}},
	} {
		if !offered[rc.runtime] {
			continue
		}
		// One replica at a time first (the first warms the caches and is
		// not counted), then svcReplicas at once.
		var singles, batches []float64
		for i := range assignSamples(e.opts.quick) + 1 + svcRuns(e.opts.quick) {
			replicas, run := uint64(1), i
			if i > assignSamples(e.opts.quick) {
				replicas, run = svcReplicas, i-assignSamples(e.opts.quick)-1
			}
			spec := &pb.ServiceSpec{
				Annotations: &pb.Annotations{Name: fmt.Sprintf("bench-%s-%d-%d", rc.runtime, replicas, run+1)},
				Task: &pb.TaskSpec{
					Runtime:   rc.runtime,
					Container: rc.spec,
					Placement: &pb.Placement{Constraints: []string{"node.hostname==" + w.name}},
				},
				Mode:     &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: replicas}},
				Endpoint: &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80}}},
			}
			took, err := createUntilRunning(ctx, ctl, spec)
			if rerr := removeAndWait(ctx, ctl, spec.GetAnnotations().GetName(), w.name); err == nil {
				err = rerr
			}
			if err != nil {
				return nil, fmt.Errorf("%s runtime, %d replicas, run %d: %w", rc.runtime, replicas, run+1, err)
			}
			switch {
			case replicas == svcReplicas:
				batches = append(batches, ms(took))
				e.log.Info("service converged", "runtime", rc.runtime, "replicas", replicas, "took", took.Round(time.Millisecond))
			case i > 0:
				singles = append(singles, ms(took))
			}
			if replicas == svcReplicas || i == assignSamples(e.opts.quick) {
				if err := sleepCtx(ctx, svcSettle); err != nil {
					return nil, err
				}
			}
		}
		out = append(out,
			series{name: fmt.Sprintf("%s runtime: service create of 1 replica → RUNNING (shoal/hello)", rc.runtime), unit: "ms", samples: singles},
			series{name: fmt.Sprintf("%s runtime: service create of %d replicas on one worker → all RUNNING (shoal/hello)", rc.runtime, svcReplicas),
				unit: "ms", samples: batches})
	}
	return out, nil
}

// createUntilRunning creates the service and returns how long it took
// until the managers' event stream reported every replica RUNNING (a
// committed state, as ListTasks would show it). The stream carries each
// change as it commits, so the bench loads neither the manager nor the
// cores while it waits (polling ListTasks every 5 ms did both).
func createUntilRunning(ctx context.Context, ctl pb.ControlClient, spec *pb.ServiceSpec) (time.Duration, error) {
	want := int(spec.GetReplicated().GetReplicas())
	name := spec.GetAnnotations().GetName()
	ctx, cancel := context.WithTimeout(ctx, svcWait)
	defer cancel()
	begin := time.Now()
	// Since begin: the events of changes proposed after it, the ones
	// committed before the stream opened included.
	events, err := ctl.Events(ctx, &pb.EventsRequest{Types: []string{"task"}, Since: begin.UnixNano()})
	if err != nil {
		return 0, fmt.Errorf("watch task events: %w", err)
	}
	if _, err := ctl.CreateService(ctx, &pb.CreateServiceRequest{Spec: spec}); err != nil {
		return 0, fmt.Errorf("create service: %w", err)
	}
	running := map[string]bool{}
	for len(running) < want {
		ev, err := events.Recv()
		if err != nil {
			return 0, fmt.Errorf("waiting for %d replicas of %s running (%d are): %w", want, name, len(running), err)
		}
		attrs := ev.GetAttributes()
		if attrs["service"] != name {
			continue
		}
		switch attrs["state"] {
		case "running":
			running[ev.GetId()] = true
		case "complete", "shutdown", "failed", "rejected", "orphaned", "remove":
			return 0, fmt.Errorf("task %s ended: %s %s", ev.GetId(), attrs["state"], attrs["error"])
		}
	}
	return time.Since(begin), nil
}

// removeAndWait removes the service and waits until none of its tasks
// runs on node any more.
func removeAndWait(ctx context.Context, ctl pb.ControlClient, name, node string) error {
	if _, err := ctl.RemoveService(ctx, &pb.RemoveServiceRequest{Ref: name}); err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("remove service %s: %w", name, err)
	}
	return poll(ctx, svcWait, 50*time.Millisecond, "the tasks of "+name+" to stop", func(ctx context.Context) (bool, error) {
		resp, err := ctl.ListTasks(ctx, &pb.ListTasksRequest{NodeRef: node})
		if err != nil {
			return false, err
		}
		for _, t := range resp.GetTasks() {
			if t.GetServiceName() == name && t.GetStatus().GetState() <= pb.TaskState_TASK_STATE_RUNNING {
				return false, fmt.Errorf("task %s is %s", t.GetId(), t.GetStatus().GetState())
			}
		}
		return true, nil
	})
}
