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
// task being replaced has left every node's rotation before it stops.
func webSpec(hello string) *pb.ServiceSpec {
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
			Restart: &pb.RestartPolicy{Delay: int64(200 * time.Millisecond)},
		},
		Mode:   &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: webReplicas}},
		Update: &pb.UpdateConfig{Parallelism: 2, Monitor: int64(500 * time.Millisecond)},
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
		_, err = cl.CreateService(cctx, &pb.CreateServiceRequest{Spec: webSpec(s.hello)})
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
	err = waitFor(ctx, 90*time.Second, "the web service's replicas, healthy, and every node's published port", func(ctx context.Context) error {
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
	if err != nil {
		return fmt.Errorf("start the web service: %w", err)
	}
	fmt.Printf("== web: %d replicas healthy, port %d answering on every node, in %s\n", webReplicas, webPort, time.Since(start).Round(100*time.Millisecond))
	return nil
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(ip, strconv.Itoa(webPort))+"/", nil)
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
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}
