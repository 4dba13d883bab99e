// Package docker is Shoal's container runtime: it runs each task as one
// Docker container through the local Docker Engine's API, as Swarm's
// workers do.
//
// A task maps to one container named <service>.<slot>.<task-id> (see
// ContainerName) and labelled with the task, service and node IDs (see
// LabelTaskID and the others). Every step finds the task's container by
// those labels, so all of them are idempotent and a restarted agent finds
// the containers an earlier one started. Containers run with restart
// policy "no": Shoal replaces failed tasks itself.
//
// An image missing on the node is pulled from its registry while the task
// is preparing, its progress in the task's status message; a failed pull
// fails the task with the registry's reason, and the restart policy
// decides what next. Images built on the node or loaded there (`shoal
// image load FILE`, `docker load`) are used as they are.
package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
)

// Name is the runtime's name as tasks ask for it.
const Name = "docker"

var (
	_ worker.Runtime        = (*Runtime)(nil)
	_ worker.CommandProber  = (*Runtime)(nil)
	_ worker.HealthReporter = (*Runtime)(nil)
)

// DefaultPingInterval is how often the runtime checks that the Engine
// still answers.
const DefaultPingInterval = 5 * time.Second

// pingTimeout bounds one ping of the Engine.
const pingTimeout = 3 * time.Second

// Config configures a docker runtime.
type Config struct {
	// NodeID is this node's ID: it labels the containers and scopes List
	// to this node's. Required.
	NodeID string
	// NodeName names the node in messages (default NodeID).
	NodeName string
	// AdvertiseIP is the node's address: published ports are bound on it
	// (a host port the Engine picks). Empty means all addresses.
	AdvertiseIP string
	// Host is the Engine's address, e.g. unix:///var/run/docker.sock
	// (default: $DOCKER_HOST, else the platform's default socket).
	Host string
	// PingInterval is how often Available is refreshed (default
	// DefaultPingInterval; negative: never).
	PingInterval time.Duration
	// DNS are the resolvers containers use (the node's container
	// resolver, so tasks find services by name).
	DNS []string
	// Logger receives the runtime's logs (default slog.Default()).
	Logger *slog.Logger
}

// dnsServers are the container resolvers as addresses.
func (r *Runtime) dnsServers() []netip.Addr {
	var out []netip.Addr
	for _, s := range r.dns {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// Runtime is the docker runtime. It is safe for concurrent use.
type Runtime struct {
	cli      *client.Client
	nodeID   string
	nodeName string
	hostIP   netip.Addr
	dns      []string
	log      *slog.Logger

	available atomic.Bool
	ctx       context.Context // ends with Close
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	ids     map[string]string  // task ID → container ID
	waiters map[string]*waiter // container ID → wait registered before start
}

// waiter is a wait on a container registered before it started.
type waiter struct {
	done   chan struct{}
	cancel context.CancelFunc
	resp   container.WaitResponse
	err    error
}

// NewClient connects to the Docker Engine at host (default $DOCKER_HOST or
// the platform's socket, with TLS from $DOCKER_CERT_PATH). The API version
// is negotiated with the Engine on first use; it is never pinned.
func NewClient(host string) (*client.Client, error) {
	opts := []client.Opt{client.WithTLSClientConfigFromEnv(), client.WithHostFromEnv()}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	cli, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	return cli, nil
}

// Ping checks that the Engine answers, negotiating the API version.
func Ping(ctx context.Context, cli *client.Client) error {
	ctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	if _, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		return fmt.Errorf("the Docker Engine at %s does not answer: %w", cli.DaemonHost(), err)
	}
	return nil
}

// New connects to the Engine and returns the runtime, or an error when the
// Engine does not answer (the node then does not offer this runtime).
func New(ctx context.Context, cfg Config) (*Runtime, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("docker runtime: the node ID is required")
	}
	var hostIP netip.Addr
	if cfg.AdvertiseIP != "" {
		ip, err := netip.ParseAddr(cfg.AdvertiseIP)
		if err != nil {
			return nil, fmt.Errorf("docker runtime: invalid advertise IP %q", cfg.AdvertiseIP)
		}
		hostIP = ip
	}
	cli, err := NewClient(cfg.Host)
	if err != nil {
		return nil, err
	}
	if err := Ping(ctx, cli); err != nil {
		cli.Close()
		return nil, err
	}
	r := &Runtime{
		cli:      cli,
		nodeID:   cfg.NodeID,
		nodeName: cfg.NodeName,
		hostIP:   hostIP,
		dns:      append([]string(nil), cfg.DNS...),
		log:      cfg.Logger,
		ids:      map[string]string{},
		waiters:  map[string]*waiter{},
	}
	if r.nodeName == "" {
		r.nodeName = r.nodeID
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	r.log = r.log.With("runtime", Name)
	r.available.Store(true)
	r.ctx, r.cancel = context.WithCancel(context.Background())
	interval := cfg.PingInterval
	if interval == 0 {
		interval = DefaultPingInterval
	}
	if interval > 0 {
		r.wg.Add(1)
		go r.watchEngine(interval)
	}
	r.log.Info("docker runtime ready", "engine", cli.DaemonHost(), "api_version", cli.ClientVersion())
	return r, nil
}

// Name returns "docker".
func (r *Runtime) Name() string { return Name }

// Client is the runtime's Engine client.
func (r *Runtime) Client() *client.Client { return r.cli }

// Available reports whether the Engine answered the last ping.
func (r *Runtime) Available() bool { return r.available.Load() }

// Close stops the runtime's background work and waits, and closes its
// client. Containers keep running.
func (r *Runtime) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
	return r.cli.Close()
}

// watchEngine pings the Engine until Close, keeping Available current.
func (r *Runtime) watchEngine(interval time.Duration) {
	defer r.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
		err := Ping(r.ctx, r.cli)
		if r.ctx.Err() != nil {
			return
		}
		if was := r.available.Swap(err == nil); was != (err == nil) {
			if err != nil {
				r.log.Warn("the Docker Engine stopped answering; docker tasks will fail", "err", err)
			} else {
				r.log.Info("the Docker Engine answers again")
			}
		}
	}
}

var errClosed = errors.New("docker runtime: closed")

func notFound(id string) error {
	return fmt.Errorf("task %s: %w", id, worker.ErrTaskNotFound)
}

// engineError wraps an Engine error so that the agent sees "no such
// task" for a container that is gone and a rejection for a request the
// Engine deems invalid.
func engineError(id, what string, err error) error {
	switch {
	case err == nil:
		return nil
	case cerrdefs.IsNotFound(err):
		return fmt.Errorf("%s task %s: %v: %w", what, id, err, worker.ErrTaskNotFound)
	case cerrdefs.IsInvalidArgument(err):
		return &worker.PermanentError{Err: fmt.Errorf("%s task %s: %w", what, id, err)}
	}
	return fmt.Errorf("%s task %s: %w", what, id, err)
}

// labelFilter selects this node's containers, optionally one task's.
func (r *Runtime) labelFilter(taskID string) client.Filters {
	f := client.Filters{}
	f.Add("label", LabelNodeID+"="+r.nodeID)
	if taskID != "" {
		f.Add("label", LabelTaskID+"="+taskID)
	}
	return f
}

// containerID finds a task's container: from the cache, else by labels.
func (r *Runtime) containerID(ctx context.Context, taskID string) (string, error) {
	r.mu.Lock()
	id, ok := r.ids[taskID]
	r.mu.Unlock()
	if ok {
		return id, nil
	}
	res, err := r.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: r.labelFilter(taskID)})
	if err != nil {
		return "", fmt.Errorf("find the container of task %s: %w", taskID, err)
	}
	if len(res.Items) == 0 {
		return "", notFound(taskID)
	}
	// Should there ever be two, the newest is the task's.
	sort.Slice(res.Items, func(i, j int) bool { return res.Items[i].Created > res.Items[j].Created })
	id = res.Items[0].ID
	r.remember(taskID, id)
	return id, nil
}

func (r *Runtime) remember(taskID, containerID string) {
	r.mu.Lock()
	r.ids[taskID] = containerID
	r.mu.Unlock()
}

// forget drops what the runtime caches about a task.
func (r *Runtime) forget(taskID, containerID string) {
	r.mu.Lock()
	if r.ids[taskID] == containerID {
		delete(r.ids, taskID)
	}
	r.mu.Unlock()
}

// inspect returns a task's container, or ErrTaskNotFound.
func (r *Runtime) inspect(ctx context.Context, taskID string) (container.InspectResponse, error) {
	for attempt := 0; ; attempt++ {
		id, err := r.containerID(ctx, taskID)
		if err != nil {
			return container.InspectResponse{}, err
		}
		res, err := r.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
		if cerrdefs.IsNotFound(err) {
			// Removed behind our back (or a stale cache entry): look again.
			r.forget(taskID, id)
			if attempt == 0 {
				continue
			}
			return container.InspectResponse{}, notFound(taskID)
		}
		if err != nil {
			return container.InspectResponse{}, fmt.Errorf("inspect the container of task %s: %w", taskID, err)
		}
		return res.Container, nil
	}
}

// Prepare makes sure the task's image is on this node, pulling it from its
// registry (with the service's credentials, if any) when it is not, and
// creates its container (not started), with its secret and config files
// mounted. Preparing a prepared task does nothing.
func (r *Runtime) Prepare(ctx context.Context, t *pb.Task, files worker.TaskFiles) error {
	id := t.GetId()
	if id == "" {
		return permanent("a task without an ID")
	}
	if _, err := r.containerID(ctx, id); err == nil {
		return nil
	} else if !errors.Is(err, worker.ErrTaskNotFound) {
		return err
	}
	spec, err := buildSpec(t, r.nodeID, r.hostIP, files)
	if err != nil {
		return err
	}
	spec.host.DNS = r.dnsServers()
	image := spec.config.Image
	if _, err := reference.ParseNormalizedNamed(image); err != nil {
		// No registry could ever hold it: pulling again would not help.
		return permanent("image %q cannot be pulled on node %s: not a valid image reference (%v)", image, r.nodeName, err)
	}
	if _, err := r.cli.ImageInspect(ctx, image); err != nil {
		if !cerrdefs.IsNotFound(err) {
			return fmt.Errorf("prepare task %s: inspect image %s: %w", id, image, err)
		}
		if err := r.pull(ctx, image, files.RegistryAuth); err != nil {
			return err
		}
	}
	res, err := r.cli.ContainerCreate(ctx, client.ContainerCreateOptions{Name: spec.name, Config: spec.config, HostConfig: spec.host})
	switch {
	case cerrdefs.IsConflict(err):
		// Created by an earlier attempt whose answer was lost.
		if _, lerr := r.containerID(ctx, id); lerr == nil {
			return nil
		}
		return fmt.Errorf("prepare task %s: create container %s: %w", id, spec.name, err)
	case cerrdefs.IsNotFound(err):
		// Removed meanwhile: the next attempt pulls it again.
		return fmt.Errorf("prepare task %s: image %s was removed from node %s while the task was prepared", id, image, r.nodeName)
	case err != nil:
		return engineError(id, "prepare", fmt.Errorf("create container %s: %w", spec.name, err))
	}
	for _, w := range res.Warnings {
		r.log.Warn("the Engine warns about a task's container", "task_id", id, "warning", w)
	}
	r.remember(id, res.ID)
	r.log.Debug("container created", "task_id", id, "container", spec.name, "id", res.ID)
	return nil
}

// Start starts a prepared task's container, registering a wait on it
// first so that no exit can be missed. Starting a started or exited task
// does nothing.
func (r *Runtime) Start(ctx context.Context, taskID string) error {
	c, err := r.inspect(ctx, taskID)
	if err != nil {
		return err
	}
	if c.State != nil && c.State.Status != container.StateCreated {
		return nil // running, or ran already
	}
	w, err := r.registerWait(c.ID)
	if err != nil {
		return fmt.Errorf("start task %s: wait on container: %w", taskID, err)
	}
	if _, err := r.cli.ContainerStart(ctx, c.ID, client.ContainerStartOptions{}); err != nil {
		r.dropWaiter(c.ID, w)
		return engineError(taskID, "start", err)
	}
	r.log.Debug("container started", "task_id", taskID, "id", c.ID)
	return nil
}

// registerWait registers a wait for the container's next exit, kept until
// the container is removed or the runtime closed. It returns once the
// Engine has registered it.
func (r *Runtime) registerWait(containerID string) (*waiter, error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, errClosed
	}
	if w, ok := r.waiters[containerID]; ok {
		select {
		case <-w.done:
		default:
			r.mu.Unlock()
			return w, nil
		}
	}
	r.mu.Unlock()
	ctx, cancel := context.WithCancel(r.ctx)
	res := r.cli.ContainerWait(ctx, containerID, client.ContainerWaitOptions{Condition: container.WaitConditionNextExit})
	// The request returns once the Engine has registered the wait; its
	// failure is already in the error channel.
	select {
	case err := <-res.Error:
		cancel()
		return nil, err
	default:
	}
	w := &waiter{done: make(chan struct{}), cancel: cancel}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		cancel()
		return nil, errClosed
	}
	r.waiters[containerID] = w
	r.wg.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.wg.Done()
		defer cancel()
		select {
		case w.resp = <-res.Result:
		case w.err = <-res.Error:
		}
		close(w.done)
	}()
	return w, nil
}

// dropWaiter forgets a waiter and ends its wait.
func (r *Runtime) dropWaiter(containerID string, w *waiter) {
	r.mu.Lock()
	if r.waiters[containerID] == w {
		delete(r.waiters, containerID)
	}
	r.mu.Unlock()
	w.cancel()
}

// Wait blocks until the task's container has exited and returns how; at
// once for a container that exited already. It has no timeout. An Engine
// that stops answering is an error.
func (r *Runtime) Wait(ctx context.Context, taskID string) (worker.Exit, error) {
	id, err := r.containerID(ctx, taskID)
	if err != nil {
		return worker.Exit{}, err
	}
	resp, err := r.wait(ctx, taskID, id)
	if err != nil {
		return worker.Exit{}, err
	}
	if resp == nil {
		return r.removedExit(taskID, id), nil
	}
	c, err := r.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if cerrdefs.IsNotFound(err) {
		ex := r.removedExit(taskID, id)
		ex.Code = int(resp.StatusCode)
		return ex, nil
	}
	if err != nil {
		// The wait said how it ended; the details are a bonus.
		ex := worker.Exit{Code: int(resp.StatusCode), ExitedAt: time.Now()}
		if resp.Error != nil {
			ex.Message = resp.Error.Message
		}
		return ex, nil
	}
	return exitOf(c.Container), nil
}

// wait waits for the container to exit: on the wait registered when it
// started (or, not started yet, now), else on a new one. A nil response
// means the container is gone.
func (r *Runtime) wait(ctx context.Context, taskID, id string) (*container.WaitResponse, error) {
	w, err := r.exitWaiter(ctx, taskID, id)
	if err != nil {
		return nil, err
	}
	if w != nil {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-w.done:
		}
		if w.err == nil {
			return &w.resp, nil
		}
		r.dropWaiter(id, w) // a later Wait asks again
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case r.ctx.Err() != nil:
			return nil, errClosed
		case cerrdefs.IsNotFound(w.err):
			return nil, nil
		case !errors.Is(w.err, context.Canceled):
			return nil, fmt.Errorf("wait for task %s: the Docker Engine: %w", taskID, w.err)
		}
		// Dropped meanwhile: wait anew.
	}
	res := r.cli.ContainerWait(ctx, id, client.ContainerWaitOptions{Condition: container.WaitConditionNotRunning})
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case err := <-res.Error:
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if cerrdefs.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("wait for task %s: the Docker Engine: %w", taskID, err)
	case resp := <-res.Result:
		return &resp, nil
	}
}

// exitWaiter is the wait on the container's next exit that Start
// registered or, for a container not started yet, one registered now (a
// wait for "not running" would return at once: a created container is not
// running, but it has not exited either). It is nil for a container that
// started without one (under an earlier agent), or that is gone: a wait
// for "not running" then tells.
func (r *Runtime) exitWaiter(ctx context.Context, taskID, id string) (*waiter, error) {
	r.mu.Lock()
	w := r.waiters[id]
	r.mu.Unlock()
	if w != nil {
		return w, nil
	}
	status := func() (container.ContainerState, error) {
		res, err := r.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
		if cerrdefs.IsNotFound(err) || (err == nil && res.Container.State == nil) {
			return "", nil
		}
		if err != nil {
			return "", fmt.Errorf("wait for task %s: inspect the container: %w", taskID, err)
		}
		return res.Container.State.Status, nil
	}
	if st, err := status(); err != nil || st != container.StateCreated {
		return nil, err
	}
	w, err := r.registerWait(id)
	if err != nil {
		return nil, fmt.Errorf("wait for task %s: wait on container: %w", taskID, err)
	}
	// Started meanwhile? One that has exited too may have done so before
	// the wait was registered, which would then miss it.
	st, err := status()
	if err != nil {
		return nil, err
	}
	switch st {
	case container.StateCreated, container.StateRunning, container.StatePaused, container.StateRestarting:
		return w, nil
	}
	r.dropWaiter(id, w)
	return nil, nil
}

// removedExit is the exit of a container removed behind Shoal's back.
func (r *Runtime) removedExit(taskID, containerID string) worker.Exit {
	r.forget(taskID, containerID)
	return worker.Exit{Code: -1, Message: "the task's container was removed from the Docker Engine", ExitedAt: time.Now()}
}

// exitOf is how an exited container ended.
func exitOf(c container.InspectResponse) worker.Exit {
	st := c.State
	if st == nil {
		return worker.Exit{Code: -1, Message: "the Engine reports no state for the container"}
	}
	ex := worker.Exit{Code: st.ExitCode}
	if t, err := time.Parse(time.RFC3339Nano, st.FinishedAt); err == nil && !t.IsZero() && t.Year() > 1 {
		ex.ExitedAt = t
	}
	switch {
	case st.OOMKilled:
		limit := ""
		if c.HostConfig != nil && c.HostConfig.Memory > 0 {
			limit = fmt.Sprintf(" (memory limit %d bytes)", c.HostConfig.Memory)
		}
		ex.Message = fmt.Sprintf("the container ran out of memory and was killed%s; exit code %d", limit, st.ExitCode)
	case st.Error != "":
		ex.Message = fmt.Sprintf("container exited with code %d: %s", st.ExitCode, st.Error)
	case st.ExitCode > 128 && st.ExitCode < 128+65:
		ex.Message = fmt.Sprintf("container exited with code %d (signal: %s)", st.ExitCode, syscall.Signal(st.ExitCode-128))
	}
	return ex
}

// Stop stops the task's container: its stop signal (SIGTERM unless the
// image says otherwise), SIGKILL once grace has passed. A container that
// is not running (or unknown) needs no stopping.
func (r *Runtime) Stop(ctx context.Context, taskID string, grace time.Duration) error {
	c, err := r.inspect(ctx, taskID)
	if errors.Is(err, worker.ErrTaskNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if c.State == nil || !c.State.Running {
		return nil
	}
	timeout := graceSeconds(max(grace, 0))
	_, err = r.cli.ContainerStop(ctx, c.ID, client.ContainerStopOptions{Timeout: &timeout})
	if err == nil || cerrdefs.IsNotFound(err) {
		return nil
	}
	r.log.Warn("stopping the task's container failed; killing it", "task_id", taskID, "err", err)
	kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, kerr := r.cli.ContainerKill(kctx, c.ID, client.ContainerKillOptions{Signal: "SIGKILL"}); kerr != nil && !cerrdefs.IsNotFound(kerr) && !cerrdefs.IsConflict(kerr) {
		return fmt.Errorf("stop task %s: %v; kill: %w", taskID, err, kerr)
	}
	return nil
}

// Remove removes the task's container (killing it if it still runs) and
// its anonymous volumes. An unknown task is already removed.
func (r *Runtime) Remove(ctx context.Context, taskID string) error {
	id, err := r.containerID(ctx, taskID)
	if errors.Is(err, worker.ErrTaskNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		_, err = r.cli.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
		if err == nil || cerrdefs.IsNotFound(err) {
			break
		}
		// "removal already in progress": let it finish.
		if !cerrdefs.IsConflict(err) || attempt == 20 {
			return fmt.Errorf("remove task %s: %w", taskID, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	r.forget(taskID, id)
	r.mu.Lock()
	w := r.waiters[id]
	r.mu.Unlock()
	if w != nil {
		r.dropWaiter(id, w)
	}
	r.log.Debug("container removed", "task_id", taskID, "id", id)
	return nil
}

// Inspect reports the task's container: its state, exit and ports.
func (r *Runtime) Inspect(ctx context.Context, taskID string) (worker.TaskInfo, error) {
	c, err := r.inspect(ctx, taskID)
	if err != nil {
		return worker.TaskInfo{}, err
	}
	return taskInfo(taskID, c), nil
}

// taskInfo is the agent's view of a container.
func taskInfo(taskID string, c container.InspectResponse) worker.TaskInfo {
	info := worker.TaskInfo{TaskID: taskID, ContainerID: c.ID, State: worker.RunCreated}
	if st := c.State; st != nil {
		switch st.Status {
		case container.StateCreated:
			info.State = worker.RunCreated
		case container.StateRunning, container.StatePaused, container.StateRestarting:
			info.State = worker.RunRunning
			info.Pid = st.Pid
		default: // exited, dead, removing
			info.State = worker.RunExited
			info.Exit = exitOf(c)
		}
	}
	if info.State == worker.RunRunning {
		info.Ports = portBindings(c)
	}
	return info
}

// portBindings are where the container's published ports are reachable,
// in the task's order.
func portBindings(c container.InspectResponse) []*pb.PortBinding {
	if c.NetworkSettings == nil || c.Config == nil {
		return nil
	}
	var out []*pb.PortBinding
	for _, key := range strings.Split(c.Config.Labels[LabelPorts], ",") {
		if key == "" {
			continue
		}
		var chosen *pb.PortBinding
		for port, bindings := range c.NetworkSettings.Ports {
			if port.String() != key {
				continue
			}
			for _, b := range bindings {
				hp, err := strconv.ParseUint(b.HostPort, 10, 16)
				if err != nil || hp == 0 {
					continue
				}
				pbb := &pb.PortBinding{TargetPort: uint32(port.Num()), HostIp: b.HostIP.String(), HostPort: uint32(hp)}
				if !b.HostIP.IsValid() {
					pbb.HostIp = "0.0.0.0"
				}
				if port.Proto() == "udp" {
					pbb.Protocol = pb.PortProtocol_PORT_PROTOCOL_UDP
				}
				if chosen == nil || (!b.HostIP.Is6() && net6(chosen.HostIp)) {
					chosen = pbb // prefer an IPv4 address
				}
			}
		}
		if chosen != nil {
			out = append(out, chosen)
		}
	}
	return out
}

func net6(ip string) bool { return strings.Contains(ip, ":") }

// List reports every container of this node that carries Shoal's labels.
func (r *Runtime) List(ctx context.Context) ([]worker.TaskInfo, error) {
	res, err := r.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: r.labelFilter("")})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var out []worker.TaskInfo
	for _, s := range res.Items {
		taskID := s.Labels[LabelTaskID]
		if taskID == "" {
			continue
		}
		c, err := r.cli.ContainerInspect(ctx, s.ID, client.ContainerInspectOptions{})
		if cerrdefs.IsNotFound(err) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("inspect container %s: %w", s.ID, err)
		}
		r.remember(taskID, s.ID)
		out = append(out, taskInfo(taskID, c.Container))
	}
	return out, nil
}

// Logs returns the container's output, stdout and stderr interleaved as
// the Engine recorded them. With Follow the stream stays open until the
// container exits, ctx ends or the reader is closed.
func (r *Runtime) Logs(ctx context.Context, taskID string, opts worker.LogOptions) (io.ReadCloser, error) {
	id, err := r.containerID(ctx, taskID)
	if err != nil {
		return nil, err
	}
	lo := client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Follow: opts.Follow, Timestamps: opts.Timestamps}
	if opts.Tail > 0 {
		lo.Tail = strconv.Itoa(opts.Tail)
	}
	if !opts.Since.IsZero() {
		lo.Since = engineTime(opts.Since)
	}
	if !opts.Until.IsZero() {
		lo.Until = engineTime(opts.Until)
	}
	rc, err := r.cli.ContainerLogs(ctx, id, lo)
	if err != nil {
		return nil, engineError(taskID, "logs of", err)
	}
	pr, pw := io.Pipe()
	go func() {
		_, err := stdcopy.StdCopy(pw, pw, rc)
		rc.Close()
		pw.CloseWithError(err)
	}()
	return &logReader{PipeReader: pr, src: rc}, nil
}

type logReader struct {
	*io.PipeReader
	src io.Closer
}

func (l *logReader) Close() error {
	l.src.Close()
	return l.PipeReader.Close()
}

// Usage reads a running container's CPU and memory use from the Engine's
// one-shot stats (no second sample, so it returns at once). Memory is the
// usage less the inactive page cache, as `docker stats` shows it.
func (r *Runtime) Usage(ctx context.Context, taskID string) (worker.Usage, error) {
	id, err := r.containerID(ctx, taskID)
	if err != nil {
		return worker.Usage{}, err
	}
	res, err := r.cli.ContainerStats(ctx, id, client.ContainerStatsOptions{})
	if err != nil {
		return worker.Usage{}, engineError(taskID, "read stats of", err)
	}
	defer res.Body.Close()
	var st container.StatsResponse
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		return worker.Usage{}, fmt.Errorf("task %s: decode the Engine's stats: %w", taskID, err)
	}
	return statsUsage(st), nil
}

// statsUsage converts the Engine's stats (cgroup v1 or v2 keys).
func statsUsage(st container.StatsResponse) worker.Usage {
	mem := st.MemoryStats.Usage
	inactive, ok := st.MemoryStats.Stats["total_inactive_file"] // cgroup v1
	if !ok {
		inactive = st.MemoryStats.Stats["inactive_file"] // cgroup v2
	}
	if inactive < mem {
		mem -= inactive
	}
	// The Engine reports the host's memory as the limit of a container
	// without one: the agent takes the limit from the task's spec.
	return worker.Usage{CPUTotal: st.CPUStats.CPUUsage.TotalUsage, MemoryBytes: int64(mem)}
}

// engineTime is a time as the Engine's log options take it: Unix seconds
// and nanoseconds.
func engineTime(t time.Time) string {
	return fmt.Sprintf("%d.%09d", t.Unix(), t.Nanosecond())
}
