package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/mesh"
	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/internal/poll"
	"github.com/shoal-cluster/shoal/worker/process/supervise"
	"github.com/shoal-cluster/shoal/worker/tasknet"
)

// binDir holds the binaries under test once shoalBin has built them.
var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// shoalBin is the path of the shoal binary under test, with shoal-supervise
// beside it as make build installs them (the runtimes supervise tasks with
// it). The first call builds both with -race; tests that run no binary, the
// fuzz targets' workers among them, never pay for the build.
func shoalBin() string {
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "shoal-e2e-bin")
		if buildErr != nil {
			return
		}
		for _, b := range []struct{ out, pkg string }{{filepath.Join(binDir, "shoal"), "."}, {filepath.Join(binDir, supervise.Binary), "../shoal-supervise"}} {
			out, err := exec.Command("go", "build", "-race", "-o", b.out, b.pkg).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("build %s: %w\n%s", b.pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		panic(buildErr)
	}
	return filepath.Join(binDir, "shoal")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// node is a shoal daemon process.
type node struct {
	t       *testing.T
	ip      string
	port    int
	dataDir string
	cmd     *exec.Cmd
	log     *os.File
	exited  chan struct{}
}

func (n *node) addr() string { return net.JoinHostPort(n.ip, strconv.Itoa(n.port)) }

// freePort picks an API port whose Raft (+1), gossip (+2, TCP and UDP) and
// resolver (+3, TCP and UDP) ports are also free on every IP.
func freePort(t *testing.T, ips ...string) int {
	t.Helper()
	for range 100 {
		port := 20000 + rand.IntN(40000)
		ok := true
		for _, ip := range ips {
			for _, p := range []int{port, port + 1, port + 2, port + 3} {
				l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(p)))
				if err != nil {
					ok = false
					break
				}
				l.Close()
			}
			for _, p := range []int{port + 2, port + 3} {
				if u, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(p))); err != nil {
					ok = false
				} else {
					u.Close()
				}
			}
		}
		if ok {
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// taskPoolSalt spreads the task subnet pools of this test process's
// clusters from those of other processes on the host.
var taskPoolSalt = rand.IntN(100)

// withTaskPool gives a daemon command its cluster's task subnet pool, a
// /16 of 10.120-219 chosen from the cluster's port (tests/ takes
// 10.20-119), unless the test gives one: clusters sharing this host never
// share a subnet, hence a bridge.
func withTaskPool(port int, args []string) []string {
	if len(args) == 0 || slices.Contains(args, "--task-subnet-pool") {
		return args
	}
	switch args[0] {
	case "init", "join", "start":
		pool := fmt.Sprintf("10.%d.0.0/16", 120+(port*7+taskPoolSalt)%100)
		return append([]string{args[0], "--task-subnet-pool", pool}, args[1:]...)
	}
	return args
}

// startDaemon runs `shoal <args>` in the background and stops it with the test.
func startDaemon(t *testing.T, ip string, port int, dataDir string, args ...string) *node {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "node.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(shoalBin(), withTaskPool(port, args)...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, ip: ip, port: port, dataDir: dataDir, cmd: cmd, log: f, exited: make(chan struct{})}
	noteAdminDir(n.addr(), dataDir, args)
	go func() { _ = cmd.Wait(); close(n.exited) }()
	t.Cleanup(func() {
		n.kill()
		// A node that can run containers added its cluster's container
		// resolver address to lo; a killed node leaves it there.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		mesh.RemoveNodeContainerAddrs(ctx, dataDir)
		mesh.RemoveNodeTable(ctx, dataDir)      // and a killed node its mesh's nftables table
		tasknet.RemoveNodeNetwork(ctx, dataDir) // a stopped worker leaves its task network for a restart
		cancel()
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			t.Logf("log of %s:\n%s", n.addr(), tail(string(data), 40))
		}
		f.Close()
	})
	return n
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// kill stops the process with SIGKILL and waits for it.
func (n *node) kill() {
	select {
	case <-n.exited:
		return
	default:
	}
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.exited
}

// adminDirs maps each node's API address to the data dir of the node that
// created its cluster, where `shoal init` wrote the admin client config.
var adminDirs sync.Map

// noteAdminDir records the admin data dir of a node being started: its
// own for `init`, that of the manager it joins through for `join`.
func noteAdminDir(addr, dataDir string, args []string) {
	switch args[0] {
	case "init":
		if _, ok := adminDirs.Load(addr); !ok {
			adminDirs.Store(addr, dataDir)
		}
	case "join":
		if dir, ok := adminDirs.Load(args[len(args)-1]); ok {
			adminDirs.Store(addr, dir)
		}
	}
}

// cliCommand is the command for `shoal ARGS`: as a user on the first
// manager's machine, with SHOAL_DATA_DIR pointing at its data dir when the
// command talks to a cluster through --host.
func cliCommand(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, shoalBin(), args...)
	for i, a := range args {
		if a == "--host" && i+1 < len(args) {
			if dir, ok := adminDirs.Load(args[i+1]); ok {
				cmd.Env = append(os.Environ(), "SHOAL_DATA_DIR="+dir.(string))
			}
		}
	}
	return cmd
}

// cli runs a shoal client command and returns stdout, stderr and the exit code.
func cli(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := cliCommand(ctx, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run shoal %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	poll.Until(t, timeout, what, cond)
}

// formCluster starts n managers on 127.0.0.1..n and waits until all are in.
func formCluster(t *testing.T, count int) []*node {
	t.Helper()
	ips := make([]string, count)
	for i := range ips {
		ips[i] = fmt.Sprintf("127.0.0.%d", i+1)
	}
	port := freePort(t, ips...)
	base := t.TempDir()
	var nodes []*node
	first := filepath.Join(base, "m1")
	nodes = append(nodes, startDaemon(t, ips[0], port, first, "init", "--data-dir", first,
		"--advertise", fmt.Sprintf("%s:%d", ips[0], port), "--hostname", "m1"))
	var token string
	eventually(t, 20*time.Second, "the manager token", func() (bool, string) {
		out, errOut, code := cli(t, "cluster", "join-token", "-q", "manager", "--host", nodes[0].addr(), "--timeout", "2s")
		token = strings.TrimSpace(out)
		return code == 0 && strings.HasPrefix(token, "SHOAL-1-"), errOut
	})
	for i := 1; i < count; i++ {
		dir := filepath.Join(base, fmt.Sprintf("m%d", i+1))
		nodes = append(nodes, startDaemon(t, ips[i], port, dir, "join", "--data-dir", dir,
			"--advertise", fmt.Sprintf("%s:%d", ips[i], port), "--hostname", fmt.Sprintf("m%d", i+1),
			"--token", token, nodes[0].addr()))
		// Join one at a time: each join changes the Raft configuration.
		want := i + 1
		eventually(t, 30*time.Second, fmt.Sprintf("%d reachable managers", want), func() (bool, string) {
			out, errOut, code := cli(t, "node", "ls", "--host", nodes[0].addr(), "--timeout", "2s")
			return code == 0 && countReady(out) == want, out + errOut
		})
	}
	return nodes
}

// countReady counts rows of `node ls` whose manager is Leader or Reachable.
func countReady(out string) int {
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, " Ready ") && (strings.HasSuffix(strings.TrimSpace(line), "Leader") || strings.HasSuffix(strings.TrimSpace(line), "Reachable")) {
			n++
		}
	}
	return n
}

// leaderHostname returns the hostname marked Leader in `node ls` output.
func leaderHostname(out string) string {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[len(f)-1] == "Leader" {
			if f[1] == "*" {
				return f[2]
			}
			return f[1]
		}
	}
	return ""
}

func TestThreeManagersSurviveLeaderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	nodes := formCluster(t, 3)

	// Every manager answers node ls alike (same rows, ignoring the * marker).
	var views []string
	for _, n := range nodes {
		out, errOut, code := cli(t, "node", "ls", "-q", "--host", n.addr())
		if code != 0 {
			t.Fatalf("node ls on %s: %s", n.addr(), errOut)
		}
		views = append(views, out)
	}
	for i := range views {
		if views[i] != views[0] || len(strings.Fields(views[i])) != 3 {
			t.Fatalf("managers disagree on node ls:\n%v", views)
		}
	}

	out, _, _ := cli(t, "node", "ls", "--host", nodes[1].addr())
	leaderName := leaderHostname(out)
	idx, _ := strconv.Atoi(strings.TrimPrefix(leaderName, "m"))
	if idx < 1 || idx > 3 {
		t.Fatalf("no leader in:\n%s", out)
	}
	leader := nodes[idx-1]
	var survivors []*node
	for _, n := range nodes {
		if n != leader {
			survivors = append(survivors, n)
		}
	}
	// A write acknowledged before the kill.
	if _, errOut, code := cli(t, "node", "update", "--label-add", "before=1", "m1", "--host", survivors[0].addr()); code != 0 {
		t.Fatalf("write before kill: %s", errOut)
	}

	leader.kill()
	eventually(t, 20*time.Second, "a new leader", func() (bool, string) {
		out, errOut, code := cli(t, "node", "ls", "--host", survivors[0].addr(), "--timeout", "2s")
		l := leaderHostname(out)
		return code == 0 && l != "" && l != leaderName, out + errOut
	})
	// Writes succeed through every survivor (followers forward to the leader).
	for i, n := range survivors {
		label := fmt.Sprintf("after%d=1", i)
		if _, errOut, code := cli(t, "node", "update", "--label-add", label, "m1", "--host", n.addr()); code != 0 {
			t.Fatalf("write through %s after failover: %s", n.addr(), errOut)
		}
	}
	out, errOut, code := cli(t, "node", "inspect", "m1", "--host", survivors[1].addr())
	if code != 0 {
		t.Fatalf("inspect: %s", errOut)
	}
	for _, l := range []string{`"before"`, `"after0"`, `"after1"`} {
		if !strings.Contains(out, l) {
			t.Fatalf("label %s lost after failover:\n%s", l, out)
		}
	}

	// The killed manager comes back with `shoal start` and catches up.
	back := startDaemon(t, leader.ip, leader.port, leader.dataDir, "start", "--data-dir", leader.dataDir)
	eventually(t, 30*time.Second, "the old leader back and caught up", func() (bool, string) {
		out, errOut, code := cli(t, "node", "inspect", "m1", "--host", back.addr(), "--timeout", "2s")
		ls, _, _ := cli(t, "node", "ls", "--host", back.addr(), "--timeout", "2s")
		return code == 0 && strings.Contains(out, `"after1"`) && countReady(ls) == 3, out + errOut + ls
	})
}

func TestQuorumLossAndForceNewCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	nodes := formCluster(t, 3)
	if _, errOut, code := cli(t, "node", "update", "--label-add", "keep=yes", "m2", "--host", nodes[0].addr()); code != 0 {
		t.Fatalf("write: %s", errOut)
	}
	survivor := nodes[0]
	nodes[1].kill()
	nodes[2].kill()
	_, errOut, code := cli(t, "node", "update", "--label-add", "lost=1", "m1", "--host", survivor.addr(), "--timeout", "3s")
	if code == 0 {
		t.Fatal("a write succeeded without quorum")
	}
	if !strings.Contains(errOut, "majority") && !strings.Contains(errOut, "leader") {
		t.Fatalf("quorum-loss error does not say why: %s", errOut)
	}
	survivor.kill()
	back := startDaemon(t, survivor.ip, survivor.port, survivor.dataDir, "init", "--force-new-cluster", "--data-dir", survivor.dataDir)
	eventually(t, 30*time.Second, "the recovered cluster", func() (bool, string) {
		out, errOut, code := cli(t, "node", "ls", "--host", back.addr(), "--timeout", "2s")
		return code == 0 && countReady(out) == 1 && leaderHostname(out) == "m1", out + errOut
	})
	out, errOut, code := cli(t, "node", "inspect", "m2", "--host", back.addr())
	if code == 0 || !strings.Contains(errOut, "no node") {
		t.Fatalf("old managers should be gone after force-new-cluster: %s %s", out, errOut)
	}
	if _, errOut, code := cli(t, "node", "update", "--label-add", "after=1", "m1", "--host", back.addr()); code != 0 {
		t.Fatalf("write after recovery: %s", errOut)
	}
}

func TestCLIBadInput(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	ip := "127.0.0.1"
	port := freePort(t, ip)
	dir := filepath.Join(t.TempDir(), "m1")
	m := startDaemon(t, ip, port, dir, "init", "--data-dir", dir, "--advertise", fmt.Sprintf("%s:%d", ip, port), "--hostname", "m1")
	eventually(t, 20*time.Second, "the manager", func() (bool, string) {
		_, errOut, code := cli(t, "node", "ls", "--host", m.addr(), "--timeout", "2s")
		return code == 0, errOut
	})
	token, _, _ := cli(t, "cluster", "join-token", "-q", "manager", "--host", m.addr())
	token = strings.TrimSpace(token)

	notShoal := t.TempDir()
	if err := os.WriteFile(filepath.Join(notShoal, "stuff"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	deadPort := freePort(t, "127.0.0.9")
	cases := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"init without advertise", []string{"init", "--data-dir", filepath.Join(t.TempDir(), "x")}, 2, "--advertise"},
		{"init with a bad advertise", []string{"init", "--data-dir", filepath.Join(t.TempDir(), "x"), "--advertise", "0.0.0.0"}, 2, "--advertise"},
		{"unknown flag", []string{"node", "ls", "--frobnicate"}, 2, "frobnicate"},
		{"unknown command", []string{"nodez"}, 2, "unknown command"},
		{"join with a wrong token", []string{"join", "--data-dir", filepath.Join(t.TempDir(), "j"), "--advertise", "127.0.0.5:" + strconv.Itoa(port),
			"--token", "SHOAL-1-" + strings.Split(token, "-")[2] + "-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", m.addr()}, 1, "invalid join token"},
		{"join with a malformed token", []string{"join", "--data-dir", filepath.Join(t.TempDir(), "j"), "--advertise", "127.0.0.5:" + strconv.Itoa(port),
			"--token", "nonsense", m.addr()}, 1, "malformed join token"},
		{"join where no manager listens", []string{"join", "--data-dir", filepath.Join(t.TempDir(), "j"), "--advertise", "127.0.0.6:" + strconv.Itoa(port),
			"--token", token, fmt.Sprintf("127.0.0.9:%d", deadPort)}, 1, "no Shoal manager answered"},
		{"init on a used data dir of another kind", []string{"init", "--data-dir", notShoal, "--advertise", "127.0.0.7"}, 1, "not a Shoal data dir"},
		{"unknown node", []string{"node", "inspect", "nosuchnode", "--host", m.addr()}, 1, "no node"},
		{"demote the only manager", []string{"node", "demote", "m1", "--host", m.addr()}, 1, "last manager"},
		{"remove a manager without force", []string{"node", "rm", "m1", "--host", m.addr()}, 1, "demote it first"},
		{"bad availability", []string{"node", "update", "--availability", "sideways", "m1", "--host", m.addr()}, 2, "active, pause or drain"},
		{"join-token without a role", []string{"cluster", "join-token", "--host", m.addr()}, 2, "worker"},
		{"no manager at host", []string{"node", "ls", "--host", fmt.Sprintf("127.0.0.9:%d", deadPort), "--data-dir", m.dataDir, "--timeout", "2s"}, 1, "no Shoal manager answers"},
		{"no credentials", []string{"node", "ls", "--host", fmt.Sprintf("127.0.0.9:%d", deadPort), "--data-dir", t.TempDir()}, 1, "no credentials to talk to the cluster"},
		{"events with an unknown type", []string{"events", "--filter", "type=container", "--host", m.addr()}, 2, "use one of service, node"},
		{"events with a bad since", []string{"events", "--since", "yesterday", "--host", m.addr()}, 2, "--since"},
		{"events with an unknown filter", []string{"events", "--filter", "colour=red", "--host", m.addr()}, 2, "unknown key"},
		{"a client config that is not one", []string{"node", "ls", "--host", m.addr(), "--client-config", filepath.Join(notShoal, "stuff")}, 1, "not a Shoal client config"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := cli(t, tc.args...)
			if code != tc.wantCode || !strings.Contains(errOut, tc.wantErr) {
				t.Fatalf("shoal %v: exit %d, stderr %q, stdout %q; want exit %d and %q", tc.args, code, errOut, out, tc.wantCode, tc.wantErr)
			}
			// Daemon commands log to stderr too; the error itself is one line.
			if n := strings.Count(errOut, "Error: "); n != 1 {
				t.Fatalf("want exactly one error line, got %d:\n%s", n, errOut)
			}
		})
	}
	// Nothing changed: still one manager, and failed joins left their dirs unused.
	out, _, _ := cli(t, "node", "ls", "-q", "--host", m.addr())
	if n := len(strings.Fields(out)); n != 1 {
		t.Fatalf("bad input changed the cluster: %d nodes", n)
	}
}

func TestWorkerKilledIsDownAndComesBack(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	ips := []string{"127.0.0.1", "127.0.0.4"}
	port := freePort(t, ips...)
	base := t.TempDir()
	mdir, wdir := filepath.Join(base, "m1"), filepath.Join(base, "w1")
	m := startDaemon(t, ips[0], port, mdir, "init", "--data-dir", mdir, "--advertise", fmt.Sprintf("%s:%d", ips[0], port),
		"--hostname", "m1", "--gossip-fast", "--heartbeat-period", "500ms")
	var token string
	eventually(t, 20*time.Second, "the worker token", func() (bool, string) {
		out, errOut, code := cli(t, "cluster", "join-token", "-q", "worker", "--host", m.addr(), "--timeout", "2s")
		token = strings.TrimSpace(out)
		return code == 0 && strings.HasPrefix(token, "SHOAL-1-"), errOut
	})
	w := startDaemon(t, ips[1], port, wdir, "join", "--data-dir", wdir, "--advertise", fmt.Sprintf("%s:%d", ips[1], port),
		"--hostname", "w1", "--gossip-fast", "--token", token, m.addr())
	workerRow := func() string {
		out, _, _ := cli(t, "node", "ls", "--host", m.addr(), "--timeout", "2s")
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, " w1 ") {
				return line
			}
		}
		return ""
	}
	eventually(t, 20*time.Second, "the worker Ready", func() (bool, string) {
		row := workerRow()
		return strings.Contains(row, " worker ") && strings.Contains(row, " Ready "), row
	})
	w.kill()
	killed := time.Now()
	eventually(t, 20*time.Second, "the killed worker Down", func() (bool, string) {
		row := workerRow()
		return strings.Contains(row, " Down "), row
	})
	t.Logf("worker Down %s after kill -9 (heartbeat 500ms, deadline 1.5s)", time.Since(killed).Round(time.Millisecond))
	startDaemon(t, ips[1], port, wdir, "start", "--data-dir", wdir, "--gossip-fast")
	eventually(t, 20*time.Second, "the restarted worker Ready", func() (bool, string) {
		row := workerRow()
		return strings.Contains(row, " Ready "), row
	})
	// shoal leave takes it out for good.
	if out, errOut, code := cli(t, "leave", "--data-dir", wdir); code != 0 {
		t.Fatalf("leave: %s %s", out, errOut)
	}
	eventually(t, 20*time.Second, "the worker gone from node ls", func() (bool, string) {
		row := workerRow()
		return row == "", row
	})
}

func TestPromoteAndDemote(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	ips := []string{"127.0.0.1", "127.0.0.2", "127.0.0.4", "127.0.0.5"}
	port := freePort(t, ips...)
	base := t.TempDir()
	daemon := func(name, ip string, args ...string) *node {
		dir := filepath.Join(base, name)
		full := append([]string{args[0], "--data-dir", dir, "--advertise", fmt.Sprintf("%s:%d", ip, port),
			"--hostname", name, "--gossip-fast", "--heartbeat-period", "500ms"}, args[1:]...)
		return startDaemon(t, ip, port, dir, full...)
	}
	m1 := daemon("m1", ips[0], "init")
	token := func(role string) string {
		var tok string
		eventually(t, 20*time.Second, role+" token", func() (bool, string) {
			out, errOut, code := cli(t, "cluster", "join-token", "-q", role, "--host", m1.addr(), "--timeout", "2s")
			tok = strings.TrimSpace(out)
			return code == 0 && strings.HasPrefix(tok, "SHOAL-1-"), errOut
		})
		return tok
	}
	daemon("m2", ips[1], "join", "--token", token("manager"), m1.addr())
	w1 := daemon("w1", ips[2], "join", "--token", token("worker"), m1.addr())
	w2 := daemon("w2", ips[3], "join", "--token", token("worker"), m1.addr())
	// certRole is the role of the certificate in w1's data dir.
	certRole := func() string {
		certPEM, _, _, err := datadir.LoadCerts(w1.dataDir)
		if err != nil {
			return err.Error()
		}
		cert, err := pki.ParseCert(certPEM)
		if err != nil {
			return err.Error()
		}
		id, err := pki.IdentityOf(cert)
		if err != nil {
			return err.Error()
		}
		return id.Role
	}
	row := func(host string) string {
		out, _, _ := cli(t, "node", "ls", "--host", m1.addr(), "--timeout", "2s")
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, " "+host+" ") {
				return line
			}
		}
		return ""
	}
	eventually(t, 30*time.Second, "w1 a Ready worker", func() (bool, string) {
		r := row("w1")
		return strings.Contains(r, " worker ") && strings.Contains(r, " Ready "), r
	})
	if _, errOut, code := cli(t, "node", "promote", "w1", "--host", m1.addr()); code != 0 {
		t.Fatalf("promote: %s", errOut)
	}
	eventually(t, 30*time.Second, "w1 a reachable manager", func() (bool, string) {
		r := row("w1")
		return strings.Contains(r, " manager ") && strings.Contains(r, "Reachable"), r
	})
	if got := certRole(); got != pki.RoleManager {
		t.Fatalf("w1's certificate after the promotion carries %q, want a manager's", got)
	}
	// The promoted node received the cluster's secrets key, as did m2.
	key := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(base, name, "secrets.key"))
		return string(b)
	}
	if k := key("m1"); len(k) != 32 || key("m2") != k || key("w1") != k {
		t.Errorf("secrets keys: m1 %d bytes, m2 and w1 the same: %v, %v", len(k), key("m2") == k, key("w1") == k)
	}
	// Three voters now: the cluster survives losing m2.
	out, _, _ := cli(t, "cluster", "info", "--host", m1.addr())
	if strings.Count(out, " true") != 3 {
		t.Fatalf("want 3 voters after the promotion:\n%s", out)
	}
	if _, errOut, code := cli(t, "node", "demote", "w1", "--host", m1.addr()); code != 0 {
		t.Fatalf("demote: %s", errOut)
	}
	eventually(t, 30*time.Second, "w1 a Ready worker again", func() (bool, string) {
		r := row("w1")
		return strings.Contains(r, " worker ") && strings.Contains(r, " Ready "), r
	})
	if _, err := os.Stat(filepath.Join(base, "w1", "secrets.key")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the demoted node still keeps the secrets key: %v", err)
	}
	eventually(t, 30*time.Second, "w1's certificate to be a worker's again", func() (bool, string) {
		got := certRole()
		return got == pki.RoleWorker, got
	})
	// Other workers refuse w1's old manager certificate, until it is a
	// manager again.
	w1ID := func() string {
		id, err := datadir.Load(w1.dataDir)
		if err != nil {
			t.Fatal(err)
		}
		return id.NodeID
	}()
	w2Refuses := func() (bool, string) {
		id, err := datadir.Load(w2.dataDir)
		if err != nil {
			return false, err.Error()
		}
		return slices.Contains(id.Revoked, w1ID), fmt.Sprintf("w2 refuses %v", id.Revoked)
	}
	eventually(t, 30*time.Second, "w2 to refuse w1's manager certificate", w2Refuses)
	if _, errOut, code := cli(t, "node", "promote", "w1", "--host", m1.addr()); code != 0 {
		t.Fatalf("promote again: %s", errOut)
	}
	eventually(t, 30*time.Second, "w1 a reachable manager again", func() (bool, string) {
		r := row("w1")
		return strings.Contains(r, " manager ") && strings.Contains(r, "Reachable"), r
	})
	eventually(t, 30*time.Second, "w2 to accept w1 as a manager again", func() (bool, string) {
		refuses, why := w2Refuses()
		return !refuses, why
	})
}

// TestClientConfigAndRotations: the CLI on another machine uses an
// exported client config with no other flag; the gossip key and the root
// CA rotate from the CLI; the admin config in the data dir follows the
// rotation, an exported one is refused with a clear error once it
// completes.
func TestClientConfigAndRotations(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	ip := "127.0.0.1"
	port := freePort(t, ip)
	dir := filepath.Join(t.TempDir(), "m1")
	startDaemon(t, ip, port, dir, "init", "--data-dir", dir, "--advertise", fmt.Sprintf("%s:%d", ip, port), "--hostname", "m1")
	local := func(args ...string) (string, string, int) { // on the manager's machine
		return cli(t, append(args, "--data-dir", dir)...)
	}
	eventually(t, 20*time.Second, "the manager", func() (bool, string) {
		_, errOut, code := local("node", "ls", "--timeout", "2s")
		return code == 0, errOut
	})
	out, errOut, code := local("cluster", "client-config")
	if code != 0 {
		t.Fatalf("client-config: %s", errOut)
	}
	config := filepath.Join(t.TempDir(), "admin.pem")
	if err := os.WriteFile(config, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	elsewhere := func(args ...string) (string, string, int) { // another machine: no data dir, no --host
		return cli(t, append(args, "--data-dir", t.TempDir(), "--client-config", config)...)
	}
	if out, errOut, code := elsewhere("node", "ls"); code != 0 || !strings.Contains(out, "m1") {
		t.Fatalf("node ls with the exported config: exit %d, %s%s", code, out, errOut)
	}
	if _, errOut, code := local("cluster", "gossip-key", "--rotate"); code != 0 {
		t.Fatalf("gossip-key --rotate: %s", errOut)
	}
	if out, errOut, code := local("cluster", "ca", "--rotate"); code != 0 || !strings.Contains(out, "rotation started") {
		t.Fatalf("ca --rotate: exit %d, %s%s", code, out, errOut)
	}
	// Once every node holds a certificate of the new root, the exported
	// config (old root) is refused; the one in the data dir was renewed.
	eventually(t, 30*time.Second, "the exported config to be refused", func() (bool, string) {
		_, errOut, code := elsewhere("node", "ls", "--timeout", "2s")
		return code == 1 && strings.Contains(errOut, "TLS with") && strings.Contains(errOut, "client-config"), errOut
	})
	if out, errOut, code := local("node", "ls"); code != 0 || !strings.Contains(out, "m1") {
		t.Fatalf("node ls with the data dir after the rotation: exit %d, %s%s", code, out, errOut)
	}
}
