package main

// The dashboard journey in a real browser: Debian's chromium, driven
// through chromedp, against a cluster of three managers and two workers
// run as `shoal` processes, with `shoal dashboard` as its own process.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	cdpruntime "github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// findChromium returns the browser to drive. Without one the test skips,
// unless SHOAL_REQUIRE_BROWSER=1 or SHOAL_REQUIRE_DOCKER=1 (CI) says it
// must run: `make test` installs it (scripts/test-deps.sh).
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("SHOAL_REQUIRE_BROWSER") == "1" || os.Getenv("SHOAL_REQUIRE_DOCKER") == "1" {
		t.Fatal("no chromium, and SHOAL_REQUIRE_BROWSER=1 or SHOAL_REQUIRE_DOCKER=1 requires the browser test: run make test-deps (scripts/test-deps.sh) to install it")
	}
	t.Skip("no chromium (make test-deps installs it; SHOAL_REQUIRE_BROWSER=1 makes this a failure)")
	return ""
}

// screenshotDir is where the test saves its screenshots: a temporary
// directory, or SHOAL_SCREENSHOT_DIR (`make screenshots` sets it to
// docs/images, which the README shows), so that a test run leaves the
// checkout as it was.
func screenshotDir(t *testing.T) string {
	if d := os.Getenv("SHOAL_SCREENSHOT_DIR"); d != "" {
		return d
	}
	return t.TempDir()
}

// dashCluster is the cluster of the test and what it needs to reach it.
type dashCluster struct {
	t        *testing.T
	base     string
	managers []*node
	workers  []*node
	hostname map[string]*node // hostname -> node
}

// startDashCluster starts m1-m3 and w1-w2 on 127.0.0.51-55 and waits until
// all five are Ready.
func startDashCluster(t *testing.T) (*dashCluster, string) {
	base, err := os.MkdirTemp("", "shoal-e2e-dash-")
	if err != nil {
		t.Fatal(err)
	}
	c := &dashCluster{t: t, base: base, hostname: map[string]*node{}}
	t.Cleanup(func() {
		// After the daemons are killed: task supervisors outlive them by
		// design, so whatever of the test still runs is killed here.
		deadline := time.Now().Add(5 * time.Second)
		for len(processesUnder(base)) > 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		for pid := range processesUnder(base) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		os.RemoveAll(base)
	})
	hello := filepath.Join(base, "bin", "hello")
	built := make(chan error, 1)
	go func() {
		out, err := exec.Command("go", "build", "-o", hello, "../hello").CombinedOutput()
		if err != nil {
			err = fmt.Errorf("build hello: %v\n%s", err, out)
		}
		built <- err
	}()

	ips := []string{"127.0.0.51", "127.0.0.52", "127.0.0.53", "127.0.0.54", "127.0.0.55"}
	port := freePort(t, ips...)
	daemon := func(i int, name string, args ...string) *node {
		dir := filepath.Join(base, name)
		full := append([]string{args[0], "--data-dir", dir, "--advertise", fmt.Sprintf("%s:%d", ips[i], port),
			"--hostname", name, "--gossip-fast", "--heartbeat-period", "500ms"}, args[1:]...)
		n := startDaemon(t, ips[i], port, dir, full...)
		c.hostname[name] = n
		return n
	}
	m1 := daemon(0, "m1", "init")
	c.managers = append(c.managers, m1)
	token := func(role string) string {
		var tok string
		eventually(t, 20*time.Second, "the "+role+" token", func() (bool, string) {
			out, errOut, code := cli(t, "cluster", "join-token", "-q", role, "--host", m1.addr(), "--timeout", "2s")
			tok = strings.TrimSpace(out)
			return code == 0 && strings.HasPrefix(tok, "SHOAL-1-"), errOut
		})
		return tok
	}
	mtoken, wtoken := token("manager"), token("worker")
	for i, name := range []string{"m2", "m3"} {
		c.managers = append(c.managers, daemon(i+1, name, "join", "--token", mtoken, m1.addr()))
		want := i + 2
		eventually(t, 30*time.Second, fmt.Sprintf("%d reachable managers", want), func() (bool, string) {
			out, errOut, code := cli(t, "node", "ls", "--host", m1.addr(), "--timeout", "2s")
			return code == 0 && countReady(out) == want, out + errOut
		})
	}
	for i, name := range []string{"w1", "w2"} {
		c.workers = append(c.workers, daemon(i+3, name, "join", "--token", wtoken, m1.addr()))
	}
	eventually(t, 30*time.Second, "five Ready nodes, the workers with the process runtime", func() (bool, string) {
		nodes, raw := c.nodes()
		ready := 0
		for _, n := range nodes {
			if n.Status.State == "NODE_STATE_READY" && (strings.HasPrefix(n.Description.Hostname, "m") || slices.Contains(n.Description.Runtimes, "process")) {
				ready++
			}
		}
		return ready == 5, raw
	})
	select {
	case err := <-built:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("building hello took over 2 minutes")
	}
	// Runs before the daemons are killed: remove the services and wait
	// for their processes to stop.
	t.Cleanup(func() {
		for _, m := range c.managers {
			select {
			case <-m.exited:
				continue
			default:
			}
			cli(t, "service", "rm", "web", "api", "--host", m.addr(), "--timeout", "5s")
			break
		}
		deadline := time.Now().Add(15 * time.Second)
		for len(processesUnder(filepath.Join(base, "bin"))) > 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
	})
	return c, hello
}

type dashNode struct {
	ID          string `json:"id"`
	Description struct {
		Hostname string   `json:"hostname"`
		Runtimes []string `json:"runtimes"`
	} `json:"description"`
	Spec struct {
		Availability string `json:"availability"`
	} `json:"spec"`
	Status struct {
		State string `json:"state"`
	} `json:"status"`
	ManagerStatus struct {
		Leader bool `json:"leader"`
	} `json:"manager_status"`
}

// live is a manager that still runs, for the CLI to talk through.
func (c *dashCluster) live() *node {
	for _, m := range c.managers {
		select {
		case <-m.exited:
		default:
			return m
		}
	}
	c.t.Fatal("no manager runs")
	return nil
}

// nodes is `node ls --format json`.
func (c *dashCluster) nodes() ([]dashNode, string) {
	out, errOut, code := cli(c.t, "node", "ls", "--format", "json", "--host", c.live().addr(), "--timeout", "3s")
	var nodes []dashNode
	if code != 0 || json.Unmarshal([]byte(out), &nodes) != nil {
		return nil, out + errOut
	}
	return nodes, out
}

// runningWeb returns the running tasks of web by node ID, read with
// `service ps --format json`.
func (c *dashCluster) runningWeb() (map[string]int, int, string) {
	out, errOut, code := cli(c.t, "service", "ps", "web", "--format", "json", "--host", c.live().addr(), "--timeout", "3s")
	var tasks []svcTask
	if code != 0 || json.Unmarshal([]byte(out), &tasks) != nil {
		return nil, 0, out + errOut
	}
	byNode, n := map[string]int{}, 0
	for _, task := range tasks {
		if task.running() {
			byNode[task.NodeID]++
			n++
		}
	}
	return byNode, n, out
}

// startDashboard runs `shoal dashboard` through addr and returns its
// login URL.
func startDashboard(t *testing.T, addr string) string {
	ctx, cancel := context.WithCancel(context.Background())
	cmd := cliCommand(ctx, "dashboard", "--host", addr, "--addr", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errBuf lockedBuffer
	cmd.Stderr = &errBuf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("shoal dashboard's log:\n%s", tail(errBuf.String(), 60))
		}
	})
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := regexp.MustCompile(`http://127\.0\.0\.1:\d+/\?token=\S+`).FindString(sc.Text()); m != "" {
				urls <- m
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case u := <-urls:
		return u
	case <-done:
		t.Fatalf("shoal dashboard exited: %s", errBuf.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("shoal dashboard printed no URL in 30s: %s", errBuf.String())
	}
	return ""
}

// browser is a headless chromium tab.
type browser struct {
	t   *testing.T
	ctx context.Context
	dir string
}

func newBrowser(t *testing.T, exe string) *browser {
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.WindowSize(1280, 860))
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // chromium refuses to run as root with its sandbox
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// Start the browser on ctx itself: a browser started on a call's
	// shorter context would end with that call.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start %s: %v", exe, err)
	}
	// The page must run without a JavaScript exception or a refusal of
	// its own Content-Security-Policy.
	var errs lockedBuffer
	exceptions := chromedp.Events(ctx, cdpruntime.ExceptionThrown)
	logs := chromedp.Events(ctx, cdplog.EntryAdded)
	watched := make(chan struct{}, 2)
	go func() {
		defer func() { watched <- struct{}{} }()
		for ev, err := range exceptions {
			if err != nil {
				return
			}
			if d := ev.ExceptionDetails; d != nil {
				desc := ""
				if d.Exception != nil {
					desc = d.Exception.Description
				}
				fmt.Fprintf(&errs, "exception: %s %s (%s:%d)\n", d.Text, desc, d.URL, d.LineNumber)
			}
		}
	}()
	go func() {
		defer func() { watched <- struct{}{} }()
		for ev, err := range logs {
			if err != nil {
				return
			}
			if e := ev.Entry; e.Level == cdplog.EntryLevelError && (e.Source == "javascript" || e.Source == "security") {
				fmt.Fprintf(&errs, "%s: %s (%s)\n", e.Source, e.Text, e.URL)
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-watched
		<-watched
		if errs.String() != "" {
			t.Errorf("the page reported errors:\n%s", errs.String())
		}
	})
	return &browser{t: t, ctx: ctx, dir: screenshotDir(t)}
}

func (b *browser) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression in the page.
func evalIn[T any](b *browser, js string) (T, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](js))
}

// texts returns the text of every element matching a CSS selector.
func (b *browser) texts(sel string) []string {
	out, err := evalIn[[]string](b, fmt.Sprintf(`Array.from(document.querySelectorAll(%q)).map(e => e.textContent)`, sel))
	if err != nil {
		b.t.Fatalf("browser: read %s: %v", sel, err)
	}
	return out
}

// waitText waits until the element matching sel shows text matching want.
func (b *browser) waitText(what, sel string, timeout time.Duration, want func(string) bool) {
	b.t.Helper()
	eventually(b.t, timeout, what, func() (bool, string) {
		got := b.texts(sel)
		return len(got) > 0 && want(got[0]), fmt.Sprintf("%s shows %q", sel, got)
	})
}

func (b *browser) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	buf, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		b.t.Fatal(err)
	}
	path := filepath.Join(b.dir, name)
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", path)
}

// setValue types a value into an input as a user would: the page sees
// an input event.
func (b *browser) setValue(sel, value string) {
	b.t.Helper()
	js := fmt.Sprintf(`(() => { const el = document.querySelector(%q); if (!el) return false;
		el.value = %q; el.dispatchEvent(new Event('input', {bubbles: true})); return true; })()`, sel, value)
	ok, err := evalIn[bool](b, js)
	if err != nil || !ok {
		b.t.Fatalf("browser: type into %s: %v (found: %v)", sel, err, ok)
	}
}

// click clicks an element with the mouse. The page re-renders on every
// change; an element replaced between the lookup and the click is looked
// up again (the click was not sent).
func (b *browser) click(sel string) {
	b.t.Helper()
	var err error
	for range 5 {
		ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
		err = chromedp.Do(ctx, chromedp.Click(chromedp.CSS(sel), chromedp.NodeVisible))
		cancel()
		if err == nil || !strings.Contains(err.Error(), "Could not find node") && !strings.Contains(err.Error(), "detached") {
			break
		}
	}
	if err != nil {
		b.t.Fatalf("browser: click %s: %v", sel, err)
	}
}

// TestDashboardBrowser logs in with the printed token, sees every node
// and service, scales a service with the replicas control, drains a node
// with its button and watches the tasks move, sees both in the event list,
// finds everything closed to a request without the session, and carries
// on when the manager it talks through, the leader, is killed.
func TestDashboardBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster and browser test")
	}
	exe := findChromium(t)
	start := time.Now()
	step := func(name string) { t.Logf("%6.1fs %s", time.Since(start).Seconds(), name) }
	c, hello := startDashCluster(t)
	m1 := c.managers[0]

	step("services web (3 replicas) and api (2), a secret, a config")
	for _, svc := range []struct{ name, replicas, port string }{{"web", "3", "8080"}, {"api", "2", "8081"}} {
		out, errOut, code := cliWithin(t, 90*time.Second, "service", "create", "--host", m1.addr(), "--timeout", "75s", "--name", svc.name,
			"--replicas", svc.replicas, "--runtime", "process", "--publish", svc.port+":80", "--health-http", "/healthz", "--health-interval", "500ms",
			"--reserve-cpu", "0.1", "--reserve-memory", "64M", hello)
		if code != 0 {
			t.Fatalf("service create %s: %s%s", svc.name, out, errOut)
		}
	}
	secretFile := filepath.Join(c.base, "db-password")
	const secretValue = "s3cr3t-value-never-shown"
	if err := os.WriteFile(secretFile, []byte(secretValue), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := cli(t, "secret", "create", "db-password", secretFile, "--host", m1.addr()); code != 0 {
		t.Fatalf("secret create: %s%s", out, errOut)
	}
	if out, errOut, code := cli(t, "config", "create", "web.conf", secretFile, "--host", m1.addr()); code != 0 {
		t.Fatalf("config create: %s%s", out, errOut)
	}
	var clusterInfo []struct {
		Cluster struct {
			ID string `json:"id"`
		} `json:"cluster"`
		LeaderNodeID string `json:"leader_node_id"`
	}
	out, errOut, code := cli(t, "cluster", "info", "--format", "json", "--host", m1.addr())
	if code != 0 || json.Unmarshal([]byte(out), &clusterInfo) != nil || len(clusterInfo) != 1 {
		t.Fatalf("cluster info: %s%s", out, errOut)
	}
	clusterID := clusterInfo[0].Cluster.ID

	// The dashboard talks through the leader, which the test kills later.
	nodes, raw := c.nodes()
	var leader *node
	idByName := map[string]string{}
	for _, n := range nodes {
		idByName[n.Description.Hostname] = n.ID
		if n.ManagerStatus.Leader {
			leader = c.hostname[n.Description.Hostname]
		}
	}
	if leader == nil {
		t.Fatalf("no leader in:\n%s", raw)
	}
	step("shoal dashboard")
	loginURL := startDashboard(t, leader.addr())
	u := loginURL[:strings.Index(loginURL, "/?")]

	step("nothing without the session")
	plain := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	refused := func(what, target string) {
		t.Helper()
		resp, err := plain.Get(target)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: %s %q; want 401", what, resp.Status, body)
		}
		for _, secret := range []string{clusterID, "web", "m1", "db-password", "<script"} {
			if strings.Contains(string(body), secret) {
				t.Errorf("%s: the 401 body %q gives away %q", what, body, secret)
			}
		}
	}
	for _, path := range []string{"/", "/api/state", "/api/events", "/api/stream", "/static/app.js", "/api/services/web/logs", "/?token=wrong"} {
		refused("GET "+path+" without the session", u+path)
	}
	if resp, err := plain.Post(u+"/api/services/web/scale", "application/json", strings.NewReader(`{"replicas":9}`)); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("POST scale without the session: %v %v; want 401", resp, err)
	}

	step("log in with the token")
	b := newBrowser(t, exe)
	b.do("open the login URL", chromedp.Navigate(loginURL))
	b.waitText("the overview's cluster ID", "#cluster-id", 20*time.Second, func(s string) bool { return s == clusterID })
	if loc, _ := evalIn[string](b, "location.href"); strings.Contains(loc, "token") {
		t.Errorf("the address bar still holds the token after login: %s", loc)
	}
	refused("the login URL a second time", loginURL)

	step("every node and service")
	b.waitText("the leader on the overview", "#leader", 10*time.Second, func(s string) bool { return s == c.hostnameOf(leader) })
	b.do("open Nodes", chromedp.Navigate(u+"/#/nodes"))
	eventually(t, 10*time.Second, "every node on the Nodes page", func() (bool, string) {
		rows := b.texts("[data-node-row]")
		for name := range c.hostname {
			if !slices.ContainsFunc(rows, func(r string) bool { return strings.HasPrefix(r, name) }) {
				return false, fmt.Sprintf("rows %q lack %s", rows, name)
			}
		}
		return len(rows) == 5, fmt.Sprintf("rows %q", rows)
	})
	b.do("open Services", chromedp.Navigate(u+"/#/services"))
	b.waitText("web 3/3", `[data-replicas="web"]`, 20*time.Second, func(s string) bool { return s == "3/3" })
	b.waitText("api 2/2", `[data-replicas="api"]`, 20*time.Second, func(s string) bool { return s == "2/2" })
	b.do("open Secrets", chromedp.Navigate(u+"/#/secrets"))
	b.waitText("the secret listed", `[data-secret="db-password"]`, 10*time.Second, func(s string) bool { return strings.HasPrefix(s, "db-password") })
	b.waitText("the config listed", `[data-config="web.conf"]`, 10*time.Second, func(s string) bool { return strings.HasPrefix(s, "web.conf") })
	if html, _ := evalIn[string](b, "document.documentElement.outerHTML"); strings.Contains(html, secretValue) {
		t.Error("the Secrets page shows the secret's value")
	}
	b.do("open the overview", chromedp.Navigate(u+"/#/"))
	b.waitText("web 3/3 on the overview", `[data-replicas="web"]`, 10*time.Second, func(s string) bool { return s == "3/3" })
	b.screenshot("dashboard-overview.png")

	step("scale web from 3 to 5 with the replicas control")
	b.do("open Services", chromedp.Navigate(u+"/#/services"))
	b.waitText("the scale control", `[data-scale="web"]`, 10*time.Second, func(string) bool { return true })
	b.setValue(`[data-scale="web"]`, "5")
	b.click(`[data-scale-button="web"]`)
	var byNode map[string]int
	eventually(t, 60*time.Second, "5 running tasks of web in the store", func() (bool, string) {
		var n int
		var raw string
		byNode, n, raw = c.runningWeb()
		return n == 5, raw
	})
	b.waitText("web 5/5 on the page", `[data-replicas="web"]`, 10*time.Second, func(s string) bool { return s == "5/5" })

	step("a change made elsewhere shows on the page")
	target := "w1"
	if byNode[idByName["w2"]] > byNode[idByName["w1"]] {
		target = "w2"
	}
	b.do("open Nodes", chromedp.Navigate(u+"/#/nodes"))
	b.waitText(target+" active", `[data-availability-of="`+target+`"]`, 10*time.Second, func(s string) bool { return s == "Active" })
	// The change is committed while the command runs: the page's lag is
	// at most the time from the command's start (which includes starting
	// a process) and at least the time from its return.
	started := time.Now()
	if out, errOut, code := cli(t, "node", "update", "--availability", "pause", target, "--host", c.live().addr()); code != 0 {
		t.Fatalf("node update: %s%s", out, errOut)
	}
	returned := time.Now()
	b.waitText(target+" paused on the page", `[data-availability-of="`+target+`"]`, 5*time.Second, func(s string) bool { return s == "Pause" })
	t.Logf("the page showed the pause %s after the command started, %s after it returned",
		time.Since(started).Round(time.Millisecond), time.Since(returned).Round(time.Millisecond))
	clicked := time.Now()
	b.click(`button[data-node-button="` + target + `"][data-availability="active"]`)
	b.waitText(target+" active again", `[data-availability-of="`+target+`"]`, 10*time.Second, func(s string) bool { return s == "Active" })
	t.Logf("Activate clicked: the page showed the node active %s later (the write, its event, a read, the push)", time.Since(clicked).Round(time.Millisecond))

	step("drain " + target + " with its button; its tasks move")
	if byNode[idByName[target]] == 0 {
		t.Fatalf("no web task runs on %s to move: %v", target, byNode)
	}
	b.click(`button[data-node-button="` + target + `"][data-availability="drain"]`)
	eventually(t, 60*time.Second, "web's tasks off "+target+", 5 running elsewhere", func() (bool, string) {
		var n int
		var raw string
		byNode, n, raw = c.runningWeb()
		return n == 5 && byNode[idByName[target]] == 0, raw
	})
	eventually(t, 10*time.Second, "the grid shows no task on "+target+" and 5 elsewhere", func() (bool, string) {
		on := b.texts(`[data-node="` + target + `"] [data-task]`)
		all := b.texts(`#grid [data-task^="web."][data-state="running"]`)
		return len(on) == 0 && len(all) == 5, fmt.Sprintf("on %s: %q; running: %q", target, on, all)
	})
	b.waitText(target+" drained on the page", `[data-availability-of="`+target+`"]`, 5*time.Second, func(s string) bool { return s == "Drain" })
	b.screenshot("dashboard-nodes.png")

	step("the event list")
	b.do("open Events", chromedp.Navigate(u+"/#/events"))
	eventually(t, 10*time.Second, "the scale and the drain in the event list", func() (bool, string) {
		rows := b.texts("#event-list tbody tr")
		evs := b.attrs("#event-list [data-event]", "data-event")
		return slices.Contains(evs, "service scale web") && slices.Contains(evs, "node drain "+target) &&
			slices.Contains(evs, "node pause "+target), fmt.Sprintf("%d rows, first: %q", len(rows), firstN(evs, 10))
	})
	b.screenshot("dashboard-events.png")

	step("the service page: tasks and live logs")
	b.do("open web's page", chromedp.Navigate(u+"/#/services/web"))
	eventually(t, 20*time.Second, "web's tasks and their logs with task prefixes", func() (bool, string) {
		rows := b.texts("#tasks tbody tr")
		logs := b.texts("#logs")
		return len(rows) >= 5 && len(logs) == 1 && regexp.MustCompile(`web\.\d\.[a-z0-9]+@(m|w)\d \| `).MatchString(logs[0]),
			fmt.Sprintf("tasks %q, logs %q", rows, logs)
	})
	// Each running task's CPU and memory, from the workers' samples (the
	// workers run as root here: their tasks have cgroups to sample).
	eventually(t, 20*time.Second, "CPU and memory in web's task rows", func() (bool, string) {
		cells := b.texts(`#tasks [data-usage]`)
		with := 0
		for _, c := range cells {
			if regexp.MustCompile(`^\d+%.* · \d+ MiB`).MatchString(c) {
				with++
			}
		}
		return len(cells) > 0 && with == len(cells), fmt.Sprintf("usage cells %q", cells)
	})
	b.screenshot("dashboard-service.png")

	step("api's page: force redeploy, update the image, roll back, remove")
	hello2 := filepath.Join(filepath.Dir(hello), "hello2")
	if data, err := os.ReadFile(hello); err != nil || os.WriteFile(hello2, data, 0o755) != nil {
		t.Fatalf("copy hello: %v", err)
	}
	b.do("open api's page", chromedp.Navigate(u+"/#/services/api"))
	b.waitText("api's page", `[data-replicas="api"]`, 10*time.Second, func(string) bool { return true })
	b.click(`[data-action="redeploy"]`)
	c.waitSpec("api", "force redeploy", func(spec map[string]any) bool { return dig(spec, "task", "force_update") == "1" })
	b.setValue(`[data-image="api"]`, hello2)
	b.click(`[data-action="image"]`)
	c.waitSpec("api", "the new image", func(spec map[string]any) bool { return dig(spec, "task", "container", "image") == hello2 })
	b.waitText("roll back enabled", `[data-action="rollback"]:not([disabled])`, 10*time.Second, func(string) bool { return true })
	b.click(`[data-action="rollback"]`)
	c.waitSpec("api", "the image rolled back", func(spec map[string]any) bool { return dig(spec, "task", "container", "image") == hello })
	dialogs := chromedp.Events(b.ctx, page.JavascriptDialogOpening)
	go func() {
		for _, err := range dialogs {
			if err != nil {
				return
			}
			_, _ = chromedp.Call(b.ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true})
			return
		}
	}()
	b.click(`[data-action="remove"]`)
	eventually(t, 20*time.Second, "api removed", func() (bool, string) {
		out, errOut, code := cli(t, "service", "ls", "-q", "--host", c.live().addr())
		ids := strings.Fields(out)
		return code == 0 && len(ids) == 1, out + errOut
	})
	b.waitText("back on the service list without api", `[data-replicas="web"]`, 10*time.Second, func(string) bool { return true })
	if got := b.texts(`[data-replicas="api"]`); len(got) != 0 {
		t.Errorf("api still listed after its removal: %q", got)
	}

	step("kill the leader " + c.hostnameOf(leader) + ", which the dashboard talks through")
	leader.kill()
	b.do("open the overview", chromedp.Navigate(u+"/#/"))
	eventually(t, 30*time.Second, "a new leader on the overview", func() (bool, string) {
		got := b.texts("#leader")
		return len(got) == 1 && got[0] != c.hostnameOf(leader) && strings.HasPrefix(got[0], "m"), fmt.Sprintf("%q", got)
	})
	b.do("open Services", chromedp.Navigate(u+"/#/services"))
	b.setValue(`[data-scale="web"]`, "4")
	b.click(`[data-scale-button="web"]`)
	eventually(t, 60*time.Second, "web scaled to 4 through a survivor", func() (bool, string) {
		_, n, raw := c.runningWeb()
		return n == 4, raw
	})
	b.waitText("web 4/4 on the page", `[data-replicas="web"]`, 20*time.Second, func(s string) bool { return s == "4/4" })
	b.do("open Events", chromedp.Navigate(u+"/#/events"))
	eventually(t, 10*time.Second, "the new leader's election in the event list", func() (bool, string) {
		evs := b.attrs("#event-list [data-event]", "data-event")
		n := 0
		for _, e := range evs {
			if strings.HasPrefix(e, "service scale web") {
				n++
			}
		}
		return n >= 2 && slices.ContainsFunc(evs, func(e string) bool { return strings.HasPrefix(e, "node leader") }), fmt.Sprintf("%q", firstN(evs, 10))
	})
	step("done")
}

// waitSpec waits until the stored spec of a service satisfies ok.
func (c *dashCluster) waitSpec(service, what string, ok func(spec map[string]any) bool) {
	c.t.Helper()
	eventually(c.t, 20*time.Second, service+": "+what, func() (bool, string) {
		out, errOut, code := cli(c.t, "service", "inspect", service, "--host", c.live().addr(), "--timeout", "3s")
		var svcs []map[string]any
		if code != 0 || json.Unmarshal([]byte(out), &svcs) != nil || len(svcs) != 1 {
			return false, out + errOut
		}
		spec, _ := svcs[0]["spec"].(map[string]any)
		return ok(spec), out
	})
}

// attrs returns an attribute of every element matching sel.
func (b *browser) attrs(sel, attr string) []string {
	out, err := evalIn[[]string](b, fmt.Sprintf(`Array.from(document.querySelectorAll(%q)).map(e => e.getAttribute(%q))`, sel, attr))
	if err != nil {
		b.t.Fatalf("browser: read %s: %v", sel, err)
	}
	return out
}

func firstN(s []string, n int) []string { return s[:min(n, len(s))] }

// hostnameOf is the hostname a node was started with.
func (c *dashCluster) hostnameOf(n *node) string {
	for name, m := range c.hostname {
		if m == n {
			return name
		}
	}
	return n.addr()
}
