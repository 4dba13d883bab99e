package tests

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"golang.org/x/sys/unix"
)

// silence makes addr (ip:port) silent, as a machine that lost power is:
// a listener whose accept queue is full, so the kernel drops every SYN
// and a dial hangs instead of being refused.
func silence(t *testing.T, addr string) {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "silent")
	defer f.Close()
	var ip [4]byte
	copy(ip[:], net.ParseIP(host).To4())
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: ip, Port: p}); err != nil {
		t.Fatalf("silence %s: %v", addr, err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	ln, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	for range 10 {
		c, err := net.DialTimeout("tcp4", addr, 200*time.Millisecond)
		if err != nil {
			return // the queue is full: further dials hang
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Fatalf("could not fill the accept queue of %s", addr)
}

// The leader dies and its addresses go silent (no reset), as on a real
// network: workers find the new leader without waiting on the dead
// address, no worker is marked Down, no task is replaced, a write
// through a survivor succeeds, and requests through the mesh keep being
// served throughout.
func TestLeaderGoesSilent(t *testing.T) {
	c := newCluster(t)
	c.addManagers(3)
	c.addWorkers(2)
	published := uint32(c.freePort()) + 3
	spec := helloSpec(t, "web", 4)
	spec.Endpoint = &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80, PublishedPort: published}}}
	c.createService(spec)
	c.waitRunning("web", 4, evenly(2))
	c.waitBackends(published, 4)
	before := map[string]bool{}
	for _, tk := range c.serviceTasks("web") {
		if tk.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING {
			before[tk.GetId()] = true
		}
	}

	old := c.leader()
	var survivors []*mgr
	for _, m := range c.live() {
		if m != old {
			survivors = append(survivors, m)
		}
	}
	// Every node change a survivor commits from now on, in order.
	var mu sync.Mutex
	var downs []string
	sub := survivors[0].m.Store().Watch(func(ev raftstore.Event) bool {
		_, ok := ev.Object.(*pb.Node)
		return ok
	})
	defer sub.Close()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for ev := range sub.C() {
			n := ev.Object.(*pb.Node)
			if n.GetRole() == pb.NodeRole_NODE_ROLE_WORKER && n.GetStatus().GetState() == pb.NodeState_NODE_STATE_DOWN {
				mu.Lock()
				downs = append(downs, fmt.Sprintf("%s: %s", n.GetDescription().GetHostname(), n.GetStatus().GetMessage()))
				mu.Unlock()
			}
		}
	}()

	// Steady requests through a surviving manager's published port.
	var served, failed atomic.Int64
	var lastErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		url := fmt.Sprintf("http://%s:%d/", survivors[1].cfg.AdvertiseIP, published)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := ask(url); err != nil {
				failed.Add(1)
				lastErr.Store(err.Error())
			} else {
				served.Add(1)
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()

	c.stopManager(old)
	silence(t, old.cfg.APIAddr())
	silence(t, net.JoinHostPort(old.cfg.AdvertiseIP, strconv.Itoa(old.cfg.APIPort+1)))

	// A write through a survivor right after the death: it waits for the
	// election and reaches the new leader, not the silent address.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := c.control(survivors[0])
	start := time.Now()
	got, err := cl.GetNode(ctx, &pb.GetNodeRequest{Ref: c.workers[0].a.ID()})
	if err != nil {
		t.Fatal(err)
	}
	nspec := got.GetNode().GetSpec()
	if nspec.Annotations == nil {
		nspec.Annotations = &pb.Annotations{}
	}
	nspec.Annotations.Labels = map[string]string{"after": "failover"}
	if _, err := cl.UpdateNode(ctx, &pb.UpdateNodeRequest{Ref: c.workers[0].a.ID(), Spec: nspec}); err != nil {
		t.Fatalf("a write through a survivor after the leader went silent: %v (after %s)", err, time.Since(start))
	}
	t.Logf("a read and a write through a survivor took %s", time.Since(start).Round(time.Millisecond))

	// Both workers hold a session with the new leader.
	newLeader := c.leader()
	c.eventually(20*time.Second, "both workers in session with the new leader", func() (bool, string) {
		for _, w := range c.workers {
			if id := w.a.SessionID(); id == "" {
				return false, "a worker has no session"
			}
			st := c.nodeState(newLeader, w.a.ID())
			if st != pb.NodeState_NODE_STATE_READY {
				return false, fmt.Sprintf("%s is %s", w.cfg.Hostname, st)
			}
		}
		return true, ""
	})
	// Past the new leader's grace period, and a while of steady requests.
	for deadline := time.Now().Add(graceAfterElection + 2*testHeartbeat); time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	if len(downs) > 0 {
		t.Errorf("workers were marked Down after the leader died: %v", downs)
	}
	mu.Unlock()
	for _, tk := range c.serviceTasks("web") {
		if tk.GetDesiredState() == pb.TaskState_TASK_STATE_RUNNING && !before[tk.GetId()] {
			t.Errorf("task %s (slot %d) replaced one that never failed", tk.GetId(), tk.GetSlot())
		}
	}
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d requests through a survivor failed (last: %v)", n, n+served.Load(), lastErr.Load())
	}
	if served.Load() == 0 {
		t.Error("no request was served")
	}
}

// graceAfterElection is the new leader's grace period for workers (five
// heartbeat periods).
const graceAfterElection = 5 * testHeartbeat
