package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/mesh"
	"github.com/shoal-cluster/shoal/internal/metrics"
	"github.com/shoal-cluster/shoal/manager"
	"github.com/shoal-cluster/shoal/manager/tasksubnet"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/tasknet"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// daemonFlags are the flags every node-starting command takes: the global
// --data-dir and --log-level, and these.
type daemonFlags struct {
	*globalFlags
	advertise       string
	listenIP        string
	hostname        string
	electionTimeout time.Duration
	heartbeat       time.Duration
	gossipFast      bool
	leaveOnStop     bool
	meshDatapath    string
	metricsAddr     string
	dockerAPIAddr   string
	taskSubnetPool  string

	metrics *metrics.Server // bound by the first config() when --metrics-addr is set
}

func (d *daemonFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&d.advertise, "advertise", "", "`IP[:PORT]` other nodes reach this one on; Raft uses PORT+1, gossip PORT+2 (default port 4242)")
	fs.StringVar(&d.listenIP, "listen-addr", "", "`IP` to bind to (default: the advertised IP)")
	fs.StringVar(&d.hostname, "hostname", "", "name to register the node under (default: the machine's hostname)")
	fs.DurationVar(&d.electionTimeout, "election-timeout", raftstore.DefaultTiming().ElectionTimeout, "Raft election and heartbeat timeout (leader lease is half of it)")
	fs.DurationVar(&d.heartbeat, "heartbeat-period", time.Second, "managers: how often workers must report; three missed periods mark a worker Down")
	fs.BoolVar(&d.gossipFast, "gossip-fast", false, "gossip with LAN-local timings: dead nodes are noticed in about 2s (loopback and small LANs)")
	fs.StringVar(&d.meshDatapath, "mesh-datapath", mesh.DatapathAuto, "routing mesh datapath: auto (nftables rules when root with the nft command, else the user-space proxy) or userspace")
	fs.BoolVar(&d.leaveOnStop, "leave-on-stop", false, "workers: leave the cluster on Ctrl-C or SIGTERM instead of just stopping")
	fs.StringVar(&d.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on `IP:PORT`/metrics (off by default)")
	fs.StringVar(&d.taskSubnetPool, "task-subnet-pool", tasksubnet.DefaultPool.String(), "managers: `CIDR` the leader hands workers' task subnets (/24s) out of; give every manager the same")
	fs.StringVar(&d.dockerAPIAddr, "docker-api-addr", "", "managers: serve the Docker Engine API on `IP:PORT` with TLS, for admin client certificates (`shoal cluster client-config --docker DIR`); it is always served on DATA_DIR/docker.sock")
}

// config turns the flags into a manager configuration.
func (d *daemonFlags) config(needAdvertise bool) (manager.Config, error) {
	var cfg manager.Config
	if d.dataDir == "" {
		return cfg, usagef("--data-dir is required")
	}
	level := slog.LevelInfo
	if err := level.UnmarshalText([]byte(d.logLevel)); err != nil {
		return cfg, usagef("--log-level %q: use debug, info, warn or error", d.logLevel)
	}
	if d.electionTimeout < 10*time.Millisecond || d.electionTimeout > time.Minute {
		return cfg, usagef("--election-timeout %s is out of range (10ms to 1m)", d.electionTimeout)
	}
	cfg.DataDir = d.dataDir
	cfg.Hostname = d.hostname
	cfg.ListenIP = d.listenIP
	cfg.Timing = raftstore.TimingFromElection(d.electionTimeout)
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if d.heartbeat < 100*time.Millisecond || d.heartbeat > time.Minute {
		return cfg, usagef("--heartbeat-period %s is out of range (100ms to 1m)", d.heartbeat)
	}
	cfg.HeartbeatPeriod = d.heartbeat
	cfg.GossipFast = d.gossipFast
	cfg.Version = version
	if d.dockerAPIAddr != "" {
		host, port, err := net.SplitHostPort(d.dockerAPIAddr)
		if p, perr := strconv.Atoi(port); err != nil || net.ParseIP(host) == nil || perr != nil || p < 1 || p > 65535 {
			return cfg, usagef("--docker-api-addr %q: give IP:PORT, e.g. 10.0.0.5:2376", d.dockerAPIAddr)
		}
		cfg.DockerAPIAddr = d.dockerAPIAddr
	}
	if d.taskSubnetPool != "" {
		pool, _ := netip.ParsePrefix(d.taskSubnetPool) // an invalid prefix fails CheckPool
		if err := tasksubnet.CheckPool(pool); err != nil {
			return cfg, usagef("--task-subnet-pool %q: %v", d.taskSubnetPool, err)
		}
		cfg.TaskSubnetPool = pool.Masked()
	}
	switch d.meshDatapath {
	case mesh.DatapathAuto, mesh.DatapathUserspace:
		cfg.MeshDatapath = d.meshDatapath
	default:
		return cfg, usagef("--mesh-datapath %q: use auto or userspace", d.meshDatapath)
	}
	if d.metricsAddr != "" && d.metrics == nil {
		// Bound before the node starts, so that a port in use changes nothing.
		srv, err := metrics.Listen(d.metricsAddr)
		if err != nil {
			return cfg, err
		}
		d.metrics = srv
		go srv.Serve(context.Background(), cfg.Logger)
		cfg.Logger.Info("serving metrics", "url", "http://"+srv.Addr()+"/metrics")
	}
	if d.advertise == "" {
		if needAdvertise {
			return cfg, usagef("--advertise IP[:PORT] is required: the address other nodes reach this one on")
		}
		return cfg, nil
	}
	ip, port, err := splitAdvertise(d.advertise)
	if err != nil {
		return cfg, err
	}
	cfg.AdvertiseIP, cfg.APIPort = ip, port
	if d.listenIP != "" && net.ParseIP(d.listenIP) == nil {
		return cfg, usagef("--listen-addr %q is not an IP address", d.listenIP)
	}
	return cfg, nil
}

// splitAdvertise parses IP or IP:PORT.
func splitAdvertise(s string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		host, portStr = strings.Trim(s, "[]"), strconv.Itoa(manager.DefaultAPIPort)
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.IsUnspecified() {
		return "", 0, usagef("--advertise %q: give the IP address other nodes reach this one on (e.g. 127.0.0.1 or 10.0.0.5:4242)", s)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65533 {
		return "", 0, usagef("--advertise %q: port must be 1-65533", s)
	}
	return ip.String(), port, nil
}

// daemonCommand is a command that runs a node here: the client flags
// --host and --client-config mean nothing to it.
func daemonCommand(cmd *cobra.Command, d *daemonFlags) *cobra.Command {
	d.register(cmd.Flags())
	cmd.PreRunE = refuseClientFlags(cmd.Name() + " runs a node on this machine, from --data-dir")
	return cmd
}

// refuseClientFlags is the check of a command that does not talk to the
// cluster (what says what it does instead): --host and --client-config
// given to it are a mistake, not something to ignore.
func refuseClientFlags(what string) func(*cobra.Command, []string) error {
	return func(c *cobra.Command, _ []string) error {
		for _, name := range []string{"host", "client-config"} {
			if c.Flags().Changed(name) {
				return usagef("--%s is for client commands: %s", name, what)
			}
		}
		return nil
	}
}

func initCommand(g *globalFlags) *cobra.Command {
	d := &daemonFlags{globalFlags: g}
	var force bool
	var certExpiry time.Duration
	cmd := daemonCommand(&cobra.Command{
		Use:   "init [OPTIONS]",
		Short: "Create a new cluster with this node as its first manager",
		Args: func(_ *cobra.Command, pos []string) error {
			if len(pos) > 0 {
				return usagef("init takes no arguments, got %q", pos)
			}
			return nil
		},
		RunE: func(*cobra.Command, []string) error { return runInit(d, force, certExpiry) },
	}, d)
	cmd.Flags().BoolVar(&force, "force-new-cluster", false, "recover a manager whose cluster lost quorum: make it the only manager, keeping the state")
	cmd.Flags().DurationVar(&certExpiry, "cert-expiry", manager.DefaultCertExpiry, "lifetime of node certificates; nodes renew theirs after two thirds of it")
	return cmd
}

func runInit(d *daemonFlags, force bool, certExpiry time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	id, idErr := datadir.Load(d.dataDir)
	switch {
	case force:
		if idErr != nil {
			return fmt.Errorf("--force-new-cluster needs the data dir of a surviving manager: %w", idErr)
		}
		cfg, err := d.config(false)
		if err != nil {
			return err
		}
		m, err := manager.Restart(ctx, cfg, true)
		if err != nil {
			return err
		}
		fmt.Printf("Cluster %s recovered: node %s is now its only manager, with its state kept.\n", m.ClusterID(), m.ID())
		fmt.Println("Add managers again with `shoal cluster join-token manager`.")
		return serve(ctx, d, m)
	case idErr == nil && id.InitializedHere:
		cfg, err := d.config(false)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "Data dir %s already holds node %s, which created cluster %s: resuming it (not bootstrapping again).\n", d.dataDir, id.NodeID, id.ClusterID)
		m, err := manager.Restart(ctx, cfg, false)
		if err != nil {
			return err
		}
		return serve(ctx, d, m)
	case idErr == nil:
		return fmt.Errorf("data dir %s belongs to node %s, which joined cluster %s; it cannot create a new cluster. Restart it with `shoal start --data-dir %s`, or use an empty data dir", d.dataDir, id.NodeID, id.ClusterID, d.dataDir)
	case !errors.Is(idErr, datadir.ErrNoIdentity):
		return idErr
	}
	cfg, err := d.config(true)
	if err != nil {
		return err
	}
	if certExpiry < time.Minute {
		return usagef("--cert-expiry %s is too short: give at least 1m (the default is %s)", certExpiry, manager.DefaultCertExpiry)
	}
	cfg.CertExpiry = certExpiry
	m, err := manager.Init(ctx, cfg)
	if err != nil {
		return err
	}
	printJoinHelp(m, cfg)
	return serve(ctx, d, m)
}

// printJoinHelp tells the user how to add managers, as `docker swarm init` does.
func printJoinHelp(m *manager.Manager, cfg manager.Config) {
	var token string
	m.Store().View(func(tx *raftstore.Tx) {
		if c := tx.Cluster(); c != nil {
			token = c.GetJoinTokens().GetManager()
		}
	})
	fmt.Printf("Cluster initialised: node %s is now the manager of cluster %s.\n\n", m.ID(), m.ClusterID())
	fmt.Printf("To add a manager to this cluster, run:\n\n    shoal join --data-dir DIR --advertise IP --token %s %s\n\n", token, m.APIAddr())
	fmt.Printf("Show the join tokens again with `shoal cluster join-token manager|worker`.\n")
	fmt.Printf("The admin client config is %s: shoal commands with --data-dir %s (or SHOAL_DATA_DIR) use it.\n",
		filepath.Join(cfg.DataDir, datadir.AdminFile), cfg.DataDir)
}

func joinCommand(g *globalFlags) *cobra.Command {
	d := &daemonFlags{globalFlags: g}
	var token string
	cmd := daemonCommand(&cobra.Command{
		Use:   "join [OPTIONS] MANAGER_ADDR[:PORT]",
		Short: "Join a cluster as a worker or a manager (the token decides)",
		RunE:  func(_ *cobra.Command, pos []string) error { return runJoin(d, token, pos) },
	}, d)
	cmd.Flags().StringVar(&token, "token", "", "the cluster's join `token` ('shoal cluster join-token worker|manager'); it decides the node's role")
	return cmd
}

func runJoin(d *daemonFlags, token string, pos []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if id, err := datadir.Load(d.dataDir); err == nil {
		fmt.Fprintf(os.Stderr, "Data dir %s already holds %s node %s of cluster %s: resuming it (the token and address are not used).\n", d.dataDir, id.Role, id.NodeID, id.ClusterID)
		return resume(ctx, d, id)
	}
	if len(pos) != 1 {
		return usagef("join needs exactly one manager address, e.g. `shoal join --token TOKEN --advertise 127.0.0.2 127.0.0.1`")
	}
	if token == "" {
		return usagef("--token is required; get it on a manager with `shoal cluster join-token worker|manager`")
	}
	cfg, err := d.config(true)
	if err != nil {
		return err
	}
	if err := datadir.CheckUnused(cfg.DataDir); err != nil {
		return err
	}
	remote := manager.WithDefaultPort(pos[0])
	role, _, err := manager.CheckToken(ctx, remote, token)
	if err != nil {
		return err
	}
	if role == pb.NodeRole_NODE_ROLE_WORKER {
		wcfg, err := workerConfig(cfg, d)
		if err != nil {
			return err
		}
		a, err := worker.Join(ctx, wcfg, remote, token)
		if err != nil {
			return err
		}
		fmt.Printf("This node joined cluster %s as a worker (node %s).\n", a.ClusterID(), a.ID())
		return serveWorker(ctx, d, a)
	}
	m, err := manager.Join(ctx, cfg, remote, token)
	if err != nil {
		return err
	}
	fmt.Printf("This node joined cluster %s as a manager (node %s).\n", m.ClusterID(), m.ID())
	return serve(ctx, d, m)
}

// resume restarts the node in a data dir, as the role it has.
func resume(ctx context.Context, d *daemonFlags, id *datadir.Identity) error {
	cfg, err := d.config(false)
	if err != nil {
		return err
	}
	if id.Role == "worker" {
		wcfg, err := workerConfig(cfg, d)
		if err != nil {
			return err
		}
		a, err := worker.Restart(ctx, wcfg)
		if err != nil {
			return err
		}
		return serveWorker(ctx, d, a)
	}
	m, err := manager.Restart(ctx, cfg, false)
	if err != nil {
		return err
	}
	return serve(ctx, d, m)
}

// workerConfig derives a worker's configuration from the daemon flags.
func workerConfig(cfg manager.Config, d *daemonFlags) (worker.Config, error) {
	wcfg := worker.Config{
		DataDir:      cfg.DataDir,
		Hostname:     cfg.Hostname,
		AdvertiseIP:  cfg.AdvertiseIP,
		APIPort:      cfg.APIPort,
		ListenIP:     cfg.ListenIP,
		GossipFast:   d.gossipFast,
		MeshDatapath: cfg.MeshDatapath,
		Logger:       cfg.Logger,
	}
	if wcfg.AdvertiseIP == "" {
		if id, err := datadir.Load(cfg.DataDir); err == nil && id.Advertise != "" {
			ip, port, err := splitAdvertise(id.Advertise)
			if err != nil {
				return wcfg, err
			}
			wcfg.AdvertiseIP, wcfg.APIPort = ip, port
		}
	}
	if d.dockerAPIAddr != "" {
		cfg.Logger.Warn("this node is a worker: --docker-api-addr serves nothing until it is promoted to a manager")
	}
	var notOffered atomic.Pointer[map[string]string]
	var taskNet *tasknet.Node
	wcfg.Runtimes = func() ([]worker.Runtime, error) {
		taskNet = newTaskNetwork(cfg.DataDir, cfg.Logger)
		rts, why, err := newRuntimes(cfg.DataDir, wcfg.AdvertiseIP, wcfg.DNSAddr(), taskNet, cfg.Logger)
		notOffered.Store(&why)
		return rts, err
	}
	wcfg.NotOffered = func() map[string]string {
		if p := notOffered.Load(); p != nil {
			return *p
		}
		return nil
	}
	wcfg.TaskNetwork = func() *tasknet.Node { return taskNet }
	return wcfg, nil
}

// serveWorker runs a worker until a signal (stop, or leave with
// --leave-on-stop), until the cluster removes it, or until it is promoted
// (then it carries on as a manager).
func serveWorker(ctx context.Context, d *daemonFlags, a *worker.Agent) error {
	if d.metrics != nil {
		d.metrics.SetNode(a.Metrics())
	}
	select {
	case <-ctx.Done():
		if d.leaveOnStop {
			lctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := a.Leave(lctx); err != nil {
				a.Close()
				return fmt.Errorf("leave the cluster: %w", err)
			}
			fmt.Fprintln(os.Stderr, "Left the cluster; this data dir can no longer rejoin.")
			return nil
		}
		fmt.Fprintln(os.Stderr, "Stopping; the node stays a member and its tasks keep running. Restart it with `shoal start`.")
		return a.Close()
	case <-a.Removed():
		a.Close()
		return fmt.Errorf("this node was removed from the cluster; delete its data dir and join again with a token")
	case <-a.Promoted():
		managers := a.ManagerAddrs()
		a.StopTasks()
		a.Close()
		cfg, err := d.config(false)
		if err != nil {
			return err
		}
		m, err := manager.Promote(ctx, cfg, managers)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "This node is now a manager of cluster %s.\n", m.ClusterID())
		return serve(ctx, d, m)
	}
}

func startCommand(g *globalFlags) *cobra.Command {
	d := &daemonFlags{globalFlags: g}
	return daemonCommand(&cobra.Command{
		Use:   "start [OPTIONS]",
		Short: "Restart a node from its data dir",
		Args: func(_ *cobra.Command, pos []string) error {
			if len(pos) > 0 {
				return usagef("start takes no arguments, got %q", pos)
			}
			return nil
		},
		RunE: func(*cobra.Command, []string) error { return runStart(d) },
	}, d)
}

func runStart(d *daemonFlags) error {
	if _, err := d.config(false); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	id, err := datadir.Load(d.dataDir)
	if errors.Is(err, datadir.ErrNoIdentity) {
		return fmt.Errorf("data dir %s holds no node; create one with `shoal init` or `shoal join`", d.dataDir)
	}
	if err != nil {
		return err
	}
	return resume(ctx, d, id)
}

// serve runs a manager until a signal (stop, stay a member), removal, or
// demotion (then it carries on as a worker).
func serve(ctx context.Context, d *daemonFlags, m *manager.Manager) error {
	if d.metrics != nil {
		d.metrics.SetNode(m.Metrics())
	}
	select {
	case <-ctx.Done():
		fmt.Fprintln(os.Stderr, "Stopping; the node stays a member of the cluster. Restart it with `shoal start`.")
		return m.Close()
	case <-m.Done():
		m.Close()
		err := m.Err()
		if !errors.Is(err, manager.ErrDemoted) {
			return err
		}
		cfg, cerr := d.config(false)
		if cerr != nil {
			return cerr
		}
		wcfg, werr := workerConfig(cfg, d)
		if werr != nil {
			return werr
		}
		a, werr := worker.Restart(ctx, wcfg)
		if werr != nil {
			return fmt.Errorf("carry on as a worker after the demotion: %w", werr)
		}
		fmt.Fprintf(os.Stderr, "This node was demoted; it carries on as a worker of cluster %s.\n", a.ClusterID())
		return serveWorker(ctx, d, a)
	}
}
