package events

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/clock"
	"github.com/shoal-cluster/shoal/internal/poll"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// journalFixture is a memory store with a running journal.
type journalFixture struct {
	store *raftstore.MemoryStore
	clk   *clock.Fake
	j     *Journal
}

func newJournal(t *testing.T, limit int) *journalFixture {
	t.Helper()
	clk := clock.NewFake(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
	store := raftstore.NewMemoryStore(raftstore.MemoryConfig{Now: clk.Now})
	j := New(store, limit, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); j.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; store.Close() })
	poll.Until(t, 5*time.Second, "the journal to start", poll.Bool(func() bool {
		j.mu.Lock()
		defer j.mu.Unlock()
		return j.started
	}, nil))
	return &journalFixture{store: store, clk: clk, j: j}
}

// secret commits a secret creation one minute after the previous change.
func (f *journalFixture) secret(t *testing.T, name string) {
	t.Helper()
	f.clk.Advance(time.Minute)
	_, err := f.store.Update(context.Background(), func(tx *raftstore.Tx) error {
		return tx.Secrets().Create(&pb.Secret{Id: "id-" + name, Spec: &pb.SecretSpec{Annotations: &pb.Annotations{Name: name}}})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// held waits until the journal holds n events.
func (f *journalFixture) held(t *testing.T, n int) {
	t.Helper()
	poll.Until(t, 5*time.Second, fmt.Sprintf("%d events held", n), func() (bool, string) {
		f.j.mu.Lock()
		defer f.j.mu.Unlock()
		return len(f.j.events) == n, fmt.Sprintf("%d held", len(f.j.events))
	})
}

// heldUpTo waits until the journal's newest event is about name.
func (f *journalFixture) heldUpTo(t *testing.T, name string) {
	t.Helper()
	poll.Until(t, 5*time.Second, "the event about "+name, func() (bool, string) {
		f.j.mu.Lock()
		defer f.j.mu.Unlock()
		n := len(f.j.events)
		if n == 0 {
			return false, "none held"
		}
		last := f.j.events[n-1].GetName()
		return last == name, "newest: " + last
	})
}

// collector streams into a slice from a goroutine.
type collector struct {
	mu     sync.Mutex
	got    []*pb.ClusterEvent
	err    error
	done   chan struct{}
	cancel context.CancelFunc
}

// stream starts a stream and waits until it has chosen where it starts.
func (f *journalFixture) stream(t *testing.T, req *pb.EventsRequest) *collector {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &collector{done: make(chan struct{}), cancel: cancel}
	f.j.mu.Lock()
	before := f.j.streams
	f.j.mu.Unlock()
	t.Cleanup(func() { c.stop() })
	go func() {
		defer close(c.done)
		err := f.j.Stream(ctx, req, func(e *pb.ClusterEvent) error {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.got = append(c.got, e)
			return nil
		})
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
	}()
	poll.Until(t, 5*time.Second, "the stream to start", func() (bool, string) {
		f.j.mu.Lock()
		defer f.j.mu.Unlock()
		select {
		case <-c.done:
			return true, "" // it already ended (a refusal, or until passed)
		default:
		}
		return f.j.streams > before, ""
	})
	return c
}

func (c *collector) names() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, e := range c.got {
		out = append(out, e.GetName())
	}
	return out
}

func (c *collector) waitFor(t *testing.T, want ...string) {
	t.Helper()
	poll.Until(t, 5*time.Second, fmt.Sprintf("events %v", want), func() (bool, string) {
		got := c.names()
		return fmt.Sprint(got) == fmt.Sprint(want), fmt.Sprint(got)
	})
}

func (c *collector) stop() error {
	c.cancel()
	<-c.done
	return c.err
}

func TestStreamFollowsFromNow(t *testing.T) {
	f := newJournal(t, 0)
	f.secret(t, "a")
	f.held(t, 1)
	c := f.stream(t, &pb.EventsRequest{})
	f.secret(t, "b")
	f.secret(t, "c")
	c.waitFor(t, "b", "c")
	c.stop()
}

func TestStreamSinceTimeAndTypes(t *testing.T) {
	f := newJournal(t, 0)
	start := f.clk.Now()
	for _, n := range []string{"a", "b", "c"} {
		f.secret(t, n)
	}
	f.held(t, 3)
	// Since 90 s after start: b (at +2m) and c (at +3m), then live ones.
	c := f.stream(t, &pb.EventsRequest{Since: start.Add(90 * time.Second).UnixNano(), Types: []string{"secret"}})
	c.waitFor(t, "b", "c")
	f.secret(t, "d")
	c.waitFor(t, "b", "c", "d")
	c.stop()
	// Another type sees none of them.
	c = f.stream(t, &pb.EventsRequest{Since: start.UnixNano(), Types: []string{"service"}})
	f.secret(t, "e")
	f.held(t, 5)
	if err := c.stop(); err != context.Canceled || len(c.names()) != 0 {
		t.Fatalf("service filter: got %v, err %v", c.names(), err)
	}
}

func TestStreamUntilEnds(t *testing.T) {
	f := newJournal(t, 0)
	start := f.clk.Now()
	f.secret(t, "a")
	f.secret(t, "b")
	f.held(t, 2)
	// until is between a and b: the stream sends a, sees b is later and ends.
	c := f.stream(t, &pb.EventsRequest{Since: start.UnixNano(), Until: start.Add(90 * time.Second).UnixNano()})
	<-c.done
	if c.err != nil || fmt.Sprint(c.names()) != "[a]" {
		t.Fatalf("got %v, err %v; want [a] and nil", c.names(), c.err)
	}
}

func TestStreamResumesByIndexWithoutRepeats(t *testing.T) {
	f := newJournal(t, 0)
	start := f.clk.Now()
	for _, n := range []string{"a", "b", "c", "d"} {
		f.secret(t, n)
	}
	f.held(t, 4)
	c := f.stream(t, &pb.EventsRequest{Since: start.UnixNano()})
	c.waitFor(t, "a", "b", "c", "d")
	c.stop()
	// A client that saw up to b resumes after it (on any manager).
	second := c.got[1]
	c = f.stream(t, &pb.EventsRequest{SinceIndex: second.GetIndex(), SinceSeq: second.GetSeq()})
	c.waitFor(t, "c", "d")
	f.secret(t, "e")
	c.waitFor(t, "c", "d", "e")
	c.stop()
	// A resume position this journal has not reached yet waits for it.
	c = f.stream(t, &pb.EventsRequest{SinceIndex: c.got[2].GetIndex() + 1})
	f.secret(t, "f")
	f.secret(t, "g")
	c.waitFor(t, "g")
	c.stop()
}

func TestStreamRefusesTrimmedPosition(t *testing.T) {
	f := newJournal(t, 3)
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		f.secret(t, n)
	}
	f.heldUpTo(t, "e")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := f.j.Stream(ctx, &pb.EventsRequest{SinceIndex: 1}, func(*pb.ClusterEvent) error { return nil })
	if status.Code(err) != codes.OutOfRange {
		t.Fatalf("resume from a trimmed index: %v, want OutOfRange", err)
	}
	// Resuming from the last trimmed event is fine.
	c := f.stream(t, &pb.EventsRequest{SinceIndex: 2})
	c.waitFor(t, "c", "d", "e")
	c.stop()
}

func TestStreamRejectsBadRequests(t *testing.T) {
	f := newJournal(t, 0)
	for _, req := range []*pb.EventsRequest{
		{Types: []string{"container"}},
		{Since: 10, Until: 5},
	} {
		err := f.j.Stream(context.Background(), req, func(*pb.ClusterEvent) error { return nil })
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%v: %v, want InvalidArgument", req, err)
		}
	}
}
