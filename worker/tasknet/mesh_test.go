package tasknet

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/mesh"
	"github.com/shoal-cluster/shoal/internal/poll"
	pb "github.com/shoal-cluster/shoal/proto"
)

// freePort is a port nothing holds at ip, TCP and UDP alike (the
// resolver takes both).
func freePort(t *testing.T, ip string) int {
	t.Helper()
	for range 100 {
		ln, err := net.Listen("tcp4", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp4", net.JoinHostPort(ip, strconv.Itoa(port)))
		ln.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no port free for TCP and UDP")
	return 0
}

// startMesh runs a node's mesh on ip, as the worker agent does.
func startMesh(t *testing.T, ip, nodeID, datapath string, dnsPort int, containerResolver string) *mesh.Mesh {
	t.Helper()
	m := mesh.New(mesh.Config{IP: ip, NodeID: nodeID, Datapath: datapath, DNSPort: dnsPort,
		ContainerResolver: containerResolver, Log: slog.New(slog.DiscardHandler), DialTimeout: 500 * time.Millisecond})
	if dp := m.Datapath(); dp.Name != datapath {
		_ = m.Close()
		t.Fatalf("mesh datapath %s (%s), want %s", dp.Name, dp.Reason, datapath)
	}
	if err := m.Start(context.Background()); err != nil {
		_ = m.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// taskService is a service whose tasks are attached tasks: each publishes
// its container port on its own address, as the container runtime reports
// them.
func taskService(nodeID, vip string, published, target uint32, tasks ...Attachment) *pb.ServiceEndpoints {
	s := &pb.ServiceEndpoints{ServiceId: "svc-web", ServiceName: "web", VirtualAddr: vip,
		Ports: []*pb.PortConfig{{TargetPort: target, PublishedPort: published, PublishMode: pb.PublishMode_PUBLISH_MODE_INGRESS}}}
	for i, a := range tasks {
		s.Tasks = append(s.Tasks, &pb.TaskEndpoint{TaskId: fmt.Sprintf("t%d", i), NodeId: nodeID, Ip: a.IP.String(),
			Ports: []*pb.PortBinding{{TargetPort: target, HostIp: a.IP.String(), HostPort: target}}})
	}
	return s
}

// TestMeshReachesTasks checks the routing mesh of the node serves a
// published port, and the service's virtual IP, from tasks on the bridge
// (host_ip = the task's address, host_port = its container port), on both
// datapaths: to clients on the node itself, with the mesh on a loopback
// address (as in-process clusters run) and on a routed one, and to a
// client beyond the node's uplink (the kernel's DNAT then forwards into
// the bridge). Another task reaches the service by the name the node's
// container resolver gives, through its twin address.
func TestMeshReachesTasks(t *testing.T) {
	n, _ := newTestNetwork(t, 3, netip.AddrPort{})
	ctx := context.Background()
	var tasks []Attachment
	for _, id := range []string{"web1", "web2"} {
		a, err := n.Attach(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		listenOn(t, a.NetNSPath, a.IP.String()+":80", id)
		tasks = append(tasks, a)
	}
	client, err := n.Attach(ctx, "client")
	if err != nil {
		t.Fatal(err)
	}
	outPath, outIP := outsideNS(t)
	uplinkIP := netip.MustParseAddr(outIP).Prev().String() // the host's end
	for _, dp := range []string{mesh.DatapathUserspace, mesh.DatapathKernel} {
		for _, ip := range []string{"127.0.0.1", uplinkIP} {
			t.Run(dp+"/"+ip, func(t *testing.T) {
				nodeID := fmt.Sprintf("tn%08x", rand.Uint32())
				cluster := "cluster-" + nodeID
				resolverIP := mesh.ContainerResolverIP(cluster)
				t.Cleanup(func() { mesh.RemoveContainerAddrs(context.Background(), cluster) })
				m := startMesh(t, ip, nodeID, dp, 0, resolverIP)
				port := freePort(t, ip)
				vip := mesh.VIP(cluster, 0)
				m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{taskService(nodeID, vip, uint32(port), 80, tasks...)}})
				published := net.JoinHostPort(ip, strconv.Itoa(port))
				reach := func(what, nsPath, addr string) {
					t.Helper()
					seen := map[string]bool{}
					poll.Until(t, 10*time.Second, what+" "+addr+" reaches both tasks", poll.Bool(func() bool {
						got, err := dialIn(nsPath, addr)
						if err == nil {
							seen[got] = true
						}
						return seen["web1"] && seen["web2"]
					}, func() string { return fmt.Sprintf("reached %v", seen) }))
				}
				reach("node -> published port", "", published)
				reach("node -> virtual IP", "", net.JoinHostPort(vip, "80"))
				if ip == uplinkIP {
					reach("outside -> published port", outPath, published)
				}
				// A task asks the node's container resolver for the service
				// and connects to the address it gets.
				rc := []byte("nameserver " + resolverIP + "\n")
				addrs, err := lookupIn(ctx, client.NetNSPath, rc, "web")
				if err != nil || len(addrs) != 1 {
					t.Fatalf("task resolves web: %v, %v", addrs, err)
				}
				reach("task -> service by name", client.NetNSPath, net.JoinHostPort(addrs[0], "80"))
				tasksAddrs, err := lookupIn(ctx, client.NetNSPath, rc, "tasks.web")
				slices.Sort(tasksAddrs)
				wantAddrs := []string{tasks[0].IP.String(), tasks[1].IP.String()}
				slices.Sort(wantAddrs)
				if err != nil || !slices.Equal(tasksAddrs, wantAddrs) {
					t.Fatalf("task resolves tasks.web: %v, %v; want %v", tasksAddrs, err, wantAddrs)
				}
				if dp == mesh.DatapathKernel {
					if got := m.Datapath(); got.Name != mesh.DatapathKernel {
						t.Fatalf("datapath fell back: %+v", got)
					}
					// The kernel forwards the published port to the tasks.
					out, err := exec.Command("nft", "list", "table", "ip", mesh.TableName(nodeID)).CombinedOutput()
					if err != nil || !strings.Contains(string(out), tasks[0].IP.String()+" . 80") {
						t.Fatalf("the mesh's table does not DNAT to the tasks: %v\n%s", err, out)
					}
				}
			})
		}
	}
}

// TestTaskResolvesThroughNodeResolver checks a task's resolv.conf leads a
// query from inside its namespace to the node's resolver, whether the
// resolver listens on a loopback address and another port (the gateway's
// port 53 is DNATed to it) or on port 53 of a host address (queried
// directly), and that nothing else on the host's loopback is reachable
// from a task.
func TestTaskResolvesThroughNodeResolver(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	nodeID := fmt.Sprintf("tn%08x", rand.Uint32())
	cluster := "cluster-" + nodeID
	t.Cleanup(func() { mesh.RemoveContainerAddrs(context.Background(), cluster) })
	dnsPort := freePort(t, "127.0.0.1")
	resolverIP := mesh.ContainerResolverIP(cluster)
	m := startMesh(t, "127.0.0.1", nodeID, mesh.DatapathUserspace, dnsPort, resolverIP)
	m.Apply(&pb.EndpointUpdate{Complete: true, Updated: []*pb.ServiceEndpoints{{ServiceId: "s1", ServiceName: "db",
		Tasks: []*pb.TaskEndpoint{{TaskId: "t1", NodeId: nodeID, Ip: "10.9.8.7"}}}}})
	for i, dns := range []netip.AddrPort{
		netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(dnsPort)),
		netip.AddrPortFrom(netip.MustParseAddr(resolverIP), 53),
	} {
		t.Run(dns.String(), func(t *testing.T) {
			n, _ := newTestNetwork(t, 4+i, dns)
			a, err := n.Attach(ctx, "task")
			if err != nil {
				t.Fatal(err)
			}
			addrs, err := lookupIn(ctx, a.NetNSPath, a.ResolvConf, "tasks.db")
			if err != nil || len(addrs) != 1 || addrs[0] != "10.9.8.7" {
				t.Fatalf("resolv.conf %q: tasks.db -> %v, %v", a.ResolvConf, addrs, err)
			}
			// Only the resolver: another port of the host's loopback stays
			// out of reach, even sent to the gateway's MAC address.
			other := listenOn(t, "", "127.0.0.1:0", "loopback")
			if got, err := dialIn(a.NetNSPath, other); err == nil {
				t.Fatalf("a task reached the host's loopback %s: %q", other, got)
			}
		})
	}
}
