// Package metrics serves a node's Prometheus metrics on /metrics: the Go
// runtime's and the process's, and those of whatever the node is now (a
// manager or a worker: a node that is promoted or demoted switches).
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server is a node's metrics endpoint.
type Server struct {
	lis  net.Listener
	srv  *http.Server
	node *nodeCollector
}

// Listen binds addr (IP:PORT) for the metrics endpoint; Serve serves it.
func Listen(addr string) (*Server, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || net.ParseIP(host) == nil {
		return nil, fmt.Errorf("--metrics-addr %q: use IP:PORT, such as 127.0.0.1:9323", addr)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for metrics on %s: %w (is another process using this port?)", addr, err)
	}
	reg := prometheus.NewRegistry()
	node := &nodeCollector{}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), node)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return &Server{
		lis:  lis,
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		node: node,
	}, nil
}

// Addr is where the endpoint listens.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Serve serves until ctx ends.
func (s *Server) Serve(ctx context.Context, log *slog.Logger) {
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.srv.Shutdown(sctx)
	}()
	if err := s.srv.Serve(s.lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("metrics endpoint stopped", "addr", s.Addr(), "err", err)
	}
}

// SetNode makes c, the manager's or the worker's collector, the one the
// endpoint reports.
func (s *Server) SetNode(c prometheus.Collector) { s.node.set(c) }

// nodeCollector reports the current node's metrics. It is unchecked (its
// Describe says nothing) because what it reports changes with the role.
type nodeCollector struct {
	mu sync.Mutex
	c  prometheus.Collector
}

func (n *nodeCollector) set(c prometheus.Collector) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.c = c
}

// Describe implements prometheus.Collector.
func (n *nodeCollector) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector.
func (n *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	n.mu.Lock()
	c := n.c
	n.mu.Unlock()
	if c != nil {
		c.Collect(ch)
	}
}

// Join reports several collectors as one (a node's own and its mesh's).
func Join(cs ...prometheus.Collector) prometheus.Collector { return joined(cs) }

type joined []prometheus.Collector

// Describe implements prometheus.Collector.
func (j joined) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range j {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (j joined) Collect(ch chan<- prometheus.Metric) {
	for _, c := range j {
		c.Collect(ch)
	}
}
