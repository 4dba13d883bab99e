package mesh

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"
)

// tcpPair is two ends of one loopback TCP connection: the one dialed and
// the one accepted.
func tcpPair(t *testing.T) (dialed, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	a, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close(); a.Close() })
	return d, a
}

// relayed is a client and a backend with relay copying between the
// proxy's two connections, as listener.handle runs it.
type relayed struct {
	client, backend *net.TCPConn
	stop            func() // closes the proxy's connections, as listener.close does
	done            chan struct{}
	in, out         int64 // relay's counts, once done is closed
}

func startRelay(t *testing.T) *relayed {
	t.Helper()
	client, fromClient := tcpPair(t)
	toBackend, backend := tcpPair(t)
	r := &relayed{client: client, backend: backend, done: make(chan struct{}),
		stop: func() { fromClient.Close(); toBackend.Close() }}
	go func() {
		defer close(r.done)
		r.in, r.out = relay(fromClient, toBackend)
		r.stop()
	}()
	t.Cleanup(func() { r.stop(); <-r.done })
	return r
}

// wait waits for the relay to return.
func (r *relayed) wait(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not return")
	}
}

func readAll(t *testing.T, c net.Conn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(b)
}

// A half-close passes on, whichever side closes first, and the other
// direction goes on until its own end.
func TestRelayPassesHalfCloseBothWays(t *testing.T) {
	t.Run("client first", func(t *testing.T) {
		r := startRelay(t)
		if _, err := r.client.Write([]byte("request")); err != nil {
			t.Fatal(err)
		}
		_ = r.client.CloseWrite()
		if got := readAll(t, r.backend); got != "request" {
			t.Fatalf("backend got %q", got)
		}
		if _, err := r.backend.Write([]byte("a longer response")); err != nil {
			t.Fatal(err)
		}
		_ = r.backend.CloseWrite()
		if got := readAll(t, r.client); got != "a longer response" {
			t.Fatalf("client got %q", got)
		}
		r.wait(t)
		if r.in != 7 || r.out != 17 {
			t.Fatalf("counted %d in, %d out; want 7, 17", r.in, r.out)
		}
	})
	t.Run("backend first", func(t *testing.T) {
		r := startRelay(t)
		if _, err := r.backend.Write([]byte("banner")); err != nil {
			t.Fatal(err)
		}
		_ = r.backend.CloseWrite()
		if got := readAll(t, r.client); got != "banner" {
			t.Fatalf("client got %q", got)
		}
		if _, err := r.client.Write([]byte("bye")); err != nil {
			t.Fatal(err)
		}
		_ = r.client.CloseWrite()
		if got := readAll(t, r.backend); got != "bye" {
			t.Fatalf("backend got %q", got)
		}
		r.wait(t)
		if r.in != 3 || r.out != 6 {
			t.Fatalf("counted %d in, %d out; want 3, 6", r.in, r.out)
		}
	})
}

// Several megabytes both ways at once arrive intact and are counted
// exactly; both ends write before they read all, so the relay must hold
// back and resume in both directions.
func TestRelayLargeTransfersBothWays(t *testing.T) {
	const size = 8<<20 + 12345
	r := startRelay(t)
	up, down := make([]byte, size), make([]byte, size+777)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, b := range [][]byte{up, down} {
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
	}
	var wg sync.WaitGroup
	send := func(c *net.TCPConn, b []byte) {
		defer wg.Done()
		if _, err := c.Write(b); err != nil {
			t.Errorf("write: %v", err)
		}
		_ = c.CloseWrite()
	}
	var gotUp, gotDown []byte
	recv := func(c *net.TCPConn, into *[]byte) {
		defer wg.Done()
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil {
			t.Errorf("read: %v", err)
		}
		*into = b
	}
	wg.Add(4)
	go send(r.client, up)
	go send(r.backend, down)
	go recv(r.backend, &gotUp)
	go recv(r.client, &gotDown)
	wg.Wait()
	if sha256.Sum256(gotUp) != sha256.Sum256(up) || sha256.Sum256(gotDown) != sha256.Sum256(down) {
		t.Fatalf("data differ: %d of %d bytes up, %d of %d down", len(gotUp), len(up), len(gotDown), len(down))
	}
	r.wait(t)
	if r.in != int64(len(up)) || r.out != int64(len(down)) {
		t.Fatalf("counted %d in, %d out; want %d, %d", r.in, r.out, len(up), len(down))
	}
}

// A backend that stops reading holds up its own connection only: the
// others go on, and the held-back bytes all arrive once it reads again.
func TestRelayStalledBackendDoesNotBlockOthers(t *testing.T) {
	stalled := startRelay(t)
	// Fill every buffer on the way to the backend, which reads nothing.
	var written int
	filled := make(chan struct{})
	go func() {
		defer close(filled)
		chunk := make([]byte, 64<<10)
		for {
			_ = stalled.client.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
			n, err := stalled.client.Write(chunk)
			written += n
			if err != nil {
				return // blocked: the relay holds back
			}
		}
	}()
	select {
	case <-filled:
	case <-time.After(10 * time.Second):
		t.Fatal("the client's writes never blocked")
	}
	for i := range 2*runtime.GOMAXPROCS(0) + 2 {
		r := startRelay(t)
		msg := bytes.Repeat([]byte{byte('a' + i)}, 1000+i)
		for range 3 {
			if _, err := r.client.Write(msg); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(msg))
			_ = r.backend.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(r.backend, got); err != nil {
				t.Fatalf("connection %d: backend read: %v", i, err)
			}
			if _, err := r.backend.Write(got); err != nil {
				t.Fatal(err)
			}
			_ = r.client.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(r.client, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("connection %d: client read: %v", i, err)
			}
		}
	}
	// Once the backend reads, the stalled connection delivers all it
	// held back.
	_ = stalled.client.CloseWrite()
	if got := readAll(t, stalled.backend); len(got) != written {
		t.Fatalf("the backend got %d bytes of %d", len(got), written)
	}
	_ = stalled.backend.CloseWrite()
	stalled.wait(t)
	if stalled.in != int64(written) {
		t.Fatalf("counted %d in; want %d", stalled.in, written)
	}
}

// Closing the proxy's connections (what listener.close does) ends a
// relay at once, and the bytes copied so far are counted.
func TestRelayEndsWhenClosed(t *testing.T) {
	r := startRelay(t)
	if _, err := r.client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	_ = r.backend.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(r.backend, got); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r.stop()
	r.wait(t)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the relay took %v to end", d)
	}
	if r.in != 5 || r.out != 0 {
		t.Fatalf("counted %d in, %d out; want 5, 0", r.in, r.out)
	}
	// Both ends see their connection end.
	for _, c := range []*net.TCPConn{r.client, r.backend} {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(got); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a connection is still open: %v", err)
		}
	}
}

// Closing the listener ends its proxied connections in flight promptly;
// its counters have every byte.
func TestListenerCloseEndsRelays(t *testing.T) {
	echo, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var echoes sync.WaitGroup
	defer echoes.Wait()
	defer echo.Close()
	echoes.Add(1)
	go func() {
		defer echoes.Done()
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			echoes.Add(1)
			go func() { defer echoes.Done(); defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newListener(ln, ln.Addr().String(), "echo", slog.New(slog.DiscardHandler), time.Second)
	l.setBackends([]string{echo.Addr().String()})
	l.wg.Add(1)
	go l.serve()
	var clients []net.Conn
	var sent uint64
	for i := range 5 {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		msg := bytes.Repeat([]byte{'x'}, 100*(i+1))
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		sent += uint64(len(msg))
		clients = append(clients, c)
	}
	start := time.Now()
	l.close()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("close took %v", d)
	}
	for _, c := range clients {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a client's connection is still open: %v", err)
		}
	}
	s := l.stats()
	if s.Connections != 5 || s.BytesIn != sent || s.BytesOut != sent {
		t.Fatalf("stats %+v; want 5 connections, %d bytes each way", s, sent)
	}
}

// Connections that are not TCP are copied too, their end passed on by
// closing (they cannot half-close).
func TestRelayNonTCP(t *testing.T) {
	client, a := net.Pipe()
	b, backend := net.Pipe()
	done := make(chan struct{})
	var in, out int64
	go func() {
		defer close(done)
		in, out = relay(a, b)
		a.Close()
		b.Close()
	}()
	go func() { _, _ = client.Write([]byte("ping")); client.Close() }()
	if got := readAll(t, backend); got != "ping" {
		t.Fatalf("backend got %q", got)
	}
	backend.Close()
	<-done
	if in != 4 || out != 0 {
		t.Fatalf("counted %d in, %d out; want 4, 0", in, out)
	}
}
