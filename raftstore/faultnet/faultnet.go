// Package faultnet injects network partitions into raft's TCP transport.
//
// Wrap a store's stream layer through raftstore.Config.WrapStream:
//
//	var layer *faultnet.Layer
//	cfg.WrapStream = func(s raft.StreamLayer) raft.StreamLayer {
//		layer = faultnet.Wrap(s)
//		return layer
//	}
//
// Every connection a Layer dials starts with a short handshake carrying the
// dialer's advertised address, so the accepting side knows which peer a
// connection comes from. All members of a cluster must therefore use
// faultnet (a plain stream layer would read the handshake as an RPC).
//
// Partition(peers...) cuts this member off from the given peers in both
// directions: dials to them fail, connections from them are refused, and
// open connections with them are closed. Partitioning one side is enough.
// Heal lifts every cut.
package faultnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// magic starts every handshake.
var magic = [4]byte{'f', 'n', 'e', 't'}

// maxAddrLen bounds the address in a handshake.
const maxAddrLen = 1024

// handshakeTimeout bounds how long Accept waits for a dialer's handshake.
const handshakeTimeout = 2 * time.Second

// ErrPartitioned is returned by Dial to a peer this layer is cut off from.
var ErrPartitioned = errors.New("faultnet: partitioned")

// Layer is a raft.StreamLayer that can be partitioned from peers.
type Layer struct {
	inner raft.StreamLayer
	self  string

	mu      sync.Mutex
	blocked map[string]bool
	conns   map[*conn]struct{}
	closed  bool
}

var _ raft.StreamLayer = (*Layer)(nil)

// Wrap wraps inner. The layer names itself by inner.Addr(), the address
// raft advertises to its peers.
func Wrap(inner raft.StreamLayer) *Layer {
	return &Layer{
		inner:   inner,
		self:    inner.Addr().String(),
		blocked: map[string]bool{},
		conns:   map[*conn]struct{}{},
	}
}

// Self is the advertised address this layer sends in its handshakes.
func (l *Layer) Self() string { return l.self }

// Partition cuts this member off from peers (advertised raft addresses)
// until Heal, and closes the connections already open with them.
func (l *Layer) Partition(peers ...string) {
	l.mu.Lock()
	var drop []*conn
	for _, p := range peers {
		l.blocked[p] = true
	}
	for c := range l.conns {
		if l.blocked[c.peer] {
			drop = append(drop, c)
		}
	}
	l.mu.Unlock()
	for _, c := range drop {
		c.Close()
	}
}

// Heal lifts every partition.
func (l *Layer) Heal() {
	l.mu.Lock()
	l.blocked = map[string]bool{}
	l.mu.Unlock()
}

// Partitioned reports whether this member is cut off from peer.
func (l *Layer) Partitioned(peer string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.blocked[peer]
}

// Dial connects to addr unless it is partitioned, then sends the handshake.
func (l *Layer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	peer := string(addr)
	if l.Partitioned(peer) {
		return nil, fmt.Errorf("dial %s: %w", peer, ErrPartitioned)
	}
	c, err := l.inner.Dial(addr, timeout)
	if err != nil {
		return nil, err
	}
	if err := writeHandshake(c, l.self, timeout); err != nil {
		c.Close()
		return nil, fmt.Errorf("faultnet handshake to %s: %w", peer, err)
	}
	return l.track(c, peer)
}

// Accept returns the next connection from a peer this layer is not cut off
// from; connections from partitioned peers or without a valid handshake are
// closed.
func (l *Layer) Accept() (net.Conn, error) {
	for {
		c, err := l.inner.Accept()
		if err != nil {
			return nil, err
		}
		peer, err := readHandshake(c)
		if err != nil || l.Partitioned(peer) {
			c.Close()
			continue
		}
		tc, err := l.track(c, peer)
		if err != nil {
			return nil, err
		}
		return tc, nil
	}
}

// Close closes the wrapped layer and every connection this layer handed out.
func (l *Layer) Close() error {
	l.mu.Lock()
	l.closed = true
	conns := l.conns
	l.conns = map[*conn]struct{}{}
	l.mu.Unlock()
	err := l.inner.Close()
	for c := range conns {
		c.Conn.Close()
	}
	return err
}

// Addr is the wrapped layer's address.
func (l *Layer) Addr() net.Addr { return l.inner.Addr() }

func (l *Layer) track(c net.Conn, peer string) (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	if l.blocked[peer] {
		// Partitioned while dialling or shaking hands.
		c.Close()
		return nil, fmt.Errorf("connection with %s: %w", peer, ErrPartitioned)
	}
	tc := &conn{Conn: c, layer: l, peer: peer}
	l.conns[tc] = struct{}{}
	return tc, nil
}

// conn is a connection with a known peer.
type conn struct {
	net.Conn
	layer *Layer
	peer  string
}

func (c *conn) Close() error {
	c.layer.mu.Lock()
	delete(c.layer.conns, c)
	c.layer.mu.Unlock()
	return c.Conn.Close()
}

func writeHandshake(c net.Conn, self string, timeout time.Duration) error {
	if len(self) > maxAddrLen {
		return fmt.Errorf("address %q too long", self)
	}
	buf := make([]byte, 0, len(magic)+2+len(self))
	buf = append(buf, magic[:]...)
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(self)))
	buf = append(buf, self...)
	if timeout > 0 {
		if err := c.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
			return err
		}
		defer c.SetWriteDeadline(time.Time{})
	}
	_, err := c.Write(buf)
	return err
}

func readHandshake(c net.Conn) (string, error) {
	if err := c.SetReadDeadline(time.Now().Add(handshakeTimeout)); err != nil {
		return "", err
	}
	var hdr [len(magic) + 2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return "", err
	}
	if [4]byte(hdr[:4]) != magic {
		return "", errors.New("faultnet: bad handshake")
	}
	n := binary.BigEndian.Uint16(hdr[4:])
	if n > maxAddrLen {
		return "", errors.New("faultnet: handshake address too long")
	}
	addr := make([]byte, n)
	if _, err := io.ReadFull(c, addr); err != nil {
		return "", err
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return "", err
	}
	return string(addr), nil
}
