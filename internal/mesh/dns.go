package mesh

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// lookupFunc answers a name (no trailing dot): the addresses, and whether
// the name is known at all (unknown names get NXDOMAIN).
type lookupFunc func(name string) ([]net.IP, bool)

// resolver answers A queries for service names over UDP and TCP.
type resolver struct {
	addr   string
	lookup lookupFunc
	log    *slog.Logger
	udp    net.PacketConn
	tcp    net.Listener
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{} // open TCP clients, closed on close
}

// TTLs: a virtual IP never changes while its service exists; task
// addresses do.
const (
	vipTTL   = 5
	tasksTTL = 0
)

func startResolver(ctx context.Context, addr string, lookup lookupFunc, log *slog.Logger, reusePort bool) (*resolver, error) {
	lc := listenConfig(reusePort)
	udp, err := lc.ListenPacket(ctx, "udp4", addr)
	if err != nil {
		return nil, fmt.Errorf("resolver on %s/udp: %w", addr, err)
	}
	tcp, err := lc.Listen(ctx, "tcp4", addr)
	if err != nil {
		_ = udp.Close()
		return nil, fmt.Errorf("resolver on %s/tcp: %w", addr, err)
	}
	r := &resolver{addr: addr, lookup: lookup, log: log, udp: udp, tcp: tcp, conns: map[net.Conn]struct{}{}}
	r.wg.Add(2)
	go r.serveUDP()
	go r.serveTCP()
	log.Info("resolver listening", "addr", addr)
	return r, nil
}

func (r *resolver) serveUDP() {
	defer r.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := r.udp.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if resp := r.answer(buf[:n], 512); resp != nil {
			_, _ = r.udp.WriteTo(resp, from)
		}
	}
}

func (r *resolver) serveTCP() {
	defer r.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := r.tcp.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			r.log.Warn("resolver accept", "addr", r.addr, "err", err)
			time.Sleep(acceptPause) // e.g. out of file descriptors: do not spin
			continue
		}
		r.mu.Lock()
		if r.conns == nil {
			r.mu.Unlock()
			_ = c.Close()
			return
		}
		r.conns[c] = struct{}{}
		r.mu.Unlock()
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer func() {
				r.mu.Lock()
				delete(r.conns, c)
				r.mu.Unlock()
				_ = c.Close()
			}()
			for {
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				var size [2]byte
				if _, err := io.ReadFull(c, size[:]); err != nil {
					return
				}
				q := make([]byte, binary.BigEndian.Uint16(size[:]))
				if _, err := io.ReadFull(c, q); err != nil {
					return
				}
				resp := r.answer(q, 65535)
				if resp == nil {
					return
				}
				out := binary.BigEndian.AppendUint16(nil, uint16(len(resp)))
				if _, err := c.Write(append(out, resp...)); err != nil {
					return
				}
			}
		}()
	}
}

// answer builds the response to one query message, or nil for garbage.
func (r *resolver) answer(query []byte, limit int) []byte {
	var p dnsmessage.Parser
	hdr, err := p.Start(query)
	if err != nil || hdr.Response {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	respHdr := dnsmessage.Header{ID: hdr.ID, Response: true, Authoritative: true, RecursionDesired: hdr.RecursionDesired, OpCode: hdr.OpCode}
	if hdr.OpCode != 0 {
		respHdr.RCode = dnsmessage.RCodeNotImplemented
		return build(respHdr, q, nil, 0, limit)
	}
	name := strings.TrimSuffix(q.Name.String(), ".")
	ips, known := r.lookup(name)
	if !known {
		respHdr.RCode = dnsmessage.RCodeNameError
		return build(respHdr, q, nil, 0, limit)
	}
	if q.Type != dnsmessage.TypeA && q.Type != dnsmessage.TypeALL {
		return build(respHdr, q, nil, 0, limit) // known name, no such record: NODATA
	}
	ttl := uint32(vipTTL)
	if _, ok := cutPrefixFold(name, "tasks."); ok {
		ttl = tasksTTL
	}
	return build(respHdr, q, ips, ttl, limit)
}

// build encodes a response; answers that do not fit in limit set TC.
func build(h dnsmessage.Header, q dnsmessage.Question, ips []net.IP, ttl uint32, limit int) []byte {
	for {
		b := dnsmessage.NewBuilder(make([]byte, 0, 512), h)
		b.EnableCompression()
		_ = b.StartQuestions()
		_ = b.Question(q)
		_ = b.StartAnswers()
		for _, ip := range ips {
			var a [4]byte
			copy(a[:], ip.To4())
			_ = b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: ttl}, dnsmessage.AResource{A: a})
		}
		msg, err := b.Finish()
		if err != nil {
			return nil
		}
		if len(msg) <= limit || len(ips) == 0 {
			return msg
		}
		h.Truncated = true
		ips = ips[:len(ips)/2]
	}
}

func (r *resolver) close() error {
	err := errors.Join(r.udp.Close(), r.tcp.Close())
	r.mu.Lock()
	for c := range r.conns {
		_ = c.Close()
	}
	r.conns = nil
	r.mu.Unlock()
	r.wg.Wait()
	return err
}
