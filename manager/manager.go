// Package manager is a Shoal manager node: its lifecycle (init, join,
// restart, promotion, demotion and removal, stop), the Raft store it
// opens, the gRPC server it assembles from the parts in its subpackages
// (authz, leaderroute, controlapi, membership, dispatcher), and the loops
// it starts: on every manager (the endpoint feed and mesh, gossip, its own
// credentials) and, while it leads, the leader loops (the dispatcher, the
// orchestrator, scheduler and updater, membership probes, CA rotation).
package manager

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shoal-cluster/shoal/gossip"
	"github.com/shoal-cluster/shoal/internal/clock"
	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/joinclient"
	"github.com/shoal-cluster/shoal/internal/mesh"
	nodemetrics "github.com/shoal-cluster/shoal/internal/metrics"
	"github.com/shoal-cluster/shoal/internal/nodecreds"
	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/internal/rpc"
	"github.com/shoal-cluster/shoal/manager/authz"
	"github.com/shoal-cluster/shoal/manager/autoscaler"
	"github.com/shoal-cluster/shoal/manager/ca"
	"github.com/shoal-cluster/shoal/manager/controlapi"
	"github.com/shoal-cluster/shoal/manager/dispatcher"
	"github.com/shoal-cluster/shoal/manager/dockerapi"
	"github.com/shoal-cluster/shoal/manager/endpoints"
	"github.com/shoal-cluster/shoal/manager/events"
	"github.com/shoal-cluster/shoal/manager/leaderroute"
	"github.com/shoal-cluster/shoal/manager/membership"
	"github.com/shoal-cluster/shoal/manager/metrics"
	"github.com/shoal-cluster/shoal/manager/orchestrator"
	"github.com/shoal-cluster/shoal/manager/scheduler"
	"github.com/shoal-cluster/shoal/manager/sealer"
	"github.com/shoal-cluster/shoal/manager/updater"
	"github.com/shoal-cluster/shoal/manager/usage"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// ErrRemoved means this node was removed from its cluster.
var ErrRemoved = errors.New("this node was removed from the cluster; its data dir can no longer rejoin: delete it and join again with a token")

// ErrDemoted means this manager was demoted: it is a worker of the same
// cluster now, and its data dir says so.
var ErrDemoted = errors.New("this node was demoted to a worker")

// Manager is a running manager node.
type Manager struct {
	cfg Config
	log *slog.Logger
	// id is this node's identity; its immutable parts are read freely, the
	// rest changes through ident.
	id    *datadir.Identity
	ident *identityFile
	creds *nodecreds.Node
	store *raftstore.Store
	// keys holds the key that seals secret values; none until a joining
	// manager receives it.
	keys *sealer.Holder

	grpc    *grpc.Server
	lis     net.Listener
	conns   *leaderroute.Pool
	members *membership.Server
	ca      *ca.Authority
	disp    *dispatcher.Dispatcher
	usage   *usage.Table
	gossip  *gossip.Gossip
	feed    *endpoints.Feed
	journal *events.Journal
	metrics *metrics.Manager
	mesh    *mesh.Mesh
	// docker are the docker API's listeners.
	docker []*dockerapi.Listener

	// storeReady is set once store is assigned (Raft handshakes may come
	// before).
	storeReady atomic.Bool

	stopOnce sync.Once
	stopped  chan struct{}
	// cancel ends ctx, the context of the loops every manager runs, when
	// the manager stops.
	ctx     context.Context
	cancel  context.CancelFunc
	stopErr error
	wg      sync.WaitGroup
}

// Init creates a new cluster with this node as its first manager. The data
// dir must be new or empty; it is bootstrapped exactly once.
func Init(ctx context.Context, cfg Config) (*Manager, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := datadir.CheckUnused(cfg.DataDir); err != nil {
		return nil, err
	}
	id := &datadir.Identity{
		NodeID:          raftstore.NewID(),
		ClusterID:       raftstore.NewID(),
		RaftID:          raftstore.NewID(),
		Role:            "manager",
		InitializedHere: true,
		Hostname:        cfg.Hostname,
		Advertise:       cfg.APIAddr(),
	}
	if err := ca.Bootstrap(cfg.DataDir, id, cfg.APIAddr(), cfg.CertExpiry); err != nil {
		return nil, fmt.Errorf("init: create the cluster's CA: %w", err)
	}
	// The secrets key and the identity are written before the bootstrap:
	// a crash in between leaves a dir that restarts and bootstraps once
	// (raft refuses twice).
	key, err := sealer.Generate()
	if err != nil {
		return nil, err
	}
	if err := key.Save(cfg.DataDir); err != nil {
		return nil, err
	}
	if err := datadir.Save(cfg.DataDir, id); err != nil {
		return nil, err
	}
	m, err := resume(ctx, cfg, id, false)
	if err != nil {
		return nil, err
	}
	if err := m.waitInitialized(ctx); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// Restart resumes the node whose identity is in cfg.DataDir. With
// forceNewCluster the Raft configuration is rewritten to this manager
// alone, keeping the state: the way back after quorum was lost for good.
func Restart(ctx context.Context, cfg Config, forceNewCluster bool) (*Manager, error) {
	id, err := datadir.Load(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if err := cfg.adoptIdentity(id); err != nil {
		return nil, err
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if id.Removed {
		return nil, fmt.Errorf("node %s: %w", id.NodeID, ErrRemoved)
	}
	if id.Role != "manager" {
		return nil, fmt.Errorf("data dir %s holds worker node %s, not a manager", cfg.DataDir, id.NodeID)
	}
	m, err := resume(ctx, cfg, id, forceNewCluster)
	if err != nil {
		return nil, err
	}
	if _, err := m.keys.Key(); err != nil {
		m.log.Warn("secrets cannot be created or handed to tasks through this manager", "err", err)
	}
	if forceNewCluster {
		if err := m.waitLeader(ctx); err != nil {
			m.Close()
			return nil, fmt.Errorf("force-new-cluster: %w", err)
		}
		if err := m.forgetOtherManagers(ctx); err != nil {
			m.Close()
			return nil, err
		}
	}
	return m, nil
}

// Join makes this node a manager of the cluster that the manager at
// remote belongs to, using the cluster's manager join token.
func Join(ctx context.Context, cfg Config, remote, token string) (*Manager, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	digest, _, err := ca.ParseToken(token)
	if err != nil {
		return nil, err
	}
	if err := datadir.CheckUnused(cfg.DataDir); err != nil {
		return nil, err
	}
	role, clusterID, err := CheckToken(ctx, remote, token)
	if err != nil {
		return nil, err
	} else if role != pb.NodeRole_NODE_ROLE_MANAGER {
		return nil, fmt.Errorf("this is a worker token: it joins the node as a worker, not a manager")
	}
	id := &datadir.Identity{
		NodeID:    raftstore.NewID(),
		ClusterID: clusterID,
		RaftID:    raftstore.NewID(),
		Role:      "manager",
		Hostname:  cfg.Hostname,
		Advertise: cfg.APIAddr(),
		// Until the join hands out the cluster's key, gossip uses one
		// nobody else has: it talks to no one.
		GossipKeys: [][]byte{gossip.NewKey()},
	}
	// Raft must listen before the leader adds this node as a voter; it
	// refuses every handshake until the join brings the certificate.
	keyPEM, csr, err := pki.NewKeyAndCSR()
	if err != nil {
		return nil, err
	}
	nc := nodecreds.Pending(cfg.DataDir, digest)
	m, err := start(ctx, cfg, id, false, nc)
	if err != nil {
		wipeDataDir(cfg.DataDir)
		return nil, err
	}
	// First the certificate, then, presenting it, the Raft membership.
	resp, err := m.requestJoin(ctx, WithDefaultPort(remote), token, false, csr)
	if err == nil {
		err = m.adoptJoin(resp, keyPEM)
	}
	if err == nil {
		_, err = m.requestJoin(ctx, WithDefaultPort(remote), "", false, nil)
	}
	if err != nil {
		m.Close()
		wipeDataDir(cfg.DataDir)
		return nil, err
	}
	m.adoptKey(resp.GetSecretsKey())
	m.log.Info("joined cluster as manager", "cluster", id.ClusterID, "node", id.NodeID)
	return m, nil
}

// adoptJoin installs what a join handed out: the certificate, the roots
// and the gossip keys; then the identity is saved.
func (m *Manager) adoptJoin(resp *pb.JoinResponse, keyPEM []byte) error {
	if err := m.creds.Install(resp.GetCertificate(), keyPEM, resp.GetRootCas()); err != nil {
		return fmt.Errorf("install the certificate the cluster issued: %w", err)
	}
	if len(resp.GetGossipKeys()) > 0 {
		if err := m.gossip.SetKeys(resp.GetGossipKeys()); err != nil {
			return err
		}
	}
	return m.ident.save(func(id *datadir.Identity) {
		if len(resp.GetGossipKeys()) > 0 {
			id.GossipKeys = resp.GetGossipKeys()
		}
		id.ClusterID = resp.GetClusterId()
	})
}

// resume starts a manager whose credentials are in its data dir.
func resume(ctx context.Context, cfg Config, id *datadir.Identity, forceNew bool) (*Manager, error) {
	nc, err := ca.LoadNodeCreds(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	return start(ctx, cfg, id, forceNew, nc)
}

// start opens the store and the API server of a manager.
func start(ctx context.Context, cfg Config, id *datadir.Identity, forceNew bool, nc *nodecreds.Node) (*Manager, error) {
	m := &Manager{
		cfg:     cfg,
		log:     cfg.Logger.With("node", id.NodeID[:8], "role", "manager"),
		id:      id,
		ident:   &identityFile{dir: cfg.DataDir, id: id},
		creds:   nc,
		keys:    sealer.NewHolder(id.NodeID, cfg.DataDir),
		conns:   leaderroute.NewPool(nc.Creds()),
		stopped: make(chan struct{}),
		metrics: metrics.New(),
	}
	if key, err := sealer.Load(cfg.DataDir); err == nil {
		m.keys.Set(key)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	scfg := raftstore.Config{
		ID:                id.RaftID,
		Dir:               filepath.Join(cfg.DataDir, "raft"),
		BindAddr:          cfg.listenRaft(),
		AdvertiseAddr:     cfg.RaftAddr(),
		Timing:            cfg.Timing,
		SnapshotThreshold: cfg.SnapshotThreshold,
		TrailingLogs:      cfg.TrailingLogs,
		ServerTLS:         nc.Creds().ServerTLS(true, m.acceptRaftPeer, m.log.With("link", "raft")),
		ClientTLS:         nc.Creds().ClientTLS(pki.RoleManager),
		WrapStream:        cfg.WrapRaftStream,
		Logger:            cfg.Logger,
		Observer:          m.metrics.Observer(),
	}
	var err error
	if forceNew {
		m.store, err = raftstore.OpenForceNewCluster(scfg)
	} else {
		m.store, err = raftstore.Open(scfg)
	}
	if err != nil {
		return nil, err
	}
	m.storeReady.Store(true)
	if id.InitializedHere && !forceNew {
		if err := m.store.Bootstrap(); err == nil {
			m.log.Info("bootstrapped a new Raft cluster", "raft_id", id.RaftID)
		} else {
			m.log.Info("existing Raft state found; not bootstrapping again")
		}
	}
	m.lis, err = net.Listen("tcp", cfg.listenAPI())
	if err != nil {
		m.store.Close()
		return nil, fmt.Errorf("listen on %s for the API: %w (is another node using this address and port?)", cfg.listenAPI(), err)
	}
	control, router := m.assemble()
	if err := m.startDockerAPI(control, router); err != nil {
		m.lis.Close()
		m.store.Close()
		return nil, err
	}
	m.gossip, err = gossip.New(gossip.Config{
		Meta:          gossip.Meta{NodeID: id.NodeID, Role: gossip.RoleManager, API: cfg.APIAddr()},
		BindIP:        cfg.ListenIP,
		BindPort:      GossipPort(cfg.APIPort),
		AdvertiseIP:   cfg.AdvertiseIP,
		AdvertisePort: GossipPort(cfg.APIPort),
		ClusterID:     id.ClusterID,
		Keys:          id.GossipKeys,
		Fast:          cfg.GossipFast,
		Logger:        cfg.Logger,
	})
	if err != nil {
		m.closeDockerAPI()
		m.lis.Close()
		m.store.Close()
		return nil, err
	}
	m.mesh = mesh.New(mesh.Config{IP: cfg.AdvertiseIP, DNSPort: cfg.APIPort + mesh.DNSPortOffset, NodeID: id.NodeID, Datapath: cfg.MeshDatapath, Log: m.log})
	if err := m.mesh.Start(ctx); err != nil {
		m.log.Warn("no service resolver on this node", "err", err)
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	keeper := ca.NewKeeper(ca.KeeperConfig{
		Store:    m.store,
		Clock:    clock.Real(),
		NodeID:   id.NodeID,
		Creds:    nc,
		Gossip:   m.gossip,
		Keys:     m.ident,
		DataDir:  cfg.DataDir,
		APIAddr:  cfg.APIAddr(),
		Interval: cfg.CertCheckInterval,
		Log:      m.log,
	})
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		if err := m.grpc.Serve(m.lis); err != nil {
			m.log.Error("API server stopped", "err", err)
		}
	}()
	m.loop(m.feed.Run)
	m.loop(func(ctx context.Context) { m.mesh.FollowTaskGone(ctx, m.gossip.Messages()) })
	m.loop(m.journal.Run)
	m.metrics.Attach(m.store, m.disp)
	m.loop(m.metrics.Run)
	m.loop(m.runMesh)
	m.loop(m.leadership)
	m.loop(m.watchMembership)
	m.loop(m.joinGossip)
	m.loop(m.watchGossip)
	m.loop(keeper.Run)
	m.log.Info("manager started", "api", cfg.APIAddr(), "raft", cfg.RaftAddr(), "cluster", id.ClusterID)
	return m, nil
}

// assemble makes the manager's parts, each given what it needs, and the
// gRPC server that serves them: every call is authorised first, then a
// leader-only one is run on the leader.
func (m *Manager) assemble() (*controlapi.Server, *leaderroute.Router) {
	cfg, id := m.cfg, m.id
	m.feed = endpoints.NewFeed(m.store)
	m.journal = events.New(m.store, cfg.EventHistory, m.log)
	m.ca = ca.New(m.store, clock.Real(), cfg.CertCheckInterval, m.log)
	m.members = membership.New(membership.Config{
		Store:        m.store,
		Raft:         m.store,
		Dialer:       m.conns,
		Certificates: m.ca,
		Keys:         m.keys,
		Self: membership.Self{NodeID: id.NodeID, RaftID: id.RaftID, Hostname: cfg.Hostname, ClusterID: id.ClusterID,
			APIAddr: cfg.APIAddr(), RaftAddr: cfg.RaftAddr()},
		ProbeInterval: cfg.ProbeInterval,
		Clock:         clock.Real(),
		Log:           m.log,
	})
	m.usage = usage.New(clock.Real())
	m.disp = dispatcher.New(dispatcher.Config{
		Store:      m.store,
		Leadership: m.members,
		Endpoints:  m.feed,
		Secrets:    m.keys,
		Usage:      m.usage,
		Clock:      clock.Real(),
		APIAddr:    cfg.APIAddr(),
		Period:     cfg.HeartbeatPeriod,
		Log:        m.log,

		TaskSubnetPool: cfg.TaskSubnetPool,
	})
	control := controlapi.New(controlapi.Config{
		Store:       m.store,
		Raft:        m.store,
		Members:     m.members,
		Heartbeats:  m.disp,
		CA:          m.ca,
		Keys:        m.keys,
		Workers:     m.conns,
		Events:      m.journal,
		Usage:       m.usage,
		ClusterID:   id.ClusterID,
		AdvertiseIP: cfg.AdvertiseIP,
		Log:         m.log,
	})
	auth := authz.New(m.store, m.log)
	router := leaderroute.New(leaderroute.Config{
		Raft:            m.store,
		Leaders:         m.members,
		Dialer:          m.conns,
		NodeID:          id.NodeID,
		APIAddr:         cfg.APIAddr(),
		ElectionTimeout: cfg.Timing.ElectionTimeout,
	})
	m.grpc = grpc.NewServer(rpc.ServerOptions(m.creds.Creds(), nil, m.log.With("link", "api"),
		grpc.ChainUnaryInterceptor(auth.Unary, router.Unary), grpc.ChainStreamInterceptor(auth.Stream))...)
	pb.RegisterControlServer(m.grpc, control)
	pb.RegisterMembershipServer(m.grpc, m.members)
	pb.RegisterDispatcherServer(m.grpc, m.disp)
	return control, router
}

// loop runs fn in its own goroutine until the manager stops.
func (m *Manager) loop(fn func(ctx context.Context)) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		fn(m.ctx)
	}()
}

// Promote turns the worker in cfg.DataDir into a manager after `shoal node
// promote`: it starts Raft under a fresh Raft ID and asks the cluster,
// through any of managers, to add it as a voter, proving itself with its
// node secret. The caller must have stopped the node's worker agent.
func Promote(ctx context.Context, cfg Config, managers []string) (*Manager, error) {
	id, err := datadir.Load(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if id.Role != "worker" {
		return nil, fmt.Errorf("data dir %s holds no worker to promote", cfg.DataDir)
	}
	if err := cfg.adoptIdentity(id); err != nil {
		return nil, err
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	nc, err := ca.LoadNodeCreds(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	_ = os.RemoveAll(filepath.Join(cfg.DataDir, "raft"))
	id.RaftID = raftstore.NewID()
	keyPEM, csr, err := pki.NewKeyAndCSR()
	if err != nil {
		return nil, err
	}
	m, err := start(ctx, cfg, id, false, nc)
	if err != nil {
		return nil, err
	}
	var lastErr error
	for _, remote := range managers {
		var resp *pb.JoinResponse
		// First the manager certificate, then, presenting it, Raft.
		if resp, lastErr = m.requestJoin(ctx, WithDefaultPort(remote), "", true, csr); lastErr == nil {
			m.adoptKey(resp.GetSecretsKey())
			if lastErr = m.creds.Install(resp.GetCertificate(), keyPEM, resp.GetRootCas()); lastErr == nil {
				_, lastErr = m.requestJoin(ctx, WithDefaultPort(remote), "", true, nil)
			}
			break
		}
	}
	if lastErr != nil {
		m.Close()
		_ = os.RemoveAll(filepath.Join(cfg.DataDir, "raft"))
		return nil, fmt.Errorf("promote: %w", lastErr)
	}
	if err := m.ident.save(func(id *datadir.Identity) { id.Role = "manager" }); err != nil {
		m.Close()
		return nil, err
	}
	m.log.Info("promoted to manager", "raft_id", id.RaftID)
	return m, nil
}

// CheckToken asks the manager at remote which role a join token grants
// and which cluster it belongs to, before the node starts anything.
func CheckToken(ctx context.Context, remote, token string) (pb.NodeRole, string, error) {
	if _, _, err := ca.ParseToken(token); err != nil {
		return 0, "", err
	}
	resp, err := joinclient.CheckToken(ctx, WithDefaultPort(remote), token)
	if err != nil {
		return 0, "", err
	}
	return resp.GetRole(), resp.GetClusterId(), nil
}

// requestJoin asks the cluster (through any manager) to admit this node
// and sign its certificate request.
func (m *Manager) requestJoin(ctx context.Context, remote, token string, promotion bool, csr []byte) (*pb.JoinResponse, error) {
	return joinclient.Join(ctx, remote, m.creds.Creds(), &pb.JoinRequest{
		Token:       token,
		NodeId:      m.id.NodeID,
		RaftId:      m.id.RaftID,
		ApiAddr:     m.cfg.APIAddr(),
		RaftAddr:    m.cfg.RaftAddr(),
		Description: describeHost(m.cfg.Hostname),
		Csr:         csr,
		Promotion:   promotion,
	})
}

// waitInitialized waits until the cluster object exists (first init).
func (m *Manager) waitInitialized(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		var ok bool
		m.store.View(func(tx *raftstore.Tx) { ok = tx.Cluster() != nil })
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("init: the new cluster did not become ready: %w", ctx.Err())
		case <-m.stopped:
			return m.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitLeader waits until this manager leads.
func (m *Manager) waitLeader(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for !m.store.IsLeader() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("this manager did not become leader: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// leadership starts the leader-only loops after each won election (the
// store signals only once its Barrier is done) and stops them on loss.
func (m *Manager) leadership(ctx context.Context) {
	var running *loopGroup
	defer func() { running.stop() }()
	for {
		select {
		case <-ctx.Done():
			return
		case leader := <-m.store.LeaderChanges():
			m.metrics.LeadershipChanged()
			running.stop()
			running = nil
			if leader {
				running = startLoops(m.leaderLoops())
			}
		}
	}
}

// loopGroup is a set of running leader-only loops.
type loopGroup struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startLoops(loops []func(context.Context)) *loopGroup {
	ctx, cancel := context.WithCancel(context.Background())
	g := &loopGroup{cancel: cancel}
	for _, loop := range loops {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			loop(ctx)
		}()
	}
	return g
}

// stop cancels the loops and waits for them; nil is a no-op.
func (g *loopGroup) stop() {
	if g == nil {
		return
	}
	g.cancel()
	g.wg.Wait()
}

// leaderLoops are the loops that run only on the leader.
func (m *Manager) leaderLoops() []func(context.Context) {
	return []func(context.Context){
		m.ensureCluster,
		m.recordMeshDatapath,
		m.recordLeader,
		m.members.ProbeManagers,
		m.ca.FinishRotation,
		m.disp.Run,
		orchestrator.New(m.store, clock.Real(), m.log).Run,
		scheduler.New(m.store, clock.Real(), m.log).Run,
		updater.New(m.store, clock.Real(), m.log).Run,
		autoscaler.New(m.store, m.usage, clock.Real(), 3*m.cfg.HeartbeatPeriod, m.log).Run,
	}
}

// ensureCluster creates the cluster object and this node's record on the
// node that initialised the cluster; it is idempotent.
func (m *Manager) ensureCluster(ctx context.Context) {
	if !m.id.InitializedHere {
		return
	}
	var exists bool
	m.store.View(func(tx *raftstore.Tx) { exists = tx.Cluster() != nil })
	if exists {
		_ = os.Remove(filepath.Join(m.cfg.DataDir, ca.PendingRootKey))
		return
	}
	rootCA, err := ca.InitialRootCA(m.cfg.DataDir, m.creds.Creds().RootsPEM())
	if err != nil {
		m.log.Error("create cluster object", "err", err)
		return
	}
	ctx = raftstore.WithRequestID(ctx, "init/"+m.id.ClusterID)
	_, err = m.store.Update(ctx, func(tx *raftstore.Tx) error {
		if tx.Cluster() != nil {
			return nil
		}
		c := &pb.Cluster{
			Id: m.id.ClusterID,
			Spec: &pb.ClusterSpec{
				Annotations:      &pb.Annotations{Name: "default"},
				TaskHistoryLimit: 5,
				HeartbeatPeriod:  int64(m.cfg.HeartbeatPeriod),
				CertExpiry:       int64(m.cfg.CertExpiry),
			},
			JoinTokens: &pb.JoinTokens{Worker: ca.NewJoinToken(rootCA.GetDigest()), Manager: ca.NewJoinToken(rootCA.GetDigest())},
			RootCa:     rootCA,
			GossipKeys: m.id.GossipKeys,
		}
		if err := tx.Clusters().Create(c); err != nil {
			return err
		}
		return tx.Nodes().Create(m.selfNode())
	})
	if err != nil {
		m.log.Error("create cluster object", "err", err)
		return
	}
	_ = os.Remove(filepath.Join(m.cfg.DataDir, ca.PendingRootKey))
	m.log.Info("cluster initialised", "cluster", m.id.ClusterID)
}

// describeSelf is this manager's description, with its mesh's datapath.
func (m *Manager) describeSelf() *pb.NodeDescription {
	d := describeHost(m.cfg.Hostname)
	if m.mesh != nil {
		dp := m.mesh.Datapath()
		d.MeshDatapath = &pb.MeshDatapath{Name: dp.Name, Reason: dp.Reason, Table: dp.Table}
	}
	return d
}

// recordMeshDatapath records, on the leader, which mesh datapath this
// manager uses (workers report theirs when they open a session; a
// manager's record otherwise keeps what it had when it joined).
func (m *Manager) recordMeshDatapath(ctx context.Context) {
	want := m.describeSelf().GetMeshDatapath()
	_, err := m.store.Update(ctx, func(tx *raftstore.Tx) error {
		n, ok := tx.Nodes().Get(m.id.NodeID)
		if !ok || proto.Equal(n.GetDescription().GetMeshDatapath(), want) {
			return nil
		}
		n = proto.Clone(n).(*pb.Node)
		if n.Description == nil {
			n.Description = &pb.NodeDescription{}
		}
		n.Description.MeshDatapath = want
		return tx.Nodes().Update(n)
	})
	if err != nil && ctx.Err() == nil {
		m.log.Warn("record the mesh datapath", "err", err)
	}
}

// recordLeader writes this node and its term into the cluster object once
// per won election, so that every replica's event history shows the leader
// change at its Raft index. It waits for the cluster object on a new
// cluster and gives up when leadership ends.
func (m *Manager) recordLeader(ctx context.Context) {
	term := m.store.Status().Term
	errNoCluster := errors.New("no cluster object yet")
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		_, err := m.store.Update(ctx, func(tx *raftstore.Tx) error {
			c := tx.Cluster()
			if c == nil {
				return errNoCluster
			}
			if c.GetLeader() == m.id.NodeID && c.GetLeaderTerm() >= term {
				return nil
			}
			c.Leader, c.LeaderTerm = m.id.NodeID, term
			return tx.Clusters().Update(c)
		})
		if err == nil {
			return
		}
		if !errors.Is(err, errNoCluster) {
			m.log.Debug("record the leader change", "term", term, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// selfNode is this manager's node record.
func (m *Manager) selfNode() *pb.Node {
	return &pb.Node{
		Id: m.id.NodeID,
		Spec: &pb.NodeSpec{
			Annotations:  &pb.Annotations{Name: m.cfg.Hostname},
			DesiredRole:  pb.NodeRole_NODE_ROLE_MANAGER,
			Availability: pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE,
		},
		Description: m.describeSelf(),
		Status:      &pb.NodeStatus{State: pb.NodeState_NODE_STATE_READY, Addr: m.cfg.AdvertiseIP, LastHeartbeat: time.Now().UnixNano()},
		ManagerStatus: &pb.ManagerStatus{
			RaftId:   m.id.RaftID,
			RaftAddr: m.cfg.RaftAddr(),
			ApiAddr:  m.cfg.APIAddr(),
		},
		Role:        pb.NodeRole_NODE_ROLE_MANAGER,
		ApiAddr:     m.cfg.APIAddr(),
		Certificate: m.certInfo(),
	}
}

// certInfo describes this node's current certificate for its record.
func (m *Manager) certInfo() *pb.NodeCertificate {
	leaf := m.creds.Creds().Leaf()
	if leaf == nil {
		return nil
	}
	roots, err := pki.ParseCerts(m.creds.Creds().RootsPEM())
	if err != nil {
		return nil
	}
	return &pb.NodeCertificate{Serial: leaf.SerialNumber.Text(16), NotAfter: leaf.NotAfter.UnixNano(),
		RootDigest: pki.Digest(roots[len(roots)-1]), Role: pb.NodeRole_NODE_ROLE_MANAGER}
}

// acceptRaftPeer lets only managers that were not removed dial Raft.
func (m *Manager) acceptRaftPeer(id pki.Identity) error {
	if id.Role != pki.RoleManager {
		return fmt.Errorf("only managers join Raft; %s refused", id)
	}
	if !m.storeReady.Load() {
		return nil // this manager is starting: nobody is removed yet
	}
	var removed bool
	m.store.View(func(tx *raftstore.Tx) { id, removed = authz.Standing(tx, id) })
	switch {
	case removed:
		return fmt.Errorf("manager %s was removed from the cluster: its certificate is revoked", id.ID)
	case id.Role != pki.RoleManager:
		return fmt.Errorf("node %s was demoted: its manager certificate no longer admits it to Raft", id.ID)
	}
	return nil
}

// forgetOtherManagers turns the other managers into removed nodes after a
// force-new-cluster: they are no longer in the Raft configuration.
func (m *Manager) forgetOtherManagers(ctx context.Context) error {
	_, err := m.store.Update(ctx, func(tx *raftstore.Tx) error {
		c := tx.Cluster()
		for _, n := range tx.Nodes().List() {
			if n.GetRole() != pb.NodeRole_NODE_ROLE_MANAGER || n.GetId() == m.id.NodeID {
				continue
			}
			if err := tx.Nodes().Delete(n.GetId()); err != nil {
				return err
			}
			if c != nil {
				c.RemovedNodes = append(c.RemovedNodes, n.GetId())
			}
		}
		if c != nil {
			return tx.Clusters().Update(c)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("force-new-cluster: drop the old managers: %w", err)
	}
	m.log.Warn("force-new-cluster: this manager is now the only one; join new managers with the manager token")
	return nil
}

// watchMembership stops the manager when it learns it was removed: its
// Raft shut down by itself, or another manager says so.
func (m *Manager) watchMembership(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := m.store.Status()
		if st.State == "Leader" {
			continue
		}
		leaderID, _ := m.store.Leader()
		if st.State != "Shutdown" && leaderID != "" && time.Since(st.LastContact) < 5*time.Second {
			continue
		}
		removed, demoted := m.askRemoved()
		switch {
		case demoted:
			m.log.Warn("this node was demoted to a worker; stopping the manager")
			if err := m.ident.save(func(id *datadir.Identity) { id.Role, id.RaftID = "worker", "" }); err != nil {
				m.log.Error("record the demotion", "err", err)
			}
			// The secrets key and the Raft state belong to a membership
			// that ended; the key goes first, before anything waits on Done.
			if err := sealer.Remove(m.cfg.DataDir); err != nil {
				m.log.Error("remove the secrets key", "err", err)
			}
			go func() {
				m.stop(ErrDemoted)
				_ = os.RemoveAll(filepath.Join(m.cfg.DataDir, "raft"))
			}()
			return
		case removed:
			m.log.Warn("this node was removed from the cluster; stopping the manager")
			if err := m.ident.save(func(id *datadir.Identity) { id.Removed = true }); err != nil {
				m.log.Error("mark data dir removed", "err", err)
			}
			if err := sealer.Remove(m.cfg.DataDir); err != nil {
				m.log.Error("remove the secrets key", "err", err)
			}
			go m.stop(ErrRemoved)
			return
		}
	}
}

// askRemoved asks the other managers whether this node is still a member.
func (m *Manager) askRemoved() (removed, demoted bool) {
	var addrs []string
	m.store.View(func(tx *raftstore.Tx) {
		for _, n := range tx.Nodes().List() {
			if n.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER && n.GetId() != m.id.NodeID {
				addrs = append(addrs, n.GetManagerStatus().GetApiAddr())
			}
		}
	})
	// A restarted manager's replica stays empty until a leader tells it
	// what is committed, which never happens once it was removed while it
	// was down: ask the peers of its Raft configuration too.
	if servers, err := m.store.Servers(); err == nil {
		for _, sv := range servers {
			if addr, ok := apiAddrOfRaft(sv.Address); ok && sv.ID != m.id.RaftID && !slices.Contains(addrs, addr) {
				addrs = append(addrs, addr)
			}
		}
	}
	for _, addr := range addrs {
		conn, err := m.conns.Manager(addr)
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := pb.NewMembershipClient(conn).CheckMember(ctx, &pb.CheckMemberRequest{NodeId: m.id.NodeID, RaftId: m.id.RaftID})
		cancel()
		if err == nil && resp.GetRemoved() {
			return true, resp.GetDemoted()
		}
	}
	return false, false
}

// apiAddrOfRaft returns the API address of the manager whose Raft
// transport listens on raftAddr (Raft uses the API port + raftPortOffset).
func apiAddrOfRaft(raftAddr string) (string, bool) {
	host, port, err := net.SplitHostPort(raftAddr)
	if err != nil {
		return "", false
	}
	p, err := strconv.Atoi(port)
	if err != nil || p-raftPortOffset < 1 {
		return "", false
	}
	return hostPort(host, p-raftPortOffset), true
}

// joinGossip meets the other managers' gossip members (workers join the
// managers themselves), retrying with a growing pause until one answers;
// a lone manager has nobody to meet, which is fine.
func (m *Manager) joinGossip(ctx context.Context) {
	pause := 500 * time.Millisecond
	for {
		var addrs []string
		m.store.View(func(tx *raftstore.Tx) {
			for _, n := range tx.Nodes().List() {
				if n.GetId() == m.id.NodeID || n.GetRole() != pb.NodeRole_NODE_ROLE_MANAGER {
					continue
				}
				if a, ok := GossipAddrOf(n.GetManagerStatus().GetApiAddr()); ok {
					addrs = append(addrs, a)
				}
			}
		})
		if len(addrs) > 0 {
			if n, err := m.gossip.Join(addrs); err == nil && n > 0 {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(pause*2, 10*time.Second)
	}
}

// watchGossip passes gossip's death notices to the dispatcher, which
// starts the node's down clock early.
func (m *Manager) watchGossip(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-m.gossip.Events():
			if ev.Kind == gossip.EventDead && ev.Member.Role == gossip.RoleWorker {
				m.disp.Suspect(ev.Member.NodeID)
			}
		}
	}
}

// Gossip is this manager's gossip member.
func (m *Manager) Gossip() *gossip.Gossip { return m.gossip }

// ID is this node's ID.
func (m *Manager) ID() string { return m.id.NodeID }

// ClusterID is the cluster this node belongs to.
func (m *Manager) ClusterID() string { return m.id.ClusterID }

// Metrics is the manager's Prometheus collector (`--metrics-addr`).
func (m *Manager) Metrics() prometheus.Collector {
	return nodemetrics.Join(m.metrics, m.mesh.Collector())
}

// Store is this manager's replica of the cluster state.
func (m *Manager) Store() *raftstore.Store { return m.store }

// Mesh is this manager's routing mesh and resolver.
func (m *Manager) Mesh() *mesh.Mesh { return m.mesh }

// APIAddr is the advertised gRPC address.
func (m *Manager) APIAddr() string { return m.cfg.APIAddr() }

// IsLeader reports whether this manager leads the cluster.
func (m *Manager) IsLeader() bool { return m.store.IsLeader() }

// Done is closed when the manager stops (Close, or removal).
func (m *Manager) Done() <-chan struct{} { return m.stopped }

// Err is why the manager stopped: nil after Close, ErrRemoved after removal.
func (m *Manager) Err() error {
	select {
	case <-m.stopped:
		return m.stopErr
	default:
		return nil
	}
}

// Close stops the manager without leaving the cluster; restarting it on
// the same data dir resumes it.
func (m *Manager) Close() error {
	m.stop(nil)
	m.wg.Wait()
	return nil
}

func (m *Manager) stop(reason error) {
	m.stopOnce.Do(func() {
		m.stopErr = reason
		close(m.stopped)
		if m.cancel != nil {
			m.cancel()
		}
		m.closeDockerAPI()
		done := make(chan struct{})
		go func() { m.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			m.grpc.Stop()
		}
		if err := m.mesh.Close(); err != nil {
			m.log.Warn("stop mesh", "err", err)
		}
		if err := m.gossip.Shutdown(); err != nil {
			m.log.Warn("stop gossip", "err", err)
		}
		if err := m.store.Close(); err != nil {
			m.log.Warn("close store", "err", err)
		}
		m.conns.Close()
		m.log.Info("manager stopped")
	})
}

// wipeDataDir removes what a failed join created, so the dir is unused again.
func wipeDataDir(dir string) {
	_ = os.RemoveAll(filepath.Join(dir, "raft"))
	datadir.RemoveCerts(dir)
	_ = os.Remove(filepath.Join(dir, datadir.FileName))
	_ = sealer.Remove(dir)
}

// adoptKey keeps the secrets key a joining manager received. A leader
// without one (its data dir lost the file) sends none: this manager then
// cannot seal or open secrets, and says so when asked to.
func (m *Manager) adoptKey(raw []byte) {
	if len(raw) == 0 {
		m.log.Warn("the cluster sent no secrets key; this manager cannot seal or open secrets")
		return
	}
	key, err := sealer.New(raw)
	if err != nil {
		m.log.Error("the secrets key from the cluster is unusable", "err", err)
		return
	}
	if err := key.Save(m.cfg.DataDir); err != nil {
		m.log.Error("keep the secrets key", "err", err)
	}
	m.keys.Set(key)
}

// runMesh feeds this manager's own routing mesh and resolver from the
// endpoint feed: a manager's address serves published ports too.
func (m *Manager) runMesh(ctx context.Context) {
	sent, changed := m.feed.Snapshot()
	m.mesh.Apply(endpoints.Complete(sent))
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
		var now map[string]*pb.ServiceEndpoints
		now, changed = m.feed.Snapshot()
		m.mesh.Apply(endpoints.Diff(sent, now))
		sent = now
	}
}

// identityFile is this node's identity and its file in the data dir. Its
// gossip keys change while the node runs, and its role on demotion or
// removal: each change is made, and saved, under mu.
type identityFile struct {
	dir string
	mu  sync.Mutex
	id  *datadir.Identity
}

// GossipKeys are the gossip keys the node holds.
func (f *identityFile) GossipKeys() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.id.GossipKeys
}

// SaveGossipKeys records new gossip keys.
func (f *identityFile) SaveGossipKeys(keys [][]byte) error {
	return f.save(func(id *datadir.Identity) { id.GossipKeys = keys })
}

// save applies change to the identity and saves it.
func (f *identityFile) save(change func(id *datadir.Identity)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(f.id)
	return datadir.Save(f.dir, f.id)
}
