package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/shoal-cluster/shoal/worker/process/supervise"
)

// env is what every benchmark shares: the shoal binary, a temp dir, the
// processes started (all killed by cleanup) and notes for the report.
type env struct {
	opts         options
	log          *slog.Logger
	tmp          string
	bin          string
	moduleRoot   string
	shoalVersion string

	mu        sync.Mutex
	procs     map[*proc]struct{}
	clusters  []*cluster
	usedPorts map[int]bool
	notes     []string
	sections  []section // extra report sections, in the order added
	// stopErrors counts ERROR lines managers logged while being stopped;
	// peerDownErrors those logged because a killed peer was down.
	stopErrors, peerDownErrors int
}

func newEnv(ctx context.Context, o options, log *slog.Logger) (*env, error) {
	e := &env{opts: o, log: log, procs: map[*proc]struct{}{}, usedPorts: map[int]bool{}}
	e.moduleRoot = findModuleRoot()
	tmp, err := os.MkdirTemp("", "shoal-bench-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	e.tmp = tmp
	ok := false
	defer func() {
		if !ok {
			e.cleanup()
		}
	}()
	if o.keep {
		log.Info("keeping the temp dir", "dir", tmp)
	}
	if o.bin != "" {
		abs, err := filepath.Abs(o.bin)
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(abs); err != nil {
			return nil, fmt.Errorf("-bin: %w", err)
		}
		e.bin = abs
	} else {
		if e.moduleRoot == "" {
			return nil, errors.New("cannot find the shoal module root (go.mod); run from the repository or pass -bin")
		}
		e.bin = filepath.Join(tmp, "shoal")
		log.Info("building shoal", "out", e.bin)
		bctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		// shoal-supervise beside shoal, as make build installs them.
		for _, b := range []struct{ out, pkg string }{{e.bin, "./cmd/shoal"}, {filepath.Join(tmp, supervise.Binary), "./cmd/shoal-supervise"}} {
			cmd := exec.CommandContext(bctx, "go", "build", "-o", b.out, b.pkg)
			cmd.Dir = e.moduleRoot
			if out, err := cmd.CombinedOutput(); err != nil {
				return nil, fmt.Errorf("go build %s: %w\n%s", b.pkg, err, out)
			}
		}
	}
	e.shoalVersion = gitVersion(e.moduleRoot)
	ok = true
	return e, nil
}

// findModuleRoot walks up from the working directory to the shoal go.mod.
func findModuleRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.Contains(b, []byte("module github.com/shoal-cluster/shoal")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// gitVersion describes the source tree the binary was built from.
func gitVersion(root string) string {
	if root == "" {
		return "unknown"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rev, err := exec.CommandContext(ctx, "git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	v := "commit " + strings.TrimSpace(string(rev))
	st, err := exec.CommandContext(ctx, "git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output()
	if err == nil && len(bytes.TrimSpace(st)) > 0 {
		v += " with uncommitted changes"
	}
	return v
}

// supervisorCommand is how the in-process workers start a task's
// supervisor, as `shoal start` does: shoal-supervise beside the shoal
// binary when it is there, else shoal __supervise.
func (e *env) supervisorCommand() []string {
	cmd, _ := supervise.CommandLine(context.Background(), e.bin)
	return cmd
}

// notef records a note for the report.
func (e *env) notef(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.notes = append(e.notes, fmt.Sprintf(format, args...))
}

// section is a part of the report a benchmark writes itself.
type section struct{ title, body string }

// section adds a report section.
func (e *env) section(title, body string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.sections = append(e.sections, section{title, body})
}

// closeClusters stops every cluster started so far.
func (e *env) closeClusters() {
	e.mu.Lock()
	cs := e.clusters
	e.clusters = nil
	e.mu.Unlock()
	for _, c := range cs {
		c.close()
	}
}

// cleanup stops every process this program started and removes the temp
// dir unless -keep. It is safe to call more than once.
func (e *env) cleanup() {
	e.closeClusters()
	e.mu.Lock()
	procs := make([]*proc, 0, len(e.procs))
	for p := range e.procs {
		procs = append(procs, p)
	}
	e.mu.Unlock()
	stopAll(procs)
	if e.tmp == "" {
		return
	}
	if e.opts.keep {
		e.log.Info("temp dir kept", "dir", e.tmp)
		return
	}
	if err := os.RemoveAll(e.tmp); err != nil {
		e.log.Warn("remove temp dir", "dir", e.tmp, "err", err)
	}
	e.tmp = ""
}

// managerIPs are the loopback addresses the managers advertise.
var managerIPs = []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}

// freePort picks a random base port in 20000-50000 whose API, Raft and
// gossip ports (base, +1, +2) are free on every manager IP.
func (e *env) freePort() (int, error) {
	for range 200 {
		base := 20000 + rand.IntN(30000)
		e.mu.Lock()
		used := e.usedPorts[base] || e.usedPorts[base+1] || e.usedPorts[base+2] || e.usedPorts[base-1] || e.usedPorts[base-2]
		e.mu.Unlock()
		if used || !portsFree(base) {
			continue
		}
		e.mu.Lock()
		e.usedPorts[base] = true
		e.mu.Unlock()
		return base, nil
	}
	return 0, errors.New("no free port range found in 20000-50000")
}

func portsFree(base int) bool {
	for _, ip := range managerIPs {
		for off := range 3 {
			addr := net.JoinHostPort(ip, strconv.Itoa(base+off))
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return false
			}
			l.Close()
		}
		pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(base+2)))
		if err != nil {
			return false
		}
		pc.Close()
	}
	return true
}

// proc is a started shoal process.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error
	logFile *os.File
}

// startProc starts the shoal binary with args, its output appended to
// logPath. The process gets its own process group (a Ctrl-C on the
// terminal reaches only this program, which then stops it) and dies with
// this program if it is killed outright.
func (e *env) startProc(name, logPath string, args ...string) (*proc, error) {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "=== %s: %s %s\n", time.Now().Format(time.RFC3339Nano), e.bin, strings.Join(args, " "))
	cmd := exec.Command(e.bin, args...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{}), logFile: f}
	e.mu.Lock()
	e.procs[p] = struct{}{}
	e.mu.Unlock()
	go func() {
		p.waitErr = cmd.Wait()
		f.Close()
		e.mu.Lock()
		delete(e.procs, p)
		e.mu.Unlock()
		close(p.done)
	}()
	e.log.Debug("process started", "name", name, "pid", cmd.Process.Pid, "args", strings.Join(args, " "))
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitError describes an unexpected exit with the end of the log.
func (p *proc) exitError() error {
	return fmt.Errorf("%s (pid %d) exited: %v; last log lines:\n%s", p.name, p.pid(), p.waitErr, tail(p.logPath, 15))
}

// kill sends SIGKILL to the process alone and waits (bounded) for it.
func (p *proc) kill() error {
	if p.exited() {
		return nil
	}
	if err := syscall.Kill(p.pid(), syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s: %w", p.name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) did not die after SIGKILL", p.name, p.pid())
	}
}

// stopAll sends SIGTERM to every process, waits up to 3s, then SIGKILLs
// what is left and waits for it.
func stopAll(procs []*proc) {
	for _, p := range procs {
		if !p.exited() {
			_ = syscall.Kill(p.pid(), syscall.SIGTERM)
		}
	}
	deadline := time.After(3 * time.Second)
	for _, p := range procs {
		select {
		case <-p.done:
		case <-deadline:
		}
	}
	for _, p := range procs {
		_ = p.kill()
	}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return "    " + strings.Join(lines, "\n    ")
}

// peerDownErrors are the ERROR lines raft logs when a peer process is
// gone or restarting: expected while a benchmark kills managers.
var peerDownErrors = []string{"connection refused", "connection reset by peer", "error=EOF", "use of closed network connection", "i/o timeout"}

// logErrors counts the ERROR, panic and race lines of a manager log.
type logErrors struct {
	other    int // before cutoff, not explained by a peer being down
	peerDown int // before cutoff, a peer was down or restarting
	atStop   int // stamped at or after cutoff (the cluster was being stopped)
	first    string
}

// countErrors reads a manager log. Lines without a time stamp (stack
// traces) count as before cutoff.
func countErrors(path string, cutoff time.Time) logErrors {
	var le logErrors
	f, err := os.Open(path)
	if err != nil {
		return le
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "level=ERROR") && !strings.HasPrefix(line, "panic:") && !strings.Contains(line, "DATA RACE") {
			continue
		}
		if ts, _, ok := strings.Cut(strings.TrimPrefix(line, "time="), " "); ok && strings.HasPrefix(line, "time=") {
			if t, err := time.Parse(time.RFC3339Nano, ts); err == nil && !t.Before(cutoff) {
				le.atStop++
				continue
			}
		}
		down := false
		for _, p := range peerDownErrors {
			if strings.Contains(line, p) {
				down = true
				break
			}
		}
		if down {
			le.peerDown++
			continue
		}
		le.other++
		if le.first == "" {
			le.first = line
		}
	}
	return le
}
