package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/moby/moby/api/types/swarm"
)

// dockerAPIVersion is the version prefix the workload's Docker Engine API
// calls carry, as the docker CLI 28's do.
const dockerAPIVersion = "/v1.50"

// dockerClient makes Engine API calls on a manager's unix socket
// (DATA_DIR/docker.sock, reachable from the host whatever the node's
// network namespace): the path the docker CLI takes.
func dockerClient(m *node) *http.Client {
	sock := filepath.Join(m.dir, "docker.sock")
	return &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true, // a restarted node must not leave stale connections
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
}

// dockerSpec is w.spec in Docker's terms: the managers convert it to the
// same Shoal spec, so calls through either API change the same things.
func (w *workload) dockerSpec(name string, s svcState) swarm.ServiceSpec {
	replicas := s.Replicas
	delay := 200 * time.Millisecond
	return swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: name},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: w.hello, Args: []string{"-listen", "127.0.0.1:0"}, Env: []string{versionEnv + "=" + s.Version}},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny, Delay: &delay},
		},
		Mode:         swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &replicas}},
		UpdateConfig: &swarm.UpdateConfig{Parallelism: 2, Monitor: 500 * time.Millisecond},
	}
}

// dockerStateOf reads a service's state from Docker's form.
func dockerStateOf(svc swarm.Service) svcState {
	s := svcState{Exists: true}
	if r := svc.Spec.Mode.Replicated; r != nil && r.Replicas != nil {
		s.Replicas = *r.Replicas
	}
	if c := svc.Spec.TaskTemplate.ContainerSpec; c != nil {
		for _, kv := range c.Env {
			if v, ok := strings.CutPrefix(kv, versionEnv+"="); ok {
				s.Version = v
			}
		}
	}
	return s
}

// dockerDo performs one workload call through the Docker Engine API of m
// and maps the answer to the model's outcome. unexpected describes an
// answer the model does not expect (it is reported); a call that failed
// in transit or timed out is outUnknown with no such description.
func (w *workload) dockerDo(ctx context.Context, m *node, in opInput) (out opOutput, unexpected string) {
	c := dockerClient(m)
	call := func(method, path string, body any) (int, []byte, error) {
		var rd io.Reader
		if body != nil {
			b, err := json.Marshal(body)
			if err != nil {
				return 0, nil, err
			}
			rd = bytes.NewReader(b)
		}
		req, err := http.NewRequestWithContext(ctx, method, "http://docker"+dockerAPIVersion+path, rd)
		if err != nil {
			return 0, nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		return resp.StatusCode, data, err
	}
	out.Outcome = outUnknown
	describe := func(code int, data []byte) string {
		return fmt.Sprintf("docker API %s on %s: %d %s", opNames[in.Kind], m.name, code, strings.TrimSpace(string(data)))
	}
	// expected sorts an answer: OK, the not-found and exists refusals the
	// model knows, unknown (the manager could not say), or unexpected.
	expected := func(code int, data []byte, err error, ok int) string {
		switch {
		case err != nil || code == http.StatusServiceUnavailable || code == http.StatusInternalServerError:
		case code == ok:
			out.Outcome = outOK
		case code == http.StatusNotFound:
			out.Outcome = outNotFound
		case code == http.StatusConflict && in.Kind == opCreate && strings.Contains(string(data), "already exists"):
			out.Outcome = outExists
		case code == http.StatusConflict && (in.Kind == opScale || in.Kind == opUpdate):
			// A stale version=N: not applied, which unknown covers.
		default:
			return describe(code, data)
		}
		return ""
	}
	name := "/services/" + in.Name
	switch in.Kind {
	case opCreate:
		code, data, err := call(http.MethodPost, "/services/create", w.dockerSpec(in.Name, in.State))
		return out, expected(code, data, err, http.StatusCreated)
	case opRemove:
		code, data, err := call(http.MethodDelete, name, nil)
		return out, expected(code, data, err, http.StatusOK)
	case opInspect, opScale, opUpdate:
		code, data, err := call(http.MethodGet, name, nil)
		if u := expected(code, data, err, http.StatusOK); u != "" || out.Outcome != outOK {
			return out, u
		}
		var svc swarm.Service
		if err := json.Unmarshal(data, &svc); err != nil {
			out.Outcome = outUnknown
			return out, describe(code, data)
		}
		if in.Kind == opInspect {
			out.State = dockerStateOf(svc)
			return out, ""
		}
		// As the CLI: send the version read back with the new spec.
		out.Outcome = outUnknown
		code, data, err = call(http.MethodPost, fmt.Sprintf("%s/update?version=%d", name, svc.Version.Index), w.dockerSpec(in.Name, in.State))
		return out, expected(code, data, err, http.StatusOK)
	}
	return out, fmt.Sprintf("docker API: no call for %s", opNames[in.Kind])
}
