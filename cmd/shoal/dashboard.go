package main

// `shoal dashboard`, as `minikube dashboard`: the web dashboard
// (internal/dashboard), served on loopback by default behind a one-time
// login token, talking to the cluster with the admin's credentials.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/shoal-cluster/shoal/internal/dashboard"
	"github.com/shoal-cluster/shoal/internal/rpc"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/cobra"
)

type dashboardFlags struct {
	addr, tlsCert, tlsKey string
}

func dashboardCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var f dashboardFlags
	cmd := &cobra.Command{
		Use:   "dashboard [OPTIONS]",
		Short: "Serve the web dashboard and print its login URL",
		Long: "Serve the web dashboard: the cluster's managers, nodes, services, tasks, secrets and events,\n" +
			"live, with buttons to scale, update, roll back and remove services and to drain nodes. It talks\n" +
			"to the cluster with your credentials, through any manager. It prints a URL with a one-time\n" +
			"login token: the browser that opens it first gets a session; everything else gets 401.\n" +
			"It serves on loopback unless --addr says otherwise, which then needs --tls-cert and --tls-key.",
		Args: noArgs("dashboard takes no arguments: choose where it listens with --addr IP:PORT"),
		RunE: func(*cobra.Command, []string) error { return runDashboard(c, &f, os.Stdout) },
	}
	c.register(cmd.Flags(), false)
	cmd.Flags().StringVar(&f.addr, "addr", "127.0.0.1:0", "where to serve, `IP:PORT` (port 0: a free one); other than loopback it needs TLS")
	cmd.Flags().StringVar(&f.tlsCert, "tls-cert", "", "serve HTTPS with this certificate `file` (PEM)")
	cmd.Flags().StringVar(&f.tlsKey, "tls-key", "", "the certificate's private key `file` (PEM)")
	return cmd
}

// checkDashboardFlags refuses what would serve the dashboard badly: a
// malformed address, half a TLS setup, or a non-loopback address without
// TLS.
func checkDashboardFlags(f *dashboardFlags) error {
	host, port, err := net.SplitHostPort(f.addr)
	if err != nil || port == "" {
		return usagef("--addr %q: use IP:PORT, such as 127.0.0.1:8080", f.addr)
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return usagef("give both --tls-cert and --tls-key, or neither")
	}
	if f.tlsCert == "" && !dashboard.IsLoopback(f.addr) {
		if host == "" {
			host = "every address"
		}
		return usagef("--addr %s serves on %s, not only loopback: give --tls-cert and --tls-key to serve HTTPS there, or use 127.0.0.1:PORT", f.addr, host)
	}
	return nil
}

func runDashboard(c *clientFlags, f *dashboardFlags, out io.Writer) error {
	if err := checkDashboardFlags(f); err != nil {
		return err
	}
	level := slog.LevelInfo
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return usagef("--log-level %q: use debug, info, warn or error", c.logLevel)
	}
	var tlsConfig *tls.Config
	if f.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
		if err != nil {
			return fmt.Errorf("load the dashboard's TLS certificate: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	// The cluster first: a dashboard that cannot reach it says why now.
	s, err := c.connect()
	if err != nil {
		return err
	}
	nresp, err := s.control.ListNodes(s.ctx, &pb.ListNodesRequest{})
	s.close()
	if err != nil {
		return s.explain(err)
	}
	seeds := []string{s.addr}
	for _, n := range nresp.GetNodes() {
		if a := n.GetManagerStatus().GetApiAddr(); a != "" && !slices.Contains(seeds, a) {
			seeds = append(seeds, a)
		}
	}
	creds, err := c.credentials()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	srv, err := dashboard.New(dashboard.Config{
		Managers: seeds,
		Connect: func(addr string) (pb.ControlClient, io.Closer, error) {
			conn, err := rpc.Dial(addr, creds)
			if err != nil {
				return nil, nil, err
			}
			return pb.NewControlClient(conn), conn, nil
		},
		SecureCookie: tlsConfig != nil,
		Log:          log,
	})
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", f.addr)
	if err != nil {
		return fmt.Errorf("serve the dashboard on %s: %w", f.addr, err)
	}
	scheme := "http"
	if tlsConfig != nil {
		l = tls.NewListener(l, tlsConfig)
		scheme = "https"
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	runCtx, cancelRun := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { srv.Run(runCtx); close(ran) }()
	// Requests live in runCtx: stopping ends the pages' streams too.
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext: func(net.Listener) context.Context { return runCtx }}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(l) }()

	fmt.Fprintf(out, "Shoal dashboard: %s\n", srv.LoginURL(scheme+"://"+urlHost(l.Addr().String(), f.addr)))
	fmt.Fprintln(out, "Open it in a browser: its token logs in once. Ctrl-C stops the dashboard.")

	select {
	case <-ctx.Done():
	case err = <-served:
	}
	cancelRun()
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = hs.Shutdown(sctx)
	<-ran
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve the dashboard: %w", err)
	}
	return nil
}

// urlHost is the host:port to print in the URL: the address served on,
// or this machine's name when that is every address.
func urlHost(bound, asked string) string {
	host, port, err := net.SplitHostPort(bound)
	if err != nil {
		return bound
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if askedHost, _, err := net.SplitHostPort(asked); err == nil && askedHost != "" && net.ParseIP(askedHost) == nil {
			host = askedHost
		} else if name, err := os.Hostname(); err == nil {
			host = name
		}
	}
	return net.JoinHostPort(host, port)
}
