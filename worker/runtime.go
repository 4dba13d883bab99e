// Package worker is the Shoal agent: it holds a session with the managers,
// keeps its assigned tasks in a local bolt file, drives each task through
// its states one step at a time, and runs them through a Runtime.
package worker

import (
	"context"
	"errors"
	"io"
	"strconv"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
)

// ErrTaskNotFound means the runtime knows no task with that ID.
var ErrTaskNotFound = errors.New("task not found in the runtime")

// Runtime runs tasks on this node. Every method is idempotent: the agent
// may call it again after a crash or a retry, so starting a started task,
// stopping a stopped one and removing a removed one all succeed.
type Runtime interface {
	// Name is the runtime's name as tasks ask for it ("process", "docker").
	Name() string
	// Prepare makes everything a task needs before it starts (checks the
	// executable or image, allocates ports, creates directories) and hands
	// it the secret and config files the agent wrote. A permanent problem
	// (no such executable) is a *PermanentError.
	Prepare(ctx context.Context, t *pb.Task, files TaskFiles) error
	// Start starts a prepared task.
	Start(ctx context.Context, taskID string) error
	// Wait blocks until the task has exited and returns how; it returns at
	// once for a task that exited already, even if it exited while the
	// agent was not running.
	Wait(ctx context.Context, taskID string) (Exit, error)
	// Stop asks the task to stop (SIGTERM or the runtime's equivalent),
	// waits up to grace, then kills it.
	Stop(ctx context.Context, taskID string, grace time.Duration) error
	// Remove deletes everything the runtime keeps for the task; an unknown
	// task is already removed.
	Remove(ctx context.Context, taskID string) error
	// Inspect reports what the runtime knows of a task, or ErrTaskNotFound.
	Inspect(ctx context.Context, taskID string) (TaskInfo, error)
	// List reports every task this runtime holds on this node.
	List(ctx context.Context) ([]TaskInfo, error)
	// Logs returns the task's output.
	Logs(ctx context.Context, taskID string, opts LogOptions) (io.ReadCloser, error)
}

// ExitWatcher is a Runtime that can tell the moment a running task's
// main process ends, before the runtime has recorded how (Wait waits for
// that): the agent takes the task out of its node's mesh at once.
type ExitWatcher interface {
	// WatchExit returns a channel closed when the task's main process has
	// ended; never closed once ctx is done.
	WatchExit(ctx context.Context, taskID string) (<-chan struct{}, error)
}

// RunState is where a task stands in its runtime.
type RunState int

// Runtime states.
const (
	RunCreated RunState = iota + 1
	RunRunning
	RunExited
)

func (s RunState) String() string {
	switch s {
	case RunCreated:
		return "created"
	case RunRunning:
		return "running"
	case RunExited:
		return "exited"
	}
	return "unknown"
}

// TaskInfo is a runtime's view of one task.
type TaskInfo struct {
	TaskID string
	State  RunState
	// Pid is the task's main process (process runtime) while it runs.
	Pid int
	// ContainerID is the container's ID (docker runtime).
	ContainerID string
	// Ports are where the task's ports are reachable on this node.
	Ports []*pb.PortBinding
	// Exit is set once State is RunExited.
	Exit Exit
}

// Exit is how a task ended.
type Exit struct {
	Code     int
	Signal   string
	Message  string
	ExitedAt time.Time
}

// LogOptions select a task's output.
type LogOptions struct {
	// Tail is how many lines from the end; 0 means all.
	Tail int
	// Follow keeps the stream open for new output until ctx ends.
	Follow bool
	// Timestamps prefixes each line with the time it was written (RFC
	// 3339 with nanoseconds, then a space); Since and Until, when not
	// zero, keep only the lines written in that window. A runtime that
	// keeps no times refuses them (ErrNoLogTimes).
	Timestamps   bool
	Since, Until time.Time
}

// ErrNoLogTimes is a runtime's refusal of LogOptions that need the times
// output was written at, which it does not keep.
var ErrNoLogTimes = errors.New("this runtime keeps no times with a task's output")

// PermanentError is a failure that retrying will not fix: the task is
// rejected rather than tried again.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Usage is a task's resource use as its runtime reads it.
type Usage struct {
	// CPUTotal is the CPU time the task has used since it started (ns).
	CPUTotal uint64
	// MemoryBytes is the memory it uses now, less inactive page cache.
	MemoryBytes int64
	// MemoryLimit is its memory limit (0: none).
	MemoryLimit int64
}

// UsageReader is implemented by runtimes that can measure their tasks'
// CPU and memory use.
type UsageReader interface {
	// Usage reads a running task's use now.
	Usage(ctx context.Context, taskID string) (Usage, error)
}

// Availability is implemented by runtimes that can come and go (the Docker
// Engine may stop): the node offers them only while they are available.
type Availability interface {
	Available() bool
}

// TaskFiles is what the agent wrote for a task before it starts: its
// secrets and its configs. The zero value means the task uses neither. The
// agent removes the files when the task ends.
type TaskFiles struct {
	// Secrets are in a private directory on an in-memory filesystem, one
	// file per secret the task references, named by the reference's target.
	Secrets FileSet
	// Configs are in a private directory of their own, each at its target
	// path below it (target /etc/app.conf: Dir/etc/app.conf).
	Configs FileSet
	// RegistryAuth are the credentials to pull the task's image with
	// (a service created with --with-registry-auth), held in memory only;
	// nil pulls anonymously.
	RegistryAuth *pb.RegistryAuth
}

// progressKey carries a progress reporter in a context.
type progressKey struct{}

// WithProgress returns a context through which a runtime reports how a
// long step (Prepare pulling an image) is going: report receives a short
// line ("pulling 3/5 layers") each time it changes.
func WithProgress(ctx context.Context, report func(msg string)) context.Context {
	return context.WithValue(ctx, progressKey{}, report)
}

// ReportProgress reports a step's progress through ctx (see WithProgress);
// without a reporter it does nothing.
func ReportProgress(ctx context.Context, msg string) {
	if report, ok := ctx.Value(progressKey{}).(func(string)); ok && report != nil {
		report(msg)
	}
}

// FileSet is one task's directory of secret or config files.
type FileSet struct {
	// Dir is the directory on this node ("" when there are no files).
	Dir string
	// Files are the files below Dir, one per reference.
	Files []TaskFile
}

// TaskFile is one secret or config as a file.
type TaskFile struct {
	// Target is where the task sees the file: a secret's file name, a
	// config's absolute path in a container.
	Target string
	// Path is the file on this node.
	Path string
	// UID and GID (numeric) own the file when the reference named them
	// (the agent set them); "" leaves it to the runtime (the task's user,
	// or root in a container).
	UID, GID string
}

// Owner is the file's owner: the one its reference named, else uid and
// gid.
func (f TaskFile) Owner(uid, gid int) (int, int) {
	if n, err := strconv.Atoi(f.UID); err == nil {
		uid = n
	}
	if n, err := strconv.Atoi(f.GID); err == nil {
		gid = n
	}
	return uid, gid
}

// ContainerSecretsDir is where the docker runtime mounts a task's secret
// files inside its container (Docker's convention).
const ContainerSecretsDir = "/run/secrets"

// SecretsDirEnv names the environment variable that tells a process task
// where its secret files are.
const SecretsDirEnv = "SHOAL_SECRETS_DIR"

// ConfigsDirEnv names the environment variable that tells a process task
// where its config files are: a config with target /etc/app.conf is
// $SHOAL_CONFIGS_DIR/etc/app.conf.
const ConfigsDirEnv = "SHOAL_CONFIGS_DIR"
