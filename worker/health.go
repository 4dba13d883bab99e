package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
)

// Health check defaults, for checks that leave them unset.
const (
	DefaultHealthInterval = 5 * time.Second
	DefaultHealthTimeout  = 3 * time.Second
	DefaultHealthRetries  = 3
)

// CommandProber is implemented by runtimes that run a health command
// inside the task (a container); other tasks' commands run on the node
// with the task's environment.
type CommandProber interface {
	ProbeCommand(ctx context.Context, taskID string, argv []string, timeout time.Duration) (exitCode int, output string, err error)
}

// HealthReporter is implemented by runtimes whose tasks may carry a health
// check of their own (a container image's HEALTHCHECK, run by the Engine).
// When a task's spec has no check and does not disable checks, the agent
// reports the runtime's view of its health instead of probing it. A task
// without a check of its own reports HEALTH_STATE_NONE.
type HealthReporter interface {
	Health(ctx context.Context, taskID string) (state pb.HealthState, output string, err error)
}

// reportedHealthInterval is how often the agent asks a HealthReporter.
const reportedHealthInterval = time.Second

// healthCheck returns a task's check, or nil when it has none.
func healthCheck(t *pb.Task) *pb.HealthCheck {
	hc := t.GetSpec().GetContainer().GetHealthcheck()
	if hc == nil || hc.GetDisable() || (len(hc.GetCommand()) == 0 && hc.GetHttpGet() == "" && hc.GetTcpSocket() == 0) {
		return nil
	}
	return hc
}

// healthReporter returns the runtime as a HealthReporter when it, not the
// agent, checks the task: the runtime reports health and the task's spec
// neither has a check nor disables checks.
func healthReporter(rt Runtime, t *pb.Task) (HealthReporter, bool) {
	hr, ok := rt.(HealthReporter)
	if !ok || healthCheck(t) != nil || t.GetSpec().GetContainer().GetHealthcheck().GetDisable() {
		return nil, false
	}
	return hr, true
}

// initialHealth is a task's health as it starts running, reported with
// RUNNING so that a checked task is never taken for an unchecked one
// (which would be up, and routed to, at once): STARTING when it has a
// check, the runtime's view when the runtime checks it (an image's
// HEALTHCHECK), NONE otherwise.
func initialHealth(ctx context.Context, rt Runtime, t *pb.Task) pb.HealthState {
	if healthCheck(t) != nil {
		return pb.HealthState_HEALTH_STATE_STARTING
	}
	if hr, ok := healthReporter(rt, t); ok {
		if state, _, err := hr.Health(ctx, t.GetId()); err == nil {
			return state
		}
	}
	return pb.HealthState_HEALTH_STATE_NONE
}

// healthEvent is a change in a task's health.
type healthEvent struct {
	state  pb.HealthState
	output string
}

// watchHealth probes a running task until ctx ends and reports each change
// of health: STARTING, then HEALTHY, or UNHEALTHY after `retries`
// consecutive failures (failures during the start period do not count).
func (a *Agent) watchHealth(ctx context.Context, rt Runtime, t *pb.Task, status *pb.TaskStatus, events chan<- healthEvent) {
	hc := healthCheck(t)
	interval := durationOr(hc.GetInterval(), DefaultHealthInterval)
	timeout := durationOr(hc.GetTimeout(), DefaultHealthTimeout)
	retries := int(hc.GetRetries())
	if retries <= 0 {
		retries = DefaultHealthRetries
	}
	startPeriod := time.Duration(hc.GetStartPeriod())
	started := time.Now()
	send := func(e healthEvent) bool {
		select {
		case events <- e:
			return true
		case <-ctx.Done():
			return false
		}
	}
	current := pb.HealthState_HEALTH_STATE_STARTING
	if status.GetHealth() == pb.HealthState_HEALTH_STATE_HEALTHY {
		// A task this agent found running after a restart was healthy:
		// it stays so, and routed to, until its checks say otherwise
		// (its first failure counts at once), rather than leaving the
		// mesh for a probe interval.
		current = pb.HealthState_HEALTH_STATE_HEALTHY
	}
	if !send(healthEvent{state: current}) {
		return
	}
	failures := 0
	// The first probe comes soon: a new task should not wait a whole
	// interval to be seen healthy.
	next := time.NewTimer(min(interval, 500*time.Millisecond))
	defer next.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-next.C:
		}
		out, err := a.probe(ctx, rt, t, status, hc, timeout)
		if ctx.Err() != nil {
			return
		}
		state := current
		if err == nil {
			failures = 0
			state = pb.HealthState_HEALTH_STATE_HEALTHY
		} else if time.Since(started) >= startPeriod || current == pb.HealthState_HEALTH_STATE_HEALTHY {
			failures++
			out = err.Error()
			if failures >= retries {
				state = pb.HealthState_HEALTH_STATE_UNHEALTHY
			}
		}
		if state != current {
			current = state
			if !send(healthEvent{state: state, output: out}) {
				return
			}
		}
		next.Reset(interval)
	}
}

// watchReportedHealth relays a HealthReporter's view of a running task:
// each change of state, until ctx ends or the task turns out to have no
// check of its own.
func watchReportedHealth(ctx context.Context, hr HealthReporter, taskID string, events chan<- healthEvent) {
	current := pb.HealthState_HEALTH_STATE_NONE
	next := time.NewTimer(200 * time.Millisecond)
	defer next.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-next.C:
		}
		state, out, err := hr.Health(ctx, taskID)
		if ctx.Err() != nil || errors.Is(err, ErrTaskNotFound) {
			return
		}
		if err == nil {
			if state == pb.HealthState_HEALTH_STATE_NONE {
				return // no check: nothing to report
			}
			if state != current {
				current = state
				select {
				case events <- healthEvent{state: state, output: out}:
				case <-ctx.Done():
					return
				}
			}
		}
		next.Reset(reportedHealthInterval)
	}
}

// probe runs one check.
func (a *Agent) probe(ctx context.Context, rt Runtime, t *pb.Task, status *pb.TaskStatus, hc *pb.HealthCheck, timeout time.Duration) (string, error) {
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case hc.GetHttpGet() != "":
		addr, err := probeAddr(status, 0)
		if err != nil {
			return "", err
		}
		path := hc.GetHttpGet()
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		req, err := http.NewRequestWithContext(pctx, http.MethodGet, "http://"+addr+path, nil)
		if err != nil {
			return "", fmt.Errorf("health check: %w", err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return "", fmt.Errorf("health check GET %s: %w", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return "", fmt.Errorf("health check GET %s: status %d", path, resp.StatusCode)
		}
		return resp.Status, nil
	case hc.GetTcpSocket() != 0:
		addr, err := probeAddr(status, hc.GetTcpSocket())
		if err != nil {
			return "", err
		}
		var d net.Dialer
		c, err := d.DialContext(pctx, "tcp", addr)
		if err != nil {
			return "", fmt.Errorf("health check TCP %s: %w", addr, err)
		}
		c.Close()
		return "connected", nil
	default:
		if p, ok := rt.(CommandProber); ok {
			code, out, err := p.ProbeCommand(pctx, t.GetId(), hc.GetCommand(), timeout)
			if err != nil {
				return out, err
			}
			if code != 0 {
				return out, fmt.Errorf("health command exited with %d: %s", code, strings.TrimSpace(out))
			}
			return out, nil
		}
		return runHealthCommand(pctx, t, status, hc.GetCommand())
	}
}

// probeAddr is where a task's port is reachable: the binding of target
// (or the first one when target is 0).
func probeAddr(status *pb.TaskStatus, target uint32) (string, error) {
	for _, b := range status.GetPorts() {
		if target == 0 || b.GetTargetPort() == target {
			ip := b.GetHostIp()
			if ip == "" || ip == "0.0.0.0" {
				ip = "127.0.0.1"
			}
			return net.JoinHostPort(ip, strconv.Itoa(int(b.GetHostPort()))), nil
		}
	}
	if target != 0 {
		return "", fmt.Errorf("health check: the task publishes no port %d", target)
	}
	return "", errors.New("health check: the task publishes no port to probe")
}

// runHealthCommand runs a health command on the node with the task's
// environment and its PORT.
func runHealthCommand(ctx context.Context, t *pb.Task, status *pb.TaskStatus, argv []string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin"}, t.GetSpec().GetContainer().GetEnv()...)
	for i, b := range status.GetPorts() {
		if i == 0 {
			cmd.Env = append(cmd.Env, fmt.Sprintf("PORT=%d", b.GetHostPort()))
		}
		cmd.Env = append(cmd.Env, fmt.Sprintf("PORT_%d=%d", b.GetTargetPort(), b.GetHostPort()))
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	text := strings.TrimSpace(out.String())
	if len(text) > 512 {
		text = text[:512]
	}
	if err != nil {
		return text, fmt.Errorf("health command %q failed: %v: %s", strings.Join(argv, " "), err, text)
	}
	return text, nil
}

func durationOr(ns int64, def time.Duration) time.Duration {
	if ns <= 0 {
		return def
	}
	return time.Duration(ns)
}
