package container

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/poll"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
)

// probeTask is a task running the probe program with args.
func probeTask(id string, args ...string) *pb.Task {
	return &pb.Task{
		Id: id, ServiceId: "svc", ServiceName: "probe", Slot: 1,
		Spec: &pb.TaskSpec{Runtime: Name, Container: &pb.ContainerSpec{Image: "task:1", Command: append([]string{"/probe"}, args...)}},
	}
}

// runToEnd prepares and starts the task, waits for its exit and returns it
// with the task's output.
func runToEnd(t *testing.T, r *Runtime, task *pb.Task, files worker.TaskFiles) (worker.Exit, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := r.Prepare(ctx, task, files); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	t.Cleanup(func() { _ = r.Remove(context.Background(), task.Id) })
	if err := r.Start(ctx, task.Id); err != nil {
		t.Fatalf("Start: %v", err)
	}
	ex, err := r.Wait(ctx, task.Id)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	rc, err := r.Logs(ctx, task.Id, worker.LogOptions{})
	if err != nil {
		t.Fatalf("Logs: %v", err)
	}
	defer rc.Close()
	out, _ := io.ReadAll(rc)
	return ex, string(out)
}

// TestIsolation runs the probe in containers and checks what it sees: its
// own processes only, none of the node's files, its own hostname, Docker's
// default capabilities without new privileges, masked /proc paths, its
// secrets, its image's users, and its memory limit.
func TestIsolation(t *testing.T) {
	requireRunc(t)
	imgs := testImages(t)
	r := newRuntime(t, newStateDir(t, imgs), imgs)

	hostFile := filepath.Join(t.TempDir(), "host-only")
	if err := os.WriteFile(hostFile, []byte("node secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	secretDir := t.TempDir()
	secretPath := filepath.Join(secretDir, "token")
	if err := os.WriteFile(secretPath, []byte("s3cret"), 0o400); err != nil {
		t.Fatal(err)
	}
	hostname, _ := os.Hostname()

	for _, tc := range []struct {
		name  string
		args  []string
		setup func(*pb.Task)
		files worker.TaskFiles
		check func(t *testing.T, id string, ex worker.Exit, out string)
	}{
		{name: "sees only its own processes", args: []string{"pids"},
			check: func(t *testing.T, _ string, ex worker.Exit, out string) {
				if ex.Code != 0 || out != "pids: 1\n" {
					t.Errorf("exit %+v, output %q; want only pid 1", ex, out)
				}
			}},
		{name: "does not see the node's files", args: []string{"cat", hostFile},
			check: func(t *testing.T, _ string, ex worker.Exit, out string) {
				if out != "missing\n" {
					t.Errorf("output %q; want the node's file missing", out)
				}
			}},
		{name: "has its own hostname", args: []string{"hostname"},
			check: func(t *testing.T, id string, _ worker.Exit, out string) {
				if out != "hostname: "+hostnameFor(id)+"\n" || strings.Contains(out, " "+hostname+"\n") {
					t.Errorf("output %q; want hostname %s (the node's is %s)", out, hostnameFor(id), hostname)
				}
			}},
		{name: "has Docker's default capabilities and no new privileges", args: []string{"cat", "/proc/self/status"},
			check: func(t *testing.T, _ string, _ worker.Exit, out string) {
				for _, want := range []string{"CapEff:\t00000000a80425fb", "CapBnd:\t00000000a80425fb", "NoNewPrivs:\t1"} {
					if !strings.Contains(out, want+"\n") {
						t.Errorf("status lacks %q:\n%s", want, out)
					}
				}
			}},
		{name: "has masked /proc paths", args: []string{"cat", "/proc/timer_list"},
			check: func(t *testing.T, _ string, _ worker.Exit, out string) {
				if out != "content: \n" {
					t.Errorf("output %q; want /proc/timer_list empty", out)
				}
			}},
		{name: "reads its secret as its user", args: []string{"cat", "/run/secrets/token"},
			setup: func(task *pb.Task) { task.Spec.Container.User = "app" },
			files: worker.TaskFiles{Secrets: worker.FileSet{Dir: secretDir, Files: []worker.TaskFile{{Target: "token", Path: secretPath}}}},
			check: func(t *testing.T, _ string, _ worker.Exit, out string) {
				if out != "content: s3cret\n" {
					t.Errorf("output %q; want the secret", out)
				}
			}},
		{name: "runs as its image's user with its groups", args: []string{"id"},
			setup: func(task *pb.Task) { task.Spec.Container.User = "app" },
			check: func(t *testing.T, _ string, _ worker.Exit, out string) {
				if out != "uid: 1000 gid: 1000 groups: [2000]\n" {
					t.Errorf("output %q; want uid 1000, gid 1000, groups [2000]", out)
				}
			}},
		{name: "writes to its own layer, never the image's", args: []string{"write", "/written"},
			check: func(t *testing.T, _ string, _ worker.Exit, out string) {
				if out != "wrote /written\n" {
					t.Errorf("output %q; want the write to succeed", out)
				}
				if _, err := os.Stat(filepath.Join(taskImage(t), "written")); err == nil {
					t.Errorf("the task's write reached the image's directory")
				}
			}},
		{name: "cannot write to a read-only root", args: []string{"write", "/written"},
			setup: func(task *pb.Task) { task.Spec.Container.ReadOnly = true },
			check: func(t *testing.T, _ string, _ worker.Exit, out string) {
				if !strings.Contains(out, "read-only file system") {
					t.Errorf("output %q; want the write refused", out)
				}
			}},
		{name: "is held to its memory limit", args: []string{"hog", "200"},
			setup: func(task *pb.Task) {
				task.Spec.Resources = &pb.ResourceRequirements{Limits: &pb.Resources{MemoryBytes: 32 << 20}}
			},
			check: func(t *testing.T, _ string, ex worker.Exit, out string) {
				if ex.Code != 137 || ex.Signal != "SIGKILL" || !strings.Contains(ex.Message, "out of memory") || strings.Contains(out, "survived") {
					t.Errorf("exit %+v, output %q; want killed at its memory limit", ex, out)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			task := probeTask("iso-"+hostnameUnsafe.ReplaceAllString(tc.name, "-")[:20]+"-"+randomSuffix(), tc.args...)
			if tc.setup != nil {
				tc.setup(task)
			}
			ex, out := runToEnd(t, r, task, tc.files)
			tc.check(t, task.Id, ex, out)
		})
	}
}

// TestBadInput checks that what can never run is refused at Prepare, as a
// permanent error that says why, leaving nothing behind.
func TestBadInput(t *testing.T) {
	requireRunc(t)
	imgs := testImages(t)
	r := newRuntime(t, newStateDir(t, imgs), imgs)
	for _, tc := range []struct {
		name string
		spec *pb.ContainerSpec
		want string
	}{
		{"no such program", &pb.ContainerSpec{Image: "task:1", Command: []string{"/nope"}}, "not found in the image"},
		{"no such user", &pb.ContainerSpec{Image: "task:1", User: "nobody-here"}, "unknown user"},
		{"bad env", &pb.ContainerSpec{Image: "task:1", Env: []string{"NOEQUALS"}}, "KEY=VALUE"},
		{"relative working dir", &pb.ContainerSpec{Image: "task:1", Dir: "rel"}, "not an absolute path"},
		{"no image", &pb.ContainerSpec{}, "has no image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			task := &pb.Task{Id: "bad-" + randomSuffix(), Spec: &pb.TaskSpec{Runtime: Name, Container: tc.spec}}
			err := r.Prepare(context.Background(), task, worker.TaskFiles{})
			var perm *worker.PermanentError
			if !errors.As(err, &perm) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Prepare = %v; want a permanent error saying %q", err, tc.want)
			}
			if list, err := r.List(context.Background()); err != nil || len(list) != 0 {
				t.Errorf("List after the failed Prepare = %+v, %v; want nothing", list, err)
			}
		})
	}
}

// startTaskProgram prepares and starts a container of the conformance
// task program (image task:1) with args, removed when the test ends, and
// returns a context for the test's calls.
func startTaskProgram(t *testing.T, idPrefix string, args ...string) (context.Context, *Runtime, *pb.Task) {
	t.Helper()
	requireRunc(t)
	imgs := testImages(t)
	r := newRuntime(t, newStateDir(t, imgs), imgs)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	task := &pb.Task{Id: idPrefix + "-" + randomSuffix(), Spec: &pb.TaskSpec{Runtime: Name,
		Container: &pb.ContainerSpec{Image: "task:1", Args: args}}}
	if err := r.Prepare(ctx, task, worker.TaskFiles{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Remove(context.Background(), task.Id) })
	if err := r.Start(ctx, task.Id); err != nil {
		t.Fatal(err)
	}
	return ctx, r, task
}

// TestCommandProbe runs a health command inside a running container.
func TestCommandProbe(t *testing.T) {
	ctx, r, task := startTaskProgram(t, "probe", "sleep")
	code, out, err := r.ProbeCommand(ctx, task.Id, []string{"/probe", "hostname"}, 10*time.Second)
	if err != nil || code != 0 || out != "hostname: "+hostnameFor(task.Id)+"\n" {
		t.Errorf("ProbeCommand = %d, %q, %v; want 0 and the container's hostname", code, out, err)
	}
	code, _, err = r.ProbeCommand(ctx, task.Id, []string{"/probe", "nonsense"}, 10*time.Second)
	if err != nil || code != 2 {
		t.Errorf("ProbeCommand of a failing command = %d, %v; want exit code 2", code, err)
	}
	if u, err := r.Usage(ctx, task.Id); err != nil || u.MemoryBytes <= 0 {
		t.Errorf("Usage = %+v, %v; want the container's memory", u, err)
	}
}

// TestStopWhileTheProgramStarts stops a container whose program has not
// yet set up its SIGTERM handling: as PID 1 of its namespace it would never
// get a SIGTERM sent then, and the stop would wait out the grace period
// before SIGKILL. The stop waits for the handler instead, so the program
// ends on SIGTERM, cleanly and long before the grace period is over.
func TestStopWhileTheProgramStarts(t *testing.T) {
	ctx, r, task := startTaskProgram(t, "late", "late-trap", "300")
	logs := func() string {
		rc, err := r.Logs(ctx, task.Id, worker.LogOptions{})
		if err != nil {
			t.Fatalf("Logs: %v", err)
		}
		defer rc.Close()
		out, _ := io.ReadAll(rc)
		return string(out)
	}
	poll.Until(t, 10*time.Second, "the program to start, its SIGTERM at the default action", func() (bool, string) {
		out := logs()
		return strings.Contains(out, "starting"), out
	})
	const grace = 20 * time.Second
	begin := time.Now()
	if err := r.Stop(ctx, task.Id, grace); err != nil {
		t.Fatal(err)
	}
	took := time.Since(begin)
	ex, err := r.Wait(ctx, task.Id)
	if err != nil {
		t.Fatal(err)
	}
	if ex.Code != 0 || ex.Signal != "" || !strings.Contains(logs(), "got SIGTERM") {
		t.Fatalf("stopped after %s: exit %+v, output %q; want the program's own clean exit on SIGTERM", took, ex, logs())
	}
	if took >= grace/2 {
		t.Fatalf("the stop took %s (grace %s): the SIGTERM was lost", took, grace)
	}
}

// randomSuffix makes task IDs unique across runs.
func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// TestStraysListedAndRemoved checks that a container whose bundle is gone
// (an agent that died while removing it) is still listed, from runc's
// state and the supervisor's directory, and that Remove deletes what is
// left of it.
func TestStraysListedAndRemoved(t *testing.T) {
	requireRunc(t)
	imgs := testImages(t)
	r := newRuntime(t, newStateDir(t, imgs), imgs)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	task := &pb.Task{Id: "stray-" + randomSuffix(), Spec: &pb.TaskSpec{Runtime: Name,
		Container: &pb.ContainerSpec{Image: "task:1", Args: []string{"sleep"}}}}
	if err := r.Prepare(ctx, task, worker.TaskFiles{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx, task.Id); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(r.bundle(task.Id)); err != nil {
		t.Fatal(err)
	}
	list, err := r.List(ctx)
	if err != nil || len(list) != 1 || list[0].TaskID != task.Id || list[0].State != worker.RunExited {
		t.Fatalf("List = %+v, %v; want the stray, exited", list, err)
	}
	if err := r.Remove(ctx, task.Id); err != nil {
		t.Fatal(err)
	}
	if list, err := r.List(ctx); err != nil || len(list) != 0 {
		t.Fatalf("List after Remove = %+v, %v; want nothing", list, err)
	}
	for _, d := range []string{filepath.Join(r.runcRoot, task.Id), filepath.Join(r.dir, "tasks", task.Id)} {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("%s is left", d)
		}
	}
}
