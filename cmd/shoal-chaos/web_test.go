package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"syscall"
	"testing"
	"time"
)

func TestFailureKind(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{statusError(http.StatusServiceUnavailable), "status 503"},
		{&url.Error{Op: "Get", URL: "http://x", Err: context.DeadlineExceeded}, "timeout"},
		{&url.Error{Op: "Get", URL: "http://x", Err: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}}, "refused"},
		{&url.Error{Op: "Get", URL: "http://x", Err: &net.OpError{Op: "read", Err: syscall.ECONNRESET}}, "reset"},
		{&url.Error{Op: "Get", URL: "http://x", Err: io.EOF}, "closed"},
		{fmt.Errorf("read the answer: %w", io.ErrUnexpectedEOF), "closed"},
		{&url.Error{Op: "Get", URL: "http://x", Err: errors.New("http: server closed idle connection")}, "closed"},
		{errors.New("something else"), "other"},
	}
	for _, tc := range cases {
		if got := failureKind(tc.err); got != tc.want {
			t.Errorf("failureKind(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// askWeb against real servers: an answer, an error status, a connection
// closed without an answer, and a server that does not answer in time.
func TestAskWebKinds(t *testing.T) {
	serve := func(h http.HandlerFunc) string {
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		return srv.Listener.Addr().String()
	}
	okAddr := serve(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "web.1 web") })
	badAddr := serve(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusBadGateway) })
	closeAddr := serve(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	})
	release := make(chan struct{})
	slowAddr := serve(func(w http.ResponseWriter, r *http.Request) { <-release })
	t.Cleanup(func() { close(release) }) // before the server's Close, which waits for the handler
	client := probeClient(300 * time.Millisecond)
	for _, tc := range []struct {
		addr, want string
	}{{okAddr, ""}, {badAddr, "status 502"}, {closeAddr, "closed"}, {slowAddr, "timeout"}} {
		host, port, _ := net.SplitHostPort(tc.addr)
		err := askURL(context.Background(), client, "http://"+net.JoinHostPort(host, port)+"/")
		if got := failureKind(err); got != tc.want {
			t.Errorf("%s: kind %q (%v), want %q", tc.addr, got, err, tc.want)
		}
	}
}
