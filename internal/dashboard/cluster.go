package dashboard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/shoal-cluster/shoal/internal/rpc"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Connect opens a Control client to the manager at addr (host:port); the
// closer releases it. The dashboard calls it once per manager it uses.
type Connect func(addr string) (pb.ControlClient, io.Closer, error)

// attemptTimeout bounds one call to one manager: past it the next manager
// is tried.
const attemptTimeout = 3 * time.Second

// managers is the set of managers the dashboard talks through. Calls go to
// the one that answered last; when it does not answer, the next one is
// tried, so the dashboard carries on when a manager (the leader
// included) dies.
type managers struct {
	connect Connect

	mu      sync.Mutex
	addrs   []string // the seed first, then every manager's API address seen
	current int
	clients map[string]pb.ControlClient
	closers []io.Closer
}

func newManagers(connect Connect, seeds []string) *managers {
	return &managers{connect: connect, addrs: slices.Clone(seeds), clients: map[string]pb.ControlClient{}}
}

// close releases every client.
func (m *managers) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.closers {
		c.Close()
	}
	m.closers, m.clients = nil, map[string]pb.ControlClient{}
}

// learn adds the API addresses of the managers in nodes.
func (m *managers) learn(nodes []*pb.Node) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, n := range nodes {
		if a := n.GetManagerStatus().GetApiAddr(); a != "" && !slices.Contains(m.addrs, a) {
			m.addrs = append(m.addrs, a)
		}
	}
}

// order returns the addresses, the current one first.
func (m *managers) order() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.addrs))
	for i := range m.addrs {
		out = append(out, m.addrs[(m.current+i)%len(m.addrs)])
	}
	return out
}

// answered makes addr the current manager.
func (m *managers) answered(addr string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if i := slices.Index(m.addrs, addr); i >= 0 {
		m.current = i
	}
}

// client returns the client of addr, connecting on first use.
func (m *managers) client(addr string) (pb.ControlClient, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c, ok := m.clients[addr]; ok {
		return c, nil
	}
	c, closer, err := m.connect(addr)
	if err != nil {
		return nil, err
	}
	m.clients[addr] = c
	m.closers = append(m.closers, closer)
	return c, nil
}

// movesOn reports whether an error means "try another manager": this one
// does not answer, or has no leader to answer for it.
func movesOn(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Unimplemented:
		return !rpc.IsTLSRefusal(err)
	}
	return false
}

// do runs call on the current manager, moving on to the next on failure,
// round after round, until it succeeds, fails for a reason another manager
// would not change, or ctx ends. Writes carry one request ID across every
// attempt, so a write resent to another manager is not applied twice.
// It returns the address that answered.
func (m *managers) do(ctx context.Context, call func(ctx context.Context, c pb.ControlClient) error) (string, error) {
	ctx = metadata.AppendToOutgoingContext(ctx, rpc.RequestIDKey, rpc.NewRequestID())
	var last error
	for round := 0; ; round++ {
		for _, addr := range m.order() {
			c, err := m.client(addr)
			if err != nil {
				last = err
				continue
			}
			actx, cancel := context.WithTimeout(ctx, attemptTimeout)
			err = call(actx, c)
			cancel()
			if err == nil {
				m.answered(addr)
				return addr, nil
			}
			last = err
			if ctx.Err() != nil || !movesOn(err) {
				return addr, err
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no manager answers: %w", errors.Join(last, ctx.Err()))
		case <-time.After(min(time.Duration(round+1)*100*time.Millisecond, time.Second)):
		}
	}
}
