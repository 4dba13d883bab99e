// Command shoal-demo is the local tour run by `make demo`: three managers
// and three workers as separate processes on loopback, the sample hello
// app as a replicated service, requests counted per replica, the leader
// killed with SIGKILL, the service scaled through a survivor, and a clean
// shutdown that leaves nothing running.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/shoal-cluster/shoal/gossip"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shoal-cluster/shoal/internal/clientcreds"
	"github.com/shoal-cluster/shoal/internal/mesh"
	"github.com/shoal-cluster/shoal/internal/rpc"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker/tasknet"
	"google.golang.org/grpc"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding the shoal and hello binaries")
	port := flag.Int("port", 0, "API port of every node (default: a free one)")
	keep := flag.Bool("keep", false, "leave the cluster running at the end (stop it with Ctrl-C)")
	dashboard := flag.Bool("dashboard", os.Getenv("DEMO_DASHBOARD") == "1", "at the end, serve the web dashboard (shoal dashboard) and leave the cluster running until Ctrl-C (env DEMO_DASHBOARD=1)")
	runtime := flag.String("runtime", envOr("DEMO_RUNTIME", "process"), "runtime of the hello service: process or docker (env DEMO_RUNTIME)")
	publish := flag.Int("publish", 8080, "port hello is published on, on every node (a free one if it is taken)")
	flag.Parse()
	if *runtime != "process" && *runtime != "docker" {
		fmt.Fprintf(os.Stderr, "unknown runtime %q: use process or docker\n", *runtime)
		os.Exit(2)
	}
	d := &demo{bin: *bin, start: time.Now(), runtime: *runtime, publish: *publish, dashboard: *dashboard}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := d.run(ctx, *port, *keep)
	d.shutdown()
	if err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo failed: %v\nlogs are in %s\n", err, d.dir)
		os.Exit(1)
	}
	fmt.Printf("\n== done in %s; every process stopped; logs are in %s\n", time.Since(d.start).Round(100*time.Millisecond), d.dir)
}

// demo holds the tour's processes.
type demo struct {
	bin     string
	dir     string
	port    int
	publish int
	runtime string
	start   time.Time
	nodes   []*proc

	dashboard bool // serve the web dashboard at the end, until Ctrl-C
}

// proc is one shoal daemon.
type proc struct {
	name string
	ip   string
	cmd  *exec.Cmd
	done chan struct{}
}

func (p *proc) addr(port int) string { return net.JoinHostPort(p.ip, strconv.Itoa(port)) }

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func step(format string, args ...any) { fmt.Printf("\n== "+format+"\n", args...) }

func (d *demo) run(ctx context.Context, port int, keep bool) error {
	var err error
	if d.dir, err = os.MkdirTemp("", "shoal-demo-"); err != nil {
		return err
	}
	for _, b := range []string{"shoal", "hello"} {
		if _, err := os.Stat(filepath.Join(d.bin, b)); err != nil {
			return fmt.Errorf("%s/%s is missing: run `make build` first", d.bin, b)
		}
	}
	hello, _ := filepath.Abs(filepath.Join(d.bin, "hello"))
	d.port = port
	if d.port == 0 {
		d.port = freePort()
	}
	if !portFree(d.publish) {
		was := d.publish
		d.publish = freePort() + 4
		fmt.Printf("port %d is taken on this host; publishing on %d instead\n", was, d.publish)
	}
	image := hello
	if d.runtime == "docker" {
		image = "shoal/hello:v1"
	}

	step("starting 3 managers and 3 workers on 127.0.0.1-6, port %d (logs in %s)", d.port, d.dir)
	m1, err := d.daemon(ctx, "m1", "127.0.0.1", "init")
	if err != nil {
		return err
	}
	mtoken, err := d.shoalOut(ctx, "cluster", "join-token", "-q", "manager", "--host", m1.addr(d.port))
	if err != nil {
		return err
	}
	wtoken, err := d.shoalOut(ctx, "cluster", "join-token", "-q", "worker", "--host", m1.addr(d.port))
	if err != nil {
		return err
	}
	for i, ip := range []string{"127.0.0.2", "127.0.0.3"} {
		if _, err := d.daemon(ctx, fmt.Sprintf("m%d", i+2), ip, "join", "--token", strings.TrimSpace(mtoken), m1.addr(d.port)); err != nil {
			return err
		}
	}
	for i, ip := range []string{"127.0.0.4", "127.0.0.5", "127.0.0.6"} {
		if _, err := d.daemon(ctx, fmt.Sprintf("w%d", i+1), ip, "join", "--token", strings.TrimSpace(wtoken), m1.addr(d.port)); err != nil {
			return err
		}
	}
	if err := d.waitNodes(ctx, m1.addr(d.port), 6); err != nil {
		return err
	}
	if err := d.shoal(ctx, "node", "ls", "--host", m1.addr(d.port)); err != nil {
		return err
	}

	step("every link is mutual TLS and gossip is encrypted: outsiders are refused")
	if err := showRefusals(ctx, m1.addr(d.port)); err != nil {
		return err
	}

	step("deploying the hello app (%s runtime) with 6 replicas, published on port %d of every node", d.runtime, d.publish)
	if err := d.shoal(ctx, "service", "create", "--host", m1.addr(d.port), "--name", "hello", "--replicas", "6",
		"--runtime", d.runtime, "--publish", fmt.Sprintf("%d:80", d.publish), "--health-http", "/healthz", "--health-interval", "500ms",
		"--restart-delay", "1s", image); err != nil {
		return err
	}
	if err := d.shoal(ctx, "service", "ps", "hello", "--host", m1.addr(d.port)); err != nil {
		return err
	}

	if err := d.fire(ctx, 120); err != nil {
		return err
	}

	leader, err := d.leader(ctx, m1.addr(d.port))
	if err != nil {
		return err
	}
	var survivor *proc
	for _, p := range d.nodes {
		if strings.HasPrefix(p.name, "m") && p != leader {
			survivor = p
			break
		}
	}
	step("killing the leader %s (pid %d) with SIGKILL", leader.name, leader.cmd.Process.Pid)
	killed := time.Now()
	_ = leader.cmd.Process.Signal(syscall.SIGKILL)
	<-leader.done
	newLeader, err := d.waitNewLeader(ctx, survivor.addr(d.port), leader.name)
	if err != nil {
		return err
	}
	fmt.Printf("new leader: %s, %s after the kill\n", newLeader, time.Since(killed).Round(time.Millisecond))
	if err := d.shoal(ctx, "node", "ls", "--host", survivor.addr(d.port)); err != nil {
		return err
	}

	step("the service still answers without the old leader")
	if err := d.fire(ctx, 60); err != nil {
		return err
	}
	step("scaling hello to 9 through %s", survivor.name)
	if err := d.shoal(ctx, "service", "scale", "hello=9", "--host", survivor.addr(d.port)); err != nil {
		return err
	}
	if err := d.shoal(ctx, "service", "ls", "--host", survivor.addr(d.port)); err != nil {
		return err
	}
	if err := d.waitEndpoints(ctx, 9); err != nil {
		return err
	}
	if err := d.fire(ctx, 180); err != nil {
		return err
	}

	switch {
	case d.dashboard:
		stop, err := d.serveDashboard(ctx, survivor.addr(d.port))
		if err != nil {
			return err
		}
		<-ctx.Done()
		stop()
	case keep:
		step("the cluster keeps running; press Ctrl-C to stop it (SHOAL_HOST=%s)", survivor.addr(d.port))
		<-ctx.Done()
	default:
		fmt.Println("\n(`DEMO_DASHBOARD=1 make demo` leaves the cluster running here with the web dashboard, `shoal dashboard`, until Ctrl-C)")
	}
	step("removing the service and stopping every node")
	if err := d.shoal(context.Background(), "service", "rm", "hello", "--host", survivor.addr(d.port)); err != nil {
		return err
	}
	return d.waitNoTasks(survivor.addr(d.port))
}

// serveDashboard runs `shoal dashboard` through addr, prints the URL it
// logs in with, and returns what stops it.
func (d *demo) serveDashboard(ctx context.Context, addr string) (func(), error) {
	step("the web dashboard: scale hello, drain a node, watch the tasks move and the events arrive")
	fmt.Println("$ shoal dashboard")
	logf, err := os.Create(filepath.Join(d.dir, "dashboard.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(d.bin, "shoal"), "dashboard", "--host", addr, "--addr", "127.0.0.1:0")
	cmd.Env = d.cliEnv()
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // stopped by the tour, after the Ctrl-C
	out, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start shoal dashboard: %w", err)
	}
	done := make(chan struct{})
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if i := strings.Index(sc.Text(), "http"); i >= 0 {
				select {
				case urls <- sc.Text()[i:]:
				default:
				}
			}
		}
	}()
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	select {
	case u := <-urls:
		fmt.Printf("Open %s\n(the token logs one browser in; the cluster and the dashboard run until Ctrl-C; its log: %s)\n", u, logf.Name())
		return stop, nil
	case <-done:
		return nil, fmt.Errorf("shoal dashboard exited; see %s", logf.Name())
	case <-ctx.Done():
		stop()
		return func() {}, nil
	case <-time.After(30 * time.Second):
		stop()
		return nil, fmt.Errorf("shoal dashboard printed no URL within 30s; see %s", logf.Name())
	}
}

// daemon starts a node and waits for it to answer.
func (d *demo) daemon(ctx context.Context, name, ip string, args ...string) (*proc, error) {
	logf, err := os.Create(filepath.Join(d.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	full := append([]string{args[0], "--data-dir", filepath.Join(d.dir, name), "--advertise", net.JoinHostPort(ip, strconv.Itoa(d.port)),
		"--hostname", name, "--gossip-fast", "--heartbeat-period", "500ms"}, args[1:]...)
	cmd := exec.Command(filepath.Join(d.bin, "shoal"), full...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, ip: ip, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	d.nodes = append(d.nodes, p)
	fmt.Printf("$ shoal %s   (%s, pid %d)\n", strings.Join(args[:1], " "), name, cmd.Process.Pid)
	if args[0] == "init" {
		if _, err := d.waitFor(ctx, 20*time.Second, name+" to answer", func() (bool, error) {
			_, err := d.shoalOut(ctx, "node", "ls", "--host", p.addr(d.port), "--timeout", "1s")
			return err == nil, err
		}); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// shoal runs a CLI command, showing it and its output.
func (d *demo) shoal(ctx context.Context, args ...string) error {
	fmt.Printf("$ shoal %s\n", strings.Join(hideHost(args), " "))
	cmd := exec.CommandContext(ctx, filepath.Join(d.bin, "shoal"), args...)
	cmd.Env = d.cliEnv()
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("shoal %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// cliEnv points the CLI at the first manager's data dir, as a user on
// its machine would (SHOAL_DATA_DIR): the admin client config is there.
func (d *demo) cliEnv() []string { return append(os.Environ(), "SHOAL_DATA_DIR="+d.adminDir()) }

// hideHost leaves --host out of the echoed command: any manager would do.
func hideHost(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		if args[i] == "--host" {
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}

func (d *demo) shoalOut(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(d.bin, "shoal"), args...)
	cmd.Env = d.cliEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("shoal %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func (d *demo) waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) (time.Duration, error) {
	start := time.Now()
	var last error
	for time.Since(start) < timeout {
		ok, err := cond()
		if ok {
			return time.Since(start), nil
		}
		last = err
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return 0, fmt.Errorf("timed out after %s waiting for %s (last error: %v)", timeout, what, last)
}

// adminDir is the data dir of the node that ran `shoal init`: the admin
// client config is there.
func (d *demo) adminDir() string { return filepath.Join(d.dir, "m1") }

// control dials a manager with the admin client config.
func (d *demo) control(addr string) (pb.ControlClient, func(), error) {
	creds, err := clientcreds.Admin(d.adminDir())
	if err != nil {
		return nil, nil, err
	}
	conn, err := rpc.Dial(addr, creds, grpc.WithUnaryInterceptor(rpc.RetryUnavailable()))
	if err != nil {
		return nil, nil, err
	}
	return pb.NewControlClient(conn), func() { conn.Close() }, nil
}

func (d *demo) waitNodes(ctx context.Context, addr string, n int) error {
	c, done, err := d.control(addr)
	if err != nil {
		return err
	}
	defer done()
	_, err = d.waitFor(ctx, 30*time.Second, fmt.Sprintf("%d nodes ready", n), func() (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		resp, err := c.ListNodes(cctx, &pb.ListNodesRequest{})
		if err != nil {
			return false, err
		}
		ready := 0
		for _, node := range resp.GetNodes() {
			if node.GetStatus().GetState() == pb.NodeState_NODE_STATE_READY {
				ready++
			}
		}
		return ready == n, nil
	})
	return err
}

// leader finds the leading manager's process.
func (d *demo) leader(ctx context.Context, addr string) (*proc, error) {
	c, done, err := d.control(addr)
	if err != nil {
		return nil, err
	}
	defer done()
	resp, err := c.ListNodes(ctx, &pb.ListNodesRequest{})
	if err != nil {
		return nil, err
	}
	for _, n := range resp.GetNodes() {
		if n.GetManagerStatus().GetLeader() {
			for _, p := range d.nodes {
				if p.name == n.GetDescription().GetHostname() {
					return p, nil
				}
			}
		}
	}
	return nil, errors.New("no leader found")
}

func (d *demo) waitNewLeader(ctx context.Context, addr, old string) (string, error) {
	c, done, err := d.control(addr)
	if err != nil {
		return "", err
	}
	defer done()
	var name string
	_, err = d.waitFor(ctx, 20*time.Second, "a new leader", func() (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		resp, err := c.ListNodes(cctx, &pb.ListNodesRequest{})
		if err != nil {
			return false, err
		}
		for _, n := range resp.GetNodes() {
			if n.GetManagerStatus().GetLeader() && n.GetDescription().GetHostname() != old {
				name = n.GetDescription().GetHostname()
				return true, nil
			}
		}
		return false, nil
	})
	return name, err
}

// fire sends n requests to the published port, spread over every live
// node (managers too: the mesh runs on each), and prints how many each
// replica answered.
func (d *demo) fire(ctx context.Context, n int) error {
	var nodes []*proc
	for _, p := range d.nodes {
		if p.alive() {
			nodes = append(nodes, p)
		}
	}
	step("sending %d requests to port %d, spread over the %d live nodes", n, d.publish, len(nodes))
	counts := map[string]int{}
	failed := 0
	client := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range n {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r, err := client.Get("http://" + nodes[i%len(nodes)].addr(d.publish) + "/")
		if err != nil {
			failed++
			continue
		}
		line, _ := bufio.NewReader(r.Body).ReadString('\n')
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
		counts[strings.TrimSpace(line)]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("  %4d  %s\n", counts[k], k)
	}
	fmt.Printf("  %d replicas answered %d of %d requests (%d failed)\n", len(keys), n-failed, n, failed)
	if failed > 0 {
		return fmt.Errorf("%d of %d requests failed", failed, n)
	}
	return nil
}

// waitEndpoints waits until the mesh on every live node spreads over want
// replicas: requests through one node reach want distinct replicas.
func (d *demo) waitEndpoints(ctx context.Context, want int) error {
	client := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	_, err := d.waitFor(ctx, 60*time.Second, fmt.Sprintf("%d replicas behind the published port", want), func() (bool, error) {
		for _, p := range d.nodes {
			if !p.alive() {
				continue
			}
			seen := map[string]bool{}
			for range want * 2 {
				r, err := client.Get("http://" + p.addr(d.publish) + "/")
				if err != nil {
					return false, nil
				}
				seen[r.Header.Get("X-Served-By")] = true
				_, _ = io.Copy(io.Discard, r.Body)
				r.Body.Close()
			}
			if len(seen) < want {
				return false, nil
			}
		}
		return true, nil
	})
	return err
}

// waitNoTasks waits until the removed service's processes are gone.
func (d *demo) waitNoTasks(addr string) error {
	c, done, err := d.control(addr)
	if err != nil {
		return err
	}
	defer done()
	_, err = d.waitFor(context.Background(), 30*time.Second, "the service's tasks to stop", func() (bool, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		resp, err := c.ListTasks(ctx, &pb.ListTasksRequest{})
		if err != nil {
			return false, err
		}
		return len(resp.GetTasks()) == 0, nil
	})
	return err
}

// shutdown stops every node and makes sure no process of the demo is left.
func (d *demo) shutdown() {
	for _, p := range d.nodes {
		if p.alive() {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	deadline := time.After(15 * time.Second)
	for _, p := range d.nodes {
		select {
		case <-p.done:
		case <-deadline:
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	}
	// Container twin addresses of service virtual IPs stay on lo for the
	// cluster's other nodes; the tour's cluster is gone, so are they.
	if d.dir != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		mesh.RemoveNodeContainerAddrs(ctx, filepath.Join(d.dir, "m1"))
		// A node killed after the grace period left its mesh's nftables table.
		for _, p := range d.nodes {
			mesh.RemoveNodeTable(ctx, filepath.Join(d.dir, p.name))
			tasknet.RemoveNodeNetwork(ctx, filepath.Join(d.dir, p.name)) // a stopped worker leaves it for a restart
		}
		cancel()
	}
	// Task supervisors outlive their workers by design; none should be
	// left after the service was removed, but make sure.
	if d.dir != "" {
		for _, pid := range processesUnder(d.dir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// processesUnder lists processes whose command line mentions dir.
func processesUnder(dir string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(data), dir) {
			out = append(out, pid)
		}
	}
	return out
}

// freePort picks a port free on 127.0.0.1-6 for the API, Raft, gossip and
// the resolver, and the one after (a published port may go there).
func freePort() int {
	for range 100 {
		port := 20000 + rand.IntN(30000)
		ok := true
		for p := port; p <= port+4 && ok; p++ {
			ok = portFree(p)
		}
		if ok {
			return port
		}
	}
	return 4242
}

// portFree reports whether a port is free, TCP and UDP, on 127.0.0.1-6.
func portFree(port int) bool {
	for host := 1; host <= 6; host++ {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%d", host, port))
		if err != nil {
			return false
		}
		l.Close()
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.%d:%d", host, port))
		if err != nil {
			return false
		}
		u.Close()
	}
	return true
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// showRefusals shows that a plaintext gRPC client and a gossip member
// without the cluster's key get nothing from a manager.
func showRefusals(ctx context.Context, addr string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = pb.NewControlClient(conn).ListNodes(cctx, &pb.ListNodesRequest{})
	cancel()
	conn.Close()
	if err == nil {
		return fmt.Errorf("a plaintext gRPC client was served by %s", addr)
	}
	fmt.Printf("plaintext gRPC client: refused (%s)\n", status.Code(err))
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	p, _ := strconv.Atoi(port)
	g, err := gossip.New(gossip.Config{
		Meta:   gossip.Meta{NodeID: "outsider", Role: gossip.RoleWorker, API: net.JoinHostPort(host, "1")},
		BindIP: host, Keys: [][]byte{gossip.NewKey()}, Fast: true, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return err
	}
	defer g.Shutdown()
	if n, err := g.Join([]string{net.JoinHostPort(host, strconv.Itoa(p+2))}); err == nil && n > 0 {
		return fmt.Errorf("a gossip member without the cluster's key joined %s", addr)
	}
	fmt.Println("gossip member without the cluster's key: not admitted")
	return nil
}
