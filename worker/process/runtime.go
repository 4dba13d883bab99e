// Package process is Shoal's embedded default runtime: it runs a task's
// program directly on the node, as a plain process, without images or
// containers.
//
// Each started task gets a small supervisor process (shoal re-executed
// with the hidden __supervise subcommand, see Supervise) in a session of
// its own, so tasks keep running, and their exits are recorded, while the
// agent is down or restarting. All of a task's state is in files under
// Config.Dir/<task-id>/ (see files.go), so a new Runtime on the same
// directory picks up where the previous agent left off.
//
// Isolation is deliberately light: every task runs in its own process
// group (all of which is killed when the task stops or its main process
// exits), optionally as another user, and, when the agent runs as root
// with cgroups available, in its own cgroup with the task's memory and CPU
// limits. There is no filesystem, network, PID or user namespace
// isolation: a task sees the node as any local process does. Isolation()
// says what a given node enforces.
package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/shoal-cluster/shoal/internal/keylock"
	"github.com/shoal-cluster/shoal/internal/spreaddir"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/process/supervise"
)

var _ worker.Runtime = (*Runtime)(nil)

// Name is the runtime's name as tasks ask for it.
const Name = "process"

const (
	// DefaultMaxLogBytes is the default size at which a task's log rotates.
	DefaultMaxLogBytes = 10 << 20
	// DefaultCgroupParent is the default parent of task cgroups.
	DefaultCgroupParent = "shoal"

	defaultStopGrace = 10 * time.Second
	// stopMargin is how long past the grace period Stop waits for the
	// supervisor to record the exit before killing everything itself.
	stopMargin = 3 * time.Second
	// startTimeout bounds how long Start waits for the supervisor to
	// report the task started.
	startTimeout = 15 * time.Second
	// pollInterval is how often Wait and Stop look at a task's files.
	pollInterval = 50 * time.Millisecond
	// watchedPollInterval is how often Wait looks at them while it also
	// watches the task's supervisor process, which ends right after it
	// records the task's exit: a safety net only (with 20 idle container
	// tasks polled every 50ms, the worker used 9.4% of a core; 3.5% so).
	watchedPollInterval = time.Second
)

// Config configures a process runtime.
type Config struct {
	// Dir is the runtime's state root (e.g. DATA/worker/process); each
	// task lives in Dir/<task-id>/. Required.
	Dir string
	// AdvertiseIP is the node's IP: task ports are allocated on it and
	// reported as its host IP. Empty means all interfaces (0.0.0.0).
	AdvertiseIP string
	// DNSAddr is the node's service resolver (host:port), given to tasks
	// as SHOAL_DNS so they can resolve other services by name.
	DNSAddr string
	// Executable is the shoal binary that runs supervisors
	// (default os.Executable()). Ignored when SupervisorCommand is set.
	Executable string
	// SupervisorCommand is the command line that runs a supervisor, to
	// which Start appends the arguments of Supervise. Default:
	// [Executable, "__supervise"]. Tests use their own binary.
	SupervisorCommand []string
	// SupervisorEnv is added to the agent's environment for supervisors.
	SupervisorEnv []string
	// Logger receives the runtime's logs (default slog.Default()).
	Logger *slog.Logger
	// MaxLogBytes is the size at which a task's log file rotates; one
	// rotated file is kept, so a task uses at most about twice this on
	// disk. Default DefaultMaxLogBytes.
	MaxLogBytes int64
	// CgroupParent names the cgroup under which task cgroups are created,
	// relative to each hierarchy's root. Default DefaultCgroupParent.
	CgroupParent string
	// DisableCgroups runs tasks without cgroups even when available.
	DisableCgroups bool
}

// Runtime is the process runtime. It is safe for concurrent use.
type Runtime struct {
	dir         string
	advertiseIP string
	dnsAddr     string
	supCmd      []string
	supEnv      []string
	log         *slog.Logger
	// watchedPoll is Wait's poll interval while it watches a supervisor.
	watchedPoll time.Duration
	maxLogBytes int64
	cgroups     *supervise.CgroupManager // nil: no cgroups
	isolation   string

	locks  keylock.Map // per task: Prepare, Start, Stop, Remove
	portMu sync.Mutex  // port allocation across tasks

	supMu sync.Mutex
	sups  map[string]chan struct{} // closed when a supervisor we started exits
}

// New makes a process runtime on cfg.Dir, creating it if needed. Tasks
// already in the directory (from an earlier agent) are picked up.
func New(cfg Config) (*Runtime, error) {
	if cfg.Dir == "" {
		return nil, errors.New("process runtime: no state directory")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("process runtime: %w", err)
	}
	// Traversable by task users, who own their work directories.
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, fmt.Errorf("process runtime: create state directory: %w", err)
	}
	if cfg.AdvertiseIP != "" && net.ParseIP(cfg.AdvertiseIP) == nil {
		return nil, fmt.Errorf("process runtime: invalid advertise IP %q", cfg.AdvertiseIP)
	}
	r := &Runtime{
		dir:         dir,
		advertiseIP: cfg.AdvertiseIP,
		dnsAddr:     cfg.DNSAddr,
		supEnv:      cfg.SupervisorEnv,
		log:         cfg.Logger,
		maxLogBytes: cfg.MaxLogBytes,
		sups:        map[string]chan struct{}{},
		watchedPoll: watchedPollInterval,
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	r.log = r.log.With("runtime", Name)
	// A directory per task comes and goes in it.
	spreaddir.MarkAll(r.log, dir)
	if r.maxLogBytes <= 0 {
		r.maxLogBytes = DefaultMaxLogBytes
	}
	r.supCmd = cfg.SupervisorCommand
	if len(r.supCmd) == 0 {
		exe := cfg.Executable
		if exe == "" {
			if exe, err = os.Executable(); err != nil {
				return nil, fmt.Errorf("process runtime: find the shoal executable: %w", err)
			}
		}
		r.supCmd = []string{exe, supervise.SupervisorSubcommand}
	}
	if _, err := os.Stat(r.supCmd[0]); err != nil {
		return nil, fmt.Errorf("process runtime: supervisor executable: %w", err)
	}
	parent := cfg.CgroupParent
	if parent == "" {
		parent = DefaultCgroupParent
	}
	if !validCgroupParent(parent) {
		return nil, fmt.Errorf("process runtime: invalid cgroup parent %q", parent)
	}

	const common = "each task in its own process group (killed as a whole on stop or exit), optionally as another user; no filesystem, network or PID isolation"
	var why error
	if cfg.DisableCgroups {
		why = errors.New("disabled by configuration")
	} else {
		r.cgroups, why = supervise.DetectCgroups(parent)
	}
	if r.cgroups != nil {
		r.isolation = fmt.Sprintf("%s: per-task memory and CPU limits enforced; %s", r.cgroups.Describe(), common)
		if !r.cgroups.HasCPU() {
			r.isolation = fmt.Sprintf("%s: per-task memory limits enforced, CPU limits not enforced; %s", r.cgroups.Describe(), common)
		}
		r.log.Info("task resource limits are enforced with cgroups", "isolation", r.isolation)
	} else {
		r.isolation = fmt.Sprintf("no cgroups (%v): memory and CPU limits are not enforced; %s", why, common)
		r.log.Info("cgroups unavailable: task memory and CPU limits will not be enforced", "reason", why.Error())
	}
	return r, nil
}

// Name returns "process".
func (r *Runtime) Name() string { return Name }

// Isolation describes what this runtime enforces on this node.
func (r *Runtime) Isolation() string { return r.isolation }

// LimitsEnforced reports whether task memory limits are enforced (with
// cgroups).
func (r *Runtime) LimitsEnforced() bool { return r.cgroups != nil }

var taskIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

func validCgroupParent(p string) bool {
	for _, part := range strings.Split(p, "/") {
		if part == "" || part == "." || part == ".." {
			return false
		}
	}
	return true
}

// taskDir is a task's state directory; ok is false for an ID that cannot
// name one.
func (r *Runtime) taskDir(id string) (string, bool) {
	if !taskIDPattern.MatchString(id) {
		return "", false
	}
	return filepath.Join(r.dir, id), true
}

func notFound(id string) error {
	return fmt.Errorf("task %s: %w", id, worker.ErrTaskNotFound)
}

// readTaskSpec reads a task's spec; a task without one does not exist.
func (r *Runtime) readTaskSpec(id string) (string, *supervise.Spec, error) {
	dir, ok := r.taskDir(id)
	if !ok {
		return "", nil, notFound(id)
	}
	var spec supervise.Spec
	ok, err := supervise.ReadJSON(dir, supervise.SpecFile, &spec)
	if err != nil {
		return "", nil, err
	}
	if !ok {
		return "", nil, notFound(id)
	}
	return dir, &spec, nil
}

// Start starts a prepared task's supervisor and returns once the task is
// running (or has already exited). Starting a started or exited task does
// nothing; a task whose program could not be started returns a
// *worker.PermanentError, then and on every later Start.
func (r *Runtime) Start(ctx context.Context, id string) error {
	unlock, err := r.locks.Lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	dir, spec, err := r.readTaskSpec(id)
	if err != nil {
		return err
	}
	if ex, ok, err := readExit(dir); err != nil {
		return err
	} else if ok {
		return startError(id, ex)
	}
	if supervise.FileExists(filepath.Join(dir, supervise.SupervisorFile)) {
		return nil // started already
	}
	if alive, err := supervise.SupervisorAlive(dir); err != nil {
		return err
	} else if alive { // launched by an earlier agent, still starting
		return r.waitStarted(ctx, id, dir, nil)
	}

	// Stale leftovers of an attempt that never got as far as the
	// supervisor recording itself.
	os.Remove(filepath.Join(dir, supervise.StateFile))
	if r.cgroups == nil && spec.MemoryBytes > 0 {
		r.log.Warn("the task's memory limit is not enforced: no cgroups on this node", "task_id", id, "memory_bytes", spec.MemoryBytes)
	}
	if r.cgroups != nil {
		plan, err := r.cgroups.Create(id, spec.MemoryBytes, spec.NanoCPUs)
		switch {
		case err != nil && spec.MemoryBytes > 0:
			r.log.Warn("the task's memory limit is not enforced", "task_id", id, "err", err)
		case err != nil:
			r.log.Info("the task's cgroup is incomplete", "task_id", id, "err", err)
		}
		if plan != nil {
			if err := supervise.WriteJSONAtomic(dir, supervise.CgroupFile, plan, 0o644); err != nil {
				return err
			}
		}
	}

	logf, err := os.OpenFile(filepath.Join(dir, supervise.SupervisorLogFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("start task %s: open supervisor log: %w", id, err)
	}
	grace := spec.StopGrace
	if grace <= 0 {
		grace = defaultStopGrace
	}
	args := append(append([]string{}, r.supCmd[1:]...), "-grace", grace.String(), dir)
	cmd := exec.Command(r.supCmd[0], args...)
	cmd.Env = append(os.Environ(), r.supEnv...)
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return fmt.Errorf("start task %s: start supervisor: %w", id, err)
	}
	// Reap the supervisor when it exits (while this agent lives; after
	// that it is reparented to init).
	done := make(chan struct{})
	r.supMu.Lock()
	r.sups[id] = done
	r.supMu.Unlock()
	go func() {
		_ = cmd.Wait()
		close(done)
		r.supMu.Lock()
		if r.sups[id] == done {
			delete(r.sups, id)
		}
		r.supMu.Unlock()
	}()
	r.log.Debug("supervisor started", "task_id", id, "supervisor_pid", cmd.Process.Pid)
	return r.waitStarted(ctx, id, dir, done)
}

// waitStarted waits until the supervisor has started the task or recorded
// that it could not.
func (r *Runtime) waitStarted(ctx context.Context, id, dir string, done <-chan struct{}) error {
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	exited := false
	for {
		if ex, ok, err := readExit(dir); err != nil {
			return err
		} else if ok {
			return startError(id, ex)
		}
		if supervise.FileExists(filepath.Join(dir, supervise.StateFile)) {
			return nil
		}
		if exited {
			return fmt.Errorf("start task %s: the supervisor exited without starting it: %s", id,
				supervise.LastLines(filepath.Join(dir, supervise.SupervisorLogFile), 3))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("start task %s: %w", id, ctx.Err())
		case <-deadline.C:
			return fmt.Errorf("start task %s: the supervisor did not start it within %s", id, startTimeout)
		case <-done:
			exited, done = true, nil // look at the files once more
		case <-tick.C:
		}
	}
}

func startError(id string, ex supervise.ExitRecord) error {
	if ex.StartFailed {
		return &worker.PermanentError{Err: fmt.Errorf("start task %s: %s", id, ex.Message)}
	}
	return nil
}

func readExit(dir string) (supervise.ExitRecord, bool, error) {
	var ex supervise.ExitRecord
	ok, err := supervise.ReadJSON(dir, supervise.ExitFile, &ex)
	return ex, ok, err
}

// exitOf is how a task's exit.json reads as the agent reports it.
func exitOf(ex supervise.ExitRecord) worker.Exit {
	return worker.Exit{Code: ex.Code, Signal: ex.Signal, Message: ex.Message, ExitedAt: ex.ExitedAt}
}

// runState is where a task stands, from its files.
func (r *Runtime) runState(id, dir string) (worker.RunState, int, worker.Exit, error) {
	if ex, ok, err := readExit(dir); err != nil {
		return 0, 0, worker.Exit{}, err
	} else if ok {
		return worker.RunExited, 0, exitOf(ex), nil
	}
	if !supervise.FileExists(filepath.Join(dir, supervise.SupervisorFile)) {
		if !supervise.FileExists(filepath.Join(dir, supervise.SpecFile)) {
			return 0, 0, worker.Exit{}, notFound(id)
		}
		return worker.RunCreated, 0, worker.Exit{}, nil
	}
	alive, err := supervise.SupervisorAlive(dir)
	if err != nil {
		return 0, 0, worker.Exit{}, err
	}
	if alive {
		var st supervise.StateRecord
		if _, err := supervise.ReadJSON(dir, supervise.StateFile, &st); err != nil {
			return 0, 0, worker.Exit{}, err
		}
		return worker.RunRunning, st.Pid, worker.Exit{}, nil
	}
	ex, err := r.recordSupervisorDeath(id, dir, "")
	if errors.Is(err, errSupervisorAlive) {
		return r.runState(id, dir)
	}
	if err != nil {
		return 0, 0, worker.Exit{}, err
	}
	return worker.RunExited, 0, exitOf(ex), nil
}

var errSupervisorAlive = errors.New("the supervisor is alive")

// recordSupervisorDeath handles a started task whose supervisor is gone:
// it returns the recorded exit if there is one, or else kills whatever is
// left of the task and records an exit with code -1 (message, or one
// saying the supervisor died).
func (r *Runtime) recordSupervisorDeath(id, dir, message string) (supervise.ExitRecord, error) {
	lock, err := supervise.TryLock(dir)
	if err != nil {
		return supervise.ExitRecord{}, err
	}
	if lock == nil {
		return supervise.ExitRecord{}, errSupervisorAlive
	}
	defer lock.Close()
	if ex, ok, err := readExit(dir); err != nil || ok {
		return ex, err
	}
	var sup supervise.SupervisorRecord
	var st supervise.StateRecord
	_, _ = supervise.ReadJSON(dir, supervise.SupervisorFile, &sup)
	_, _ = supervise.ReadJSON(dir, supervise.StateFile, &st)
	r.killLeftovers(id, dir, st.Pid)
	if message == "" {
		message = fmt.Sprintf("the task's supervisor (pid %d) died without recording its exit; the task's processes were killed", sup.Pid)
	}
	ex := supervise.ExitRecord{Code: -1, Message: message, ExitedAt: time.Now()}
	if err := supervise.WriteJSONAtomic(dir, supervise.ExitFile, ex, 0o644); err != nil {
		return supervise.ExitRecord{}, err
	}
	r.log.Warn("task supervisor died", "task_id", id, "supervisor_pid", sup.Pid, "pid", st.Pid)
	ex, _, err = readExit(dir) // exactly as every later reader sees it
	return ex, err
}

// killLeftovers SIGKILLs the task's process group and cgroup. The group ID
// is only signalled while the task lock is free, i.e. no supervisor runs:
// the main process has then been killed by its parent-death signal, and a
// group ID stays reserved while any member lives.
func (r *Runtime) killLeftovers(id, dir string, pgid int) {
	if pgid > 0 {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
	supervise.KillCgroup(r.cgroupDirs(id, dir))
}

// cgroupDirs are a task's cgroup directories.
func (r *Runtime) cgroupDirs(id, dir string) []string {
	var plan supervise.CgroupPlan
	if ok, _ := supervise.ReadJSON(dir, supervise.CgroupFile, &plan); ok {
		return plan.Dirs()
	}
	return nil
}

// Wait blocks until the task has exited and returns how. It works for
// tasks started by an earlier agent too.
func (r *Runtime) Wait(ctx context.Context, id string) (worker.Exit, error) {
	dir, ok := r.taskDir(id)
	if !ok {
		return worker.Exit{}, notFound(id)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var supervisorGone <-chan struct{}
	watched := false
	for {
		state, _, ex, err := r.runState(id, dir)
		if err != nil {
			return worker.Exit{}, err
		}
		if state == worker.RunExited {
			return ex, nil
		}
		// A running task's supervisor records its exit, then exits
		// itself: watch the supervisor, whoever started it, and look
		// at the files only now and then meanwhile.
		if state == worker.RunRunning && !watched {
			watched = true
			if gone, err := r.watchSupervisor(wctx, dir); err == nil {
				supervisorGone = gone
				tick.Reset(r.watchedPoll)
			}
		}
		select {
		case <-ctx.Done():
			return worker.Exit{}, ctx.Err()
		case <-r.supervisorDone(id):
		case <-supervisorGone:
			// Once: should the files lag, poll as before.
			supervisorGone = nil
			tick.Reset(pollInterval)
		case <-tick.C:
		}
	}
}

// watchSupervisor returns a channel closed when the task's supervisor
// process ends.
func (r *Runtime) watchSupervisor(ctx context.Context, dir string) (<-chan struct{}, error) {
	var sup supervise.SupervisorRecord
	if ok, err := supervise.ReadJSON(dir, supervise.SupervisorFile, &sup); err != nil {
		return nil, err
	} else if !ok || sup.Pid <= 0 {
		return nil, errors.New("no supervisor pid recorded")
	}
	return watchPid(ctx, sup.Pid)
}

// supervisorDone is closed when the supervisor this Runtime started for
// the task exits; nil (never ready) when it did not start one.
func (r *Runtime) supervisorDone(id string) <-chan struct{} {
	r.supMu.Lock()
	defer r.supMu.Unlock()
	return r.sups[id]
}

// Stop stops a task: SIGTERM to its process group through the supervisor,
// SIGKILL after grace. A task that is not running (or unknown) needs no
// stopping; a prepared task that never started is marked exited so it
// never will.
func (r *Runtime) Stop(ctx context.Context, id string, grace time.Duration) error {
	unlock, err := r.locks.Lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	return r.stop(ctx, id, grace)
}

func (r *Runtime) stop(ctx context.Context, id string, grace time.Duration) error {
	dir, ok := r.taskDir(id)
	if !ok {
		return nil
	}
	grace = max(grace, 0)
	state, _, _, err := r.runState(id, dir)
	if errors.Is(err, worker.ErrTaskNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	switch state {
	case worker.RunExited:
		return nil
	case worker.RunCreated:
		lock, err := supervise.TryLock(dir)
		if err != nil {
			return err
		}
		if lock != nil {
			if supervise.FileExists(filepath.Join(dir, supervise.ExitFile)) || supervise.FileExists(filepath.Join(dir, supervise.SupervisorFile)) {
				lock.Close()
				return r.stop(ctx, id, grace) // raced with a start
			}
			err := supervise.WriteJSONAtomic(dir, supervise.ExitFile, supervise.ExitRecord{Message: "stopped before it was started", ExitedAt: time.Now()}, 0o644)
			lock.Close()
			return err
		}
		// A supervisor is starting it: stop it like a running task.
	}

	// The supervisor reads the grace period from stop.json, or declines to
	// start the task when it finds the file before starting it.
	if err := supervise.WriteJSONAtomic(dir, supervise.StopFile, supervise.StopRecord{Grace: grace, RequestedAt: time.Now()}, 0o644); err != nil {
		return err
	}
	if err := r.signalSupervisor(dir, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop task %s: %w", id, err)
	}
	r.log.Debug("stopping task", "task_id", id, "grace", grace)
	if done, err := r.waitExited(ctx, id, dir, time.Now().Add(grace+stopMargin)); done || err != nil {
		return err
	}

	// The supervisor did not record the exit in time: kill everything.
	r.log.Warn("the task's supervisor did not stop it in time; killing it", "task_id", id, "grace", grace)
	var st supervise.StateRecord
	_, _ = supervise.ReadJSON(dir, supervise.StateFile, &st)
	if st.Pid > 0 {
		_ = syscall.Kill(-st.Pid, syscall.SIGKILL)
	}
	supervise.KillCgroup(r.cgroupDirs(id, dir))
	if done, err := r.waitExited(ctx, id, dir, time.Now().Add(time.Second)); done || err != nil {
		return err
	}
	if err := r.signalSupervisor(dir, syscall.SIGKILL); err != nil {
		return fmt.Errorf("stop task %s: %w", id, err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		_, err := r.recordSupervisorDeath(id, dir, fmt.Sprintf("killed: the task did not stop within %s and its supervisor did not record its exit", grace))
		if !errors.Is(err, errSupervisorAlive) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("stop task %s: its supervisor survived SIGKILL", id)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollInterval):
		}
	}
}

// signalSupervisor signals the task's supervisor, if it is alive. The pid
// in supervisor.json is the lock holder's own, so it cannot have been
// reused while the lock is held.
func (r *Runtime) signalSupervisor(dir string, sig syscall.Signal) error {
	var sup supervise.SupervisorRecord
	ok, err := supervise.ReadJSON(dir, supervise.SupervisorFile, &sup)
	if err != nil || !ok || sup.Pid <= 0 {
		return err // not yet recorded: it will find stop.json
	}
	if alive, err := supervise.SupervisorAlive(dir); err != nil || !alive {
		return err
	}
	if err := syscall.Kill(sup.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal supervisor %d: %w", sup.Pid, err)
	}
	return nil
}

// waitExited polls until the task has exited (true), deadline (false) or
// ctx ends (its error).
func (r *Runtime) waitExited(ctx context.Context, id, dir string, deadline time.Time) (bool, error) {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		state, _, _, err := r.runState(id, dir)
		if err != nil {
			return false, err
		}
		if state == worker.RunExited {
			return true, nil
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-r.supervisorDone(id):
		case <-tick.C:
		}
	}
}

// Remove stops the task if it runs (with its own stop grace period) and
// deletes its cgroup and directory. An unknown task is already removed.
func (r *Runtime) Remove(ctx context.Context, id string) error {
	unlock, err := r.locks.Lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	dir, ok := r.taskDir(id)
	if !ok || !supervise.FileExists(dir) {
		return nil
	}
	var spec supervise.Spec
	if ok, _ := supervise.ReadJSON(dir, supervise.SpecFile, &spec); ok {
		grace := spec.StopGrace
		if grace <= 0 {
			grace = defaultStopGrace
		}
		if err := r.stop(ctx, id, grace); err != nil {
			return err
		}
	}
	// Let a supervisor that just recorded the exit finish exiting.
	deadline := time.Now().Add(2 * time.Second)
	for {
		alive, err := supervise.SupervisorAlive(dir)
		if err != nil || !alive {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("remove task %s: its supervisor is still running", id)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	dirs := r.cgroupDirs(id, dir)
	if len(dirs) == 0 {
		dirs = r.cgroups.PlanDirs(id)
	}
	if err := supervise.RemoveCgroups(dirs, time.Now().Add(2*time.Second)); err != nil {
		r.log.Warn("cannot remove the task's cgroup", "task_id", id, "err", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove task %s: %w", id, err)
	}
	r.log.Debug("task removed", "task_id", id)
	return nil
}

// Inspect reports a task's state, pid, ports and exit.
func (r *Runtime) Inspect(ctx context.Context, id string) (worker.TaskInfo, error) {
	if err := ctx.Err(); err != nil {
		return worker.TaskInfo{}, err
	}
	dir, spec, err := r.readTaskSpec(id)
	if err != nil {
		return worker.TaskInfo{}, err
	}
	state, pid, ex, err := r.runState(id, dir)
	if err != nil {
		return worker.TaskInfo{}, err
	}
	return worker.TaskInfo{TaskID: id, State: state, Pid: pid, Exit: ex, Ports: portBindings(spec)}, nil
}

// List reports every task in the runtime's directory, by ID.
func (r *Runtime) List(ctx context.Context) ([]worker.TaskInfo, error) {
	entries, err := os.ReadDir(r.dir)
	if err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	var out []worker.TaskInfo
	for _, e := range entries {
		if !e.IsDir() || !taskIDPattern.MatchString(e.Name()) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		info, err := r.Inspect(ctx, e.Name())
		if errors.Is(err, worker.ErrTaskNotFound) {
			continue // not prepared (yet), or removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

// Logs returns the task's combined stdout and stderr. With Follow the
// stream stays open for new output until the task has exited and all of it
// is read, ctx ends, or the reader is closed.
func (r *Runtime) Logs(ctx context.Context, id string, opts worker.LogOptions) (io.ReadCloser, error) {
	if opts.Timestamps || !opts.Since.IsZero() || !opts.Until.IsZero() {
		// The task's output goes to its log file as it is written.
		return nil, worker.ErrNoLogTimes
	}
	dir, _, err := r.readTaskSpec(id)
	if err != nil {
		return nil, err
	}
	if opts.Follow {
		return supervise.FollowLogs(ctx, dir, opts.Tail, 100*time.Millisecond)
	}
	return supervise.ReadLogs(dir, opts.Tail)
}

// portBindings are the task's ports as the agent reports them.
func portBindings(s *supervise.Spec) []*pb.PortBinding {
	var out []*pb.PortBinding
	for _, p := range s.Ports {
		b := &pb.PortBinding{TargetPort: p.TargetPort, HostIp: p.HostIP, HostPort: p.HostPort}
		if p.Protocol == "udp" {
			b.Protocol = pb.PortProtocol_PORT_PROTOCOL_UDP
		}
		out = append(out, b)
	}
	return out
}
