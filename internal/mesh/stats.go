package mesh

import (
	"sort"
	"sync/atomic"
)

// ProxyStats are what one proxied address carried since it was opened: the
// connections (UDP: flows) the user-space proxy accepted, the bytes it
// copied each way, and the backends that failed a dial. Connections the
// kernel datapath forwards do not pass through the proxy and are not
// counted here.
type ProxyStats struct {
	// Service is the service's name, Addr the proxied "ip:port" and
	// Protocol "tcp" or "udp".
	Service, Addr, Protocol string
	Connections             uint64
	// BytesIn went from clients to backends, BytesOut back.
	BytesIn, BytesOut uint64
	BackendFailures   uint64
}

// proxyCounters are a proxy's counters, updated as it works.
type proxyCounters struct {
	conns, bytesIn, bytesOut, failures atomic.Uint64
}

func (c *proxyCounters) snapshot(service, addr, protocol string) ProxyStats {
	return ProxyStats{Service: service, Addr: addr, Protocol: protocol, Connections: c.conns.Load(),
		BytesIn: c.bytesIn.Load(), BytesOut: c.bytesOut.Load(), BackendFailures: c.failures.Load()}
}

// Stats reports every address the proxy serves, sorted by address and
// protocol. Figures restart when an address is closed and opened again
// (a service removed and created again): Prometheus sees a counter reset.
func (m *Mesh) Stats() []ProxyStats {
	m.mu.Lock()
	out := make([]ProxyStats, 0, len(m.listeners))
	for _, p := range m.listeners {
		out = append(out, p.stats())
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Addr != out[j].Addr {
			return out[i].Addr < out[j].Addr
		}
		return out[i].Protocol < out[j].Protocol
	})
	return out
}
