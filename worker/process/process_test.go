package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/poll"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/process/supervise"
)

// ---------------------------------------------------------------- helpers

// testWriter sends slog output to t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testConfig(t testing.TB, dir string) Config {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Dir:               dir,
		AdvertiseIP:       "127.0.0.1",
		SupervisorCommand: []string{exe},
		// A race-enabled binary sleeps a second at exit by default.
		SupervisorEnv: []string{"SHOAL_SUPERVISE=1", "SHOAL_TEST_MARKER=" + testMarker, "GORACE=atexit_sleep_ms=0"},
		Logger:        slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		CgroupParent:  testCgroupParent,
	}
}

// newStateDir makes a runtime state directory whose tasks are all stopped
// and removed when the test ends.
func newStateDir(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "process")
	t.Cleanup(func() { cleanupStateDir(t, dir) })
	return dir
}

func cleanupStateDir(t *testing.T, dir string) {
	if !supervise.FileExists(dir) {
		return
	}
	r, err := New(testConfig(t, dir))
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		sup, _ := os.ReadFile(filepath.Join(dir, e.Name(), supervise.SupervisorLogFile))
		if bytes.Contains(sup, []byte("DATA RACE")) {
			t.Errorf("the supervisor of %s found a data race:\n%s", e.Name(), sup)
		}
		if err := r.Stop(ctx, e.Name(), 0); err != nil {
			t.Errorf("cleanup: stop %s: %v", e.Name(), err)
		}
		if err := r.Remove(ctx, e.Name()); err != nil {
			t.Errorf("cleanup: remove %s: %v", e.Name(), err)
		}
	}
}

func newRuntime(t *testing.T, dir string, opts ...func(*Config)) *Runtime {
	t.Helper()
	cfg := testConfig(t, dir)
	for _, o := range opts {
		o(&cfg)
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r
}

var taskSeq atomic.Int64

func newTaskID() string { return fmt.Sprintf("task-%d", taskSeq.Add(1)) }

// shTask is a task running a shell script.
func shTask(script string, env ...string) *pb.Task {
	return &pb.Task{
		Id:          newTaskID(),
		ServiceId:   "svc-id",
		ServiceName: "web",
		Slot:        3,
		Spec: &pb.TaskSpec{Container: &pb.ContainerSpec{
			Command: []string{"/bin/sh", "-c", script},
			Env:     append([]string{"SHOAL_TEST_MARKER=" + testMarker}, env...),
		}},
	}
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustRun(t *testing.T, r *Runtime, task *pb.Task) {
	t.Helper()
	ctx := testCtx(t, 20*time.Second)
	if err := r.Prepare(ctx, task, worker.TaskFiles{}); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	if err := r.Start(ctx, task.Id); err != nil {
		t.Fatalf("Start: %v", err)
	}
}

func mustWait(t *testing.T, r *Runtime, id string) worker.Exit {
	t.Helper()
	ex, err := r.Wait(testCtx(t, 20*time.Second), id)
	if err != nil {
		t.Fatalf("Wait(%s): %v", id, err)
	}
	return ex
}

func mustLogs(t *testing.T, r *Runtime, id string, opts worker.LogOptions) string {
	t.Helper()
	rc, err := r.Logs(testCtx(t, 20*time.Second), id, opts)
	if err != nil {
		t.Fatalf("Logs: %v", err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read logs: %v", err)
	}
	return string(b)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, d, what, poll.Bool(cond, nil))
}

// readPidFile waits for a task to write a pid into path.
func readPidFile(t *testing.T, path string) int {
	t.Helper()
	var pid int
	eventually(t, 10*time.Second, "pid file "+path, func() bool {
		b, err := os.ReadFile(path)
		if err != nil || !bytes.HasSuffix(b, []byte("\n")) {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	return pid
}

func waitLog(t *testing.T, r *Runtime, id, want string) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("%q in the logs of %s", want, id), func() bool {
		rc, err := r.Logs(context.Background(), id, worker.LogOptions{})
		if err != nil {
			return false
		}
		defer rc.Close()
		b, _ := io.ReadAll(rc)
		return strings.Contains(string(b), want)
	})
}

func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	return env
}

// ---------------------------------------------------------------- tests

func TestNameAndIsolation(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, newStateDir(t))
	if r.Name() != "process" {
		t.Errorf("Name() = %q", r.Name())
	}
	if r.Isolation() == "" {
		t.Error("Isolation() is empty")
	}
	t.Logf("isolation: %s", r.Isolation())
}

// TestRunExitAndLogs: how the process runtime names a task's program
// (command, image, a bare name in PATH) and describes its exit. Exit codes
// and output as such are the conformance suite's.
func TestRunExitAndLogs(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, newStateDir(t))
	withImage := shTask("")
	withImage.Spec.Container.Command = nil
	withImage.Spec.Container.Image = "/bin/echo"
	withImage.Spec.Container.Args = []string{"from", "image"}
	fromPath := shTask("")
	fromPath.Spec.Container.Command = []string{"sh", "-c", "echo found in PATH"}

	for _, tc := range []struct {
		name       string
		task       *pb.Task
		code       int
		signal     string
		logs       []string
		msgContain string
	}{
		{"exit code", shTask("exit 3"), 3, "", nil, "exited with code 3"},
		{"killed by a signal", shTask("kill -KILL $$"), 137, "SIGKILL", nil, "killed by SIGKILL"},
		{"image as the program", withImage, 0, "", []string{"from image\n"}, "exited with code 0"},
		{"bare name found in PATH", fromPath, 0, "", []string{"found in PATH\n"}, "exited with code 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			mustRun(t, r, tc.task)
			ex := mustWait(t, r, tc.task.Id)
			if ex.Code != tc.code || ex.Signal != tc.signal {
				t.Errorf("exit = %+v, want code %d signal %q", ex, tc.code, tc.signal)
			}
			if !strings.Contains(ex.Message, tc.msgContain) {
				t.Errorf("exit message %q does not contain %q", ex.Message, tc.msgContain)
			}
			logs := mustLogs(t, r, tc.task.Id, worker.LogOptions{})
			for _, want := range tc.logs {
				if !strings.Contains(logs, want) {
					t.Errorf("logs %q do not contain %q", logs, want)
				}
			}
		})
	}
}

// TestLogsTail: a last line without a newline counts as a line.
func TestLogsTail(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, newStateDir(t))
	noNL := shTask(`printf 'a\nb\nc'`)
	mustRun(t, r, noNL)
	mustWait(t, r, noNL.Id)
	for _, tc := range []struct {
		tail int
		want string
	}{
		{1, "c"},
		{2, "b\nc"},
		{0, "a\nb\nc"},
	} {
		if got := mustLogs(t, r, noNL.Id, worker.LogOptions{Tail: tc.tail}); got != tc.want {
			t.Errorf("tail %d = %q, want %q", tc.tail, got, tc.want)
		}
	}
}

func TestReadLogsAcrossRotation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		old, cur  string
		tail      int
		want      string
		oldExists bool
	}{
		{"all", "1\n2\n", "3\n4\n", 0, "1\n2\n3\n4\n", true},
		{"tail within current", "1\n2\n", "3\n4\n", 2, "3\n4\n", true},
		{"tail spans both", "1\n2\n", "3\n4\n", 3, "2\n3\n4\n", true},
		{"tail more than all", "1\n2\n", "3\n4\n", 9, "1\n2\n3\n4\n", true},
		{"line split by rotation", "1\n2", "x\n3\n", 2, "2x\n3\n", true},
		{"no rotated file", "", "3\n4\n", 1, "4\n", false},
		{"empty", "", "", 3, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.oldExists {
				os.WriteFile(filepath.Join(dir, supervise.LogFile+".1"), []byte(tc.old), 0o644)
			}
			os.WriteFile(filepath.Join(dir, supervise.LogFile), []byte(tc.cur), 0o644)
			rc, err := supervise.ReadLogs(dir, tc.tail)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			got, _ := io.ReadAll(rc)
			if string(got) != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestFollowLogs: following goes on across rotations, and a closed
// follower stops (goleak checks). Its end at the task's exit or with its
// context is the conformance suite's.
func TestFollowLogs(t *testing.T) {
	t.Parallel()
	dir := newStateDir(t)
	r := newRuntime(t, dir, func(c *Config) { c.MaxLogBytes = 1024 })

	t.Run("until exit across rotations", func(t *testing.T) {
		t.Parallel()
		task := shTask(`i=0; while [ $i -lt 60 ]; do echo "line-$i-abcdefghijklmnopqrstuvwxyz"; i=$((i+1)); sleep 0.02; done`)
		mustRun(t, r, task)
		got := mustLogs(t, r, task.Id, worker.LogOptions{Follow: true})
		var want strings.Builder
		for i := 0; i < 60; i++ {
			fmt.Fprintf(&want, "line-%d-abcdefghijklmnopqrstuvwxyz\n", i)
		}
		if got != want.String() {
			t.Errorf("followed logs:\n%s\nwant:\n%s", got, want.String())
		}
		if !supervise.FileExists(filepath.Join(dir, task.Id, supervise.LogFile+".1")) {
			t.Error("the log never rotated")
		}
	})

	t.Run("closing the reader", func(t *testing.T) {
		t.Parallel()
		task := shTask(`while :; do echo spam; sleep 0.01; done`)
		mustRun(t, r, task)
		rc, err := r.Logs(context.Background(), task.Id, worker.LogOptions{Follow: true})
		if err != nil {
			t.Fatal(err)
		}
		waitLog(t, r, task.Id, "spam")
		rc.Close() // the follower must notice and exit (goleak checks)
	})
}

func TestEnvDirAndPorts(t *testing.T) {
	t.Parallel()
	dir := newStateDir(t)
	r := newRuntime(t, dir)
	out := t.TempDir()
	script := `env > "$OUT/env-$SHOAL_TASK_ID"; pwd > "$OUT/pwd-$SHOAL_TASK_ID"; echo ok > "$HOME/written"; grep -E '^Sig(Ign|Blk)' /proc/self/status`

	a := shTask(script, "OUT="+out, "FOO=bar", "SHOAL_SERVICE_NAME=overridden")
	a.NodeId = "node-1"
	a.Endpoint = &pb.Endpoint{Spec: &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 8080}, {TargetPort: 9090}}}}
	b := shTask(script, "OUT="+out)
	b.Endpoint = &pb.Endpoint{Ports: []*pb.PortConfig{{TargetPort: 8080}}}
	b.Spec.Container.Dir = out
	mustRun(t, r, a)
	mustRun(t, r, b)
	mustWait(t, r, a.Id)
	mustWait(t, r, b.Id)

	envA := readEnvFile(t, filepath.Join(out, "env-"+a.Id))
	home := filepath.Join(dir, a.Id, supervise.WorkDir)
	for k, want := range map[string]string{
		"HOME":               home,
		"PATH":               defaultPath,
		"SHOAL_TASK_ID":      a.Id,
		"SHOAL_SERVICE_ID":   "svc-id",
		"SHOAL_SERVICE_NAME": "overridden", // the task's env wins
		"SHOAL_TASK_SLOT":    "3",
		"SHOAL_NODE_ID":      "node-1",
		"SHOAL_HOST_IP":      "127.0.0.1",
		"FOO":                "bar",
		"PORT":               envA["PORT_8080"],
	} {
		if envA[k] != want {
			t.Errorf("task env %s=%q, want %q", k, envA[k], want)
		}
	}
	if pwd, _ := os.ReadFile(filepath.Join(out, "pwd-"+a.Id)); strings.TrimSpace(string(pwd)) != home {
		t.Errorf("working dir %q, want the task's own dir %q", pwd, home)
	}
	// No signal ignored or blocked by the supervisor leaks into the task:
	// it inherits only what this test process itself was given.
	if logs, want := mustLogs(t, r, a.Id, worker.LogOptions{}), inheritedSignalState(t); logs != want {
		t.Errorf("task signal state:\n%s\nwant (as inherited by the test):\n%s", logs, want)
	}
	if !supervise.FileExists(filepath.Join(home, "written")) {
		t.Error("the task could not write in its HOME")
	}
	if pwd, _ := os.ReadFile(filepath.Join(out, "pwd-"+b.Id)); strings.TrimSpace(string(pwd)) != out {
		t.Errorf("working dir %q, want the spec's %q", pwd, out)
	}

	infoA, err := r.Inspect(context.Background(), a.Id)
	if err != nil {
		t.Fatal(err)
	}
	envB := readEnvFile(t, filepath.Join(out, "env-"+b.Id))
	seen := map[string]bool{}
	for _, tc := range []struct {
		env    map[string]string
		target uint32
		ports  []*pb.PortBinding
		idx    int
	}{
		{envA, 8080, infoA.Ports, 0},
		{envA, 9090, infoA.Ports, 1},
		{envB, 8080, mustInspect(t, r, b.Id).Ports, 0},
	} {
		v := tc.env["PORT_"+strconv.Itoa(int(tc.target))]
		if v == "" || seen[v] {
			t.Errorf("PORT_%d=%q: missing or given to two ports", tc.target, v)
			continue
		}
		seen[v] = true
		if len(tc.ports) <= tc.idx {
			t.Errorf("Inspect reports ports %v", tc.ports)
			continue
		}
		p := tc.ports[tc.idx]
		if p.TargetPort != tc.target || p.HostIp != "127.0.0.1" || strconv.Itoa(int(p.HostPort)) != v || p.Protocol != pb.PortProtocol_PORT_PROTOCOL_TCP {
			t.Errorf("binding %v, want target %d on 127.0.0.1:%s/tcp", p, tc.target, v)
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", v))
		if err != nil {
			t.Errorf("allocated port %s is not free: %v", v, err)
		} else {
			l.Close()
		}
	}

	// Ports are persisted: a retried Prepare and a new agent see the same.
	if err := r.Prepare(context.Background(), a, worker.TaskFiles{}); err != nil {
		t.Fatal(err)
	}
	r2 := newRuntime(t, dir)
	if got := mustInspect(t, r2, a.Id).Ports; len(got) != 2 || got[0].HostPort != infoA.Ports[0].HostPort || got[1].HostPort != infoA.Ports[1].HostPort {
		t.Errorf("ports after re-Prepare and restart: %v, want %v", got, infoA.Ports)
	}
}

func mustInspect(t *testing.T, r *Runtime, id string) worker.TaskInfo {
	t.Helper()
	info, err := r.Inspect(context.Background(), id)
	if err != nil {
		t.Fatalf("Inspect(%s): %v", id, err)
	}
	return info
}

func TestUser(t *testing.T) {
	t.Parallel()
	dir := newStateDir(t)
	// Task users must be able to reach their work directory.
	for d := filepath.Dir(dir); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	r := newRuntime(t, dir)
	if os.Geteuid() != 0 {
		task := shTask("id")
		task.Spec.Container.User = "0"
		var perm *worker.PermanentError
		if err := r.Prepare(context.Background(), task, worker.TaskFiles{}); !errors.As(err, &perm) {
			t.Fatalf("Prepare as another user without root = %v, want a PermanentError", err)
		}
		return
	}
	for _, tc := range []struct{ user, uid, gid string }{
		{"nobody", "65534", ""},
		{"65534:65534", "65534", "65534"},
		{"1234:4321", "1234", "4321"}, // not in passwd
	} {
		t.Run(tc.user, func(t *testing.T) {
			t.Parallel()
			task := shTask(`echo "$(id -u):$(id -g)" > "$HOME/id"`)
			task.Spec.Container.User = tc.user
			if err := r.Prepare(context.Background(), task, worker.TaskFiles{}); err != nil {
				if tc.user == "nobody" && strings.Contains(err.Error(), "unknown user") {
					t.Skip("no user nobody on this machine")
				}
				t.Fatal(err)
			}
			if err := r.Start(context.Background(), task.Id); err != nil {
				t.Fatal(err)
			}
			if ex := mustWait(t, r, task.Id); ex.Code != 0 {
				t.Fatalf("exit %+v, logs %q", ex, mustLogs(t, r, task.Id, worker.LogOptions{}))
			}
			b, err := os.ReadFile(filepath.Join(r.dir, task.Id, supervise.WorkDir, "id"))
			if err != nil {
				t.Fatal(err)
			}
			uid, gid, _ := strings.Cut(strings.TrimSpace(string(b)), ":")
			if uid != tc.uid || (tc.gid != "" && gid != tc.gid) {
				t.Errorf("ran as %s:%s, want %s:%s", uid, gid, tc.uid, tc.gid)
			}
		})
	}
}

func TestPrepareErrors(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, newStateDir(t))
	tmp := t.TempDir()
	notExec := filepath.Join(tmp, "not-exec")
	os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644)

	cmd := func(argv ...string) *pb.Task {
		task := shTask("")
		task.Spec.Container.Command = argv
		return task
	}
	with := func(f func(*pb.Task)) *pb.Task {
		task := shTask("true")
		f(task)
		return task
	}
	type prepareCase struct {
		name string
		task *pb.Task
		want string
	}
	cases := []prepareCase{
		{"missing program", cmd("/nonexistent/prog"), "executable /nonexistent/prog not found on node"},
		{"program under a file", cmd("/bin/sh/x"), "executable /bin/sh/x not found on node"},
		{"not executable", cmd(notExec), "executable " + notExec + " is not executable"},
		{"directory", cmd(tmp), "executable " + tmp + " is not executable"},
		{"bare name not in PATH", cmd("no-such-program-xyz"), "executable no-such-program-xyz not found on node"},
		{"relative path", cmd("./prog"), "must be an absolute path"},
		{"no program", cmd(), "has no program"},
		{"no container", with(func(t *pb.Task) { t.Spec.Container = nil }), "no container spec"},
		{"bad env", with(func(t *pb.Task) { t.Spec.Container.Env = []string{"NOVALUE"} }), "invalid environment entry"},
		{"relative dir", with(func(t *pb.Task) { t.Spec.Container.Dir = "rel" }), "not an absolute path"},
		{"missing dir", with(func(t *pb.Task) { t.Spec.Container.Dir = "/nonexistent/dir" }), "does not exist"},
		{"unknown user", with(func(t *pb.Task) { t.Spec.Container.User = "no-such-user-xyz" }), "unknown user"},
		{"unknown group", with(func(t *pb.Task) { t.Spec.Container.User = "0:no-such-group-xyz" }), "unknown group"},
		{"bad task ID", with(func(t *pb.Task) { t.Id = "../escape" }), "invalid task ID"},
	}
	if os.Geteuid() == 0 {
		// The state directory is in a 0700 temporary directory.
		cases = append(cases, prepareCase{"work dir unreachable by the user",
			with(func(t *pb.Task) { t.Spec.Container.User = "65534" }), "cannot reach its working directory"})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := r.Prepare(context.Background(), tc.task, worker.TaskFiles{})
			var perm *worker.PermanentError
			if !errors.As(err, &perm) {
				t.Fatalf("Prepare = %v, want a *worker.PermanentError", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if _, err := r.Inspect(context.Background(), tc.task.Id); !errors.Is(err, worker.ErrTaskNotFound) {
				t.Errorf("Inspect after a failed Prepare = %v, want ErrTaskNotFound", err)
			}
		})
	}
}

func TestStartFailure(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, newStateDir(t))
	prog := filepath.Join(t.TempDir(), "prog")
	os.WriteFile(prog, []byte("#!/bin/sh\necho hi\n"), 0o755)
	task := shTask("")
	task.Spec.Container.Command = []string{prog}
	if err := r.Prepare(context.Background(), task, worker.TaskFiles{}); err != nil {
		t.Fatal(err)
	}
	os.Remove(prog) // gone between Prepare and Start
	for range 2 {
		err := r.Start(context.Background(), task.Id)
		var perm *worker.PermanentError
		if !errors.As(err, &perm) || !strings.Contains(err.Error(), "failed to start") {
			t.Fatalf("Start = %v, want a PermanentError saying it failed to start", err)
		}
	}
	if ex := mustWait(t, r, task.Id); ex.Code != -1 || !strings.Contains(ex.Message, "failed to start") {
		t.Errorf("exit %+v", ex)
	}
	if logs := mustLogs(t, r, task.Id, worker.LogOptions{}); !strings.Contains(logs, "cannot start") {
		t.Errorf("logs %q do not say why", logs)
	}
}

// TestStop: a stop ends the task's whole process group, and its exit says
// how it was stopped. Grace periods as such are the conformance suite's.
func TestStop(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, newStateDir(t))
	for _, tc := range []struct {
		name   string
		script string
		grace  time.Duration
		code   int
		signal string
		msg    string
	}{
		{"traps TERM and exits", `trap 'echo got TERM; exit 0' TERM`, 10 * time.Second, 0, "", "stopped: exited with code 0"},
		{"ignores TERM", `trap '' TERM`, 500 * time.Millisecond, 137, "SIGKILL", "grace period"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out := t.TempDir()
			task := shTask(tc.script+`; sleep 1000 & echo $! > "$OUT/grandchild"; echo ready; while :; do sleep 0.05; done`, "OUT="+out)
			mustRun(t, r, task)
			grandchild := readPidFile(t, filepath.Join(out, "grandchild"))
			waitLog(t, r, task.Id, "ready")
			info := mustInspect(t, r, task.Id)
			if err := r.Stop(testCtx(t, 20*time.Second), task.Id, tc.grace); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			ex := mustWait(t, r, task.Id)
			if ex.Code != tc.code || ex.Signal != tc.signal || !strings.Contains(ex.Message, tc.msg) {
				t.Errorf("exit %+v, want code %d signal %q message containing %q", ex, tc.code, tc.signal, tc.msg)
			}
			// The whole process group is gone.
			for _, pid := range []int{info.Pid, grandchild} {
				eventually(t, 5*time.Second, fmt.Sprintf("process %d to exit", pid), func() bool { return processGone(pid) })
			}
		})
	}
}

func TestStopBeforeStart(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, newStateDir(t))
	task := shTask("echo should not run")
	if err := r.Prepare(context.Background(), task, worker.TaskFiles{}); err != nil {
		t.Fatal(err)
	}
	if info := mustInspect(t, r, task.Id); info.State != worker.RunCreated {
		t.Fatalf("state after Prepare: %v", info.State)
	}
	if err := r.Stop(context.Background(), task.Id, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background(), task.Id); err != nil {
		t.Fatal(err)
	}
	ex := mustWait(t, r, task.Id)
	if !strings.Contains(ex.Message, "stopped before it was started") {
		t.Errorf("exit %+v", ex)
	}
	if logs := mustLogs(t, r, task.Id, worker.LogOptions{}); logs != "" {
		t.Errorf("the stopped task ran: %q", logs)
	}
}

func TestSupervisorKilled(t *testing.T) {
	t.Parallel()
	dir := newStateDir(t)
	r := newRuntime(t, dir)
	out := t.TempDir()
	task := shTask(`sleep 1000 & echo $! > "$OUT/grandchild"; wait`, "OUT="+out)
	mustRun(t, r, task)
	grandchild := readPidFile(t, filepath.Join(out, "grandchild"))
	info := mustInspect(t, r, task.Id)
	var sup supervise.SupervisorRecord
	if ok, err := supervise.ReadJSON(filepath.Join(dir, task.Id), supervise.SupervisorFile, &sup); !ok || err != nil {
		t.Fatalf("supervisor.json: %v", err)
	}
	if err := syscall.Kill(sup.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The parent-death signal kills the task itself without any agent.
	eventually(t, 5*time.Second, "the task to die with its supervisor", func() bool { return processGone(info.Pid) })

	ex := mustWait(t, r, task.Id)
	if ex.Code != -1 || !strings.Contains(ex.Message, "supervisor") {
		t.Errorf("exit %+v, want code -1 and a message about the supervisor", ex)
	}
	// Noticing the death, the agent killed the rest of the group.
	eventually(t, 5*time.Second, "the grandchild to be killed", func() bool { return processGone(grandchild) })
	if info := mustInspect(t, r, task.Id); info.State != worker.RunExited || info.Exit != ex {
		t.Errorf("Inspect = %+v", info)
	}
}

func TestLogRotationBounded(t *testing.T) {
	t.Parallel()
	const max = 64 << 10
	dir := newStateDir(t)
	r := newRuntime(t, dir, func(c *Config) { c.MaxLogBytes = max })
	// About 1 MiB of output.
	task := shTask(`i=0; while [ $i -lt 20000 ]; do echo "line $i 0123456789012345678901234567890123456789"; i=$((i+1)); done`)
	mustRun(t, r, task)
	if ex := mustWait(t, r, task.Id); ex.Code != 0 {
		t.Fatalf("exit %+v", ex)
	}
	var total int64
	for _, name := range []string{supervise.LogFile, supervise.LogFile + ".1", supervise.LogFile + ".2"} {
		fi, err := os.Stat(filepath.Join(dir, task.Id, name))
		if name == supervise.LogFile+".2" {
			if err == nil {
				t.Error("more than one rotated file kept")
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if fi.Size() > max {
			t.Errorf("%s is %d bytes, over the %d limit", name, fi.Size(), max)
		}
		total += fi.Size()
	}
	if total > 2*max {
		t.Errorf("%d bytes of logs on disk, want at most %d", total, 2*max)
	}
	if got := mustLogs(t, r, task.Id, worker.LogOptions{Tail: 2}); got != "line 19998 0123456789012345678901234567890123456789\nline 19999 0123456789012345678901234567890123456789\n" {
		t.Errorf("tail = %q", got)
	}
}

// TestRemove: Remove of a running task kills its process and deletes its
// directory.
func TestRemove(t *testing.T) {
	t.Parallel()
	dir := newStateDir(t)
	r := newRuntime(t, dir)
	task := shTask(`exec sleep 1000`)
	task.Spec.Container.StopGracePeriod = int64(time.Second)
	mustRun(t, r, task)
	pid := mustInspect(t, r, task.Id).Pid
	if err := r.Remove(testCtx(t, 20*time.Second), task.Id); err != nil {
		t.Fatal(err)
	}
	if supervise.FileExists(filepath.Join(dir, task.Id)) {
		t.Error("the task directory is still there")
	}
	if !processGone(pid) {
		t.Errorf("task process %d still runs", pid)
	}
}

// cgroupsWritable says why this machine cannot give tasks cgroups, or "".
func cgroupsWritable() string {
	if os.Geteuid() != 0 {
		return "not running as root"
	}
	mounts, err := supervise.ReadCgroupMounts()
	if err != nil {
		return err.Error()
	}
	for _, m := range mounts {
		v1 := m.FSType == "cgroup" && slices.Contains(strings.Split(m.SuperOpts, ","), "memory")
		v2 := m.FSType == "cgroup2" && slices.Contains(strings.Fields(readString(filepath.Join(m.Mount, "cgroup.controllers"))), "memory")
		if v1 || v2 {
			probe := filepath.Join(m.Mount, testCgroupParent+"-probe")
			if err := os.Mkdir(probe, 0o755); err != nil {
				return "cannot create a cgroup: " + err.Error()
			}
			syscall.Rmdir(probe)
			return ""
		}
	}
	return "no cgroup memory controller mounted"
}

func readString(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func TestCgroupLimits(t *testing.T) {
	t.Parallel()
	if why := cgroupsWritable(); why != "" {
		t.Skipf("cgroups are not writable on this machine: %s", why)
	}
	r := newRuntime(t, newStateDir(t))
	if !r.LimitsEnforced() {
		t.Fatalf("cgroups are writable here but the runtime does not use them: %s", r.Isolation())
	}

	t.Run("limits and membership", func(t *testing.T) {
		t.Parallel()
		out := t.TempDir()
		task := shTask(`sleep 1000 & echo $! > "$OUT/grandchild"; exec sleep 1000`, "OUT="+out)
		task.Spec.Resources = &pb.ResourceRequirements{Limits: &pb.Resources{MemoryBytes: 64 << 20, NanoCpus: 5e8}}
		mustRun(t, r, task)
		grandchild := readPidFile(t, filepath.Join(out, "grandchild"))
		pid := mustInspect(t, r, task.Id).Pid
		var plan supervise.CgroupPlan
		if ok, err := supervise.ReadJSON(filepath.Join(r.dir, task.Id), supervise.CgroupFile, &plan); !ok || err != nil {
			t.Fatalf("cgroup.json: %v", err)
		}
		want := map[string]string{}
		if plan.Version == 1 {
			want["memory.limit_in_bytes"] = "67108864"
			want["cpu.cfs_quota_us"] = "50000"
			want["cpu.cfs_period_us"] = "100000"
		} else {
			want["memory.max"] = "67108864"
			want["cpu.max"] = "50000 100000"
		}
		found := 0
		for _, e := range plan.Entries {
			for file, v := range want {
				if got, err := os.ReadFile(filepath.Join(e.Dir, file)); err == nil {
					found++
					if strings.TrimSpace(string(got)) != v {
						t.Errorf("%s/%s = %q, want %q", e.Dir, file, got, v)
					}
				}
			}
			pids, err := supervise.CgroupPids(e.Dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range []int{pid, grandchild} {
				if !slices.Contains(pids, p) {
					t.Errorf("process %d is not in cgroup %s (%v)", p, e.Dir, pids)
				}
			}
		}
		if found != len(want) {
			t.Errorf("found %d of the %d limit files in %+v", found, len(want), plan.Entries)
		}
		// The supervisor went back to its own cgroup.
		var sup supervise.SupervisorRecord
		supervise.ReadJSON(filepath.Join(r.dir, task.Id), supervise.SupervisorFile, &sup)
		if cg := readString(fmt.Sprintf("/proc/%d/cgroup", sup.Pid)); strings.Contains(cg, task.Id) {
			t.Errorf("the supervisor stayed in the task's cgroup:\n%s", cg)
		}
		if err := r.Remove(testCtx(t, 20*time.Second), task.Id); err != nil {
			t.Fatal(err)
		}
		for _, e := range plan.Entries {
			if supervise.FileExists(e.Dir) {
				t.Errorf("cgroup %s survived Remove", e.Dir)
			}
		}
	})

	t.Run("memory limit kills", func(t *testing.T) {
		t.Parallel()
		exe, _ := os.Executable()
		task := shTask("")
		task.Spec.Container.Command = []string{exe}
		task.Spec.Container.Env = append(task.Spec.Container.Env, "SHOAL_TEST_HOG="+strconv.Itoa(512<<20))
		task.Spec.Resources = &pb.ResourceRequirements{Limits: &pb.Resources{MemoryBytes: 32 << 20}}
		mustRun(t, r, task)
		ex := mustWait(t, r, task.Id)
		if ex.Signal != "SIGKILL" || !strings.Contains(ex.Message, "out of memory") {
			t.Errorf("exit %+v, want killed for running out of memory; logs %q", ex, mustLogs(t, r, task.Id, worker.LogOptions{}))
		}
	})
}

func TestStopUnresponsiveSupervisor(t *testing.T) {
	t.Parallel()
	dir := newStateDir(t)
	r := newRuntime(t, dir)
	task := shTask(`exec sleep 1000`)
	mustRun(t, r, task)
	pid := mustInspect(t, r, task.Id).Pid
	var sup supervise.SupervisorRecord
	if ok, err := supervise.ReadJSON(filepath.Join(dir, task.Id), supervise.SupervisorFile, &sup); !ok || err != nil {
		t.Fatalf("supervisor.json: %v", err)
	}
	// A supervisor that cannot act: Stop must kill everything itself.
	if err := syscall.Kill(sup.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := r.Stop(testCtx(t, 20*time.Second), task.Id, 0); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if took := time.Since(start); took < stopMargin {
		t.Errorf("Stop gave up on the supervisor after %s, before its %s margin", took, stopMargin)
	}
	ex := mustWait(t, r, task.Id)
	if ex.Code != -1 || !strings.Contains(ex.Message, "killed") {
		t.Errorf("exit %+v", ex)
	}
	eventually(t, 5*time.Second, "the task to be killed", func() bool { return processGone(pid) })
	eventually(t, 5*time.Second, "the supervisor to be killed", func() bool { return processGone(sup.Pid) })
}

// TestCgroupV2Placement starts a task into a cgroup v2 directory with
// clone3(CLONE_INTO_CGROUP). Machines in hybrid mode have a v2 hierarchy
// without controllers, which is enough to check the placement.
func TestCgroupV2Placement(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("cgroups need root")
	}
	mounts, err := supervise.ReadCgroupMounts()
	if err != nil {
		t.Skipf("cannot read mounts: %v", err)
	}
	var v2 *supervise.MountInfo
	for _, m := range mounts {
		if m.FSType == "cgroup2" {
			v2 = &m
			break
		}
	}
	if v2 == nil {
		t.Skip("no cgroup v2 hierarchy mounted")
	}
	parent := testCgroupParent + "-v2"
	if err := os.MkdirAll(filepath.Join(v2.Mount, parent), 0o755); err != nil {
		t.Skipf("cgroup v2 hierarchy not writable: %v", err)
	}
	t.Cleanup(func() { syscall.Rmdir(filepath.Join(v2.Mount, parent)) })

	dir := newStateDir(t)
	r := newRuntime(t, dir)
	r.cgroups = supervise.NewCgroupV2Manager(v2.Mount, v2.Root, parent)
	task := shTask(`sleep 1000 & cat /proc/self/cgroup; wait`)
	mustRun(t, r, task)
	want := "0::" + filepath.Join("/", parent, task.Id) + "\n"
	waitLog(t, r, task.Id, want)
	var sup supervise.SupervisorRecord
	supervise.ReadJSON(filepath.Join(dir, task.Id), supervise.SupervisorFile, &sup)
	if cg := readString(fmt.Sprintf("/proc/%d/cgroup", sup.Pid)); strings.Contains(cg, task.Id) {
		t.Errorf("the supervisor is in the task's cgroup:\n%s", cg)
	}
	if log := readString(filepath.Join(dir, task.Id, supervise.SupervisorLogFile)); strings.Contains(log, "retrying by joining") {
		t.Errorf("clone into the cgroup failed:\n%s", log)
	}
	cgDir := filepath.Join(v2.Mount, parent, task.Id)
	// sh and sleep (cat, whose output was just read, may still be exiting).
	eventually(t, 10*time.Second, fmt.Sprintf("cgroup %s to hold the task's 2 processes", cgDir), func() bool {
		pids, _ := supervise.CgroupPids(cgDir)
		return len(pids) == 2
	})
	if err := r.Remove(testCtx(t, 20*time.Second), task.Id); err != nil {
		t.Fatal(err)
	}
	if supervise.FileExists(cgDir) {
		t.Errorf("cgroup %s survived Remove", cgDir)
	}
}

// inheritedSignalState is what a child of this test inherits: no blocked
// signals, and the signals this process was started with ignored (a CI
// runner may ignore some). Go's runtime handles the others itself.
func inheritedSignalState(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("/bin/sh", "-c", "grep -E '^SigIgn' /proc/self/status").Output()
	if err != nil {
		t.Fatal(err)
	}
	return "SigBlk:\t0000000000000000\n" + string(out)
}

// TestSecretsDir: the task finds its secrets in $SHOAL_SECRETS_DIR and its
// configs (below directories of their own) in $SHOAL_CONFIGS_DIR, and a
// task running as another user owns them all (root only).
func TestSecretsDir(t *testing.T) {
	t.Parallel()
	dir := newStateDir(t)
	for d := filepath.Dir(dir); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	r := newRuntime(t, dir)
	users := []string{""}
	if os.Geteuid() == 0 {
		users = append(users, "65534:65534")
	}
	for _, user := range users {
		secrets := worker.FileSet{Dir: filepath.Join(t.TempDir(), "s")}
		if err := os.Chmod(filepath.Dir(secrets.Dir), 0o711); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(secrets.Dir, 0o700); err != nil {
			t.Fatal(err)
		}
		pw := filepath.Join(secrets.Dir, "pw")
		if err := os.WriteFile(pw, []byte("hunter2"), 0o400); err != nil {
			t.Fatal(err)
		}
		secrets.Files = []worker.TaskFile{{Target: "pw", Path: pw}}
		// A config below a directory of its own, as the agent writes one
		// with target /etc/app/app.conf.
		configs := worker.FileSet{Dir: filepath.Join(filepath.Dir(secrets.Dir), "c")}
		conf := filepath.Join(configs.Dir, "etc", "app", "app.conf")
		if err := os.MkdirAll(filepath.Dir(conf), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(conf, []byte(" port=80"), 0o400); err != nil {
			t.Fatal(err)
		}
		configs.Files = []worker.TaskFile{{Target: "/etc/app/app.conf", Path: conf}}
		task := shTask(`cat "$SHOAL_SECRETS_DIR/pw" "$SHOAL_CONFIGS_DIR/etc/app/app.conf" > "$HOME/out"`, "SHOAL_SECRETS_DIR=/not/here")
		task.Spec.Container.User = user
		ctx := testCtx(t, 20*time.Second)
		if err := r.Prepare(ctx, task, worker.TaskFiles{Secrets: secrets, Configs: configs}); err != nil {
			t.Fatal(err)
		}
		if err := r.Start(ctx, task.Id); err != nil {
			t.Fatal(err)
		}
		if ex := mustWait(t, r, task.Id); ex.Code != 0 {
			t.Fatalf("user %q: exit %+v, logs %q", user, ex, mustLogs(t, r, task.Id, worker.LogOptions{}))
		}
		b, err := os.ReadFile(filepath.Join(r.dir, task.Id, supervise.WorkDir, "out"))
		if err != nil || string(b) != "hunter2 port=80" {
			t.Errorf("user %q: the task read %q, %v", user, b, err)
		}
	}
}
