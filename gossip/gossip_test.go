package gossip

import (
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/poll"
)

// freeGossipPort finds a port free for TCP and UDP on ip.
func freeGossipPort(t *testing.T, ip string) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		u, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port)))
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// startMember starts a member with LAN timings, which tolerate a loaded
// machine; fast ones are for the death test.
func startMember(t *testing.T, i int, cluster, role string) *Gossip {
	return startMemberTimed(t, i, cluster, role, false)
}

func startMemberTimed(t *testing.T, i int, cluster, role string, fast bool) *Gossip {
	return startMemberKeyed(t, i, cluster, role, fast, clusterKey(cluster))
}

// clusterKey is a test cluster's gossip key.
func clusterKey(cluster string) []byte {
	sum := sha256.Sum256([]byte(cluster))
	return sum[:]
}

func startMemberKeyed(t *testing.T, i int, cluster, role string, fast bool, keys ...[]byte) *Gossip {
	t.Helper()
	ip := fmt.Sprintf("127.0.0.%d", 10+i)
	g, err := New(Config{
		Keys:      keys,
		Meta:      Meta{NodeID: fmt.Sprintf("node-%d", i), Role: role, API: ip + ":4242"},
		BindIP:    ip,
		BindPort:  freeGossipPort(t, ip),
		ClusterID: cluster,
		Fast:      fast,
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Shutdown() })
	return g
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 30*time.Second, what, poll.Bool(cond, nil))
}

func TestMembersMetaAndManagers(t *testing.T) {
	seed := startMember(t, 0, "c1", RoleManager)
	var all []*Gossip
	all = append(all, seed)
	for i := 1; i < 5; i++ {
		g := startMember(t, i, "c1", RoleWorker)
		if _, err := g.Join([]string{seed.LocalAddr()}); err != nil {
			t.Fatal(err)
		}
		all = append(all, g)
	}
	for _, g := range all {
		waitFor(t, "five members everywhere", func() bool { return len(g.Members()) == 5 })
		mgrs := g.Managers()
		if len(mgrs) != 1 || mgrs[0].NodeID != "node-0" || mgrs[0].API != "127.0.0.10:4242" {
			t.Fatalf("managers = %+v", mgrs)
		}
	}
}

func TestLeaveAndDeathAreReported(t *testing.T) {
	a := startMemberTimed(t, 20, "c2", RoleManager, true)
	b := startMemberTimed(t, 21, "c2", RoleWorker, true)
	c := startMemberTimed(t, 22, "c2", RoleWorker, true)
	for _, g := range []*Gossip{b, c} {
		if _, err := g.Join([]string{a.LocalAddr()}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "three members", func() bool { return len(a.Members()) == 3 })

	// Graceful leave is gossiped as a leave.
	if err := b.Leave(time.Second); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, a, EventLeave, "node-21")

	// A member that stops without leaving is reported dead.
	if err := c.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, a, EventDead, "node-22")
	waitFor(t, "one member left", func() bool { return len(a.Members()) == 1 })
}

func waitEvent(t *testing.T, g *Gossip, kind EventKind, node string) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev := <-g.Events():
			if ev.Kind == kind && ev.Member.NodeID == node {
				return
			}
		case <-timeout:
			t.Fatalf("no %s event for %s", kind, node)
		}
	}
}

func TestClustersStayApart(t *testing.T) {
	a := startMember(t, 30, "cluster-a", RoleManager)
	b := startMember(t, 31, "cluster-b", RoleWorker)
	if n, err := b.Join([]string{a.LocalAddr()}); err == nil && n > 0 {
		t.Fatalf("a member of another cluster joined (%d answered)", n)
	}
	if len(a.Members()) != 1 || len(b.Members()) != 1 {
		t.Fatalf("clusters mixed: %d and %d members", len(a.Members()), len(b.Members()))
	}
}

func TestWrongKeyDoesNotJoin(t *testing.T) {
	a := startMember(t, 40, "cluster-k", RoleManager)
	b := startMemberKeyed(t, 41, "cluster-k", RoleWorker, false, NewKey())
	if n, err := b.Join([]string{a.LocalAddr()}); err == nil && n > 0 {
		t.Fatalf("a member with the wrong key joined (%d answered)", n)
	}
	if len(a.Members()) != 1 || len(b.Members()) != 1 {
		t.Fatalf("a member with the wrong key got in: %d and %d members", len(a.Members()), len(b.Members()))
	}
}

func TestNoKeyIsRefused(t *testing.T) {
	_, err := New(Config{Meta: Meta{NodeID: "n"}, BindIP: "127.0.0.1"})
	if err == nil || !strings.Contains(err.Error(), "key is required") {
		t.Fatalf("err = %v, want a key to be required", err)
	}
}

func TestKeyRotation(t *testing.T) {
	oldKey, newKey := clusterKey("cluster-r"), NewKey()
	a := startMember(t, 50, "cluster-r", RoleManager)
	b := startMember(t, 51, "cluster-r", RoleWorker)
	if _, err := b.Join([]string{a.LocalAddr()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two members", func() bool { return len(a.Members()) == 2 && len(b.Members()) == 2 })
	// Both install the new key as primary, keeping the old one, then drop it.
	for _, keys := range [][][]byte{{newKey, oldKey}, {newKey}} {
		for _, g := range []*Gossip{a, b} {
			if err := g.SetKeys(keys); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Only the new key gets in now.
	c := startMemberKeyed(t, 52, "cluster-r", RoleWorker, false, newKey)
	if _, err := c.Join([]string{a.LocalAddr()}); err != nil {
		t.Fatalf("a member with the new key: %v", err)
	}
	d := startMemberKeyed(t, 53, "cluster-r", RoleWorker, false, oldKey)
	if n, err := d.Join([]string{a.LocalAddr()}); err == nil && n > 0 {
		t.Fatal("a member with the retired key joined")
	}
	waitFor(t, "three members", func() bool { return len(a.Members()) == 3 && len(b.Members()) == 3 && len(c.Members()) == 3 })
}

func TestMetaTooLarge(t *testing.T) {
	big := make([]byte, 600)
	for i := range big {
		big[i] = 'x'
	}
	_, err := New(Config{Meta: Meta{NodeID: "n", API: string(big)}, BindIP: "127.0.0.1", BindPort: 0, Keys: [][]byte{clusterKey("c")}})
	if err == nil {
		t.Fatal("metadata over 512 bytes was accepted")
	}
}

func TestSendToAll(t *testing.T) {
	a := startMember(t, 20, "msgs", RoleWorker)
	b := startMember(t, 21, "msgs", RoleManager)
	c := startMember(t, 22, "msgs", RoleWorker)
	for _, g := range []*Gossip{b, c} {
		if _, err := g.Join([]string{a.LocalAddr()}); err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range []*Gossip{a, b, c} {
		waitFor(t, "three members everywhere", func() bool { return len(g.Members()) == 3 })
	}
	for _, tc := range []struct {
		name string
		msg  []byte
		ok   bool
	}{
		{"empty", nil, false},
		{"too large", make([]byte, MaxMessage+1), false},
		{"task gone", []byte("gone task-1"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := a.SendToAll(tc.msg)
			if (err == nil) != tc.ok {
				t.Fatalf("SendToAll(%d bytes) = %d, %v; want ok=%v", len(tc.msg), n, err, tc.ok)
			}
			if !tc.ok {
				return
			}
			if n != 2 {
				t.Fatalf("sent to %d members, want 2 (not itself)", n)
			}
			for _, g := range []*Gossip{b, c} {
				select {
				case got := <-g.Messages():
					if string(got) != string(tc.msg) {
						t.Fatalf("got %q, want %q", got, tc.msg)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("a member did not get the message")
				}
			}
		})
	}
	// Nothing reaches the sender itself.
	if _, err := a.SendToAll([]byte("second")); err != nil {
		t.Fatal(err)
	}
	for _, g := range []*Gossip{b, c} {
		select {
		case got := <-g.Messages():
			if string(got) != "second" {
				t.Fatalf("got %q", got)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a member did not get the second message")
		}
	}
	select {
	case got := <-a.Messages():
		t.Fatalf("the sender got its own message %q", got)
	default:
	}
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SendToAll([]byte("late")); err == nil {
		t.Fatal("a member that shut down sent a message")
	}
}
