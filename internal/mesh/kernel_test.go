package mesh

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/poll"
	pb "github.com/shoal-cluster/shoal/proto"
)

// nftTable is what `nft list table` shows of a mesh table: each map's and
// set's elements and each chain's rules (sorted), without declarations.
type nftTable struct {
	Elements map[string][]string // map or set name -> elements
	Rules    map[string][]string // chain name -> rules
}

// listTable reads a mesh table; ok is false when it does not exist.
func listTable(t *testing.T, table string) (nftTable, bool) {
	t.Helper()
	out, err := exec.Command("nft", "list", "table", "ip", table).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "No such file or directory") {
			return nftTable{}, false
		}
		t.Fatalf("nft list table ip %s: %v: %s", table, err, out)
	}
	tab := nftTable{Elements: map[string][]string{}, Rules: map[string][]string{}}
	var kind, name, elems string
	inElems := false
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case inElems || strings.HasPrefix(line, "elements = {"):
			elems += " " + strings.TrimPrefix(line, "elements = {")
			inElems = !strings.HasSuffix(line, "}")
			if !inElems {
				for _, e := range strings.Split(strings.TrimSuffix(strings.TrimSpace(elems), "}"), ",") {
					if e = strings.TrimSpace(e); e != "" {
						tab.Elements[name] = append(tab.Elements[name], e)
					}
				}
				sort.Strings(tab.Elements[name])
				elems = ""
			}
		case strings.HasPrefix(line, "map "), strings.HasPrefix(line, "set "), strings.HasPrefix(line, "chain "):
			f := strings.Fields(line)
			kind, name = f[0], f[1]
			if kind == "chain" {
				tab.Rules[name] = []string{}
			} else {
				tab.Elements[name] = []string{}
			}
		case line == "}" || line == "" || strings.HasPrefix(line, "table "):
		case kind == "chain" && !strings.HasPrefix(line, "type "):
			tab.Rules[name] = append(tab.Rules[name], line)
		}
	}
	return tab, true
}

// expectTable builds the table a mesh on 127.0.0.1 must hold for the
// given frontends: "ip:port" -> backends, with remote ones marked. A
// frontend without backends is parked: an empty chain and map, and no
// frontends element.
func expectTable(fronts map[string][]string, remote map[string]bool) nftTable {
	tab := nftTable{
		Elements: map[string][]string{"frontends": {}, "masq": {}},
		Rules: map[string][]string{
			"prerouting":  {"ip daddr . tcp dport vmap @frontends"},
			"output":      {"ip daddr . tcp dport vmap @frontends"},
			"postrouting": {"ct status dnat ct original ip daddr . ip daddr . tcp dport @masq snat to 127.0.0.1"},
		},
	}
	for key, bes := range fronts {
		host, port, _ := net.SplitHostPort(key)
		n := frontName(key)
		if len(bes) == 0 {
			tab.Elements["be_"+n], tab.Rules["fe_"+n] = []string{}, []string{}
			continue
		}
		tab.Elements["frontends"] = append(tab.Elements["frontends"], fmt.Sprintf("%s . %s : goto fe_%s", host, port, n))
		sorted := append([]string(nil), bes...)
		sort.Strings(sorted)
		elems := []string{}
		for i, b := range sorted {
			bh, bp, _ := net.SplitHostPort(b)
			elems = append(elems, fmt.Sprintf("%d : %s . %s", i, bh, bp))
			if remote[b] {
				tab.Elements["masq"] = append(tab.Elements["masq"], fmt.Sprintf("%s . %s . %s", host, bh, bp))
			}
		}
		sort.Strings(elems)
		tab.Elements["be_"+n] = elems
		tab.Rules["fe_"+n] = []string{fmt.Sprintf("meta l4proto tcp dnat ip to numgen inc mod %d map @be_%s", len(bes), n)}
	}
	sort.Strings(tab.Elements["frontends"])
	sort.Strings(tab.Elements["masq"])
	return tab
}

func checkTable(t *testing.T, table, step string, want nftTable) {
	t.Helper()
	got, ok := listTable(t, table)
	if !ok {
		t.Fatalf("%s: table ip %s does not exist", step, table)
	}
	if !reflect.DeepEqual(got, want) {
		out, _ := exec.Command("nft", "list", "table", "ip", table).CombinedOutput()
		t.Fatalf("%s: table ip %s\n got %v\nwant %v\n%s", step, table, got, want, out)
	}
}

func addrOf(b *backend) string { return b.addr.String() }

// TestKernelTableFollowsEndpoints checks the nftables table holds exactly
// the expected rules and map elements through scale up, scale down, a
// backend's death, every backend gone and one back, a node restart (after
// a crash) and the service's removal, that connections spread evenly over
// it, and that the table is gone once the mesh stops: with changes over
// netlink (as a node makes them) and with every change through nft.
func TestKernelTableFollowsEndpoints(t *testing.T) {
	for _, netlink := range []bool{true, false} {
		name := "netlink"
		if !netlink {
			name = "nft"
		}
		t.Run(name, func(t *testing.T) { testKernelTable(t, netlink) })
	}
}

func testKernelTable(t *testing.T, netlink bool) {
	bes := startBackends(t, 4)
	newMesh := func() *Mesh {
		m := newTestMeshOn(t, DatapathKernel, false)
		m.mu.Lock()
		if !m.kern.netlink {
			t.Fatalf("no netlink connection to nftables: %s", m.dp.Reason)
		}
		m.kern.netlink = netlink
		m.mu.Unlock()
		return m
	}
	m := newMesh()
	table := TableName(testNode)
	if got := m.Datapath(); got.Table != "ip "+table {
		t.Fatalf("datapath %+v, want table ip %s", got, table)
	}
	port := freeTCPPort(t, "127.0.0.1")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	vip := "127.32.0.9"
	svc := func(bes ...*backend) *pb.ServiceEndpoints {
		s := service("s1", "web", vip, uint32(port), 80, bes...)
		return s
	}
	// One backend is on another node: its connections are SNATed.
	remoteOf := func(bes ...*backend) *pb.ServiceEndpoints {
		s := svc(bes...)
		s.Tasks[len(s.Tasks)-1].NodeId = "elsewhere"
		return s
	}
	vipKey := net.JoinHostPort(vip, "80")
	expect := func(bes []*backend, remote *backend) nftTable {
		var addrs []string
		for _, b := range bes {
			addrs = append(addrs, addrOf(b))
		}
		rem := map[string]bool{}
		if remote != nil {
			rem[addrOf(remote)] = true
		}
		return expectTable(map[string][]string{addr: addrs, vipKey: addrs}, rem)
	}

	checkTable(t, table, "before any service", expectTable(nil, nil))

	m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{svc(bes[0], bes[1])}})
	checkTable(t, table, "two backends", expect(bes[:2], nil))

	steps := []struct {
		name   string
		update *pb.ServiceEndpoints
		live   []*backend
		remote *backend
	}{
		{"scale up to four, one remote", remoteOf(bes[0], bes[1], bes[2], bes[3]), bes[:4], bes[3]},
		{"scale down to three", svc(bes[0], bes[1], bes[2]), bes[:3], nil},
		{"same count, one replaced", remoteOf(bes[0], bes[1], bes[3]), []*backend{bes[0], bes[1], bes[3]}, bes[3]},
	}
	for _, st := range steps {
		m.Apply(&pb.EndpointUpdate{Updated: []*pb.ServiceEndpoints{st.update}})
		checkTable(t, table, st.name, expect(st.live, st.remote))
		counts := spread(t, addr, 6*len(st.live))
		for _, b := range st.live {
			if counts[b.name] != 6 {
				t.Fatalf("%s: %d requests over %d backends: %v, want 6 each", st.name, 6*len(st.live), len(st.live), counts)
			}
		}
	}

	// A backend dies: the managers take it out of the set.
	bes[1].srv.Close()
	m.Apply(&pb.EndpointUpdate{Updated: []*pb.ServiceEndpoints{remoteOf(bes[0], bes[3])}})
	checkTable(t, table, "after a backend's death", expect([]*backend{bes[0], bes[3]}, bes[3]))
	if counts := spread(t, addr, 10); counts[bes[0].name] != 5 || counts[bes[3].name] != 5 {
		t.Fatalf("after a backend's death: %v", counts)
	}

	// Every backend gone: the frontends are parked (the proxy serves,
	// closing each connection); one back: served by the kernel again.
	m.Apply(&pb.EndpointUpdate{Updated: []*pb.ServiceEndpoints{svc()}})
	checkTable(t, table, "every backend gone", expectTable(map[string][]string{addr: nil, vipKey: nil}, nil))
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, _ := c.Read(make([]byte, 1)); n != 0 {
			t.Fatal("with no backend, a connection got data")
		}
		c.Close()
	}
	m.Apply(&pb.EndpointUpdate{Updated: []*pb.ServiceEndpoints{svc(bes[0])}})
	checkTable(t, table, "one backend back", expect(bes[:1], nil))
	if counts := spread(t, addr, 3); counts[bes[0].name] != 3 {
		t.Fatalf("one backend back: %v", counts)
	}

	// The node crashes (its table stays) and restarts with another set:
	// the new table holds exactly the current set, nothing stale.
	m.crash()
	m = newMesh()
	checkTable(t, table, "restarted, before any update", expectTable(nil, nil))
	m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{svc(bes[2])}})
	checkTable(t, table, "restarted", expect([]*backend{bes[2]}, nil))

	// The service goes.
	m.Apply(&pb.EndpointUpdate{Removed: []string{"s1"}})
	checkTable(t, table, "service removed", expectTable(nil, nil))

	// And the node stops: no table.
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := listTable(t, table); ok {
		t.Fatalf("table ip %s still exists after the mesh stopped", table)
	}
}

// crash stops the mesh as a killed process would: its sockets close, its
// nftables table stays.
func (m *Mesh) crash() {
	m.mu.Lock()
	m.kern = nil
	m.mu.Unlock()
	_ = m.Close()
}

// clientAddrBackend answers each request with the client address it saw:
// the connection's peer, or the source a PROXY v2 header gives.
func clientAddrBackend(t *testing.T, proxyHeader bool) *backend {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: "addr", addr: ln.Addr().(*net.TCPAddr)}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		io.WriteString(w, host)
	})
	var l net.Listener = ln
	if proxyHeader {
		l = &proxyListener{Listener: ln}
	}
	b.srv = &http.Server{Handler: h}
	go b.srv.Serve(l)
	t.Cleanup(func() { b.srv.Close() })
	return b
}

// proxyListener reads a PROXY protocol v2 header off each connection and
// reports its source as the connection's peer.
type proxyListener struct{ net.Listener }

func (l *proxyListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 16)
	if _, err := io.ReadFull(c, hdr); err != nil || string(hdr[:12]) != string(proxyV2Sig) || hdr[12] != 0x21 || hdr[13] != 0x11 {
		c.Close()
		return &proxyConn{Conn: c, src: &net.TCPAddr{IP: net.IPv4(0, 0, 0, 0)}}, nil // answers "0.0.0.0": no header
	}
	body := make([]byte, binary.BigEndian.Uint16(hdr[14:16]))
	if _, err := io.ReadFull(c, body); err != nil || len(body) < 12 {
		c.Close()
		return &proxyConn{Conn: c, src: &net.TCPAddr{IP: net.IPv4(0, 0, 0, 0)}}, nil
	}
	_ = c.SetReadDeadline(time.Time{})
	return &proxyConn{Conn: c, src: &net.TCPAddr{IP: net.IP(body[0:4]), Port: int(binary.BigEndian.Uint16(body[8:10]))}}, nil
}

type proxyConn struct {
	net.Conn
	src net.Addr
}

func (c *proxyConn) RemoteAddr() net.Addr { return c.src }

// askFrom makes one request to addr from the local address src.
func askFrom(t *testing.T, src, addr string) string {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) { return d.DialContext(ctx, network, a) }}}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("request to %s from %s: %v", addr, src, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// TestClientAddressKept: a client's connection delivered to a backend on
// the same node keeps the client's address on the kernel datapath (and
// one to another node's backend comes from the node's address, SNAT);
// with local=true every connection stays on the node, so every backend
// sees the real client; on the user-space path the PROXY protocol header
// carries it.
func TestClientAddressKept(t *testing.T) {
	const client = "127.0.0.77" // any 127/8 address is this host's
	cases := []struct {
		name       string
		datapath   string
		local      bool
		proxyProto bool
		want       map[string]bool // addresses the backends may see
	}{
		{name: "kernel, local and remote backends", datapath: DatapathKernel, want: map[string]bool{client: true, "127.0.0.1": true}},
		{name: "kernel, local=true", datapath: DatapathKernel, local: true, want: map[string]bool{client: true}},
		{name: "userspace, local=true", datapath: DatapathUserspace, local: true, want: map[string]bool{"127.0.0.1": true}},
		{name: "userspace, proxy protocol", datapath: DatapathUserspace, proxyProto: true, want: map[string]bool{client: true}},
		{name: "kernel, proxy protocol (served by the proxy)", datapath: DatapathKernel, proxyProto: true, want: map[string]bool{client: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			here, there := clientAddrBackend(t, tc.proxyProto), clientAddrBackend(t, tc.proxyProto)
			m := newTestMeshOn(t, tc.datapath, false)
			defer m.Close()
			port := freeTCPPort(t, "127.0.0.1")
			s := service("s1", "web", "", uint32(port), 80, here, there)
			s.Tasks[1].NodeId = "elsewhere"
			s.Ports[0].Local, s.Ports[0].ProxyProtocol = tc.local, tc.proxyProto
			m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{s}})
			seen := map[string]bool{}
			for range 6 {
				seen[askFrom(t, client, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))] = true
			}
			if !reflect.DeepEqual(seen, tc.want) {
				t.Fatalf("backends saw clients %v, want %v", seen, tc.want)
			}
		})
	}
}

// TestKernelFallsBackWhenRulesFail: a table changed behind the mesh's back
// is rebuilt at the next update (the netlink change fails, the rebuild
// through nft succeeds); when the rebuild fails too the table is removed
// and the proxy serves, and the next update that succeeds rebuilds it.
func TestKernelFallsBackWhenRulesFail(t *testing.T) {
	bes := startBackends(t, 2)
	m := newTestMeshOn(t, DatapathKernel, false)
	defer m.Close()
	port := freeTCPPort(t, "127.0.0.1")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80, bes...)}})
	table := TableName(testNode)
	one := expectTable(map[string][]string{addr: {addrOf(bes[0])}}, nil)
	both := expectTable(map[string][]string{addr: {addrOf(bes[0]), addrOf(bes[1])}}, nil)

	// Someone deletes the table: the next change rebuilds it whole.
	if err := RemoveTable(context.Background(), table); err != nil {
		t.Fatal(err)
	}
	m.Apply(&pb.EndpointUpdate{Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80, bes[0])}})
	checkTable(t, table, "rebuilt after the table was deleted", one)

	// Someone deletes the table again and nft fails: the netlink change
	// finds no table, the rebuild fails, the proxy serves.
	if err := RemoveTable(context.Background(), table); err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	nft := m.kern.nft
	m.kern.nft = "false"
	m.mu.Unlock()
	m.Apply(&pb.EndpointUpdate{Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80, bes...)}})
	if _, ok := listTable(t, table); ok {
		t.Fatal("the table is still there after nft failed")
	}
	if counts := spread(t, addr, 4); counts[bes[0].name] != 2 || counts[bes[1].name] != 2 {
		t.Fatalf("served by the proxy meanwhile: %v", counts)
	}
	if dp := m.Datapath(); dp.Name != DatapathUserspace || !strings.Contains(dp.Reason, "could not be applied") {
		t.Fatalf("datapath while nft fails: %+v", dp)
	}
	// nft works again: the next update rebuilds the table.
	m.mu.Lock()
	m.kern.nft = nft
	m.mu.Unlock()
	m.Apply(&pb.EndpointUpdate{Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80, bes[1], bes[0])}})
	checkTable(t, table, "rebuilt once nft works", both)
	if dp := m.Datapath(); dp.Name != DatapathKernel {
		t.Fatalf("datapath once nft works: %+v", dp)
	}
}

// BenchmarkKernelSync measures one endpoint change on the kernel
// datapath: a backend leaves or joins a frontend of three (one netlink
// batch; the first change, which declares the frontend, runs nft).
func BenchmarkKernelSync(b *testing.B) {
	cfg := Config{IP: "127.0.0.1", NodeID: testNode, Log: slog.New(slog.DiscardHandler)}
	k, dp := newKernel(cfg, cfg.Log)
	if k == nil {
		b.Skipf("no kernel datapath: %s", dp.Reason)
	}
	defer k.remove(context.Background())
	three := []string{"127.0.0.1:40001", "127.0.0.1:40002", "127.0.0.1:40003"}
	sets := [][]string{three, three[:2]}
	for i := 0; b.Loop(); i++ {
		f, _ := kernelFrontend("127.0.0.1:30001", sets[i%2], map[string]bool{})
		if err := k.sync(map[string]kernelFront{"127.0.0.1:30001": f}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestKernelProbesLeaveOutDeadBackends: on the kernel datapath, which
// cannot retry, a backend that refuses connections (its task died) or
// ignores them (its node went silent) leaves the kernel's map before the
// managers take it out of the set, and comes back when it answers again;
// with every backend down, all stay.
func TestKernelProbesLeaveOutDeadBackends(t *testing.T) {
	bes := startBackends(t, 2)
	silent := blackhole(t)
	m := newTestMeshOn(t, DatapathKernel, false)
	defer m.Close()
	table := TableName(testNode)
	port := freeTCPPort(t, "127.0.0.1")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	waitTable := func(step string, want nftTable) {
		t.Helper()
		poll.Until(t, 10*time.Second, step, func() (bool, string) {
			got, _ := listTable(t, table)
			return reflect.DeepEqual(got, want), fmt.Sprintf("table %v, want %v", got, want)
		})
	}

	m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80, bes[0], bes[1], silent)}})
	waitTable("the silent backend left out", expectTable(map[string][]string{addr: {addrOf(bes[0]), addrOf(bes[1])}}, nil))

	// A backend's task dies (nothing listens on its port any more).
	dead := bes[1].addr.String()
	bes[1].srv.Close()
	waitTable("the dead backend left out", expectTable(map[string][]string{addr: {addrOf(bes[0])}}, nil))
	if counts := spread(t, addr, 6); counts[bes[0].name] != 6 {
		t.Fatalf("with one backend alive: %v", counts)
	}

	// It comes back on the same port.
	ln, err := net.Listen("tcp4", dead)
	if err != nil {
		t.Fatal(err)
	}
	back := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "back") })}
	go back.Serve(ln)
	defer back.Close()
	waitTable("the backend back", expectTable(map[string][]string{addr: {addrOf(bes[0]), dead}}, nil))

	// Every backend down: all stay (nothing better to do).
	m.Apply(&pb.EndpointUpdate{Updated: []*pb.ServiceEndpoints{service("s1", "web", "", uint32(port), 80, silent)}})
	waitTable("only a silent backend", expectTable(map[string][]string{addr: {addrOf(silent)}}, nil))
}
