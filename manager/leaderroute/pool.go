package leaderroute

import (
	"sync"

	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/internal/rpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Pool keeps one client connection per node address and role, made with
// this manager's certificate.
type Pool struct {
	creds  *rpc.Credentials
	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	closed bool
}

// NewPool returns an empty pool dialling with creds.
func NewPool(creds *rpc.Credentials) *Pool {
	return &Pool{creds: creds, conns: map[string]*grpc.ClientConn{}}
}

// Manager is a connection to the manager at addr.
func (p *Pool) Manager(addr string) (*grpc.ClientConn, error) { return p.dial(addr, pki.RoleManager) }

// Worker is a connection to the worker at addr.
func (p *Pool) Worker(addr string) (*grpc.ClientConn, error) { return p.dial(addr, pki.RoleWorker) }

func (p *Pool) dial(addr, role string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	// A handler or loop still running while the manager stops must not
	// open a connection that nobody would close.
	if p.closed {
		return nil, status.Error(codes.Unavailable, "this manager is stopping")
	}
	key := role + "@" + addr
	if c, ok := p.conns[key]; ok {
		return c, nil
	}
	c, err := rpc.DialRole(addr, p.creds, role)
	if err != nil {
		return nil, err
	}
	p.conns[key] = c
	return c, nil
}

// Close closes every connection; the pool dials no more.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for addr, c := range p.conns {
		c.Close()
		delete(p.conns, addr)
	}
}
