package mesh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	pb "github.com/shoal-cluster/shoal/proto"
	"go.uber.org/goleak"
)

// backend is a tiny HTTP server standing for one task.
type backend struct {
	name string
	addr *net.TCPAddr
	srv  *http.Server
}

func startBackends(t *testing.T, n int) []*backend {
	t.Helper()
	var out []*backend
	for i := range n {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		b := &backend{name: fmt.Sprintf("task-%d", i), addr: ln.Addr().(*net.TCPAddr)}
		b.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, b.name) })}
		go b.srv.Serve(ln)
		t.Cleanup(func() { b.srv.Close() })
		out = append(out, b)
	}
	return out
}

func (b *backend) endpoint(target uint32) *pb.TaskEndpoint {
	return &pb.TaskEndpoint{TaskId: b.name, NodeId: testNode, Ip: "127.0.0.1",
		Ports: []*pb.PortBinding{{TargetPort: target, HostIp: "127.0.0.1", HostPort: uint32(b.addr.Port)}}}
}

// freeTCPPort returns a port nothing listens on at ip.
func freeTCPPort(t *testing.T, ip string) int {
	t.Helper()
	ln, err := net.Listen("tcp4", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func service(id, name, vip string, published, target uint32, bes ...*backend) *pb.ServiceEndpoints {
	s := &pb.ServiceEndpoints{ServiceId: id, ServiceName: name, VirtualAddr: vip,
		Ports: []*pb.PortConfig{{TargetPort: target, PublishedPort: published}}}
	for _, b := range bes {
		s.Tasks = append(s.Tasks, b.endpoint(target))
	}
	return s
}

// testNode is the node ID of the test meshes and their backends: random,
// so that test runs sharing a host never share an nftables table.
var testNode = fmt.Sprintf("n%08x", rand.Uint32())

// newTestMesh is a user-space mesh.
func newTestMesh(t *testing.T, dns bool) *Mesh {
	t.Helper()
	return newTestMeshOn(t, DatapathUserspace, dns)
}

// newTestMeshOn is a mesh on the given datapath; the test is skipped when
// the kernel datapath is asked for and cannot run here (not root, no nft).
func newTestMeshOn(t *testing.T, datapath string, dns bool) *Mesh {
	t.Helper()
	cfg := Config{IP: "127.0.0.1", NodeID: testNode, Datapath: datapath, Log: slog.New(slog.DiscardHandler), DialTimeout: 500 * time.Millisecond}
	if dns {
		cfg.DNSPort = freeTCPPort(t, "127.0.0.1")
	}
	m := New(cfg)
	if dp := m.Datapath(); datapath == DatapathKernel && dp.Name != DatapathKernel {
		_ = m.Close()
		t.Skipf("no kernel datapath here: %s", dp.Reason)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return m
}

// forEachDatapath runs a test on the user-space and the kernel datapath.
func forEachDatapath(t *testing.T, test func(t *testing.T, datapath string)) {
	for _, dp := range []string{DatapathUserspace, DatapathKernel} {
		t.Run(dp, func(t *testing.T) { test(t, dp) })
	}
}

// get asks addr once, on a new connection, and returns the body.
func get(addr string) (string, error) {
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// spread sends n requests and counts them per answering task.
func spread(t *testing.T, addr string, n int) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for range n {
		body, err := get(addr)
		if err != nil {
			t.Fatalf("request to %s: %v", addr, err)
		}
		counts[body]++
	}
	return counts
}

func TestIngressBalancesAndFollowsUpdates(t *testing.T) {
	forEachDatapath(t, func(t *testing.T, datapath string) {
		bes := startBackends(t, 3)
		m := newTestMeshOn(t, datapath, false)
		defer m.Close()
		port := freeTCPPort(t, "127.0.0.1")
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

		m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80, bes...)}})
		counts := spread(t, addr, 30)
		for _, b := range bes {
			if counts[b.name] != 10 {
				t.Fatalf("round robin over 3 tasks: want 10 each, got %v", counts)
			}
		}

		// A task leaves the set (stopped, unhealthy): no new connection reaches it.
		m.Apply(&pb.EndpointUpdate{Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80, bes[0], bes[2])}})
		counts = spread(t, addr, 20)
		if counts[bes[1].name] != 0 || counts[bes[0].name] == 0 || counts[bes[2].name] == 0 {
			t.Fatalf("after removing %s: %v", bes[1].name, counts)
		}

		// Scaling up adds endpoints.
		more := startBackends(t, 1)
		more[0].name = "task-new"
		m.Apply(&pb.EndpointUpdate{Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80, bes[0], bes[2], more[0])}})
		if counts = spread(t, addr, 30); counts["task-new"] != 10 {
			t.Fatalf("after adding an endpoint: %v", counts)
		}

		// The service goes: the port closes.
		m.Apply(&pb.EndpointUpdate{Removed: []string{"s1"}})
		if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			t.Fatal("the port still accepts after the service was removed")
		}
	})
}

func TestNoEndpointClosesPromptly(t *testing.T) {
	forEachDatapath(t, func(t *testing.T, datapath string) {
		m := newTestMeshOn(t, datapath, false)
		defer m.Close()
		port := freeTCPPort(t, "127.0.0.1")
		m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80)}})
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// A client with nowhere to go sees the connection end, not a hang: the
		// deadline only bounds the test.
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(make([]byte, 1))
		var ne net.Error
		if n != 0 || err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Fatalf("read with no endpoints: n=%d err=%v, want EOF or reset", n, err)
		}
	})
}

func TestDeadEndpointIsSkipped(t *testing.T) {
	bes := startBackends(t, 2)
	dead := &backend{name: "dead", addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: freeTCPPort(t, "127.0.0.1")}}
	m := newTestMesh(t, false)
	defer m.Close()
	port := freeTCPPort(t, "127.0.0.1")
	m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80, bes[0], dead, bes[1])}})
	counts := spread(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 30)
	if counts[bes[0].name]+counts[bes[1].name] != 30 {
		t.Fatalf("every request should be served by a live endpoint: %v", counts)
	}
}

func TestVirtualIPAndResolver(t *testing.T) {
	forEachDatapath(t, func(t *testing.T, datapath string) {
		bes := startBackends(t, 2)
		m := newTestMeshOn(t, datapath, true)
		defer m.Close()
		vip := fmt.Sprintf("127.%d.%d.%d", 32+rand.IntN(200), rand.IntN(250), 1+rand.IntN(250))
		target := freeTCPPort(t, vip)
		web := service("s1", "web", vip, 0, uint32(target), bes...)
		web.Tasks[1].Ip = "127.0.0.2"
		m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{web, service("s2", "db", "", 0, 5432)}})

		counts := spread(t, net.JoinHostPort(vip, strconv.Itoa(target)), 10)
		if counts[bes[0].name] != 5 || counts[bes[1].name] != 5 {
			t.Fatalf("virtual IP spread: %v", counts)
		}

		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, m.DNSAddr())
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cases := []struct {
			name    string
			want    string
			notFoud bool
		}{
			{name: "web", want: vip},
			{name: "WEB.", want: vip},
			{name: "tasks.web", want: "127.0.0.1,127.0.0.2"},
			{name: "db", want: ""}, // no virtual IP and no task: known, no address
			{name: "nope", notFoud: true},
			{name: "tasks.nope", notFoud: true},
		}
		for _, tc := range cases {
			addrs, err := r.LookupHost(ctx, tc.name)
			var dnsErr *net.DNSError
			switch {
			case tc.notFoud:
				if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
					t.Errorf("%s: want NXDOMAIN, got %v %v", tc.name, addrs, err)
				}
			case tc.want == "":
				if len(addrs) != 0 {
					t.Errorf("%s: want no address, got %v", tc.name, addrs)
				}
			default:
				if err != nil || strings.Join(addrs, ",") != tc.want {
					t.Errorf("%s: got %v %v, want %s", tc.name, addrs, err, tc.want)
				}
			}
		}
	})
}

func TestPortTakenIsReported(t *testing.T) {
	holder, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	port := holder.Addr().(*net.TCPAddr).Port
	m := newTestMesh(t, false)
	defer m.Close()
	m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80)}})
	errs := m.Errors()
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "already in use") {
		t.Fatalf("errors = %v, want one 'already in use'", errs)
	}
	// Once the holder lets go, the next update binds it.
	holder.Close()
	m.Apply(&pb.EndpointUpdate{})
	if errs := m.Errors(); len(errs) != 0 {
		t.Fatalf("errors after the port was freed: %v", errs)
	}
}

// A port another program held is bound once it is released, with no
// further update (a quiet cluster sends none).
func TestPortFreedIsRetried(t *testing.T) {
	bes := startBackends(t, 1)
	holder, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	port := holder.Addr().(*net.TCPAddr).Port
	m := newTestMesh(t, false)
	defer m.Close()
	m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80, bes...)}})
	if len(m.Errors()) != 1 {
		t.Fatalf("errors = %v, want the port in use", m.Errors())
	}
	holder.Close()
	for deadline := time.Now().Add(10 * time.Second); len(m.Errors()) != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the freed port was not bound: %v", m.Errors())
		}
	}
	if body, err := get(net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err != nil || body != bes[0].name {
		t.Fatalf("request to the freed port: %q %v", body, err)
	}
	// Close stops the retries.
	holder2, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer holder2.Close()
	m.Apply(&pb.EndpointUpdate{Updated: []*pb.ServiceEndpoints{service("s2", "api", "", uint32(holder2.Addr().(*net.TCPAddr).Port), 80, bes...)}})
	m.Close()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.retry != nil {
		t.Fatal("a retry is still scheduled after Close")
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// udpEcho answers every datagram with its name.
func udpEcho(t *testing.T, name string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDP([]byte(name), from)
		}
	}()
	return c
}

// freeUDPPort returns a UDP port nothing listens on at 127.0.0.1.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	return u.LocalAddr().(*net.UDPAddr).Port
}

// udpService is service "dns" publishing UDP port 53 of its tasks (the
// given sockets) on port.
func udpService(port int, tasks ...*net.UDPConn) *pb.ServiceEndpoints {
	se := &pb.ServiceEndpoints{ServiceId: "s1", ServiceName: "dns",
		Ports: []*pb.PortConfig{{TargetPort: 53, PublishedPort: uint32(port), Protocol: pb.PortProtocol_PORT_PROTOCOL_UDP}}}
	for _, c := range tasks {
		se.Tasks = append(se.Tasks, &pb.TaskEndpoint{Ip: "127.0.0.1", Ports: []*pb.PortBinding{{
			TargetPort: 53, HostIp: "127.0.0.1", HostPort: uint32(c.LocalAddr().(*net.UDPAddr).Port), Protocol: pb.PortProtocol_PORT_PROTOCOL_UDP}}})
	}
	return se
}

func TestUDPFlowsSpreadOverBackends(t *testing.T) {
	a, b := udpEcho(t, "a"), udpEcho(t, "b")
	m := newTestMesh(t, false)
	defer m.Close()
	port := freeUDPPort(t)
	m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{udpService(port, a, b)}})
	if got := m.Backends(fmt.Sprintf("127.0.0.1:%d/udp", port)); len(got) != 2 {
		t.Fatalf("udp backends: %v", got)
	}
	seen := map[string]int{}
	for range 4 { // each client socket is a flow of its own
		c, err := net.Dial("udp4", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		for range 2 { // a flow stays on its backend
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 16)
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("reply through the mesh: %v", err)
			}
			seen[string(buf[:n])]++
		}
		c.Close()
	}
	if seen["a"] != 4 || seen["b"] != 4 {
		t.Fatalf("replies per backend: %v, want 4 each (2 flows of 2 datagrams)", seen)
	}
}

func TestVirtualIPPlan(t *testing.T) {
	for i := range 50 {
		seen := map[string]bool{}
		cluster := fmt.Sprintf("cluster-%d", i)
		resolver := ContainerResolverIP(cluster)
		for _, n := range []int{0, 1, 255, 256, VIPsPerCluster - 1} {
			vip := VIP(cluster, n)
			ip := net.ParseIP(vip).To4()
			if ip[0] != 127 || ip[1] < 32 {
				t.Fatalf("%s #%d: %s is outside 127.32.0.0-127.255.255.255", cluster, n, vip)
			}
			if seen[vip] {
				t.Fatalf("%s #%d: %s given twice", cluster, n, vip)
			}
			seen[vip] = true
			twin := containerVIP(resolver, vip)
			tip := net.ParseIP(twin).To4()
			if tip == nil || tip[0] != 100 || tip[1] < 64 || tip[1] > 127 || twin == resolver {
				t.Fatalf("%s #%d: twin %q of %s (resolver %s)", cluster, n, twin, vip, resolver)
			}
			if twin != containerVIP(resolver, vip) || (n > 0 && twin == containerVIP(resolver, VIP(cluster, n-1))) {
				t.Fatalf("%s #%d: twins are not one to one", cluster, n)
			}
		}
	}
}

// askUDP sends a datagram on c and returns the reply, resending if one is
// lost; the deadline only bounds the test.
func askUDP(t *testing.T, c net.Conn) string {
	t.Helper()
	buf := make([]byte, 16)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Read(buf)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			continue
		}
		if err != nil {
			t.Fatalf("reply through the mesh: %v", err)
		}
		return string(buf[:n])
	}
	t.Fatal("no reply through the mesh")
	return ""
}

// udpFlowOf is the mesh's flow for client on the UDP listener key.
func udpFlowOf(m *Mesh, key string, client net.Addr) *udpFlow {
	m.mu.Lock()
	p := m.listeners[key].(*udpProxy)
	m.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.flows[client.String()]
}

func TestUDPFlowFollowsBackendSet(t *testing.T) {
	a, b := udpEcho(t, "a"), udpEcho(t, "b")
	cases := []struct {
		name          string
		before, after []*net.UDPConn
		want          string
		sameFlow      bool
	}{
		// The task a client's flow was on stopped: its next datagram goes
		// to a task still in the set, not to the stopped one.
		{name: "backend removed", before: []*net.UDPConn{a}, after: []*net.UDPConn{b}, want: "b"},
		{name: "backend kept", before: []*net.UDPConn{a}, after: []*net.UDPConn{a, b}, want: "a", sameFlow: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestMesh(t, false)
			defer m.Close()
			port := freeUDPPort(t)
			key := fmt.Sprintf("127.0.0.1:%d/udp", port)
			m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{udpService(port, tc.before...)}})
			c, err := net.Dial("udp4", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got := askUDP(t, c); got != "a" {
				t.Fatalf("first reply from %q, want a", got)
			}
			first := udpFlowOf(m, key, c.LocalAddr())
			m.Apply(&pb.EndpointUpdate{Updated: []*pb.ServiceEndpoints{udpService(port, tc.after...)}})
			if got := askUDP(t, c); got != tc.want {
				t.Fatalf("after the update the flow's reply came from %q, want %q", got, tc.want)
			}
			if same := udpFlowOf(m, key, c.LocalAddr()) == first; same != tc.sameFlow {
				t.Fatalf("same flow after the update: %v, want %v", same, tc.sameFlow)
			}
		})
	}
}

// blackhole is an endpoint whose dials hang until they time out, as a
// task on a host that stopped answering: a listener with a backlog of
// zero whose one queued connection is never accepted, so the kernel drops
// further SYNs.
func blackhole(t *testing.T) *backend {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "blackhole")
	defer f.Close()
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	ln, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	addr := ln.Addr().(*net.TCPAddr)
	for range 10 {
		c, err := net.DialTimeout("tcp4", addr.String(), 200*time.Millisecond)
		if err != nil {
			return &backend{name: "blackhole", addr: addr}
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Fatal("could not fill the blackhole's accept queue")
	return nil
}

// A service whose endpoints do not answer is removed at once: the proxy's
// dials in flight are abandoned, and the resolver answers meanwhile.
func TestRemovingServiceAbandonsDials(t *testing.T) {
	holes := []*backend{blackhole(t), blackhole(t)}
	m := New(Config{IP: "127.0.0.1", DNSPort: freeTCPPort(t, "127.0.0.1"), DialTimeout: 5 * time.Second, Log: slog.New(slog.DiscardHandler)})
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	port := freeTCPPort(t, "127.0.0.1")
	key := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	db := &pb.ServiceEndpoints{ServiceId: "s2", ServiceName: "db", VirtualAddr: "127.32.0.9"}
	m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80, holes...), db}})

	c, err := net.Dial("tcp4", key)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Once the proxy has accepted the client it is dialing the endpoints.
	for deadline := time.Now().Add(5 * time.Second); ; {
		m.mu.Lock()
		l := m.listeners[key].(*listener)
		m.mu.Unlock()
		l.mu.Lock()
		n := len(l.conns)
		l.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the proxy did not accept the client")
		}
		time.Sleep(time.Millisecond)
	}

	start := time.Now()
	applied := make(chan struct{})
	go func() {
		defer close(applied)
		m.Apply(&pb.EndpointUpdate{Removed: []string{"s1"}})
	}()
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, m.DNSAddr())
	}}
	for done := false; !done; {
		select {
		case <-applied:
			done = true
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		addrs, err := r.LookupHost(ctx, "db")
		cancel()
		if err != nil || len(addrs) != 1 || addrs[0] != "127.32.0.9" {
			t.Fatalf("db during the removal of web: %v %v", addrs, err)
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("removing a service whose endpoints hang took over %v", time.Since(start))
		}
	}
	// The client's connection was ended with the listener.
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("client read after the removal: n=%d err=%v, want EOF or reset", n, err)
	}
}

// syncBuffer is a log sink tests read while the mesh writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// A UDP listener keeps at most udpMaxFlows flows: datagrams from further
// client addresses are dropped (and logged once), while existing flows
// still work.
func TestUDPFlowCap(t *testing.T) {
	echo := udpEcho(t, "a")
	logs := &syncBuffer{}
	m := New(Config{IP: "127.0.0.1", Log: slog.New(slog.NewTextHandler(logs, nil))})
	defer m.Close()
	port := freeUDPPort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{udpService(port, echo)}})

	first, err := net.Dial("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	askUDP(t, first)
	// Clients stay open to the end: a closed one's port may be given to the
	// next, which would then reuse its flow.
	client := func() net.Conn {
		c, err := net.Dial("udp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	for range udpMaxFlows - 1 {
		askUDP(t, client())
	}
	for range 3 {
		c := client()
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		// The proxy reads datagrams in order: once first's reply is back,
		// c's datagram has been dealt with.
		if got := askUDP(t, first); got != "a" {
			t.Fatalf("an existing flow over the cap: reply from %q", got)
		}
		if udpFlowOf(m, addr+"/udp", c.LocalAddr()) != nil {
			t.Fatalf("a flow beyond the cap of %d was opened", udpMaxFlows)
		}
	}
	if n := strings.Count(logs.String(), "flow limit"); n != 1 {
		t.Fatalf("the cap was logged %d times, want once:\n%s", n, logs.String())
	}
}

// failingListener fails every Accept until it has failed n times, then
// reports itself closed; it records when each call came.
type failingListener struct {
	net.Listener
	n     int
	calls []time.Time
}

func (l *failingListener) Accept() (net.Conn, error) {
	l.calls = append(l.calls, time.Now())
	if len(l.calls) > l.n {
		return nil, net.ErrClosed
	}
	return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", unix.EMFILE)}
}

// The resolver's TCP accept loop pauses after an accept error (out of
// file descriptors) rather than spinning.
func TestResolverAcceptErrorPauses(t *testing.T) {
	ln := &failingListener{n: 5}
	r := &resolver{tcp: ln, log: slog.New(slog.DiscardHandler), conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	r.serveTCP()
	for i := 1; i < len(ln.calls); i++ {
		if gap := ln.calls[i].Sub(ln.calls[i-1]); gap < acceptPause {
			t.Fatalf("accept #%d came %v after a failed one, want at least %v", i+1, gap, acceptPause)
		}
	}
}

// A backend whose dial times out (its node went silent) costs one
// connection a dial timeout, not every one: later connections try it last
// while it is ejected, and every request is served by a live backend.
func TestSilentEndpointIsEjected(t *testing.T) {
	bes := startBackends(t, 2)
	hole := blackhole(t)
	logs := &syncBuffer{}
	m := New(Config{IP: "127.0.0.1", DialTimeout: 200 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	port := freeTCPPort(t, "127.0.0.1")
	m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80, hole, bes[0], bes[1])}})
	counts := spread(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 30)
	if counts[bes[0].name]+counts[bes[1].name] != 30 {
		t.Fatalf("every request should be served by a live endpoint: %v", counts)
	}
	if n := strings.Count(logs.String(), "endpoint="+hole.addr.String()); n != 1 {
		t.Fatalf("the silent endpoint was dialed %d times by 30 connections, want once (then ejected):\n%s", n, logs.String())
	}

	// A new endpoint set that no longer holds it forgets the ejection.
	m.Apply(&pb.EndpointUpdate{Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80, bes...)}})
	m.mu.Lock()
	l := m.listeners[net.JoinHostPort("127.0.0.1", strconv.Itoa(port))].(*listener)
	m.mu.Unlock()
	l.ejectMu.Lock()
	left := len(l.ejected)
	l.ejectMu.Unlock()
	if left != 0 {
		t.Fatalf("%d ejections kept for endpoints no longer in the set", left)
	}
}

// TestTaskGoneLeavesAtOnce: a task its worker saw exit leaves the node's
// datapath before the managers' update does, stays out while updates
// still name it, and is forgotten once none does; a task not yet in any
// set is left out when an update brings it.
func TestTaskGoneLeavesAtOnce(t *testing.T) {
	forEachDatapath(t, func(t *testing.T, datapath string) {
		bes := startBackends(t, 3)
		m := newTestMeshOn(t, datapath, false)
		defer m.Close()
		port := freeTCPPort(t, "127.0.0.1")
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80, bes[:2]...)}})

		changed := m.Changed()
		if !m.TaskGone(bes[1].name) {
			t.Fatal("TaskGone of a task in the datapath reported that it took nothing out")
		}
		if m.TaskGone(bes[1].name) {
			t.Fatal("a second TaskGone of the same task reported that it took it out again")
		}
		select {
		case <-changed:
		default:
			t.Fatal("TaskGone did not announce a change")
		}
		if got := m.Backends(addr); !reflect.DeepEqual(got, []string{addrOf(bes[0])}) {
			t.Fatalf("backends after TaskGone: %v", got)
		}
		if counts := spread(t, addr, 4); counts[bes[0].name] != 4 {
			t.Fatalf("after TaskGone: %v, want every request on %s", counts, bes[0].name)
		}
		if datapath == DatapathKernel {
			checkTable(t, TableName(testNode), "after TaskGone", expectTable(map[string][]string{addr: {addrOf(bes[0])}}, nil))
		}

		// An update that still names it (sent before its exit was
		// committed), and one that names a task that died before any set
		// named it.
		if m.TaskGone(bes[2].name) {
			t.Fatal("TaskGone of a task no set names reported that it took it out")
		}
		m.Apply(&pb.EndpointUpdate{Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80, bes...)}})
		if got := m.Backends(addr); !reflect.DeepEqual(got, []string{addrOf(bes[0])}) {
			t.Fatalf("backends while updates name the gone tasks: %v", got)
		}
		// The managers' update without them: both are forgotten.
		m.Apply(&pb.EndpointUpdate{Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80, bes[0])}})
		m.mu.Lock()
		left := len(m.gone)
		m.mu.Unlock()
		if left != 0 {
			t.Fatalf("%d gone tasks still remembered after no set names them", left)
		}
	})
}

// TestFollowTaskGone: another node's word that a task is gone (its gossip
// message) takes the task out of this node's datapath; messages that are
// not task-gone messages change nothing.
func TestFollowTaskGone(t *testing.T) {
	bes := startBackends(t, 2)
	m := newTestMeshOn(t, DatapathUserspace, false)
	defer m.Close()
	port := freeTCPPort(t, "127.0.0.1")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80, bes...)}})

	msgs := make(chan []byte, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.FollowTaskGone(ctx, msgs) }()
	defer func() { cancel(); <-done }()

	changed := m.Changed()
	msgs <- []byte("something else " + bes[0].name)
	msgs <- TaskGoneMessage(bes[1].name)
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("a task-gone message changed nothing")
	}
	if got := m.Backends(addr); !reflect.DeepEqual(got, []string{addrOf(bes[0])}) {
		t.Fatalf("backends after the message: %v, want only %s", got, addrOf(bes[0]))
	}
}

func TestParseTaskGoneMessage(t *testing.T) {
	for _, tc := range []struct {
		in     []byte
		want   string
		wantOK bool
	}{
		{TaskGoneMessage("abc123"), "abc123", true},
		{[]byte("abc123"), "", false},
		{TaskGoneMessage(""), "", false},
		{TaskGoneMessage("a b"), "", false},
		{TaskGoneMessage(strings.Repeat("x", 129)), "", false},
		{nil, "", false},
	} {
		got, ok := ParseTaskGoneMessage(tc.in)
		if got != tc.want || ok != tc.wantOK {
			t.Errorf("ParseTaskGoneMessage(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.wantOK)
		}
	}
}
