package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a process's output, read while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// jsonEvent is one line of `shoal events --format json`.
type jsonEvent struct {
	Index      string            `json:"index"`
	Seq        uint32            `json:"seq"`
	Type       string            `json:"type"`
	Action     string            `json:"action"`
	ID         string            `json:"id"`
	Name       string            `json:"name"`
	Attributes map[string]string `json:"attributes"`
}

func parseJSONEvents(t *testing.T, out string) []jsonEvent {
	t.Helper()
	var evs []jsonEvent
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var e jsonEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("event line %q: %v", line, err)
		}
		evs = append(evs, e)
	}
	return evs
}

func hasEvent(evs []jsonEvent, typ, action, name string) bool {
	for _, e := range evs {
		if e.Type == typ && e.Action == action && (name == "" || e.Name == name) {
			return true
		}
	}
	return false
}

// TestEventsAcrossLeaderKill follows `shoal events` from the leader, kills
// the leader, and checks the stream carried on through another manager
// with every event once, in order, the new leader's election among them.
func TestEventsAcrossLeaderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	nodes := formCluster(t, 3)
	out, _, _ := cli(t, "node", "ls", "--host", nodes[0].addr())
	leaderName := leaderHostname(out)
	idx, _ := strconv.Atoi(strings.TrimPrefix(leaderName, "m"))
	if idx < 1 || idx > 3 {
		t.Fatalf("no leader in:\n%s", out)
	}
	leader := nodes[idx-1]
	var survivors []*node
	for _, n := range nodes {
		if n != leader {
			survivors = append(survivors, n)
		}
	}
	target := fmt.Sprintf("m%d", (idx%3)+1) // a survivor, by hostname

	// The history: every manager joined, and the first leader was elected.
	hist, errOut, code := cli(t, "events", "--since", "1h", "--until", "1s", "--filter", "type=node", "--format", "json", "--host", survivors[0].addr())
	if code != 0 {
		t.Fatalf("events --since --until: exit %d: %s", code, errOut)
	}
	past := parseJSONEvents(t, hist)
	for _, m := range []string{"m1", "m2", "m3"} {
		if !hasEvent(past, "node", "join", m) {
			t.Errorf("no join event for %s in the history:\n%s", m, hist)
		}
	}
	if !hasEvent(past, "node", "leader", "") {
		t.Errorf("no leader event in the history:\n%s", hist)
	}

	// Follow from the leader.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	follow := cliCommand(ctx, "events", "--format", "json", "--host", leader.addr())
	var buf, errBuf lockedBuffer
	follow.Stdout, follow.Stderr = &buf, &errBuf
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- follow.Wait() }()
	defer func() { cancel(); <-exited }()

	eventually(t, 20*time.Second, "the pause event", func() (bool, string) {
		// Repeat the change until the follower, which may still be
		// connecting, shows it.
		cli(t, "node", "update", "--availability", "pause", target, "--host", survivors[0].addr())
		if hasEvent(parseJSONEvents(t, buf.String()), "node", "pause", target) {
			return true, ""
		}
		cli(t, "node", "update", "--availability", "active", target, "--host", survivors[0].addr())
		return false, buf.String() + errBuf.String()
	})

	leader.kill()
	eventually(t, 20*time.Second, "a new leader", func() (bool, string) {
		out, errOut, code := cli(t, "node", "ls", "--host", survivors[0].addr(), "--timeout", "2s")
		l := leaderHostname(out)
		return code == 0 && l != "" && l != leaderName, out + errOut
	})
	if _, errOut, code := cli(t, "node", "update", "--availability", "drain", target, "--host", survivors[1].addr()); code != 0 {
		t.Fatalf("drain after failover: %s", errOut)
	}
	eventually(t, 30*time.Second, "the new leader's election and the drain in the followed stream", func() (bool, string) {
		evs := parseJSONEvents(t, buf.String())
		var leaders int
		for _, e := range evs {
			if e.Action == "leader" {
				leaders++
			}
		}
		return leaders >= 1 && hasEvent(evs, "node", "drain", target), buf.String() + errBuf.String()
	})
	select {
	case err := <-exited:
		exited <- err
		t.Fatalf("shoal events ended when the leader died: %v\n%s", err, errBuf.String())
	default:
	}
	// Every event once, in (index, seq) order.
	evs := parseJSONEvents(t, buf.String())
	type pos struct {
		index uint64
		seq   uint32
	}
	var last pos
	for i, e := range evs {
		n, err := strconv.ParseUint(e.Index, 10, 64)
		if err != nil {
			t.Fatalf("event %d has index %q", i, e.Index)
		}
		p := pos{n, e.Seq}
		if i > 0 && (p.index < last.index || p.index == last.index && p.seq <= last.seq) {
			t.Fatalf("event %d at %v after %v: repeated or out of order\n%s", i, p, last, buf.String())
		}
		last = p
	}
}
