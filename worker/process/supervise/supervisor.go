package supervise

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"
)

// SupervisorSubcommand is the hidden shoal subcommand that runs a task's
// supervisor when no standalone supervisor (Binary) is installed next to
// shoal:
//
//	shoal __supervise [-grace DURATION] TASK_DIR
//
// and cmd/shoal must dispatch it, before any other flag parsing or setup,
// as
//
//	if len(os.Args) > 1 && os.Args[1] == supervise.SupervisorSubcommand {
//		os.Exit(supervise.Supervise(os.Args[2:]))
//	}
const SupervisorSubcommand = "__supervise"

const (
	// lockWait bounds how long a supervisor waits for the task lock, which
	// the agent's liveness probe holds for a moment at a time.
	lockWait = 2 * time.Second
	// logDrainWait bounds how long the supervisor waits, after the task's
	// process group is gone, for output still in the pipe (a process that
	// left the group could hold it open forever).
	logDrainWait = 2 * time.Second
)

// Supervise is the main function of a task's supervisor process: shoal
// re-executed by the process runtime's Start, in a session of its own so it
// outlives the agent. args are the arguments after the subcommand:
//
//	[-grace DURATION] TASK_DIR
//
// TASK_DIR is the absolute path of the task's state directory (which ends
// in the task ID, so ps shows which task a supervisor runs); -grace is how
// long a SIGTERM-ed task gets before SIGKILL when the stop did not come
// with its own grace period (stop.json). Supervise starts the task program
// from TASK_DIR/spec.json in its own process group (and cgroup), appends
// its stdout and stderr to TASK_DIR/task.log with rotation, records its pid
// in state.json, waits for it, kills what is left of its process group, and
// records how it ended in exit.json. On SIGTERM or SIGINT it forwards
// SIGTERM to the task's process group and SIGKILLs the group after the
// grace period. Its own diagnostics go to stderr. It returns the process
// exit status: 0 when it recorded the task's end (whatever the task's own
// status), 1 when it could not, 2 for a usage error, 3 when another
// supervisor owns the task.
func Supervise(args []string) int {
	if len(args) == 1 && args[0] == ProtocolFlag {
		fmt.Println(Protocol)
		return 0
	}
	fs := flag.NewFlagSet(SupervisorSubcommand, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	grace := fs.Duration("grace", DefaultStopGrace, "how long a stopped task gets between SIGTERM and SIGKILL")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 || !filepath.IsAbs(fs.Arg(0)) {
		fmt.Fprintf(os.Stderr, "usage: %s [-grace DURATION] TASK_DIR (absolute), or %s %s\n", Binary, Binary, ProtocolFlag)
		return 2
	}
	s := &supervisor{
		dir:   fs.Arg(0),
		grace: *grace,
		log:   slog.New(slog.NewTextHandler(os.Stderr, nil)).With("task_dir", fs.Arg(0), "supervisor_pid", os.Getpid()),
	}
	return s.run()
}

type supervisor struct {
	dir   string
	grace time.Duration
	log   *slog.Logger
}

func (s *supervisor) run() int {
	// The task gets SIGKILL when the thread that forked it dies
	// (Pdeathsig): keep this goroutine on one thread for the whole life of
	// the task, so that is only when the supervisor dies.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	sigc := make(chan os.Signal, 4)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigc)
	// SIGHUP is dropped. Not with signal.Ignore: an ignored signal stays
	// ignored across exec, and the task must start with default signal
	// dispositions (the handlers Go installs are reset by exec). Notify
	// also overrides a SIGHUP or SIGINT ignore inherited from the agent.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	lock, err := s.lock()
	if err != nil {
		s.log.Error("cannot take the task lock", "err", err)
		return 1
	}
	if lock == nil {
		s.log.Warn("another supervisor owns this task; exiting")
		return 3
	}
	defer lock.Close() // the kernel releases it when we die, too

	// Exactly once: a supervisor that finds supervisor.json was started
	// twice (an agent retry), or after one that died.
	if FileExists(filepath.Join(s.dir, SupervisorFile)) || FileExists(filepath.Join(s.dir, ExitFile)) {
		s.log.Warn("the task was already started by another supervisor, or stopped; exiting")
		return 3
	}
	if err := WriteJSONAtomic(s.dir, SupervisorFile, SupervisorRecord{Pid: os.Getpid(), StartedAt: time.Now()}, 0o644); err != nil {
		s.log.Error("cannot record the supervisor", "err", err)
		return 1
	}

	var spec Spec
	if ok, err := ReadJSON(s.dir, SpecFile, &spec); err != nil || !ok {
		if err == nil {
			err = errors.New("spec.json is missing")
		}
		return s.startFailed(fmt.Errorf("read the task spec: %w", err))
	}
	s.log = s.log.With("task_id", spec.TaskID)

	// A stop that came before the start: do not start.
	if FileExists(filepath.Join(s.dir, StopFile)) || pending(sigc) {
		return s.recordExit(ExitRecord{Message: "stopped before it was started", ExitedAt: time.Now()})
	}

	logw, err := openRotating(filepath.Join(s.dir, LogFile), spec.MaxLogBytes)
	if err != nil {
		return s.startFailed(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		logw.Close()
		return s.startFailed(fmt.Errorf("create the output pipe: %w", err))
	}
	var plan *CgroupPlan
	var p CgroupPlan
	if ok, err := ReadJSON(s.dir, CgroupFile, &p); err != nil {
		s.log.Warn("cannot read the task's cgroups; running without", "err", err)
	} else if ok && len(p.Entries) > 0 {
		plan = &p
	}

	cmd, err := s.start(&spec, plan, pw)
	pw.Close()
	if err != nil {
		pr.Close()
		fmt.Fprintf(logw, "shoal: cannot start the task: %v\n", err)
		logw.Close()
		return s.startFailed(err)
	}
	pid := cmd.Process.Pid
	s.log.Info("task started", "pid", pid, "argv", spec.Argv)
	if err := WriteJSONAtomic(s.dir, StateFile, StateRecord{Pid: pid, StartedAt: time.Now()}, 0o644); err != nil {
		s.log.Error("cannot record the task's pid", "err", err)
	}

	copied := make(chan struct{})
	go func() {
		defer close(copied)
		if _, err := io.Copy(logw, pr); err != nil && !errors.Is(err, os.ErrClosed) {
			s.log.Warn("copying the task's output", "err", err)
		}
	}()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	var (
		stopping  bool
		stopGrace time.Duration
		killed    bool
		killTimer <-chan time.Time
		waitErr   error
	)
loop:
	for {
		select {
		case sig := <-sigc:
			if stopping {
				continue
			}
			stopping = true
			stopGrace = s.grace
			var req StopRecord
			if ok, err := ReadJSON(s.dir, StopFile, &req); err == nil && ok {
				stopGrace = max(req.Grace, 0)
			}
			s.log.Info("stopping the task", "signal", sig, "grace", stopGrace)
			_ = syscall.Kill(-pid, syscall.SIGTERM)
			t := time.NewTimer(stopGrace)
			defer t.Stop()
			killTimer = t.C
		case <-killTimer:
			killTimer = nil
			killed = true
			s.log.Info("the task did not stop within its grace period; killing it", "grace", stopGrace)
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		case waitErr = <-waited:
			break loop
		}
	}

	// The task's main process is gone: nothing of the task outlives it.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	KillCgroup(plan.Dirs())
	select {
	case <-copied:
	case <-time.After(logDrainWait):
		s.log.Warn("a process outside the task's group still holds its output; closing it")
		pr.Close()
		<-copied
	}
	pr.Close()
	if err := logw.Close(); err != nil {
		s.log.Warn("closing the task log", "err", err)
	}

	ex := describeExit(cmd.ProcessState, waitErr)
	if ex.Signal == "SIGKILL" && !killed && plan.OOMKills() > 0 {
		ex.OOMKilled = true
		ex.Message = fmt.Sprintf("out of memory: killed by the kernel at its memory limit (%d bytes)", plan.MemoryBytes)
	}
	if stopping {
		if killed {
			ex.Message = fmt.Sprintf("stopped: %s after not exiting within the %s grace period", ex.Message, stopGrace)
		} else {
			ex.Message = "stopped: " + ex.Message
		}
	}
	return s.recordExit(ex)
}

// lock takes the task lock, retrying while the agent's probe holds it.
func (s *supervisor) lock() (*os.File, error) {
	deadline := time.Now().Add(lockWait)
	for {
		f, err := TryLock(s.dir)
		if err != nil || f != nil || time.Now().After(deadline) {
			return f, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// start starts the task in its own process group and cgroup.
func (s *supervisor) start(spec *Spec, plan *CgroupPlan, out *os.File) (*exec.Cmd, error) {
	if len(spec.Argv) == 0 {
		return nil, errors.New("the task spec has no command")
	}
	newCmd := func() *exec.Cmd {
		return &exec.Cmd{
			Path:        spec.Argv[0],
			Args:        spec.Argv,
			Env:         spec.Env,
			Dir:         spec.Dir,
			Stdout:      out,
			Stderr:      out,
			SysProcAttr: taskSysProcAttr(spec.Credential),
		}
	}
	if plan == nil {
		cmd := newCmd()
		return cmd, cmd.Start()
	}
	if plan.Version == 2 && len(plan.Entries) == 1 {
		// clone3(CLONE_INTO_CGROUP): the child is born in its cgroup.
		if fd, err := syscall.Open(plan.Entries[0].Dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0); err == nil {
			cmd := newCmd()
			setCgroupFD(cmd.SysProcAttr, fd)
			err := cmd.Start()
			syscall.Close(fd)
			if err == nil {
				return cmd, nil
			}
			s.log.Warn("starting the task into its cgroup failed; retrying by joining the cgroup first", "err", err)
		}
	}
	// Join the cgroup, fork the task inside it, leave.
	cmd := newCmd()
	leave, err := plan.Join()
	if err != nil {
		s.log.Warn("cannot join the task's cgroup; the task runs without its limits", "err", err)
		return cmd, cmd.Start()
	}
	err = cmd.Start()
	leave()
	return cmd, err
}

// startFailed records that the task never ran.
func (s *supervisor) startFailed(err error) int {
	s.log.Error("cannot start the task", "err", err)
	return s.recordExit(ExitRecord{Code: -1, Message: "failed to start: " + err.Error(), ExitedAt: time.Now(), StartFailed: true})
}

func (s *supervisor) recordExit(ex ExitRecord) int {
	if err := WriteJSONAtomic(s.dir, ExitFile, ex, 0o644); err != nil {
		s.log.Error("cannot record the task's exit", "err", err, "exit", ex.Message)
		return 1
	}
	s.log.Info("task exited", "code", ex.Code, "signal", ex.Signal, "message", ex.Message)
	return 0
}

func pending(c <-chan os.Signal) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// describeExit turns a wait status into an exit record. A task killed by a
// signal gets code 128+signal, as shells report it.
func describeExit(ps *os.ProcessState, waitErr error) ExitRecord {
	ex := ExitRecord{ExitedAt: time.Now()}
	if ps == nil {
		ex.Code = -1
		ex.Message = fmt.Sprintf("lost the task: %v", waitErr)
		return ex
	}
	ws, ok := ps.Sys().(syscall.WaitStatus)
	switch {
	case ok && ws.Signaled():
		ex.Code = 128 + int(ws.Signal())
		ex.Signal = SignalName(ws.Signal())
		ex.Message = "killed by " + ex.Signal
	default:
		ex.Code = ps.ExitCode()
		ex.Message = fmt.Sprintf("exited with code %d", ex.Code)
	}
	return ex
}

var signalNames = map[syscall.Signal]string{
	syscall.SIGABRT: "SIGABRT", syscall.SIGALRM: "SIGALRM", syscall.SIGBUS: "SIGBUS",
	syscall.SIGCHLD: "SIGCHLD", syscall.SIGCONT: "SIGCONT", syscall.SIGFPE: "SIGFPE",
	syscall.SIGHUP: "SIGHUP", syscall.SIGILL: "SIGILL", syscall.SIGINT: "SIGINT",
	syscall.SIGIO: "SIGIO", syscall.SIGKILL: "SIGKILL", syscall.SIGPIPE: "SIGPIPE",
	syscall.SIGPROF: "SIGPROF", syscall.SIGQUIT: "SIGQUIT", syscall.SIGSEGV: "SIGSEGV",
	syscall.SIGSTOP: "SIGSTOP", syscall.SIGSYS: "SIGSYS", syscall.SIGTERM: "SIGTERM",
	syscall.SIGTRAP: "SIGTRAP", syscall.SIGTSTP: "SIGTSTP", syscall.SIGTTIN: "SIGTTIN",
	syscall.SIGTTOU: "SIGTTOU", syscall.SIGURG: "SIGURG", syscall.SIGUSR1: "SIGUSR1",
	syscall.SIGUSR2: "SIGUSR2", syscall.SIGVTALRM: "SIGVTALRM", syscall.SIGWINCH: "SIGWINCH",
	syscall.SIGXCPU: "SIGXCPU", syscall.SIGXFSZ: "SIGXFSZ",
}

// SignalName is a signal's conventional name ("SIGKILL"), or SIG<n>
// for one without.
func SignalName(sig syscall.Signal) string {
	if n, ok := signalNames[sig]; ok {
		return n
	}
	return fmt.Sprintf("SIG%d", int(sig))
}
