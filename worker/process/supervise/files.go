package supervise

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// A task's state lives in DIR/<task-id>/. Every file but the logs is written
// atomically (temporary file, fsync, rename), so a reader sees either the
// whole file or none of it:
//
//	spec.json        what to run (Prepare; never changes afterwards)
//	lock             flock(2)-ed by the supervisor for as long as it lives
//	cgroup.json      the task's cgroup directories (Start; absent without cgroups)
//	supervisor.json  the supervisor's pid (the supervisor, once it holds the lock)
//	state.json       the task's pid and start time (the supervisor, after the start)
//	stop.json        the grace period of a requested stop (Stop)
//	exit.json        how the task ended (the supervisor, or the agent when the
//	                 supervisor died without writing it); written last
//	task.log[.1]     the task's stdout and stderr, rotated at MaxLogBytes
//	supervisor.log   the supervisor's own diagnostics
//	work/            the task's HOME and default working directory
const (
	SpecFile          = "spec.json"
	LockFile          = "lock"
	CgroupFile        = "cgroup.json"
	SupervisorFile    = "supervisor.json"
	StateFile         = "state.json"
	StopFile          = "stop.json"
	ExitFile          = "exit.json"
	LogFile           = "task.log"
	SupervisorLogFile = "supervisor.log"
	WorkDir           = "work"
)

// DefaultStopGrace is how long a stopped task gets between SIGTERM and
// SIGKILL when nothing says otherwise.
const DefaultStopGrace = 10 * time.Second

// SpecVersion is the layout version of spec.json.
const SpecVersion = 1

// taskSpec is spec.json: everything the supervisor needs to run the task,
// resolved by Prepare.
type Spec struct {
	Version     int    `json:"version"`
	TaskID      string `json:"task_id"`
	ServiceID   string `json:"service_id,omitempty"`
	ServiceName string `json:"service_name,omitempty"`
	Slot        uint64 `json:"slot"`
	// Argv is the command line; Argv[0] is an absolute path.
	Argv []string `json:"argv"`
	Env  []string `json:"env"`
	// Dir is the working directory.
	Dir string `json:"dir"`
	// User is the user as the task asked for it; Credential is what it
	// resolved to (nil: run as the agent's user).
	User        string        `json:"user,omitempty"`
	Credential  *Credential   `json:"credential,omitempty"`
	Ports       []PortBinding `json:"ports,omitempty"`
	MemoryBytes int64         `json:"memory_bytes,omitempty"`
	NanoCPUs    int64         `json:"nano_cpus,omitempty"`
	StopGrace   time.Duration `json:"stop_grace"`
	MaxLogBytes int64         `json:"max_log_bytes"`
	CreatedAt   time.Time     `json:"created_at"`
}

// credential is the user a task runs as.
type Credential struct {
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`
}

// portBinding is a pb.PortBinding as stored in spec.json.
type PortBinding struct {
	TargetPort uint32 `json:"target_port"`
	HostIP     string `json:"host_ip"`
	HostPort   uint32 `json:"host_port"`
	Protocol   string `json:"protocol"`
}

// supervisorRecord is supervisor.json.
type SupervisorRecord struct {
	Pid       int       `json:"pid"`
	StartedAt time.Time `json:"started_at"`
}

// stateRecord is state.json: the task's main process. It leads its own
// process group, so Pid is also the group ID.
type StateRecord struct {
	Pid       int       `json:"pid"`
	StartedAt time.Time `json:"started_at"`
}

// stopRecord is stop.json.
type StopRecord struct {
	Grace       time.Duration `json:"grace"`
	RequestedAt time.Time     `json:"requested_at"`
}

// exitRecord is exit.json.
type ExitRecord struct {
	Code     int       `json:"code"`
	Signal   string    `json:"signal,omitempty"`
	Message  string    `json:"message"`
	ExitedAt time.Time `json:"exited_at"`
	// StartFailed is set when the program never ran (exec failed, or the
	// supervisor could not set it up).
	StartFailed bool `json:"start_failed,omitempty"`
	// OOMKilled is set when the kernel killed the task for exceeding its
	// memory limit.
	OOMKilled bool `json:"oom_killed,omitempty"`
}

// writeJSONAtomic writes v as JSON to dir/name through a temporary file and
// a rename, so readers never see a partial file.
func WriteJSONAtomic(dir, name string, v any, perm fs.FileMode) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", name, err)
	}
	data = append(data, '\n')
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", filepath.Join(dir, name), err)
	}
	if err := f.Chmod(perm); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", filepath.Join(dir, name), err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", filepath.Join(dir, name), err)
	}
	return nil
}

// readJSON reads dir/name into v. ok is false, with a nil error, when the
// file does not exist.
func ReadJSON(dir, name string, v any) (ok bool, err error) {
	data, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", filepath.Join(dir, name), err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("decode %s: %w", filepath.Join(dir, name), err)
	}
	return true, nil
}

func FileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// tryLock takes the task's supervisor lock without blocking. It returns the
// open lock file (close it to release) or nil when another open file
// description, i.e. a live supervisor, holds the lock. The lock is released
// by the kernel when its holder dies, however it dies, which makes it a
// liveness check that pid reuse cannot fool.
func TryLock(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, LockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open task lock: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err != syscall.EINTR {
			break
		}
	}
	if err == nil {
		return f, nil
	}
	f.Close()
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return nil, nil
	}
	return nil, fmt.Errorf("lock %s: %w", filepath.Join(dir, LockFile), err)
}

// supervisorAlive reports whether a supervisor holds the task's lock.
func SupervisorAlive(dir string) (bool, error) {
	if !FileExists(filepath.Join(dir, LockFile)) {
		return false, nil
	}
	f, err := TryLock(dir)
	if err != nil {
		return false, err
	}
	if f == nil {
		return true, nil
	}
	f.Close()
	return false, nil
}
