// Package container is Shoal's daemonless container runtime: it runs each
// task as an OCI container with runc, on a root filesystem the node's image
// store mounts with OverlayFS, with no Docker Engine or containerd.
//
// A task's container is `runc run --keep --bundle DIR ID`, run as the task
// program of an inner process runtime (package process): its supervisor,
// re-executed shoal in a session of its own, outlives agent restarts,
// keeps the task's log and records how runc (which exits with the
// container's status) ended. Signals go to the container with `runc kill`,
// and `runc delete -f` removes it. All of a task's state is in files under
// Config.Dir, and in runc's state directory below it, so a new Runtime on
// the same directory picks up where the previous agent left off:
//
//	DIR/tasks/<id>/     the inner process runtime's task (spec, supervisor, logs, exit)
//	DIR/bundles/<id>/   the OCI bundle: config.json, hosts, hostname, resolv.conf,
//	                    task.json (what Prepare decided), exit.json, volumes/
//	DIR/runc/<id>/      runc's own state of the container
//	DIR/volumes/<name>/ named volumes, shared by the tasks that mount them
//
// Each container gets PID, mount, IPC and UTS namespaces of its own and
// either the task network's namespace (with its own IP, see Network) or,
// without a task network, the node's network with ports allocated on the
// node as the process runtime does. Its cgroup (Config.CgroupParent/<id>)
// holds its memory (without swap) and CPU limits; it runs with Docker's
// default capabilities, no new privileges and Docker's masked and
// read-only paths.
package container

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/shoal-cluster/shoal/internal/keylock"
	"github.com/shoal-cluster/shoal/internal/spreaddir"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/process"
	"github.com/shoal-cluster/shoal/worker/process/supervise"
)

var (
	_ worker.Runtime       = (*Runtime)(nil)
	_ worker.CommandProber = (*Runtime)(nil)
	_ worker.UsageReader   = (*Runtime)(nil)
)

// Name is the runtime's name as tasks ask for it.
const Name = "container"

// DefaultCgroupParent is the default parent of the containers' cgroups.
const DefaultCgroupParent = "shoal-container"

const (
	defaultStopGrace = 10 * time.Second
	// killWait bounds how long Stop waits for a SIGKILL-ed container's
	// exit to be recorded before it kills runc itself.
	killWait = 5 * time.Second
	// runcTimeout bounds one runc command (kill, delete, state).
	runcTimeout = 30 * time.Second
	// startTimeout bounds how long Start waits for runc to start the
	// container.
	startTimeout = 30 * time.Second
)

// Config configures a container runtime.
type Config struct {
	// Dir is the runtime's state root (e.g. DATA/worker/container).
	// Required.
	Dir string
	// Images is the node's image store. Required.
	Images Images
	// Network gives each task a network namespace and an IP of its own;
	// nil runs containers in the node's network namespace, their ports
	// allocated on AdvertiseIP.
	Network Network
	// AdvertiseIP is the node's IP (see Network).
	AdvertiseIP string
	// Runc is the runc executable (default: runc in PATH).
	Runc string
	// SupervisorCommand is the command line that runs a task supervisor
	// (see process.Config); default [os.Executable(), "__supervise"].
	SupervisorCommand []string
	// SupervisorEnv is added to the supervisors' environment.
	SupervisorEnv []string
	// CgroupParent names the cgroup under which the containers' cgroups
	// are made. Default DefaultCgroupParent.
	CgroupParent string
	// Logger receives the runtime's logs (default slog.Default()).
	Logger *slog.Logger
}

// Runtime is the container runtime. It is safe for concurrent use.
type Runtime struct {
	dir       string
	runc      string
	runcRoot  string
	bundles   string
	volumes   string
	cgroupDir string // cgroupsPath parent, absolute
	images    Images
	network   Network
	inner     *process.Runtime
	log       *slog.Logger

	locks keylock.Map
	// health holds the image health checks' state by task.
	healthMu sync.Mutex
	health   map[string]*imageHealth
}

// RuncEnv names the environment variable that, when set, is the runc
// executable Check looks for instead of runc in PATH (tests set it to a
// path that does not exist to keep the runtime from being offered).
const RuncEnv = "SHOAL_RUNC"

// Check reports why this node cannot run containers with runc: it must
// run as root, have OverlayFS, and have runc (path "" looks for $SHOAL_RUNC,
// else runc in PATH). It returns the runc executable found.
func Check(runc string) (string, error) {
	if os.Geteuid() != 0 {
		return "", errors.New("the agent does not run as root")
	}
	fs, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return "", fmt.Errorf("cannot tell whether the kernel has OverlayFS: %w", err)
	}
	if !regexp.MustCompile(`(?m)\soverlay$`).Match(fs) {
		return "", errors.New("the kernel has no OverlayFS (overlay is not in /proc/filesystems; try modprobe overlay)")
	}
	if runc == "" {
		runc = os.Getenv(RuncEnv)
	}
	if runc == "" {
		runc = "runc"
	}
	p, err := exec.LookPath(runc)
	if err != nil {
		return "", fmt.Errorf("runc is not installed (apt-get install runc): %w", err)
	}
	return p, nil
}

// New makes a container runtime on cfg.Dir. It fails, saying why, when
// the node cannot run containers (see Check).
func New(cfg Config) (*Runtime, error) {
	if cfg.Dir == "" {
		return nil, errors.New("container runtime: no state directory")
	}
	if cfg.Images == nil {
		return nil, errors.New("container runtime: no image store")
	}
	runc, err := Check(cfg.Runc)
	if err != nil {
		return nil, fmt.Errorf("container runtime: %w", err)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("container runtime: %w", err)
	}
	r := &Runtime{
		dir:      dir,
		runc:     runc,
		runcRoot: filepath.Join(dir, "runc"),
		bundles:  filepath.Join(dir, "bundles"),
		volumes:  filepath.Join(dir, "volumes"),
		images:   cfg.Images,
		network:  cfg.Network,
		log:      cfg.Logger,
		health:   map[string]*imageHealth{},
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	r.log = r.log.With("runtime", Name)
	parent := cfg.CgroupParent
	if parent == "" {
		parent = DefaultCgroupParent
	}
	if strings.Contains(parent, "..") || strings.HasPrefix(parent, "/") {
		return nil, fmt.Errorf("container runtime: invalid cgroup parent %q", parent)
	}
	r.cgroupDir = "/" + parent
	for _, d := range []string{r.runcRoot, r.bundles, r.volumes} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, fmt.Errorf("container runtime: %w", err)
		}
	}
	// runc's state and the bundles: a directory per task.
	spreaddir.MarkAll(r.log, r.runcRoot, r.bundles)
	r.inner, err = process.New(process.Config{
		Dir:               filepath.Join(dir, "tasks"),
		AdvertiseIP:       cfg.AdvertiseIP,
		SupervisorCommand: cfg.SupervisorCommand,
		SupervisorEnv:     cfg.SupervisorEnv,
		Logger:            r.log,
		// runc makes the container's cgroup and enforces its limits.
		DisableCgroups: true,
	})
	if err != nil {
		return nil, fmt.Errorf("container runtime: %w", err)
	}
	return r, nil
}

// Name returns "container".
func (r *Runtime) Name() string { return Name }

// Isolation describes what the runtime enforces.
func (r *Runtime) Isolation() string {
	net := "each task in its own network namespace with its own IP"
	if r.network == nil {
		net = "tasks share the node's network (no task network on this node)"
	}
	return "OCI containers run by runc on OverlayFS: PID, mount, IPC and UTS namespaces; " + net +
		"; memory and CPU limits in each task's cgroup; Docker's default capabilities, no new privileges, masked and read-only /proc and /sys paths"
}

var taskIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

func notFound(id string) error {
	return fmt.Errorf("task %s: %w", id, worker.ErrTaskNotFound)
}

// taskRecord is bundles/<id>/task.json: what Prepare decided.
type taskRecord struct {
	Image     string `json:"image"`
	ImageID   string `json:"image_id"`
	Rootfs    string `json:"rootfs"`
	IP        string `json:"ip,omitempty"`
	NetNSPath string `json:"netns,omitempty"`
	// Ports are where the task's ports are reachable (task network mode;
	// in node network mode the inner runtime holds them).
	Ports     []portRecord  `json:"ports,omitempty"`
	StopGrace time.Duration `json:"stop_grace"`
	// HealthCheck is the image's own check, if any.
	HealthCheck *healthRecord `json:"health_check,omitempty"`
}

type portRecord struct {
	TargetPort uint32 `json:"target_port"`
	HostIP     string `json:"host_ip"`
	HostPort   uint32 `json:"host_port"`
	UDP        bool   `json:"udp,omitempty"`
}

// exitRecord is bundles/<id>/exit.json: the task's exit as reported,
// fixed the first time it is read.
type exitRecord struct {
	Code      int       `json:"code"`
	Signal    string    `json:"signal,omitempty"`
	Message   string    `json:"message"`
	ExitedAt  time.Time `json:"exited_at"`
	OOMKilled bool      `json:"oom_killed,omitempty"`
}

// stopRecord is bundles/<id>/stop.json: a stop was asked for.
type stopRecord struct {
	Grace  time.Duration `json:"grace"`
	Killed bool          `json:"killed,omitempty"`
}

const (
	configFile = "config.json"
	taskFile   = "task.json"
	exitFile   = "exit.json"
	stopFile   = "stop.json"
)

func (r *Runtime) bundle(id string) string { return filepath.Join(r.bundles, id) }

// prepared reports whether the task's bundle is complete.
func (r *Runtime) prepared(id string) bool {
	return taskIDPattern.MatchString(id) && fileExistsAt(filepath.Join(r.bundle(id), configFile))
}

// Prepare gets the task's image (pulling it when missing), mounts its root
// filesystem, attaches it to the task network and writes its OCI bundle.
// Preparing a prepared task does nothing.
func (r *Runtime) Prepare(ctx context.Context, t *pb.Task, files worker.TaskFiles) (err error) {
	id := t.GetId()
	if !taskIDPattern.MatchString(id) {
		return permanent("invalid task ID %q", id)
	}
	unlock, err := r.locks.Lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	if r.prepared(id) {
		return nil
	}
	c := t.GetSpec().GetContainer()
	if c == nil || c.GetImage() == "" {
		return permanent("task %s has no image: the container runtime runs a container image", id)
	}
	img, err := r.images.Image(ctx, c.GetImage(), files.RegistryAuth)
	if err != nil {
		return fmt.Errorf("prepare task %s: %w", id, err)
	}
	bundle := r.bundle(id)
	defer func() {
		if err != nil {
			r.cleanup(context.WithoutCancel(ctx), id)
		}
	}()
	if err := os.MkdirAll(bundle, 0o711); err != nil {
		return fmt.Errorf("prepare task %s: %w", id, err)
	}
	rootfs, err := r.images.MountRootFS(ctx, id, img, false)
	if err != nil {
		return fmt.Errorf("prepare task %s: mount its root filesystem: %w", id, err)
	}
	grace := time.Duration(c.GetStopGracePeriod())
	if grace <= 0 {
		grace = defaultStopGrace
	}
	rec := taskRecord{Image: c.GetImage(), ImageID: img.ID, Rootfs: rootfs, StopGrace: grace, HealthCheck: imageHealthRecord(img)}
	in := specInput{
		task: t, image: img, rootfs: rootfs, bundle: bundle, hostname: hostnameFor(id),
		files: files, cgroup: r.cgroupDir + "/" + id, volumes: r.volumes,
	}

	// The inner task: runc running the bundle, under the task's supervisor.
	inner := &pb.Task{
		Id: id, ServiceId: t.GetServiceId(), ServiceName: t.GetServiceName(), Slot: t.GetSlot(), NodeId: t.GetNodeId(),
		Spec: &pb.TaskSpec{Runtime: process.Name, Container: &pb.ContainerSpec{
			Command:         []string{r.runc, "--root", r.runcRoot, "run", "--keep", "--bundle", bundle, id},
			StopGracePeriod: int64(grace),
		}},
	}
	resolv, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		resolv = nil
	}
	if r.network != nil {
		att, err := r.network.Attach(ctx, id)
		if err != nil {
			return fmt.Errorf("prepare task %s: attach it to the task network: %w", id, err)
		}
		rec.IP, rec.NetNSPath, in.netns = att.IP, att.NetNSPath, att.NetNSPath
		if len(att.ResolvConf) > 0 {
			resolv = att.ResolvConf
		}
		for _, pc := range taskPorts(t) {
			rec.Ports = append(rec.Ports, portRecord{TargetPort: pc.GetTargetPort(), HostIP: att.IP, HostPort: pc.GetTargetPort(),
				UDP: pc.GetProtocol() == pb.PortProtocol_PORT_PROTOCOL_UDP})
		}
	} else {
		// The node's network: the inner runtime allocates node ports.
		inner.Endpoint = t.GetEndpoint()
	}
	if err := r.inner.Prepare(ctx, inner, worker.TaskFiles{}); err != nil {
		return fmt.Errorf("prepare task %s: %w", id, err)
	}
	if r.network == nil {
		info, err := r.inner.Inspect(ctx, id)
		if err != nil {
			return fmt.Errorf("prepare task %s: %w", id, err)
		}
		if len(info.Ports) > 0 {
			in.extraEnv = append(in.extraEnv, "PORT="+strconv.Itoa(int(info.Ports[0].GetHostPort())))
			if ip := info.Ports[0].GetHostIp(); ip != "" && ip != "0.0.0.0" {
				in.extraEnv = append(in.extraEnv, "SHOAL_HOST_IP="+ip)
			}
		}
		for _, p := range info.Ports {
			in.extraEnv = append(in.extraEnv, fmt.Sprintf("PORT_%d=%d", p.GetTargetPort(), p.GetHostPort()))
		}
	}

	spec, err := buildSpec(in)
	if err != nil {
		return err
	}
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	if rec.IP != "" {
		hosts += rec.IP + "\t" + in.hostname + "\n"
	} else {
		hosts += "127.0.1.1\t" + in.hostname + "\n"
	}
	for name, data := range map[string][]byte{"hosts": []byte(hosts), "hostname": []byte(in.hostname + "\n"), "resolv.conf": resolv} {
		if err := os.WriteFile(filepath.Join(bundle, name), data, 0o644); err != nil {
			return fmt.Errorf("prepare task %s: %w", id, err)
		}
	}
	if err := giveFiles(files, spec.Process.User); err != nil {
		return fmt.Errorf("prepare task %s: %w", id, err)
	}
	if err := writeJSONAtomic(bundle, taskFile, rec); err != nil {
		return fmt.Errorf("prepare task %s: %w", id, err)
	}
	// config.json last: its presence means the task is prepared.
	if err := writeJSONAtomic(bundle, configFile, spec); err != nil {
		return fmt.Errorf("prepare task %s: %w", id, err)
	}
	r.log.Debug("task prepared", "task_id", id, "image", c.GetImage(), "args", spec.Process.Args, "ip", rec.IP)
	return nil
}

func taskPorts(t *pb.Task) []*pb.PortConfig {
	if ps := t.GetEndpoint().GetPorts(); len(ps) > 0 {
		return ps
	}
	return t.GetEndpoint().GetSpec().GetPorts()
}

// giveFiles hands the task's secret and config files to the user its
// container runs as (unless a reference named their owner), so a task
// that is not root can read them.
func giveFiles(files worker.TaskFiles, u specs.User) error {
	for _, set := range []worker.FileSet{files.Secrets, files.Configs} {
		for _, f := range set.Files {
			uid, gid := f.Owner(int(u.UID), int(u.GID))
			if err := os.Chown(f.Path, uid, gid); err != nil {
				return fmt.Errorf("give %s to the task's user: %w", f.Target, err)
			}
		}
	}
	return nil
}

// Start starts a prepared task's container and returns once it runs.
func (r *Runtime) Start(ctx context.Context, id string) error {
	if !r.prepared(id) {
		return notFound(id)
	}
	if err := r.inner.Start(ctx, id); err != nil {
		return err
	}
	return r.waitRunning(ctx, id)
}

// waitRunning waits until runc has started the container's process (its
// state is saved and its exec FIFO gone), or the task has exited.
func (r *Runtime) waitRunning(ctx context.Context, id string) error {
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	state := filepath.Join(r.runcRoot, id)
	for n := 0; ; n++ {
		if fileExistsAt(filepath.Join(state, "state.json")) && !fileExistsAt(filepath.Join(state, "exec.fifo")) {
			return nil
		}
		// runc's files are two stats; the inner task's state reads and
		// decodes several files, so it is looked at every tenth tick:
		// with 20 containers starting at once, every tick cost about a
		// fifth of a core.
		if n%10 == 0 {
			info, err := r.inner.Inspect(ctx, id)
			if err != nil {
				return r.mapErr(id, err)
			}
			if info.State == worker.RunExited {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("start task %s: %w", id, ctx.Err())
		case <-deadline.C:
			return fmt.Errorf("start task %s: runc did not start its container within %s", id, startTimeout)
		case <-tick.C:
		}
	}
}

// termWait bounds how long a stop waits for a container's first process
// to handle SIGTERM before sending it (within the stop's grace period).
const termWait = time.Second

// awaitTermHandler waits, up to limit, until the container's first process
// catches or ignores SIGTERM. As PID 1 of its namespace it never gets a
// signal left at its default action (the kernel drops it), so a stop that
// lands while the program is still starting, before it has installed its
// handler, would be lost and the stop would wait out the whole grace
// period before SIGKILL. A program that never handles SIGTERM costs the
// stop limit more, within its grace period.
func (r *Runtime) awaitTermHandler(ctx context.Context, id string, limit time.Duration) {
	var st struct {
		Pid int `json:"init_process_pid"`
	}
	if ok, err := readJSON(filepath.Join(r.runcRoot, id), "state.json", &st); !ok || err != nil || st.Pid <= 0 {
		return
	}
	const sigterm = 1 << (syscall.SIGTERM - 1)
	deadline := time.Now().Add(limit)
	for {
		caught, ignored, err := signalMasks(st.Pid)
		if err != nil || (caught|ignored)&sigterm != 0 || time.Now().After(deadline) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// signalMasks reads the signals a process catches and ignores.
func signalMasks(pid int) (caught, ignored uint64, err error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "SigCgt:"); ok {
			caught, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		} else if v, ok := strings.CutPrefix(line, "SigIgn:"); ok {
			ignored, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
		if err != nil {
			return 0, 0, err
		}
	}
	return caught, ignored, nil
}

// Wait blocks until the task has exited and returns how.
func (r *Runtime) Wait(ctx context.Context, id string) (worker.Exit, error) {
	if !r.prepared(id) {
		return worker.Exit{}, notFound(id)
	}
	ex, err := r.inner.Wait(ctx, id)
	if err != nil {
		return worker.Exit{}, r.mapErr(id, err)
	}
	return r.exit(id, ex), nil
}

// mapErr reports a task removed meanwhile as not found.
func (r *Runtime) mapErr(id string, err error) error {
	if errors.Is(err, worker.ErrTaskNotFound) {
		return notFound(id)
	}
	return err
}

// exit turns the inner exit (runc's own) into the container's, once: runc
// exits with 128+n for a container killed by signal n; a kill at the
// memory limit and a stop say so.
func (r *Runtime) exit(id string, ex worker.Exit) worker.Exit {
	bundle := r.bundle(id)
	var rec exitRecord
	if ok, _ := readJSON(bundle, exitFile, &rec); ok {
		return worker.Exit{Code: rec.Code, Signal: rec.Signal, Message: rec.Message, ExitedAt: rec.ExitedAt}
	}
	rec = exitRecord{Code: ex.Code, Signal: ex.Signal, Message: ex.Message, ExitedAt: ex.ExitedAt}
	if rec.Signal == "" && rec.Code > 128 && rec.Code < 128+65 {
		rec.Signal = supervise.SignalName(syscall.Signal(rec.Code - 128))
		rec.Message = "killed by " + rec.Signal
	}
	var stop stopRecord
	stopped, _ := readJSON(bundle, stopFile, &stop)
	if rec.Signal == "SIGKILL" && !stop.Killed {
		if n := r.oomKills(id); n > 0 {
			rec.OOMKilled = true
			rec.Message = "out of memory: killed by the kernel at its memory limit"
		}
	}
	if stopped && !strings.HasPrefix(rec.Message, "stopped") {
		if stop.Killed {
			rec.Message = fmt.Sprintf("stopped: %s after not exiting within the %s grace period", rec.Message, stop.Grace)
		} else {
			rec.Message = "stopped: " + rec.Message
		}
	}
	if err := writeJSONAtomic(bundle, exitFile, rec); err != nil {
		r.log.Warn("cannot record the task's exit", "task_id", id, "err", err)
	}
	return worker.Exit{Code: rec.Code, Signal: rec.Signal, Message: rec.Message, ExitedAt: rec.ExitedAt}
}

// oomKills reads how many of the container's processes the kernel killed
// at its memory limit (runc --keep leaves its cgroup until the task is
// removed).
func (r *Runtime) oomKills(id string) int {
	for _, f := range []string{
		filepath.Join("/sys/fs/cgroup/memory", r.cgroupDir, id, "memory.oom_control"),
		filepath.Join("/sys/fs/cgroup", r.cgroupDir, id, "memory.events"),
	} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, " "); ok && k == "oom_kill" {
				n, _ := strconv.Atoi(strings.TrimSpace(v))
				return n
			}
		}
	}
	return 0
}

// Stop sends the container SIGTERM, waits up to grace for it to exit, then
// SIGKILLs it. A prepared task that never started is marked exited.
func (r *Runtime) Stop(ctx context.Context, id string, grace time.Duration) error {
	if !r.prepared(id) {
		return nil
	}
	unlock, err := r.locks.Lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	return r.stop(ctx, id, max(grace, 0))
}

func (r *Runtime) stop(ctx context.Context, id string, grace time.Duration) error {
	info, err := r.inner.Inspect(ctx, id)
	if errors.Is(err, worker.ErrTaskNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if info.State != worker.RunRunning {
		// Created: the inner runtime marks it stopped (or, when its
		// supervisor is starting it right now, stops it).
		return r.inner.Stop(ctx, id, grace)
	}
	bundle := r.bundle(id)
	if err := writeJSONAtomic(bundle, stopFile, stopRecord{Grace: grace}); err != nil {
		return err
	}
	deadline := time.Now().Add(grace)
	r.awaitTermHandler(ctx, id, min(termWait, grace))
	if err := r.runcCmd(ctx, "kill", id, "TERM"); err != nil {
		// Not created yet by runc, or gone: the supervisor signals runc,
		// which forwards to the container.
		r.log.Debug("runc kill TERM failed; stopping through the supervisor", "task_id", id, "err", err)
		return r.inner.Stop(ctx, id, grace)
	}
	if done, err := r.waitExited(ctx, id, deadline); done || err != nil {
		return err
	}
	if err := writeJSONAtomic(bundle, stopFile, stopRecord{Grace: grace, Killed: true}); err != nil {
		return err
	}
	r.log.Info("the task did not stop within its grace period; killing it", "task_id", id, "grace", grace)
	if err := r.runcCmd(ctx, "kill", "--all", id, "KILL"); err != nil {
		r.log.Debug("runc kill KILL failed", "task_id", id, "err", err)
	}
	if done, err := r.waitExited(ctx, id, time.Now().Add(killWait)); done || err != nil {
		return err
	}
	return r.inner.Stop(ctx, id, 0)
}

// waitExited polls until the task has exited (true), deadline (false) or
// ctx ends.
func (r *Runtime) waitExited(ctx context.Context, id string, deadline time.Time) (bool, error) {
	wctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	_, err := r.inner.Wait(wctx, id)
	if err == nil {
		return true, nil
	}
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return false, nil
	}
	return false, err
}

// Remove stops the task if it runs (with its stop grace period), deletes
// its container, unmounts its root filesystem, detaches it from the task
// network and deletes its files.
func (r *Runtime) Remove(ctx context.Context, id string) error {
	if !taskIDPattern.MatchString(id) {
		return nil
	}
	unlock, err := r.locks.Lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	grace := defaultStopGrace
	var rec taskRecord
	if ok, _ := readJSON(r.bundle(id), taskFile, &rec); ok && rec.StopGrace > 0 {
		grace = rec.StopGrace
	}
	if r.prepared(id) {
		if err := r.stop(ctx, id, grace); err != nil {
			return err
		}
	}
	if err := r.cleanup(ctx, id); err != nil {
		return err
	}
	r.log.Debug("task removed", "task_id", id)
	return nil
}

// cleanup deletes everything of a task, whatever state it is in.
func (r *Runtime) cleanup(ctx context.Context, id string) error {
	var errs []error
	if fileExistsAt(filepath.Join(r.runcRoot, id)) {
		if err := r.runcCmd(ctx, "delete", "--force", id); err != nil && fileExistsAt(filepath.Join(r.runcRoot, id)) {
			errs = append(errs, fmt.Errorf("delete container: %w", err))
		}
	}
	if err := r.inner.Remove(ctx, id); err != nil {
		errs = append(errs, err)
	}
	if err := r.images.UnmountRootFS(ctx, id); err != nil {
		errs = append(errs, fmt.Errorf("unmount the root filesystem: %w", err))
	}
	if r.network != nil {
		if err := r.network.Detach(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("detach from the task network: %w", err))
		}
	}
	r.healthMu.Lock()
	delete(r.health, id)
	r.healthMu.Unlock()
	if len(errs) == 0 {
		if err := os.RemoveAll(r.bundle(id)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove task %s: %w", id, err)
	}
	return nil
}

// Inspect reports a task's state, its runc's pid, its container and ports,
// and its exit.
func (r *Runtime) Inspect(ctx context.Context, id string) (worker.TaskInfo, error) {
	if !r.prepared(id) {
		return worker.TaskInfo{}, notFound(id)
	}
	info, err := r.inner.Inspect(ctx, id)
	if err != nil {
		return worker.TaskInfo{}, r.mapErr(id, err)
	}
	info.ContainerID = id
	if info.State == worker.RunExited {
		info.Exit = r.exit(id, info.Exit)
	}
	var rec taskRecord
	if ok, _ := readJSON(r.bundle(id), taskFile, &rec); ok && rec.IP != "" {
		info.Ports = nil
		for _, p := range rec.Ports {
			b := &pb.PortBinding{TargetPort: p.TargetPort, HostIp: p.HostIP, HostPort: p.HostPort}
			if p.UDP {
				b.Protocol = pb.PortProtocol_PORT_PROTOCOL_UDP
			}
			info.Ports = append(info.Ports, b)
		}
	}
	return info, nil
}

// List reports every task the runtime holds: those with a bundle, and
// strays (a container in runc's state, an inner task) whose bundle is
// incomplete, as exited, so the agent removes them.
func (r *Runtime) List(ctx context.Context) ([]worker.TaskInfo, error) {
	ids := map[string]bool{}
	for _, d := range []string{r.bundles, r.runcRoot} {
		entries, err := os.ReadDir(d)
		if err != nil {
			return nil, fmt.Errorf("list tasks: %w", err)
		}
		for _, e := range entries {
			if e.IsDir() && taskIDPattern.MatchString(e.Name()) {
				ids[e.Name()] = true
			}
		}
	}
	inner, err := r.inner.List(ctx)
	if err != nil {
		return nil, err
	}
	for _, info := range inner {
		ids[info.TaskID] = true
	}
	var out []worker.TaskInfo
	for id := range ids {
		info, err := r.Inspect(ctx, id)
		if errors.Is(err, worker.ErrTaskNotFound) {
			if !fileExistsAt(r.bundle(id)) && !fileExistsAt(filepath.Join(r.runcRoot, id)) && !fileExistsAt(filepath.Join(r.dir, "tasks", id)) {
				continue // removed meanwhile
			}
			out = append(out, worker.TaskInfo{TaskID: id, State: worker.RunExited, ContainerID: id,
				Exit: worker.Exit{Code: -1, Message: "an incompletely prepared or removed container"}})
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

// Logs returns the container's combined stdout and stderr.
func (r *Runtime) Logs(ctx context.Context, id string, opts worker.LogOptions) (io.ReadCloser, error) {
	if !r.prepared(id) {
		return nil, notFound(id)
	}
	rc, err := r.inner.Logs(ctx, id, opts)
	return rc, r.mapErr(id, err)
}

// Usage reads a running container's CPU and memory use from its cgroup.
func (r *Runtime) Usage(_ context.Context, id string) (worker.Usage, error) {
	if !r.prepared(id) {
		return worker.Usage{}, worker.ErrTaskNotFound
	}
	return cgroupUsage(r.cgroupDir, id)
}

// ProbeCommand runs a health command inside the task's container (runc
// exec, as the container's user, with its environment and working
// directory) and returns its exit code and output.
func (r *Runtime) ProbeCommand(ctx context.Context, id string, argv []string, timeout time.Duration) (int, string, error) {
	if len(argv) == 0 {
		return -1, "", fmt.Errorf("health check of task %s: empty command", id)
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	if !r.prepared(id) {
		return -1, "", notFound(id)
	}
	cmd := exec.CommandContext(ctx, r.runc, append([]string{"--root", r.runcRoot, "exec", id}, argv...)...)
	var out limitedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		return -1, out.String(), fmt.Errorf("health command %q timed out after %s", strings.Join(argv, " "), timeout)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out.String(), nil
	}
	if err != nil {
		return -1, out.String(), fmt.Errorf("health check of task %s: %w", id, err)
	}
	return 0, out.String(), nil
}

// limitedBuffer keeps the first 512 bytes written to it.
type limitedBuffer struct{ bytes.Buffer }

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := 512 - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// runcCmd runs one runc command on the runtime's state.
func (r *Runtime) runcCmd(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, runcTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.runc, append([]string{"--root", r.runcRoot}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("runc %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// writeJSONAtomic writes v as JSON to dir/name through a rename.
func writeJSONAtomic(dir, name string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", name, err)
	}
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	tmp := f.Name()
	_, err = f.Write(append(data, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", filepath.Join(dir, name), err)
	}
	return nil
}

// readJSON reads dir/name into v; ok is false when it does not exist.
func readJSON(dir, name string, v any) (bool, error) {
	data, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("decode %s: %w", filepath.Join(dir, name), err)
	}
	return true, nil
}
