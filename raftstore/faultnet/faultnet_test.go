package faultnet

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tcpLayer is a minimal raft.StreamLayer over TCP.
type tcpLayer struct{ net.Listener }

func (l tcpLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout("tcp", string(addr), timeout)
}

func newLayer(t *testing.T) *Layer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Wrap(tcpLayer{ln})
	t.Cleanup(func() { l.Close() })
	return l
}

// echo accepts connections on l and echoes them, reporting each accepted
// connection's peer.
func echo(l *Layer) <-chan string {
	peers := make(chan string, 16)
	go func() {
		defer close(peers)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			peers <- c.(*conn).peer
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return peers
}

func roundTrip(c net.Conn) error {
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ping" {
		return errors.New("bad echo")
	}
	return nil
}

func dial(a, b *Layer) (net.Conn, error) {
	return a.Dial(raft.ServerAddress(b.Addr().String()), time.Second)
}

func TestHandshakeNamesThePeer(t *testing.T) {
	a, b := newLayer(t), newLayer(t)
	peers := echo(b)
	c, err := dial(a, b)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c); err != nil {
		t.Fatal(err)
	}
	if got := <-peers; got != a.Self() {
		t.Errorf("acceptor saw peer %q, want %q", got, a.Self())
	}
}

func TestPartitionAndHeal(t *testing.T) {
	for _, tc := range []struct {
		name string
		// cut partitions a from b on one side.
		cut func(a, b *Layer)
		// heal lifts it.
		heal func(a, b *Layer)
	}{
		{"dialer side", func(a, b *Layer) { a.Partition(b.Self()) }, func(a, b *Layer) { a.Heal() }},
		{"acceptor side", func(a, b *Layer) { b.Partition(a.Self()) }, func(a, b *Layer) { b.Heal() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := newLayer(t), newLayer(t)
			peers := echo(b)
			open, err := dial(a, b)
			if err != nil {
				t.Fatal(err)
			}
			defer open.Close()
			if err := roundTrip(open); err != nil {
				t.Fatal(err)
			}
			<-peers

			tc.cut(a, b)
			// The open connection is closed.
			if err := roundTrip(open); err == nil {
				t.Error("a connection across the partition still works")
			}
			// New connections fail.
			if c, err := dial(a, b); err == nil {
				if err := roundTrip(c); err == nil {
					t.Error("a new connection across the partition works")
				}
				c.Close()
			} else if !errors.Is(err, ErrPartitioned) {
				t.Errorf("dial across the partition: %v", err)
			}
			// A third member is not affected.
			c3 := newLayer(t)
			if c, err := dial(c3, b); err != nil {
				t.Errorf("dial from an unaffected member: %v", err)
			} else {
				if err := roundTrip(c); err != nil {
					t.Errorf("unaffected member: %v", err)
				}
				c.Close()
				<-peers
			}

			tc.heal(a, b)
			c, err := dial(a, b)
			if err != nil {
				t.Fatalf("dial after heal: %v", err)
			}
			defer c.Close()
			if err := roundTrip(c); err != nil {
				t.Errorf("after heal: %v", err)
			}
		})
	}
}

func TestCloseClosesConnections(t *testing.T) {
	a, b := newLayer(t), newLayer(t)
	echo(b)
	c, err := dial(a, b)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if err := roundTrip(c); err == nil {
		t.Error("connection survived the acceptor's Close")
	}
	a.Close()
	if _, err := dial(a, b); err == nil {
		t.Error("dial after Close succeeded")
	}
}

func TestBadHandshakeIsDropped(t *testing.T) {
	b := newLayer(t)
	peers := echo(b)
	raw, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := raw.Read(make([]byte, 1)); err == nil {
		t.Error("a connection without a handshake was served")
	}
	// A good one still gets through afterwards.
	a := newLayer(t)
	c, err := dial(a, b)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c); err != nil {
		t.Fatal(err)
	}
	if got := <-peers; got != a.Self() {
		t.Errorf("peer %q, want %q", got, a.Self())
	}
}
