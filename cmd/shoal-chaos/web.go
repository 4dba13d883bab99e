package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The steady published service the data-plane check sends its requests
// to: it is created once the cluster forms, no client changes it, and
// every node answers on its published port through the routing mesh.
const (
	webName     = "web"
	webReplicas = 6
	webVersion  = "web" // its HELLO_VERSION, apart from the workload's v1..v9
	webPort     = 8080  // published on every node (ingress)
	webTarget   = 80    // the task's port; under the process runtime hello listens on $PORT
)

// webState is the web service as the convergence checks expect it.
var webState = svcState{Exists: true, Replicas: webReplicas, Version: webVersion}

// webSpec is `shoal service create --name web --replicas 6 --publish
// 8080:80 --health-http /healthz ... hello` under the process runtime.
// Its tasks drain for a second after SIGTERM, as a web app does, so that a
// task being replaced has left every node's rotation before it stops;
// force changes to restart every task (rebalanceWeb): one at a time, the
// old one stopped first, so that the scheduler, which places a task on the
// node with the fewest of its service, evens out the spread.
func webSpec(hello string, force uint64) *pb.ServiceSpec {
	return &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: webName},
		Task: &pb.TaskSpec{
			Runtime: "process",
			Container: &pb.ContainerSpec{
				Image:           hello,
				Env:             []string{versionEnv + "=" + webVersion, "HELLO_DRAIN=1s"},
				StopGracePeriod: int64(5 * time.Second),
				Healthcheck:     &pb.HealthCheck{HttpGet: "/healthz", Interval: int64(500 * time.Millisecond), Retries: 2},
			},
			Restart:     &pb.RestartPolicy{Delay: int64(200 * time.Millisecond)},
			ForceUpdate: force,
		},
		Mode:   &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: webReplicas}},
		Update: &pb.UpdateConfig{Parallelism: 1, Monitor: int64(500 * time.Millisecond), Order: pb.UpdateOrder_UPDATE_ORDER_STOP_FIRST},
		Endpoint: &pb.EndpointSpec{Ports: []*pb.PortConfig{{
			TargetPort: webTarget, PublishedPort: webPort, PublishMode: pb.PublishMode_PUBLISH_MODE_INGRESS,
		}}},
	}
}

// withWeb is the services a convergence check expects: the workload's
// and the web service (as it is now).
func (s *suite) withWeb(states map[string]svcState) map[string]svcState {
	out := make(map[string]svcState, len(states)+1)
	for k, v := range states {
		out[k] = v
	}
	out[webName] = s.web
	return out
}

// startWeb creates the web service and waits until its replicas run
// healthy and every node answers on its published port.
func (s *suite) startWeb(ctx context.Context) error {
	err := waitFor(ctx, 30*time.Second, "creating the web service", func(ctx context.Context) error {
		cl, err := s.c.control(s.c.managers[0])
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		_, err = cl.CreateService(cctx, &pb.CreateServiceRequest{Spec: webSpec(s.hello, 0)})
		if status.Code(err) == codes.AlreadyExists {
			return nil // an earlier attempt timed out after it committed
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("create the web service: %w", err)
	}
	s.web = webState
	start := time.Now()
	if err := s.waitWeb(ctx); err != nil {
		return fmt.Errorf("start the web service: %w", err)
	}
	fmt.Printf("== web: %d replicas healthy, port %d answering on every node, in %s\n", webReplicas, webPort, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// waitWeb waits until the web service's replicas run healthy and every
// node answers on its published port.
func (s *suite) waitWeb(ctx context.Context) error {
	return waitFor(ctx, 90*time.Second, "the web service's replicas, healthy, and every node's published port", func(ctx context.Context) error {
		tasks, err := s.webTasks(ctx)
		if err != nil {
			return err
		}
		healthy := 0
		for _, t := range tasks {
			if t.healthy {
				healthy++
			}
		}
		if len(tasks) != webReplicas || healthy != webReplicas {
			return fmt.Errorf("%d web tasks running, %d healthy, want %d", len(tasks), healthy, webReplicas)
		}
		client := probeClient(2 * time.Second)
		for _, n := range s.c.nodes() {
			if err := askWeb(ctx, client, n.ip); err != nil {
				return fmt.Errorf("node %s: %w", n.name, err)
			}
		}
		return nil
	})
}

// webSpread is how many web tasks each worker runs.
func (s *suite) webSpread(tasks map[string]webTask) map[string]int {
	per := map[string]int{}
	for _, w := range s.c.workers {
		per[w.name] = 0
	}
	for _, t := range tasks {
		per[t.node]++
	}
	return per
}

// balanced reports whether no worker runs more than one web task more
// than another.
func balanced(per map[string]int) bool {
	lo, hi := -1, 0
	for _, n := range per {
		if lo < 0 || n < lo {
			lo = n
		}
		hi = max(hi, n)
	}
	return hi-lo <= 1
}

// rebalanceWeb spreads the web tasks over the workers again when an
// earlier round left them bunched (tasks replaced onto the workers that
// stayed up are not moved back), so that each round starts from the same
// placement: a rolling restart (see webSpec). It tries a few times.
func (s *suite) rebalanceWeb(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		tasks, err := s.webTasks(ctx)
		if err != nil {
			return fmt.Errorf("rebalance the web service: %w", err)
		}
		per := s.webSpread(tasks)
		if balanced(per) {
			return nil
		}
		if attempt > 3 {
			fmt.Printf("== web: still unbalanced (%s) after %d rolling restarts; going on\n", perNode(per), attempt-1)
			return nil
		}
		start := time.Now()
		s.webForce++
		err = waitFor(ctx, 30*time.Second, "a rolling restart of the web service", func(ctx context.Context) error {
			cl, err := s.c.control(s.c.managers[attempt%len(s.c.managers)])
			if err != nil {
				return err
			}
			cctx, cancel := context.WithTimeout(ctx, opTimeout)
			defer cancel()
			_, err = cl.UpdateService(cctx, &pb.UpdateServiceRequest{Ref: webName, Spec: webSpec(s.hello, s.webForce)})
			return err
		})
		if err != nil {
			return fmt.Errorf("rebalance the web service: %w", err)
		}
		if err := waitFor(ctx, 90*time.Second, "the web service's rolling restart", func(ctx context.Context) error {
			cl, err := s.c.control(s.c.managers[attempt%len(s.c.managers)])
			if err != nil {
				return err
			}
			resp, err := cl.ListTasks(ctx, &pb.ListTasksRequest{ServiceRef: webName, RunningOnly: true})
			if err != nil {
				return err
			}
			current := 0
			for _, t := range resp.GetTasks() {
				if t.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING && t.GetSpec().GetForceUpdate() == s.webForce {
					current++
				}
			}
			if current != webReplicas || len(resp.GetTasks()) != webReplicas {
				return fmt.Errorf("%d of %d tasks restarted, %d tasks listed", current, webReplicas, len(resp.GetTasks()))
			}
			return nil
		}); err != nil {
			return fmt.Errorf("rebalance the web service: %w", err)
		}
		if err := s.waitWeb(ctx); err != nil {
			return fmt.Errorf("rebalance the web service: %w", err)
		}
		after, err := s.webTasks(ctx)
		if err != nil {
			return fmt.Errorf("rebalance the web service: %w", err)
		}
		fmt.Printf("== web: rebalanced from %s to %s in %s\n", perNode(per), perNode(s.webSpread(after)), time.Since(start).Round(100*time.Millisecond))
	}
}

// removeWeb removes the web service (teardown).
func (s *suite) removeWeb(ctx context.Context) error {
	err := waitFor(ctx, 30*time.Second, "removing "+webName, func(ctx context.Context) error {
		cl, err := s.c.control(s.c.managers[0])
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		_, err = cl.RemoveService(cctx, &pb.RemoveServiceRequest{Ref: webName})
		if err != nil && !strings.Contains(err.Error(), "no service") {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove the web service: %w", err)
	}
	s.web = svcState{}
	return nil
}

// webTask is a running task of the web service.
type webTask struct {
	node    string // hostname
	healthy bool
}

// webTasks lists the web service's running tasks by ID, asking the
// managers in turn.
func (s *suite) webTasks(ctx context.Context) (map[string]webTask, error) {
	var last error
	for _, m := range s.c.managers {
		if !m.alive() {
			continue
		}
		cl, err := s.c.control(m)
		if err != nil {
			return nil, err
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := cl.ListTasks(cctx, &pb.ListTasksRequest{ServiceRef: webName, RunningOnly: true})
		cancel()
		if err != nil {
			last = fmt.Errorf("list the web tasks on %s: %w", m.name, err)
			continue
		}
		names, err := s.nodeNames(ctx)
		if err != nil {
			return nil, err
		}
		out := map[string]webTask{}
		for _, t := range resp.GetTasks() {
			if t.GetStatus().GetState() != pb.TaskState_TASK_STATE_RUNNING {
				continue
			}
			node := names[t.GetNodeId()]
			if node == "" {
				node = t.GetNodeId()
			}
			out[t.GetId()] = webTask{node: node, healthy: t.GetStatus().GetHealth() == pb.HealthState_HEALTH_STATE_HEALTHY}
		}
		return out, nil
	}
	if last == nil {
		last = errors.New("no manager is running")
	}
	return nil, last
}

// nodeNames maps node IDs to hostnames (read once: IDs survive restarts).
func (s *suite) nodeNames(ctx context.Context) (map[string]string, error) {
	if len(s.names) == len(s.c.nodes()) {
		return s.names, nil
	}
	nodes, err := s.c.listNodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("list the nodes: %w", err)
	}
	s.names = map[string]string{}
	s.specs = map[string]*pb.Node{}
	for _, n := range nodes {
		s.names[n.GetId()] = n.GetDescription().GetHostname()
		s.specs[n.GetDescription().GetHostname()] = n
	}
	return s.names, nil
}

// probeClient is an HTTP client that opens a new connection for every
// request, so that each one goes through the routing mesh's choice of a
// backend afresh.
func probeClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext:       (&net.Dialer{Timeout: timeout}).DialContext,
		},
	}
}

// askWeb sends one request to a node's published web port and reads the
// whole answer.
func askWeb(ctx context.Context, client *http.Client, ip string) error {
	return askURL(ctx, client, "http://"+net.JoinHostPort(ip, strconv.Itoa(webPort))+"/")
}

func askURL(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return fmt.Errorf("read the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return statusError(resp.StatusCode)
	}
	return nil
}

// failureKind names what went wrong with a request, for the report: a
// timeout (nothing answered within probeTimeout), a refused or reset
// connection, a connection closed without an answer (the mesh had no
// backend that answered), or an HTTP status.
func failureKind(err error) string {
	var ne net.Error
	var se statusError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &se):
		return "status " + strconv.Itoa(int(se))
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		strings.Contains(err.Error(), "server closed idle connection"): // closed before any answer
		return "closed"
	}
	return "other"
}

// statusError is an answer other than 200 OK.
type statusError int

func (e statusError) Error() string {
	return fmt.Sprintf("status %d %s", int(e), http.StatusText(int(e)))
}
