package tests

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/mesh"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

// meshNode is one node's view for the mesh tests: its address and mesh.
type meshNode struct {
	name string
	id   string
	ip   string
	mesh *mesh.Mesh
}

func (c *cluster) meshNodes() []meshNode {
	var out []meshNode
	for i, m := range c.live() {
		out = append(out, meshNode{name: fmt.Sprintf("m%d", i+1), id: m.m.ID(), ip: m.cfg.AdvertiseIP, mesh: m.m.Mesh()})
	}
	for i, w := range c.workers {
		if w.a != nil {
			out = append(out, meshNode{name: fmt.Sprintf("w%d", i+1), id: w.a.ID(), ip: w.cfg.AdvertiseIP, mesh: w.a.Mesh()})
		}
	}
	return out
}

// ask makes one request on a new connection and returns who served it.
func ask(url string) (string, error) {
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s: %s", url, resp.Status, body)
	}
	if by := resp.Header.Get("X-Served-By"); by != "" {
		return by, nil
	}
	return strings.TrimSpace(string(body)), nil
}

// callReaches asks url (a /call/<service>/ of hello) until the answers
// came from want distinct replicas of the called service.
func (c *cluster) callReaches(url string, want int) {
	c.t.Helper()
	seen := map[string]bool{}
	c.eventually(60*time.Second, fmt.Sprintf("%s reaching %d replicas", url, want), func() (bool, string) {
		client := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := client.Get(url)
		if err != nil {
			return false, err.Error()
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, string(body)
		}
		if _, after, ok := strings.Cut(string(body), "-> hello from "); ok {
			seen[strings.Fields(after)[0]] = true
		}
		return len(seen) == want, fmt.Sprintf("%v (last: %s)", seen, body)
	})
}

// waitBackends waits until every node's mesh sends addr's port to want
// endpoints.
func (c *cluster) waitBackends(port uint32, want int) {
	c.t.Helper()
	c.eventually(20*time.Second, fmt.Sprintf("%d endpoints on every node for port %d", want, port), func() (bool, string) {
		for _, n := range c.meshNodes() {
			addr := net.JoinHostPort(n.ip, strconv.Itoa(int(port)))
			if got := len(n.mesh.Backends(addr)); got != want {
				return false, fmt.Sprintf("%s has %d", n.name, got)
			}
		}
		return true, ""
	})
}

// kernelBackends reads where a node's nftables table sends new
// connections to ip:port: its backend map's elements, in index order
// ("0 : 127.0.0.1 . 4000"), or ok=false when the node is not on the
// kernel datapath.
func kernelBackends(t *testing.T, n meshNode, port uint32) (elems []string, ok bool) {
	t.Helper()
	dp := n.mesh.Datapath()
	if dp.Name != mesh.DatapathKernel {
		return nil, false
	}
	key := strings.NewReplacer(".", "_", ":", "_").Replace(net.JoinHostPort(n.ip, strconv.Itoa(int(port))))
	out, err := exec.Command("nft", "list", "map", "ip", strings.TrimPrefix(dp.Table, "ip "), "be_"+key).CombinedOutput()
	if err != nil {
		return nil, true // no frontend (yet, or no backend)
	}
	s := string(out)
	if i := strings.Index(s, "elements = {"); i >= 0 {
		s = s[i+len("elements = {"):]
		s = s[:strings.Index(s, "}")]
		for _, e := range strings.Split(s, ",") {
			elems = append(elems, strings.Join(strings.Fields(e), " "))
		}
	}
	return elems, true
}

// checkKernelTables checks that every node on the kernel datapath sends
// port to exactly the endpoints its mesh has, one map element each.
func (c *cluster) checkKernelTables(port uint32) {
	c.t.Helper()
	c.eventually(10*time.Second, fmt.Sprintf("the kernel tables routing port %d as the meshes do", port), func() (bool, string) {
		for _, n := range c.meshNodes() {
			got, ok := kernelBackends(c.t, n, port)
			if !ok {
				continue
			}
			var want []string
			for i, b := range n.mesh.Backends(net.JoinHostPort(n.ip, strconv.Itoa(int(port)))) {
				host, p, _ := net.SplitHostPort(b)
				want = append(want, fmt.Sprintf("%d : %s . %s", i, host, p))
			}
			if strings.Join(got, ",") != strings.Join(want, ",") {
				return false, fmt.Sprintf("%s: table has %v, want %v", n.name, got, want)
			}
		}
		return true, ""
	})
}

// endpointOf is the host:port a task serves its target port 80 on.
func endpointOf(t *pb.Task) string {
	for _, b := range t.GetStatus().GetPorts() {
		if b.GetTargetPort() == 80 {
			return net.JoinHostPort(b.GetHostIp(), strconv.Itoa(int(b.GetHostPort())))
		}
	}
	return ""
}

// hasBackend reports whether any node still sends addr's traffic to ep.
func (c *cluster) anyNodeRoutesTo(port uint32, ep string) string {
	for _, n := range c.meshNodes() {
		for _, b := range n.mesh.Backends(net.JoinHostPort(n.ip, strconv.Itoa(int(port)))) {
			if b == ep {
				return n.name
			}
		}
	}
	return ""
}

func TestRoutingMesh(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(3)

	published := uint32(c.freePort()) + 3 // beside the cluster's own ports, checked free
	// The replicas keep serving for a while after SIGTERM, as apps that
	// drain their clients do, so a replica being stopped is seen running.
	spec := helloSpec(t, "web", 6, "HELLO_DRAIN=6s")
	spec.Task.Container.StopGracePeriod = int64(15 * time.Second)
	spec.Endpoint = &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80, PublishedPort: published}}}
	c.createService(spec)
	c.waitRunning("web", 6, evenly(2))
	c.waitBackends(published, 6)
	c.checkKernelTables(published)
	// Each node's record says which datapath its mesh uses (node inspect).
	c.eventually(10*time.Second, "every node's mesh datapath recorded", func() (bool, string) {
		var why string
		c.leader().m.Store().View(func(tx *raftstore.Tx) {
			for _, n := range c.meshNodes() {
				got, ok := tx.Nodes().Get(n.id)
				if want := n.mesh.Datapath(); !ok || got.GetDescription().GetMeshDatapath().GetName() != want.Name || got.GetDescription().GetMeshDatapath().GetTable() != want.Table {
					why = fmt.Sprintf("%s: recorded %v, mesh has %+v", n.name, got.GetDescription().GetMeshDatapath(), want)
					return
				}
			}
		})
		return why == "", why
	})

	// Every node answers on the published port, managers included, and
	// round robin reaches every replica from each of them.
	for _, n := range c.meshNodes() {
		seen := map[string]int{}
		for range 12 {
			by, err := ask(fmt.Sprintf("http://%s:%d/", n.ip, published))
			if err != nil {
				t.Fatalf("via %s: %v", n.name, err)
			}
			seen[by]++
		}
		if len(seen) != 6 {
			t.Fatalf("via %s: 12 requests reached %d replicas (%v), want all 6", n.name, len(seen), seen)
		}
	}

	// Steady load through one worker while replicas come and go: on the
	// user-space datapath only a request in flight on a killed replica may
	// fail (the proxy tries the next replica when one refuses); on the
	// kernel datapath, as with IPVS or kube-proxy, connections NATed to the
	// killed replica fail until it leaves the rotation, and none after.
	kernel := c.meshNodes()[0].mesh.Datapath().Name == mesh.DatapathKernel
	var ok, failed, lastFailure atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		url := fmt.Sprintf("http://%s:%d/", c.workers[0].cfg.AdvertiseIP, published)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := ask(url); err != nil {
				failed.Add(1)
				lastFailure.Store(time.Now().UnixNano())
			} else {
				ok.Add(1)
			}
		}
	}()

	// A killed replica leaves the rotation everywhere.
	victim := c.serviceTasks("web")[0]
	for _, tk := range c.serviceTasks("web") {
		if tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING {
			victim = tk
			break
		}
	}
	ep := endpointOf(victim)
	killed := time.Now()
	if err := syscall.Kill(int(victim.GetStatus().GetPid()), syscall.SIGKILL); err != nil {
		t.Fatalf("kill replica: %v", err)
	}
	c.eventually(10*time.Second, "the killed replica out of every node's rotation", func() (bool, string) {
		n := c.anyNodeRoutesTo(published, ep)
		return n == "", n + " still routes to " + ep
	})
	removed := time.Now()
	failedBeforeRemoval := failed.Load()
	t.Logf("the killed replica left every node's rotation in %s; %d requests failed meanwhile", removed.Sub(killed), failedBeforeRemoval)
	c.checkKernelTables(published)

	// A replica whose health check fails leaves it too, at once rather
	// than once stopped (and is replaced).
	c.waitBackends(published, 6)
	var sick *pb.Task
	for _, tk := range c.serviceTasks("web") {
		if tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING && tk.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING {
			sick = tk
			break
		}
	}
	sickEP := endpointOf(sick)
	resp, err := http.Post("http://"+sickEP+"/admin/unhealthy", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	c.eventually(10*time.Second, "the unhealthy replica out of every node's rotation", func() (bool, string) {
		n := c.anyNodeRoutesTo(published, sickEP)
		return n == "", n + " still routes to " + sickEP
	})
	// It left while still being stopped: it still answers (draining), and
	// it is reported running and unhealthy, not yet failed.
	if _, err := ask("http://" + sickEP + "/"); err != nil {
		t.Fatalf("the unhealthy replica left the rotation only once it had stopped: %v", err)
	}
	// The worker's gossip word can take it out of the rotation before its
	// status report is committed, so wait for the report; it must say
	// RUNNING and UNHEALTHY before any stopped state.
	c.eventually(10*time.Second, "the unhealthy replica reported RUNNING and UNHEALTHY", func() (bool, string) {
		st := c.task(sick.GetId()).GetStatus()
		if st.GetState() > pb.TaskState_TASK_STATE_RUNNING {
			t.Fatalf("the unhealthy replica was reported %v before it was reported RUNNING and UNHEALTHY", st)
		}
		return st.GetState() == pb.TaskState_TASK_STATE_RUNNING && st.GetHealth() == pb.HealthState_HEALTH_STATE_UNHEALTHY, st.String()
	})
	if st := c.waitTaskState(sick.GetId(), pb.TaskState_TASK_STATE_FAILED, 30*time.Second).GetStatus(); st.GetHealth() != pb.HealthState_HEALTH_STATE_UNHEALTHY || !strings.Contains(st.GetErr(), "unhealthy") {
		t.Fatalf("the unhealthy replica once stopped: %v", st)
	}

	// Scaling adds endpoints everywhere.
	c.scale("web", 9)
	c.waitBackends(published, 9)
	c.checkKernelTables(published)
	close(stop)
	wg.Wait()
	switch {
	case ok.Load() == 0:
		t.Fatal("under load: no request answered")
	case !kernel && failed.Load() > 1:
		t.Fatalf("under load: %d answered, %d failed (at most the one in flight on the killed replica may fail)", ok.Load(), failed.Load())
	case kernel && failed.Load() > failedBeforeRemoval+1: // one may be in flight as the removal lands
		t.Fatalf("under load: %d answered, %d failed, %d of them after the killed replica left the rotation (last at %s)", ok.Load(), failed.Load(),
			failed.Load()-failedBeforeRemoval, time.Unix(0, lastFailure.Load()).Format(time.RFC3339Nano))
	}
	t.Logf("under load: %d answered, %d failed", ok.Load(), failed.Load())

	// Bad input: a port another service publishes, and one the host holds.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dup := helloSpec(t, "dup", 1)
	dup.Endpoint = &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80, PublishedPort: published}}}
	if _, err := c.control(c.leader()).CreateService(ctx, &pb.CreateServiceRequest{Spec: dup}); err == nil || !strings.Contains(err.Error(), "already published by service web") {
		t.Fatalf("publishing a taken port: %v", err)
	}
	holder, err := net.Listen("tcp4", net.JoinHostPort(c.leader().cfg.AdvertiseIP, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	dup.Endpoint.Ports[0].PublishedPort = uint32(holder.Addr().(*net.TCPAddr).Port)
	if _, err := c.control(c.leader()).CreateService(ctx, &pb.CreateServiceRequest{Spec: dup}); err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("publishing a port the host holds: %v", err)
	}
}

// A task whose health check has not passed yet gets no traffic: no node
// routes to it and requests to the published port do not reach it, until
// its check passes; then every node routes to it.
func TestMeshNoTrafficBeforeHealthy(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(1)

	published := uint32(c.freePort()) + 3
	spec := helloSpec(t, "slow", 1, "HELLO_HEALTHY_AFTER=3s")
	spec.Task.Container.Healthcheck.StartPeriod = int64(time.Minute) // failures while starting do not count
	spec.Endpoint = &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80, PublishedPort: published}}}
	svc := c.createService(spec)
	url := fmt.Sprintf("http://%s:%d/", c.workers[0].cfg.AdvertiseIP, published)

	// The mesh and a request are looked at before the store: the feed routes
	// to a task only once the store says it is healthy, so if the store read
	// afterwards still says not healthy, nothing may have been routed.
	var firstStarting, lastStarting time.Time
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		var routed []string
		for _, n := range c.meshNodes() {
			if b := n.mesh.Backends(net.JoinHostPort(n.ip, strconv.Itoa(int(published)))); len(b) > 0 {
				routed = append(routed, fmt.Sprintf("%s->%v", n.name, b))
			}
		}
		by, askErr := ask(url)
		var tasks []*pb.Task
		c.leader().m.Store().View(func(tx *raftstore.Tx) { tasks = tx.Tasks().Find(raftstore.IndexService, svc.GetId()) })
		running, healthy := false, false
		for _, tk := range tasks {
			if tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING {
				running = true
				healthy = healthy || tk.GetStatus().GetHealth() == pb.HealthState_HEALTH_STATE_HEALTHY
			}
		}
		if healthy {
			break
		}
		if running {
			if firstStarting.IsZero() {
				firstStarting = time.Now()
			}
			lastStarting = time.Now()
		}
		if len(routed) > 0 {
			t.Fatalf("routing to a task that is not healthy yet: %v (tasks: %v)", routed, tasks)
		}
		if askErr == nil {
			t.Fatalf("a task that is not healthy yet answered (%s)", by)
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for the task to become healthy; tasks: %v", tasks)
		}
		<-tick.C
	}
	// The task ran unhealthy for long enough that the old feed (every
	// running task) would have been caught routing to it.
	if lastStarting.Sub(firstStarting) < time.Second {
		t.Fatalf("saw the task running but not healthy for only %s; the test proves nothing", lastStarting.Sub(firstStarting))
	}

	c.waitBackends(published, 1)
	for _, n := range c.meshNodes() {
		if _, err := ask(fmt.Sprintf("http://%s:%d/", n.ip, published)); err != nil {
			t.Fatalf("via %s once healthy: %v", n.name, err)
		}
	}
}

func TestServiceDiscoveryByName(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(2)

	published := uint32(c.freePort()) + 3
	front := helloSpec(t, "front", 2)
	front.Endpoint = &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80, PublishedPort: published}}}
	c.createService(front)
	c.createService(helloSpec(t, "api", 3))
	c.waitRunning("front", 2, nil)
	c.waitRunning("api", 3, nil)

	// front's tasks reach api by name: the node's resolver gives api's
	// virtual IP and the node's proxy spreads over api's replicas.
	c.callReaches(fmt.Sprintf("http://%s:%d/call/api/", c.workers[0].cfg.AdvertiseIP, published), 3)

	// Unknown names are NXDOMAIN.
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, c.workers[1].cfg.DNSAddr())
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if addrs, err := r.LookupHost(ctx, "no-such-service"); err == nil {
		t.Fatalf("unknown service resolved to %v", addrs)
	} else if dnsErr, ok := err.(*net.DNSError); !ok || !dnsErr.IsNotFound {
		t.Fatalf("unknown service: %v, want NXDOMAIN", err)
	}
	tasks, err := r.LookupHost(ctx, "tasks.api")
	if err != nil || len(tasks) == 0 {
		t.Fatalf("tasks.api: %v %v", tasks, err)
	}
}

// A task that never listens on its target port never becomes healthy: it
// never joins the mesh, the reason shows on the task, and clients of the
// published port get a prompt close instead of a hang.
func TestMeshTargetPortNeverListened(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(1)

	published := uint32(c.freePort()) + 3
	wrongPort := c.freePort()
	spec := helloSpec(t, "deaf", 1)
	spec.Task.Container.Args = []string{"-listen", net.JoinHostPort(c.workers[0].cfg.AdvertiseIP, strconv.Itoa(wrongPort))}
	spec.Endpoint = &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80, PublishedPort: published}}}
	c.createService(spec)

	c.eventually(30*time.Second, "a failed task saying its health check failed", func() (bool, string) {
		for _, tk := range c.serviceTasks("deaf") {
			if tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_FAILED && strings.Contains(tk.GetStatus().GetErr(), "health check") {
				return true, ""
			}
		}
		return false, fmt.Sprint(len(c.serviceTasks("deaf")), " tasks")
	})
	if n := len(c.runningPerNode("deaf")); n != 0 {
		t.Fatalf("%d nodes run a healthy deaf task", n)
	}
	for _, n := range c.meshNodes() {
		addr := net.JoinHostPort(n.ip, strconv.Itoa(int(published)))
		if b := n.mesh.Backends(addr); len(b) != 0 {
			t.Fatalf("%s routes to %v", n.name, b)
		}
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("%s: the published port is not open: %v", n.name, err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second)) // bounds the test only
		nr, err := conn.Read(make([]byte, 1))
		conn.Close()
		if nr != 0 || err == nil {
			t.Fatalf("%s: read %d bytes, err %v; want the connection closed", n.name, nr, err)
		}
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("%s: the connection hung with no endpoint", n.name)
		}
	}
}

// askFrom makes one request on a new connection from the local address
// src and returns the response's headers.
func askFrom(src, url string) (http.Header, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: d.DialContext}}
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return resp.Header, nil
}

// With local=true a node sends the connections to a published port only
// to its own tasks, which on the kernel datapath see the client's own
// address; a node without such a task refuses them (both datapaths).
func TestMeshLocalKeepsClientAddress(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(2)
	// The proxy connects to tasks from the node's address: the client's
	// is kept on the kernel datapath only.
	kernel := c.meshNodes()[0].mesh.Datapath().Name == mesh.DatapathKernel
	published := uint32(c.freePort()) + 3
	spec := helloSpec(t, "web", 4)
	spec.Endpoint = &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80, PublishedPort: published, Local: true}}}
	c.createService(spec)
	c.waitRunning("web", 4, evenly(2))
	c.eventually(20*time.Second, "each worker routing to its own 2 tasks, the manager to none", func() (bool, string) {
		for _, n := range c.meshNodes() {
			want := 2
			if strings.HasPrefix(n.name, "m") {
				want = 0
			}
			if got := len(n.mesh.Backends(net.JoinHostPort(n.ip, strconv.Itoa(int(published))))); got != want {
				return false, fmt.Sprintf("%s has %d", n.name, got)
			}
		}
		return true, ""
	})
	c.checkKernelTables(published)

	client := c.ip(77) // an address of this host other than any node's
	for _, w := range c.workers {
		local := map[string]bool{}
		for _, tk := range c.serviceTasks("web") {
			if tk.GetNodeId() == w.a.ID() && tk.GetStatus().GetState() == pb.TaskState_TASK_STATE_RUNNING {
				local[endpointOf(tk)] = true
			}
		}
		url := fmt.Sprintf("http://%s:%d/", w.cfg.AdvertiseIP, published)
		seen := map[string]bool{}
		for range 8 {
			h, err := askFrom(client, url)
			if err != nil {
				t.Fatalf("via %s: %v", w.cfg.Hostname, err)
			}
			if host, _, _ := net.SplitHostPort(h.Get("X-Client-Addr")); kernel && host != client {
				t.Fatalf("via %s: the task saw the client as %s, want %s", w.cfg.Hostname, h.Get("X-Client-Addr"), client)
			}
			at := h.Get("X-Served-At")
			if !local[at] {
				t.Fatalf("via %s: served at %s, not by one of its own tasks %v", w.cfg.Hostname, at, local)
			}
			seen[at] = true
		}
		if len(seen) != len(local) {
			t.Fatalf("via %s: 8 requests reached %v, want each of its tasks %v", w.cfg.Hostname, seen, local)
		}
	}
	// The manager runs no task of the service: it refuses.
	if h, err := askFrom(client, fmt.Sprintf("http://%s:%d/", c.managers[0].cfg.AdvertiseIP, published)); err == nil {
		t.Fatalf("the manager, with no task of its own, served a local=true port (at %s)", h.Get("X-Served-At"))
	}

	// A worker stops: its table goes. Restarted, it rebuilds the table
	// from the current endpoints and serves again.
	w := c.workers[0]
	table := mesh.TableName(w.a.ID())
	w.a.Close()
	w.a = nil
	if out, err := exec.Command("nft", "list", "table", "ip", table).CombinedOutput(); kernel && err == nil {
		t.Fatalf("a stopped worker left its table:\n%s", out)
	}
	c.restartWorker(w)
	c.eventually(20*time.Second, "the restarted worker routing to its 2 tasks", func() (bool, string) {
		got := len(w.a.Mesh().Backends(net.JoinHostPort(w.cfg.AdvertiseIP, strconv.Itoa(int(published)))))
		return got == 2, fmt.Sprintf("%d", got)
	})
	c.checkKernelTables(published)
	if _, err := askFrom(client, fmt.Sprintf("http://%s:%d/", w.cfg.AdvertiseIP, published)); err != nil {
		t.Fatalf("via the restarted worker: %v", err)
	}

	// The service goes: no node's table has a frontend for its port.
	ctx, cancel := c.ctx()
	defer cancel()
	if _, err := c.control(c.leader()).RemoveService(ctx, &pb.RemoveServiceRequest{Ref: "web"}); err != nil {
		t.Fatal(err)
	}
	c.eventually(20*time.Second, "no table routing the removed service's port", func() (bool, string) {
		for _, n := range c.meshNodes() {
			if elems, _ := kernelBackends(t, n, published); len(elems) > 0 {
				return false, fmt.Sprintf("%s still has %v", n.name, elems)
			}
		}
		return true, ""
	})
}
