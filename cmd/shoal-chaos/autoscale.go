package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Each round also runs an autoscaled service under load across its
// fault: hello with a small CPU reservation, published on its own port,
// and a client asking every node for /work (CPU burnt per request) through
// the round, so the autoscaler scales it up while nodes fail. Invariant
// (h): its replica count, in the spec and among its running tasks, never
// leaves the bounds, sampled every half second by every reachable
// manager's answer.
const (
	autoMin, autoMax = 1, 4
	autoPort         = 8081
	autoReserve      = 50_000_000 // 0.05 CPU per task
	autoTarget       = 50         // percent of the reservation
	autoWorkMS       = "10"       // CPU per request
	autoLoadEvery    = 40 * time.Millisecond
)

// roundAuto is one round's autoscaled service, its load and its samples.
type roundAuto struct {
	name   string
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	samples  int
	maxSpec  uint64
	maxTasks int
	problems []string
}

// autoSpec is hello autoscaled on CPU between autoMin and autoMax.
func autoSpec(name, hello string) *pb.ServiceSpec {
	return &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: name},
		Task: &pb.TaskSpec{
			Runtime:   "process",
			Container: &pb.ContainerSpec{Image: hello, Env: []string{versionEnv + "=auto"}, StopGracePeriod: int64(time.Second)},
			Resources: &pb.ResourceRequirements{Reservations: &pb.Resources{NanoCpus: autoReserve}},
			Restart:   &pb.RestartPolicy{Delay: int64(200 * time.Millisecond)},
		},
		Mode: &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: autoMin}},
		Endpoint: &pb.EndpointSpec{Ports: []*pb.PortConfig{{
			TargetPort: webTarget, PublishedPort: autoPort, PublishMode: pb.PublishMode_PUBLISH_MODE_INGRESS,
		}}},
		Autoscale: &pb.AutoscaleSpec{TargetCpuPercent: autoTarget, MinReplicas: autoMin, MaxReplicas: autoMax,
			SyncPeriod: int64(time.Second), DownscaleWindow: int64(5 * time.Second)},
	}
}

// startAuto creates the round's autoscaled service and starts its load
// and its sampler.
func (s *suite) startAuto(ctx context.Context, round int) (*roundAuto, error) {
	a := &roundAuto{name: fmt.Sprintf("auto-r%d", round+1)}
	err := waitFor(ctx, 30*time.Second, "creating "+a.name, func(ctx context.Context) error {
		return s.anyManager(ctx, func(ctx context.Context, cl pb.ControlClient) error {
			_, err := cl.CreateService(ctx, &pb.CreateServiceRequest{Spec: autoSpec(a.name, s.hello)})
			if status.Code(err) == codes.AlreadyExists {
				return nil
			}
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", a.name, err)
	}
	actx, cancel := context.WithCancel(ctx)
	a.cancel = cancel
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	nodes := s.c.nodes()
	a.wg.Go(func() {
		tick := time.NewTicker(autoLoadEvery)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-actx.Done():
				return
			case <-tick.C:
			}
			n := nodes[i%len(nodes)]
			a.wg.Go(func() {
				u := "http://" + net.JoinHostPort(n.ip, strconv.Itoa(autoPort)) + "/work?ms=" + autoWorkMS
				req, err := http.NewRequestWithContext(actx, http.MethodGet, u, nil)
				if err != nil {
					return
				}
				if resp, err := client.Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		}
	})
	a.wg.Go(func() {
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-actx.Done():
				return
			case <-tick.C:
			}
			s.sampleAuto(actx, a)
		}
	})
	return a, nil
}

// sampleAuto reads the service and its tasks once and checks the bounds.
func (s *suite) sampleAuto(ctx context.Context, a *roundAuto) {
	var (
		replicas uint64
		running  int
	)
	err := s.anyManager(ctx, func(ctx context.Context, cl pb.ControlClient) error {
		svc, err := cl.GetService(ctx, &pb.GetServiceRequest{Ref: a.name})
		if err != nil {
			return err
		}
		tasks, err := cl.ListTasks(ctx, &pb.ListTasksRequest{ServiceRef: a.name})
		if err != nil {
			return err
		}
		replicas = svc.GetService().GetSpec().GetReplicated().GetReplicas()
		running = 0
		for _, t := range tasks.GetTasks() {
			if t.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING && t.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING {
				running++
			}
		}
		return nil
	})
	if err != nil {
		return // no manager answered in time: the fault's doing, not a sample
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.samples++
	a.maxSpec = max(a.maxSpec, replicas)
	a.maxTasks = max(a.maxTasks, running)
	if replicas < autoMin || replicas > autoMax {
		a.problems = append(a.problems, fmt.Sprintf("%s has %d replicas, outside %d..%d", a.name, replicas, autoMin, autoMax))
	}
	if running > autoMax {
		a.problems = append(a.problems, fmt.Sprintf("%s runs %d tasks, over its maximum %d", a.name, running, autoMax))
	}
}

// finishAuto stops the load and the sampler, removes the service and
// returns invariant (h)'s problems (at most a few lines).
func (s *suite) finishAuto(ctx context.Context, a *roundAuto) []string {
	if a == nil {
		return nil
	}
	a.cancel()
	a.wg.Wait()
	var problems []string
	a.mu.Lock()
	problems = append(problems, a.problems...)
	samples, maxSpec, maxTasks := a.samples, a.maxSpec, a.maxTasks
	a.mu.Unlock()
	if len(problems) > 3 {
		problems = append(problems[:3], fmt.Sprintf("and %d more", len(problems)-3))
	}
	if err := s.removeService(ctx, a.name); err != nil {
		problems = append(problems, err.Error())
	}
	fmt.Printf("   autoscaled %s: %d samples, at most %d replicas and %d running (bounds %d..%d)\n", a.name, samples, maxSpec, maxTasks, autoMin, autoMax)
	return problems
}
