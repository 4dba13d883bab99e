package mesh

import "github.com/prometheus/client_golang/prometheus"

// meshCollector reports a node's mesh to Prometheus.
type meshCollector struct {
	m                                  *Mesh
	conns, bytesIn, bytesOut, failures *prometheus.Desc
	datapath                           *prometheus.Desc
}

// Collector is the mesh's Prometheus collector: per service and proxied
// address, the connections, bytes and backend dial failures the user-space
// proxy saw, and which datapath the node uses.
func (m *Mesh) Collector() prometheus.Collector {
	labels := []string{"service", "addr", "protocol"}
	return &meshCollector{
		m:        m,
		conns:    prometheus.NewDesc("shoal_mesh_connections_total", "Connections (UDP: flows) the mesh's user-space proxy carried, by service and proxied address.", labels, nil),
		bytesIn:  prometheus.NewDesc("shoal_mesh_received_bytes_total", "Bytes the mesh's proxy carried from clients to backends.", labels, nil),
		bytesOut: prometheus.NewDesc("shoal_mesh_sent_bytes_total", "Bytes the mesh's proxy carried from backends back to clients.", labels, nil),
		failures: prometheus.NewDesc("shoal_mesh_backend_failures_total", "Backends that failed the proxy's dial (the connection then tried the next one).", labels, nil),
		datapath: prometheus.NewDesc("shoal_mesh_datapath", "The mesh datapath this node uses: 1 for the current one (nftables in the kernel, or the user-space proxy).", []string{"datapath"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *meshCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.conns, c.bytesIn, c.bytesOut, c.failures, c.datapath} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *meshCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, s ProxyStats) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), s.Service, s.Addr, s.Protocol)
	}
	for _, s := range c.m.Stats() {
		counter(c.conns, s.Connections, s)
		counter(c.bytesIn, s.BytesIn, s)
		counter(c.bytesOut, s.BytesOut, s)
		counter(c.failures, s.BackendFailures, s)
	}
	if dp := c.m.Datapath().Name; dp != "" {
		ch <- prometheus.MustNewConstMetric(c.datapath, prometheus.GaugeValue, 1, dp)
	}
}
