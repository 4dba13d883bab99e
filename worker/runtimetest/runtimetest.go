// Package runtimetest is the conformance suite of worker.Runtime: its one
// job is to check, against any runtime, the behaviours the agent relies on
// from every runtime (see the behaviours table). A runtime's own tests run
// it with Run and a Factory; what only one runtime does (cgroups, port
// allocation, container labels, mounts, image health checks) stays in that
// runtime's own tests.
//
// The tasks the suite runs all run one program, package taskprog, so they
// behave alike whichever runtime runs them; a Factory only says how its
// runtime runs that program (an executable, an image).
package runtimetest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/poll"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
)

// Kind is what a conformance task does; package taskprog implements each.
type Kind string

// The conformance tasks.
const (
	// Sleep prints "ready", runs until SIGTERM and exits 0.
	Sleep Kind = "sleep"
	// Exit exits with Program.Code at once.
	Exit Kind = "exit"
	// Print writes Program.Stdout to stdout and Program.Stderr to stderr,
	// each as a line, and exits 0.
	Print Kind = "print"
	// IgnoreTerm ignores SIGTERM, prints "ready" and runs until killed.
	IgnoreTerm Kind = "ignore-term"
	// Serve listens on its target port Program.Port, prints "ready" and
	// exits with CODE when a connection sends "exit CODE"; 0 on SIGTERM.
	Serve Kind = "serve"
)

// Program is one conformance task's program.
type Program struct {
	Kind           Kind
	Code           int    // Exit
	Stdout, Stderr string // Print
	Port           uint32 // Serve: the task's target port
}

// Args are the arguments of the taskprog program (without the program
// name) that make it do p.
func (p Program) Args() []string {
	switch p.Kind {
	case Exit:
		return []string{string(p.Kind), strconv.Itoa(p.Code)}
	case Print:
		return []string{string(p.Kind), p.Stdout, p.Stderr}
	case Serve:
		return []string{string(p.Kind), strconv.Itoa(int(p.Port))}
	}
	return []string{string(p.Kind)}
}

// Opener makes a runtime instance over one state; a second instance over
// the same state stands for the agent restarting. The suite closes an
// instance that is an io.Closer once it is done with it (or to stand for
// the agent going away).
type Opener func(t *testing.T) worker.Runtime

// Factory is what the suite needs of a runtime. Adding a runtime to the
// suite is writing one.
type Factory struct {
	// Fresh makes new, empty state for the runtime (a state directory, a
	// node's share of the Docker Engine) and returns what opens instances
	// over it. It removes whatever is left in that state when t ends.
	Fresh func(t *testing.T) Opener
	// Spec is the container spec of a task that runs the taskprog
	// program doing p (its executable or image, its arguments, and any
	// environment the runtime's tests need).
	Spec func(t *testing.T, p Program) *pb.ContainerSpec
	// Missing is the spec of a task whose program can never run on the
	// node (an executable that does not exist there; an image no registry
	// could hold, since a missing image is pulled).
	Missing func(t *testing.T) *pb.ContainerSpec
}

// Timeouts: generous, for a loaded machine. Nothing waits for them unless
// a runtime misbehaves.
const (
	// opTimeout bounds one runtime call.
	opTimeout = 60 * time.Second
	// settle bounds a wait for a task to get somewhere (ready, exited).
	settle = 30 * time.Second
	// shortGrace is the stop grace of tasks that ignore SIGTERM.
	shortGrace = time.Second
	// longGrace is a grace period a task exiting on SIGTERM never needs.
	longGrace = 20 * time.Second
	// servePort is the target port of Serve tasks.
	servePort = 8080
)

// behaviours is the table: every runtime shows each of them.
var behaviours = []struct {
	name string
	run  func(s *suite)
}{
	{"steps are idempotent", stepsIdempotent},
	{"unknown task", unknownTask},
	{"wait returns exit code 0", waitCode(0)},
	{"wait returns a non-zero exit code", waitCode(3)},
	{"wait honours its context", waitHonoursContext},
	{"wait on a prepared task waits for it to run and exit", waitOnPrepared},
	{"stop kills a task that ignores SIGTERM after the grace", stopKillsAfterGrace},
	{"stop ends a task that exits on SIGTERM before the grace", stopEndsBeforeGrace},
	{"logs carry stdout and stderr", logsCarryOutput},
	{"logs tail", logsTail},
	{"followed logs end when the task exits", followEndsAtExit},
	{"followed logs end with their context", followEndsWithContext},
	{"inspect reports created, running, exited and the ports", inspectStates},
	{"remove ends a running task", removeRunning},
	{"list reports every task, strays of an earlier instance included", listReportsEverything},
	{"a new instance waits on a task that exited while none ran", exitWhileNoInstance},
	{"a new instance finds a running task and stops it", runningAcrossRestart},
	{"a missing program is a permanent prepare error", missingProgram},
}

// Run checks every behaviour of the table against the runtime f makes,
// each as a subtest of its own, in parallel.
func Run(t *testing.T, f Factory) {
	t.Helper()
	for _, b := range behaviours {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			b.run(&suite{t: t, f: f, open: f.Fresh(t)})
		})
	}
}

// suite is one behaviour's test: fresh state and what it runs there.
type suite struct {
	t    *testing.T
	f    Factory
	open Opener
	slot uint64
}

// instance is an open runtime and its close (idempotent, also done when
// the test ends).
func (s *suite) instance() (worker.Runtime, func()) {
	s.t.Helper()
	rt := s.open(s.t)
	closeIt := sync.OnceFunc(func() {
		if c, ok := rt.(io.Closer); ok {
			if err := c.Close(); err != nil {
				s.t.Errorf("close the runtime: %v", err)
			}
		}
	})
	s.t.Cleanup(closeIt)
	return rt, closeIt
}

func (s *suite) runtime() worker.Runtime {
	s.t.Helper()
	rt, _ := s.instance()
	return rt
}

// task is a new task running p, its ID unique across runs (a shared
// Docker Engine keeps containers of other runs).
func (s *suite) task(p Program) *pb.Task {
	s.t.Helper()
	spec := s.f.Spec(s.t, p)
	if spec.StopGracePeriod == 0 {
		// Remove of a running task may stop it with its own grace.
		spec.StopGracePeriod = int64(2 * time.Second)
	}
	s.slot++
	task := &pb.Task{
		Id:          "conf-" + randomHex(),
		ServiceId:   "conformance-svc",
		ServiceName: "conformance",
		Slot:        s.slot,
		Spec:        &pb.TaskSpec{Container: spec},
	}
	if p.Kind == Serve {
		task.Endpoint = &pb.Endpoint{Spec: &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: p.Port}}}}
	}
	return task
}

func randomHex() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), opTimeout)
	t.Cleanup(cancel)
	return c
}

// run prepares and starts a task, and for a program that keeps running
// waits for it to say it is ready.
func (s *suite) run(rt worker.Runtime, p Program) *pb.Task {
	s.t.Helper()
	task := s.task(p)
	s.prepare(rt, task)
	if err := rt.Start(ctx(s.t), task.Id); err != nil {
		s.t.Fatalf("Start(%s): %v", task.Id, err)
	}
	if p.Kind == Sleep || p.Kind == IgnoreTerm || p.Kind == Serve {
		s.waitLogs(rt, task.Id, "ready\n")
	}
	return task
}

func (s *suite) prepare(rt worker.Runtime, task *pb.Task) {
	s.t.Helper()
	task.Spec.Runtime = rt.Name()
	if err := rt.Prepare(ctx(s.t), task, worker.TaskFiles{}); err != nil {
		s.t.Fatalf("Prepare(%s): %v", task.Id, err)
	}
}

func (s *suite) wait(rt worker.Runtime, id string) worker.Exit {
	s.t.Helper()
	ex, err := rt.Wait(ctx(s.t), id)
	if err != nil {
		s.t.Fatalf("Wait(%s): %v", id, err)
	}
	return ex
}

func (s *suite) inspect(rt worker.Runtime, id string) worker.TaskInfo {
	s.t.Helper()
	info, err := rt.Inspect(ctx(s.t), id)
	if err != nil {
		s.t.Fatalf("Inspect(%s): %v", id, err)
	}
	if info.TaskID != id {
		s.t.Errorf("Inspect(%s) reports task %q", id, info.TaskID)
	}
	return info
}

func (s *suite) stop(rt worker.Runtime, id string, grace time.Duration) time.Duration {
	s.t.Helper()
	start := time.Now()
	if err := rt.Stop(ctx(s.t), id, grace); err != nil {
		s.t.Fatalf("Stop(%s, %s): %v", id, grace, err)
	}
	return time.Since(start)
}

func (s *suite) remove(rt worker.Runtime, id string) {
	s.t.Helper()
	if err := rt.Remove(ctx(s.t), id); err != nil {
		s.t.Fatalf("Remove(%s): %v", id, err)
	}
}

// logs reads a task's whole output as it is now.
func (s *suite) logs(rt worker.Runtime, id string, opts worker.LogOptions) (string, error) {
	rc, err := rt.Logs(ctx(s.t), id, opts)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	return string(b), err
}

// waitLogs waits until the task's output holds want.
func (s *suite) waitLogs(rt worker.Runtime, id, want string) string {
	s.t.Helper()
	var got string
	s.eventually(fmt.Sprintf("%q in the logs of %s", want, id), func() bool {
		var err error
		got, err = s.logs(rt, id, worker.LogOptions{})
		return err == nil && strings.Contains(got, want)
	}, func() string { return fmt.Sprintf("logs %q", got) })
	return got
}

// eventually polls cond until it holds, failing the test after settle.
func (s *suite) eventually(what string, cond func() bool, detail func() string) {
	s.t.Helper()
	poll.Until(s.t, settle, what, poll.Bool(cond, detail))
}

// waited is how a Wait ended.
type waited struct {
	exit worker.Exit
	err  error
}

// waitAsync starts a Wait in the background.
func waitAsync(t *testing.T, rt worker.Runtime, id string) <-chan waited {
	done := make(chan waited, 1)
	c := ctx(t)
	go func() {
		ex, err := rt.Wait(c, id)
		done <- waited{ex, err}
	}()
	return done
}

// reach dials a task's port binding and reads the Serve task's greeting.
func reach(b *pb.PortBinding) (net.Conn, error) {
	host := b.GetHostIp()
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	c, err := net.DialTimeout("tcp", net.JoinHostPort(host, strconv.Itoa(int(b.GetHostPort()))), 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "serving\n" {
		c.Close()
		return nil, fmt.Errorf("greeting %q: %v", line, err)
	}
	return c, nil
}

// connect reaches a running Serve task through its one port binding; a
// published port may take a moment to reach the task.
func (s *suite) connect(info worker.TaskInfo) net.Conn {
	s.t.Helper()
	if len(info.Ports) != 1 {
		s.t.Fatalf("task %s has port bindings %v, want one", info.TaskID, info.Ports)
	}
	var c net.Conn
	var err error
	s.eventually("the task to answer on "+info.Ports[0].String(), func() bool {
		c, err = reach(info.Ports[0])
		return err == nil
	}, func() string { return err.Error() })
	return c
}

// tellExit makes a Serve task exit with code.
func (s *suite) tellExit(c net.Conn, code int) {
	s.t.Helper()
	defer c.Close()
	if _, err := fmt.Fprintf(c, "exit %d\n", code); err != nil {
		s.t.Fatal(err)
	}
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "bye\n" {
		s.t.Fatalf("the task answered %q, %v to exit", line, err)
	}
}

func notFound(err error) bool { return errors.Is(err, worker.ErrTaskNotFound) }

// ---------------------------------------------------------------- the behaviours

// Every step may be retried (after a crash, a lost answer): twice in a
// row succeeds, and stopping a stopped task, starting an exited one and
// removing a removed one do nothing.
func stepsIdempotent(s *suite) {
	rt := s.runtime()
	c := ctx(s.t)
	task := s.task(Program{Kind: Sleep})
	for i := range 2 {
		s.prepare(rt, task)
		if info := s.inspect(rt, task.Id); info.State != worker.RunCreated {
			s.t.Fatalf("after Prepare #%d: %v, want created", i+1, info.State)
		}
	}
	for i := range 2 {
		if err := rt.Start(c, task.Id); err != nil {
			s.t.Fatalf("Start #%d: %v", i+1, err)
		}
		if info := s.inspect(rt, task.Id); info.State != worker.RunRunning {
			s.t.Fatalf("after Start #%d: %v, want running", i+1, info.State)
		}
	}
	s.waitLogs(rt, task.Id, "ready\n")
	for range 2 {
		s.stop(rt, task.Id, longGrace)
	}
	ex := s.wait(rt, task.Id)
	if err := rt.Start(c, task.Id); err != nil {
		s.t.Fatalf("Start of an exited task: %v", err)
	}
	if info := s.inspect(rt, task.Id); info.State != worker.RunExited || info.Exit.Code != ex.Code {
		s.t.Fatalf("after Start of an exited task: %+v, want still exited with code %d", info, ex.Code)
	}
	for range 2 {
		s.remove(rt, task.Id)
	}
	// Removed is unknown.
	if _, err := rt.Inspect(c, task.Id); !notFound(err) {
		s.t.Fatalf("Inspect after Remove: %v, want ErrTaskNotFound", err)
	}
	if _, err := rt.Wait(c, task.Id); !notFound(err) {
		s.t.Errorf("Wait after Remove: %v, want ErrTaskNotFound", err)
	}
	if _, err := rt.Logs(c, task.Id, worker.LogOptions{}); !notFound(err) {
		s.t.Errorf("Logs after Remove: %v, want ErrTaskNotFound", err)
	}
	if err := rt.Stop(c, task.Id, time.Second); err != nil {
		s.t.Errorf("Stop after Remove: %v", err)
	}
	// A prepared task that never started goes as well.
	again := s.task(Program{Kind: Sleep})
	s.prepare(rt, again)
	s.remove(rt, again.Id)
	if _, err := rt.Inspect(c, again.Id); !notFound(err) {
		s.t.Fatalf("Inspect after Remove of a prepared task: %v, want ErrTaskNotFound", err)
	}
}

// A task the runtime does not hold: asking about it is ErrTaskNotFound,
// stopping and removing it succeed.
func unknownTask(s *suite) {
	rt := s.runtime()
	c := ctx(s.t)
	const id = "conf-never-prepared"
	if _, err := rt.Inspect(c, id); !notFound(err) {
		s.t.Errorf("Inspect: %v, want ErrTaskNotFound", err)
	}
	if _, err := rt.Wait(c, id); !notFound(err) {
		s.t.Errorf("Wait: %v, want ErrTaskNotFound", err)
	}
	if err := rt.Start(c, id); !notFound(err) {
		s.t.Errorf("Start: %v, want ErrTaskNotFound", err)
	}
	if _, err := rt.Logs(c, id, worker.LogOptions{}); !notFound(err) {
		s.t.Errorf("Logs: %v, want ErrTaskNotFound", err)
	}
	if err := rt.Stop(c, id, time.Second); err != nil {
		s.t.Errorf("Stop: %v, want success", err)
	}
	if err := rt.Remove(c, id); err != nil {
		s.t.Errorf("Remove: %v, want success", err)
	}
}

// Wait returns how the task exited, with the time it did, and again
// (the same) when asked again.
func waitCode(code int) func(*suite) {
	return func(s *suite) {
		rt := s.runtime()
		task := s.run(rt, Program{Kind: Exit, Code: code})
		ex := s.wait(rt, task.Id)
		if ex.Code != code || ex.ExitedAt.IsZero() {
			s.t.Fatalf("Wait = %+v, want code %d and an exit time", ex, code)
		}
		if again := s.wait(rt, task.Id); again.Code != code {
			s.t.Fatalf("second Wait = %+v, want code %d", again, code)
		}
	}
}

// Wait on a running task ends with its context.
func waitHonoursContext(s *suite) {
	rt := s.runtime()
	task := s.run(rt, Program{Kind: Sleep})
	c, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := rt.Wait(c, task.Id); !errors.Is(err, context.DeadlineExceeded) {
		s.t.Fatalf("Wait = %v, want the context's deadline", err)
	}
	if info := s.inspect(rt, task.Id); info.State != worker.RunRunning {
		s.t.Fatalf("after the Wait: %v, want still running", info.State)
	}
}

// A prepared task has not exited: Wait blocks until it has been started
// and has exited, and its output is empty until then.
func waitOnPrepared(s *suite) {
	rt := s.runtime()
	task := s.task(Program{Kind: Print, Stdout: "ran"})
	s.prepare(rt, task)
	c, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if ex, err := rt.Wait(c, task.Id); !errors.Is(err, context.DeadlineExceeded) {
		s.t.Fatalf("Wait on a prepared task = %+v, %v; want it to block until the context's deadline", ex, err)
	}
	if logs, err := s.logs(rt, task.Id, worker.LogOptions{}); err != nil || logs != "" {
		s.t.Errorf("Logs of a prepared task = %q, %v; want none", logs, err)
	}
	waited := waitAsync(s.t, rt, task.Id)
	if err := rt.Start(ctx(s.t), task.Id); err != nil {
		s.t.Fatal(err)
	}
	if w := <-waited; w.err != nil || w.exit.Code != 0 {
		s.t.Fatalf("the Wait from before the Start = %+v, %v; want code 0", w.exit, w.err)
	}
	s.waitLogs(rt, task.Id, "ran\n")
}

// A task that ignores SIGTERM is killed once the grace has passed; a Wait
// that was waiting returns.
func stopKillsAfterGrace(s *suite) {
	rt := s.runtime()
	task := s.run(rt, Program{Kind: IgnoreTerm})
	waited := waitAsync(s.t, rt, task.Id)
	took := s.stop(rt, task.Id, shortGrace)
	if took < shortGrace {
		s.t.Errorf("Stop returned after %s, before the %s grace", took, shortGrace)
	}
	ex := s.wait(rt, task.Id)
	if ex.Code != 137 {
		s.t.Errorf("exit %+v, want code 137 (SIGKILL)", ex)
	}
	if w := <-waited; w.err != nil || w.exit.Code != ex.Code {
		s.t.Errorf("the Wait from before the Stop = %+v, %v; want code %d", w.exit, w.err, ex.Code)
	}
	if info := s.inspect(rt, task.Id); info.State != worker.RunExited {
		s.t.Errorf("after Stop: %v, want exited", info.State)
	}
}

// A task that exits on SIGTERM ends well before a long grace, with its own
// exit code.
func stopEndsBeforeGrace(s *suite) {
	rt := s.runtime()
	task := s.run(rt, Program{Kind: Sleep})
	waited := waitAsync(s.t, rt, task.Id)
	took := s.stop(rt, task.Id, longGrace)
	if took >= longGrace {
		s.t.Errorf("Stop took %s: the whole %s grace", took, longGrace)
	}
	if ex := s.wait(rt, task.Id); ex.Code != 0 {
		s.t.Errorf("exit %+v, want code 0 (the task's own, on SIGTERM)", ex)
	}
	if w := <-waited; w.err != nil || w.exit.Code != 0 {
		s.t.Errorf("the Wait from before the Stop = %+v, %v; want code %d", w.exit, w.err, 0)
	}
	s.waitLogs(rt, task.Id, "got SIGTERM\n")
}

// Logs hold what the task wrote to stdout and to stderr.
func logsCarryOutput(s *suite) {
	rt := s.runtime()
	task := s.run(rt, Program{Kind: Print, Stdout: "to stdout", Stderr: "to stderr"})
	s.wait(rt, task.Id)
	logs := s.waitLogs(rt, task.Id, "to stdout\n")
	if !strings.Contains(logs, "to stderr\n") {
		s.t.Errorf("logs %q lack the task's stderr", logs)
	}
	// Following the output of an exited task gives all of it and ends.
	rc, err := rt.Logs(ctx(s.t), task.Id, worker.LogOptions{Follow: true})
	if err != nil {
		s.t.Fatal(err)
	}
	defer rc.Close()
	if followed := s.readToEnd(rc); followed != logs {
		s.t.Errorf("followed logs %q, want %q", followed, logs)
	}
}

// readToEnd reads a log stream to its end, failing the test if it does
// not end within settle.
func (s *suite) readToEnd(rc io.ReadCloser) string {
	s.t.Helper()
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := io.ReadAll(rc)
		done <- result{b, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			s.t.Errorf("following ended with %v, want the end of the output", r.err)
		}
		return string(r.b)
	case <-time.After(settle):
		rc.Close()
		s.t.Fatalf("following did not end within %s", settle)
		return ""
	}
}

// Tail selects the last lines of the output.
func logsTail(s *suite) {
	rt := s.runtime()
	task := s.run(rt, Program{Kind: Print, Stdout: "one\ntwo\nthree"})
	s.wait(rt, task.Id)
	s.waitLogs(rt, task.Id, "three\n")
	for _, tc := range []struct {
		tail int
		want string
	}{
		{0, "one\ntwo\nthree\n"},
		{1, "three\n"},
		{2, "two\nthree\n"},
		{5, "one\ntwo\nthree\n"},
	} {
		got, err := s.logs(rt, task.Id, worker.LogOptions{Tail: tc.tail})
		if err != nil || got != tc.want {
			s.t.Errorf("Logs(tail %d) = %q, %v; want %q", tc.tail, got, err, tc.want)
		}
	}
}

// Followed logs carry output as it comes and end once the task has exited.
func followEndsAtExit(s *suite) {
	rt := s.runtime()
	task := s.run(rt, Program{Kind: Serve, Port: servePort})
	rc, err := rt.Logs(ctx(s.t), task.Id, worker.LogOptions{Follow: true})
	if err != nil {
		s.t.Fatal(err)
	}
	defer rc.Close()
	r := bufio.NewReader(rc)
	if line, err := r.ReadString('\n'); err != nil || line != "ready\n" {
		s.t.Fatalf("first followed line %q, %v", line, err)
	}
	s.tellExit(s.connect(s.inspect(rt, task.Id)), 0)
	s.readToEnd(struct {
		io.Reader
		io.Closer
	}{r, rc})
}

// Following the output of a running task ends when its context does.
func followEndsWithContext(s *suite) {
	rt := s.runtime()
	task := s.run(rt, Program{Kind: Sleep})
	c, cancel := context.WithCancel(context.Background())
	defer cancel()
	rc, err := rt.Logs(c, task.Id, worker.LogOptions{Follow: true, Tail: 1})
	if err != nil {
		s.t.Fatal(err)
	}
	defer rc.Close()
	r := bufio.NewReader(rc)
	if line, err := r.ReadString('\n'); err != nil || line != "ready\n" {
		s.t.Fatalf("first followed line %q, %v", line, err)
	}
	cancel()
	ended := make(chan struct{})
	go func() {
		_, _ = io.ReadAll(r)
		close(ended)
	}()
	select {
	case <-ended:
	case <-time.After(settle):
		rc.Close()
		s.t.Fatalf("following did not end within %s of its context", settle)
	}
}

// Inspect follows the task from created to running (with a pid or a
// container, and its port, where the task answers) to exited (with how).
func inspectStates(s *suite) {
	rt := s.runtime()
	task := s.task(Program{Kind: Serve, Port: servePort})
	s.prepare(rt, task)
	if info := s.inspect(rt, task.Id); info.State != worker.RunCreated {
		s.t.Fatalf("after Prepare: %+v, want created", info)
	}
	if err := rt.Start(ctx(s.t), task.Id); err != nil {
		s.t.Fatal(err)
	}
	s.waitLogs(rt, task.Id, "ready\n")
	info := s.inspect(rt, task.Id)
	if info.State != worker.RunRunning || (info.Pid == 0 && info.ContainerID == "") {
		s.t.Fatalf("after Start: %+v, want running with a pid or a container", info)
	}
	if len(info.Ports) != 1 || info.Ports[0].GetTargetPort() != servePort || info.Ports[0].GetHostPort() == 0 ||
		info.Ports[0].GetProtocol() != pb.PortProtocol_PORT_PROTOCOL_TCP {
		s.t.Fatalf("ports %v, want target %d/tcp on a host port", info.Ports, servePort)
	}
	s.tellExit(s.connect(info), 5)
	ex := s.wait(rt, task.Id)
	info = s.inspect(rt, task.Id)
	if info.State != worker.RunExited || info.Exit.Code != 5 || ex.Code != 5 || info.Exit.ExitedAt.IsZero() {
		s.t.Fatalf("after the exit: %+v (Wait: %+v), want exited with code 5", info, ex)
	}
	if info.Exit.Message != ex.Message || info.Exit.Signal != ex.Signal || !info.Exit.ExitedAt.Equal(ex.ExitedAt) {
		s.t.Errorf("Inspect reports the exit as %+v, Wait as %+v", info.Exit, ex)
	}
}

// Remove of a running task ends it (its port no longer answers, a Wait in
// progress returns) and forgets it.
func removeRunning(s *suite) {
	rt := s.runtime()
	task := s.run(rt, Program{Kind: Serve, Port: servePort})
	info := s.inspect(rt, task.Id)
	s.connect(info).Close()
	waited := waitAsync(s.t, rt, task.Id)
	s.remove(rt, task.Id)
	select {
	case w := <-waited:
		s.t.Logf("the Wait in progress returned %+v, %v", w.exit, w.err)
	case <-time.After(settle):
		s.t.Fatalf("a Wait in progress did not return within %s of the Remove", settle)
	}
	if _, err := rt.Inspect(ctx(s.t), task.Id); !notFound(err) {
		s.t.Errorf("Inspect after Remove: %v, want ErrTaskNotFound", err)
	}
	if c, err := reach(info.Ports[0]); err == nil {
		c.Close()
		s.t.Errorf("the removed task still answers on %v", info.Ports[0])
	}
}

// List reports every task of the runtime's state, by ID and state, those
// of an earlier instance included (the agent removes the ones no
// assignment claims), and none once removed.
func listReportsEverything(s *suite) {
	rt1, close1 := s.instance()
	if list, err := rt1.List(ctx(s.t)); err != nil || len(list) != 0 {
		s.t.Fatalf("List of fresh state = %+v, %v; want nothing", list, err)
	}
	created := s.task(Program{Kind: Sleep})
	s.prepare(rt1, created)
	running := s.run(rt1, Program{Kind: Sleep})
	exited := s.run(rt1, Program{Kind: Exit, Code: 6})
	s.wait(rt1, exited.Id)
	close1() // the agent goes away

	rt2 := s.runtime()
	want := map[string]worker.RunState{created.Id: worker.RunCreated, running.Id: worker.RunRunning, exited.Id: worker.RunExited}
	list, err := rt2.List(ctx(s.t))
	if err != nil {
		s.t.Fatal(err)
	}
	got := map[string]worker.RunState{}
	for _, info := range list {
		got[info.TaskID] = info.State
		if info.TaskID == exited.Id && info.Exit.Code != 6 {
			s.t.Errorf("List reports the exited task's exit as %+v, want code 6", info.Exit)
		}
	}
	if len(list) != len(want) || len(got) != len(want) {
		s.t.Fatalf("List = %+v, want %v", list, want)
	}
	for id, st := range want {
		if got[id] != st {
			s.t.Errorf("List reports %s %v, want %v", id, got[id], st)
		}
	}
	ids := slices.Sorted(maps.Keys(want))
	for i, id := range ids {
		s.remove(rt2, id)
		list, err := rt2.List(ctx(s.t))
		if err != nil {
			s.t.Fatal(err)
		}
		if len(list) != len(ids)-i-1 || slices.ContainsFunc(list, func(info worker.TaskInfo) bool { return info.TaskID == id }) {
			s.t.Fatalf("List after removing %s = %+v", id, list)
		}
	}
}

// A task that exits while no instance runs (the agent is down): a new
// instance learns how it exited, at once, and still has its output.
func exitWhileNoInstance(s *suite) {
	rt1, close1 := s.instance()
	task := s.run(rt1, Program{Kind: Serve, Port: servePort})
	info := s.inspect(rt1, task.Id)
	close1()

	s.tellExit(s.connect(info), 7)
	// Watch for the exit with throwaway instances, so that the one that
	// waits has seen the task only exited.
	var last worker.TaskInfo
	s.eventually("the task to have exited", func() bool {
		probe, closeProbe := s.instance()
		defer closeProbe()
		last = s.inspect(probe, task.Id)
		return last.State == worker.RunExited
	}, func() string { return fmt.Sprintf("last seen %+v", last) })

	rt2 := s.runtime()
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ex, err := rt2.Wait(c, task.Id)
	if err != nil || ex.Code != 7 || ex.ExitedAt.IsZero() {
		s.t.Fatalf("Wait after the restart = %+v, %v; want code 7 and an exit time", ex, err)
	}
	s.waitLogs(rt2, task.Id, "ready\n")
}

// A task still running when a new instance comes up: the new instance
// reports it running, a Start of it changes nothing, and its Stop ends it.
func runningAcrossRestart(s *suite) {
	rt1, close1 := s.instance()
	task := s.run(rt1, Program{Kind: Serve, Port: servePort})
	before := s.inspect(rt1, task.Id)
	close1()

	rt2 := s.runtime()
	info := s.inspect(rt2, task.Id)
	if info.State != worker.RunRunning || info.Pid != before.Pid || info.ContainerID != before.ContainerID {
		s.t.Fatalf("after the restart: %+v, want running as before (%+v)", info, before)
	}
	if len(info.Ports) != 1 || len(before.Ports) != 1 || info.Ports[0].GetHostPort() != before.Ports[0].GetHostPort() {
		s.t.Fatalf("ports after the restart %v, want those from before %v", info.Ports, before.Ports)
	}
	s.connect(info).Close()
	if err := rt2.Start(ctx(s.t), task.Id); err != nil {
		s.t.Fatalf("Start of a running task: %v", err)
	}
	waited := waitAsync(s.t, rt2, task.Id)
	if took := s.stop(rt2, task.Id, longGrace); took >= longGrace {
		s.t.Errorf("Stop took %s: the whole %s grace", took, longGrace)
	}
	if w := <-waited; w.err != nil || w.exit.Code != 0 {
		s.t.Errorf("the Wait from before the Stop = %+v, %v; want code %d", w.exit, w.err, 0)
	}
	if ex := s.wait(rt2, task.Id); ex.Code != 0 {
		s.t.Errorf("exit %+v, want code 0 (the task's own, on SIGTERM)", ex)
	}
	s.waitLogs(rt2, task.Id, "got SIGTERM\n")
}

// A task whose program is not on the node is rejected for good, and
// leaves nothing behind.
func missingProgram(s *suite) {
	rt := s.runtime()
	task := s.task(Program{Kind: Sleep})
	task.Spec.Container = s.f.Missing(s.t)
	task.Spec.Runtime = rt.Name()
	err := rt.Prepare(ctx(s.t), task, worker.TaskFiles{})
	var perm *worker.PermanentError
	if !errors.As(err, &perm) {
		s.t.Fatalf("Prepare = %v, want a *worker.PermanentError", err)
	}
	if _, err := rt.Inspect(ctx(s.t), task.Id); !notFound(err) {
		s.t.Errorf("Inspect after the failed Prepare: %v, want ErrTaskNotFound", err)
	}
	if list, err := rt.List(ctx(s.t)); err != nil || len(list) != 0 {
		s.t.Errorf("List after the failed Prepare = %+v, %v; want nothing", list, err)
	}
}
