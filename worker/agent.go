package worker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/shoal-cluster/shoal/gossip"
	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/host"
	"github.com/shoal-cluster/shoal/internal/joinclient"
	"github.com/shoal-cluster/shoal/internal/mesh"
	"github.com/shoal-cluster/shoal/internal/nodecreds"
	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/internal/registry"
	"github.com/shoal-cluster/shoal/internal/rpc"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker/tasknet"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Config configures a worker agent.
type Config struct {
	// DataDir holds node.json and the agent's state (worker/).
	DataDir string
	// Hostname is the name the node registers with (default: os.Hostname).
	Hostname string
	// AdvertiseIP is the address other nodes reach this one on.
	AdvertiseIP string
	// APIPort is the node's port; gossip uses APIPort+2.
	APIPort int
	// ListenIP is the address to bind to (default: AdvertiseIP).
	ListenIP string
	// Managers are manager API addresses to start from (the join address).
	Managers []string
	// Runtimes builds the runtimes that run the tasks. It is called once
	// the data dir is known to be this node's (runtimes keep state there).
	Runtimes func() ([]Runtime, error)
	// NotOffered reports the runtimes this node knows but does not offer,
	// by name, with why (called after Runtimes; nil: none), for `node
	// inspect`.
	NotOffered func() map[string]string
	// TaskNetwork, when set, is called after Runtimes and returns the
	// node's task network (nil for none): the agent gives it the node's
	// task subnet and the routes to the other nodes' subnets as the
	// managers send them, serves the tasks' resolver, and removes it when
	// the node leaves the cluster.
	TaskNetwork func() *tasknet.Node
	// Labels are engine labels the node reports.
	Labels map[string]string
	// GossipFast uses LAN-local gossip timings (loopback clusters, tests).
	GossipFast bool
	// MeshDatapath is the routing mesh's datapath: mesh.DatapathAuto (the
	// default: nftables when possible) or mesh.DatapathUserspace.
	MeshDatapath string
	// StatusInterval is how often pending task statuses are sent (default 100ms).
	StatusInterval time.Duration
	// CertCheckInterval is how often the agent checks whether its
	// certificate is due for renewal (default 1s).
	CertCheckInterval time.Duration
	// SecretsDir is where tasks' secret files go (default: a directory of
	// this node's on the first tmpfs among /run and /dev/shm). It should be
	// an in-memory filesystem: secret values must not reach a disk.
	SecretsDir string
	// ConfigsDir is where tasks' config files go (default: a directory of
	// this node's on the first tmpfs among /run and /dev/shm, else
	// DataDir/worker/configs).
	ConfigsDir string
	Logger     *slog.Logger
}

// Ports derived from the API port, as on managers.
const (
	gossipPortOffset = 2
	defaultAPIPort   = 4242
)

func (c *Config) setDefaults() error {
	if c.DataDir == "" {
		return errors.New("a data dir is required (--data-dir)")
	}
	if c.AdvertiseIP == "" {
		return errors.New("an advertise address is required (--advertise IP[:PORT])")
	}
	if c.APIPort == 0 {
		c.APIPort = defaultAPIPort
	}
	if c.ListenIP == "" {
		c.ListenIP = c.AdvertiseIP
	}
	if c.Hostname == "" {
		c.Hostname, _ = os.Hostname()
	}
	if c.StatusInterval == 0 {
		c.StatusInterval = 100 * time.Millisecond
	}
	if c.CertCheckInterval == 0 {
		c.CertCheckInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Runtimes == nil {
		return errors.New("a worker needs at least one runtime")
	}
	return nil
}

// DNSPort is the port of the node's service resolver on AdvertiseIP.
func (c *Config) DNSPort() int {
	port := c.APIPort
	if port == 0 {
		port = defaultAPIPort
	}
	return port + mesh.DNSPortOffset
}

// DNSAddr is the node's service resolver (host:port), which tasks are told
// to use.
func (c *Config) DNSAddr() string {
	return net.JoinHostPort(c.AdvertiseIP, strconv.Itoa(c.DNSPort()))
}

func (c *Config) apiAddr() string {
	return net.JoinHostPort(c.AdvertiseIP, strconv.Itoa(c.APIPort))
}

// Agent is a running worker.
type Agent struct {
	cfg          Config
	log          *slog.Logger
	id           *datadir.Identity
	creds        *nodecreds.Node
	db           *taskDB
	runtimes     map[string]Runtime
	runtimeNames []string
	gossip       *gossip.Gossip
	grpc         *grpc.Server
	mesh         *mesh.Mesh
	taskNet      *tasknet.Node // nil without task networking
	metrics      *agentMetrics
	usage        usageSampler

	mu          sync.Mutex
	tasks       map[string]*pb.Task // assigned tasks with their observed status
	controllers map[string]*taskController
	pending     map[string]*pb.TaskStatus // statuses not yet acknowledged
	secrets     map[string][]byte         // secret values by ID: memory only, never in the db or a log
	configs     map[string][]byte         // config data by ID, in memory as secrets are
	secretFiles *taskFiles
	configFiles *taskFiles
	session     *activeSession
	taskSubnet  netip.Prefix  // the node's task subnet, as the managers said
	leaderHint  string        // where a manager said the leader is
	period      time.Duration // the heartbeat period the last leader asked for
	connected   chan struct{} // closed when the first session opens
	// signingRoot is the digest of the root that signs new certificates,
	// as the last session said: a certificate from another root is renewed.
	signingRoot string

	statusWake chan struct{}
	removed    chan struct{} // closed when the cluster says this node is gone
	promoted   chan struct{} // closed when the node is to become a manager
	promoteOne sync.Once
	forgetOnce sync.Once
	ctx        context.Context
	cancel     context.CancelFunc
	wg         sync.WaitGroup
	closeOnce  sync.Once
}

type activeSession struct {
	id     string
	conn   *grpc.ClientConn
	addr   string
	period time.Duration
}

// CheckUnused tells whether a data dir may become a new worker.
func CheckUnused(dir string) error { return datadir.CheckUnused(dir) }

// Join registers a new worker with the cluster through the manager at
// remote, using the cluster's worker join token, and starts it.
func Join(ctx context.Context, cfg Config, remote, token string) (*Agent, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := datadir.CheckUnused(cfg.DataDir); err != nil {
		return nil, err
	}
	id := &datadir.Identity{
		NodeID:    newNodeID(),
		Role:      "worker",
		Hostname:  cfg.Hostname,
		Advertise: cfg.apiAddr(),
	}
	creds, err := joinclient.TokenCredentials(token)
	if err != nil {
		return nil, err
	}
	keyPEM, csr, err := pki.NewKeyAndCSR()
	if err != nil {
		return nil, err
	}
	resp, err := joinclient.Join(ctx, remote, creds, &pb.JoinRequest{
		Token:       token,
		NodeId:      id.NodeID,
		ApiAddr:     cfg.apiAddr(),
		Description: describe(&cfg, nil, false),
		Csr:         csr,
	})
	if err != nil {
		return nil, err
	}
	if resp.GetRole() != pb.NodeRole_NODE_ROLE_WORKER {
		return nil, fmt.Errorf("join %s: the token admits a %s, not a worker", remote, resp.GetRole())
	}
	id.ClusterID = resp.GetClusterId()
	id.GossipKeys = resp.GetGossipKeys()
	nc := nodecreds.Pending(cfg.DataDir, "")
	if err := nc.Install(resp.GetCertificate(), keyPEM, resp.GetRootCas()); err != nil {
		datadir.RemoveCerts(cfg.DataDir)
		return nil, fmt.Errorf("install the certificate the cluster issued: %w", err)
	}
	if err := datadir.Save(cfg.DataDir, id); err != nil {
		return nil, err
	}
	cfg.Managers = append([]string{remote}, cfg.Managers...)
	return start(cfg, id)
}

// Restart resumes the worker whose identity is in cfg.DataDir.
func Restart(ctx context.Context, cfg Config) (*Agent, error) {
	id, err := datadir.Load(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if id.Role != "worker" {
		return nil, fmt.Errorf("data dir %s holds a %s, not a worker", cfg.DataDir, id.Role)
	}
	if id.Removed {
		return nil, fmt.Errorf("node %s left or was removed from the cluster; delete %s and join again with a token", id.NodeID, cfg.DataDir)
	}
	if cfg.AdvertiseIP == "" && id.Advertise != "" {
		host, port, err := net.SplitHostPort(id.Advertise)
		if err == nil {
			cfg.AdvertiseIP = host
			cfg.APIPort, _ = strconv.Atoi(port)
		}
	}
	if cfg.Hostname == "" {
		cfg.Hostname = id.Hostname
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	return start(cfg, id)
}

func start(cfg Config, id *datadir.Identity) (*Agent, error) {
	nc, err := nodecreds.Load(cfg.DataDir)
	if errors.Is(err, datadir.ErrNoCerts) {
		return nil, fmt.Errorf("%w: this data dir was made by a Shoal without TLS; join the node again with an empty data dir", err)
	}
	if err != nil {
		return nil, err
	}
	nc.Creds().SetRevoked(id.Revoked)
	dir := filepath.Join(cfg.DataDir, "worker")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	db, err := openTaskDB(dir)
	if err != nil {
		return nil, err
	}
	rts, err := cfg.Runtimes()
	if err != nil {
		db.close()
		return nil, err
	}
	if len(rts) == 0 {
		db.close()
		return nil, errors.New("a worker needs at least one runtime")
	}
	a := &Agent{
		cfg:         cfg,
		log:         cfg.Logger.With("node", id.NodeID[:8], "role", "worker"),
		id:          id,
		creds:       nc,
		db:          db,
		runtimes:    map[string]Runtime{},
		tasks:       map[string]*pb.Task{},
		controllers: map[string]*taskController{},
		pending:     map[string]*pb.TaskStatus{},
		secrets:     map[string][]byte{},
		configs:     map[string][]byte{},
		secretFiles: newSecretFiles(cfg.SecretsDir),
		configFiles: newConfigFiles(cfg.ConfigsDir),
		connected:   make(chan struct{}),
		statusWake:  make(chan struct{}, 1),
		removed:     make(chan struct{}),
		promoted:    make(chan struct{}),
	}
	if cfg.TaskNetwork != nil {
		a.taskNet = cfg.TaskNetwork()
	}
	a.metrics = newAgentMetrics(a)
	for _, rt := range rts {
		a.runtimes[rt.Name()] = rt
		a.runtimeNames = append(a.runtimeNames, rt.Name())
	}
	switch {
	case a.secretFiles.root == "":
		a.secretFiles.root = defaultSecretsRoot(id.NodeID)
		if a.secretFiles.root == "" {
			a.log.Warn("no in-memory filesystem (tmpfs) at /run or /dev/shm: tasks that use secrets will be rejected on this node")
		}
	case !isTmpfs(filepath.Dir(filepath.Clean(a.secretFiles.root))) && !isTmpfs(a.secretFiles.root):
		a.log.Warn("the secrets directory is not on an in-memory filesystem: secret values will be written to disk", "dir", a.secretFiles.root)
	}
	if a.configFiles.root == "" {
		a.configFiles.root = defaultConfigsRoot(id.NodeID, cfg.DataDir)
	}
	a.gossip, err = gossip.New(gossip.Config{
		Meta:          gossip.Meta{NodeID: id.NodeID, Role: gossip.RoleWorker, API: cfg.apiAddr()},
		BindIP:        cfg.ListenIP,
		BindPort:      cfg.APIPort + gossipPortOffset,
		AdvertiseIP:   cfg.AdvertiseIP,
		AdvertisePort: cfg.APIPort + gossipPortOffset,
		ClusterID:     id.ClusterID,
		Keys:          id.GossipKeys,
		Fast:          cfg.GossipFast,
		Logger:        cfg.Logger,
	})
	if err != nil {
		db.close()
		return nil, err
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	mcfg := mesh.Config{IP: cfg.AdvertiseIP, DNSPort: cfg.DNSPort(), NodeID: id.NodeID, Datapath: cfg.MeshDatapath, Log: a.log}
	if _, ok := a.runtimes["docker"]; ok || a.taskNet != nil {
		// Containers and tasks in their own network namespaces cannot
		// reach the node's loopback: they get a resolver of their own.
		mcfg.ContainerResolver = mesh.ContainerResolverIP(id.ClusterID)
	}
	a.mesh = mesh.New(mcfg)
	if err := a.mesh.Start(a.ctx); err != nil {
		a.log.Warn("no service resolver on this node", "err", err)
	}
	if err := a.serveAPI(); err != nil {
		_ = a.mesh.Close()
		a.cancel()
		a.gossip.Shutdown()
		db.close()
		return nil, err
	}
	if err := a.restoreTasks(); err != nil {
		a.Close()
		return nil, err
	}
	a.wg.Add(5)
	go func() {
		defer a.wg.Done()
		a.mesh.FollowTaskGone(a.ctx, a.gossip.Messages())
	}()
	go a.keepCredentials()
	go a.joinGossip()
	go a.sessionLoop()
	go a.reportStatuses()
	a.log.Info("worker started", "cluster", id.ClusterID, "addr", cfg.apiAddr())
	return a, nil
}

// restoreTasks reloads the tasks a previous agent knew and removes what
// the runtimes hold that no task claims.
func (a *Agent) restoreTasks() error {
	tasks, err := a.db.all()
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, t := range tasks {
		known[t.GetId()] = true
		a.mu.Lock()
		a.tasks[t.GetId()] = t
		a.pending[t.GetId()] = t.GetStatus()
		a.startController(t.GetId())
		a.mu.Unlock()
	}
	for _, rt := range a.runtimes {
		infos, err := rt.List(a.ctx)
		if err != nil {
			a.log.Warn("list runtime tasks", "runtime", rt.Name(), "err", err)
			continue
		}
		for _, info := range infos {
			if !known[info.TaskID] {
				a.log.Info("removing a task no assignment claims", "task", info.TaskID, "runtime", rt.Name())
				a.removeFromRuntime(rt, info.TaskID, time.Second)
			}
		}
	}
	if len(tasks) > 0 {
		a.log.Info("restored tasks from the local store", "tasks", len(tasks))
	}
	// Secret and config files of tasks that ended, or that no record
	// claims, go now; those of live tasks stay for their controllers.
	live := map[string]bool{}
	for _, t := range tasks {
		live[t.GetId()] = t.GetStatus().GetState() < pb.TaskState_TASK_STATE_COMPLETE
	}
	for _, files := range []*taskFiles{a.secretFiles, a.configFiles} {
		ids, err := files.tasks()
		if err != nil {
			a.log.Warn("look for leftover "+files.kind.noun+" files", "err", err)
		}
		for _, id := range ids {
			if !live[id] {
				a.dropFiles(id)
			}
		}
	}
	return nil
}

// applyValues brings the secret values or config data held in memory
// (held) in line with what the managers say this node's tasks need, and
// wakes tasks waiting for one.
func (a *Agent) applyValues(noun string, held map[string][]byte, sa *pb.SecretAssignments) {
	if sa == nil {
		return
	}
	a.mu.Lock()
	if sa.GetType() == pb.AssignmentsType_ASSIGNMENTS_TYPE_COMPLETE {
		clear(held)
	}
	for _, id := range sa.GetRemoved() {
		delete(held, id)
	}
	for _, v := range sa.GetUpdated() {
		held[v.GetId()] = v.GetData()
	}
	n := len(held)
	for _, c := range a.controllers {
		c.wake()
	}
	a.mu.Unlock()
	a.log.Debug(noun+"s updated", "received", len(sa.GetUpdated()), "forgotten", len(sa.GetRemoved()), "held", n)
}

// writeFiles materialises a task's secrets and configs; ok is false while
// a value has not arrived from the managers yet.
func (a *Agent) writeFiles(t *pb.Task) (TaskFiles, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var auth *pb.RegistryAuth
	if t.GetSpec().GetContainer().GetWithRegistryAuth() {
		// The service's registry credentials travel with the secrets.
		raw, ok := a.secrets[registry.AuthSecretID(t.GetServiceId())]
		if !ok {
			return TaskFiles{}, false, nil
		}
		auth = &pb.RegistryAuth{}
		if err := proto.Unmarshal(raw, auth); err != nil {
			return TaskFiles{}, false, fmt.Errorf("read the registry credentials of service %s: %w", t.GetServiceName(), err)
		}
	}
	secrets, ok, err := a.secretFiles.write(t, a.secrets)
	if err != nil || !ok {
		return TaskFiles{}, ok, err
	}
	configs, ok, err := a.configFiles.write(t, a.configs)
	if err != nil || !ok {
		a.dropFiles(t.GetId())
		return TaskFiles{}, ok, err
	}
	return TaskFiles{Secrets: secrets, Configs: configs, RegistryAuth: auth}, true, nil
}

// filesPresent reports whether a task's secret and config files are all
// in place.
func (a *Agent) filesPresent(t *pb.Task) bool {
	return a.secretFiles.present(t) && a.configFiles.present(t)
}

// dropFiles removes a task's secret and config files (the task ended or
// left). It takes no lock: removal is idempotent and per task.
func (a *Agent) dropFiles(taskID string) {
	for _, files := range []*taskFiles{a.secretFiles, a.configFiles} {
		if err := files.remove(taskID); err != nil {
			a.log.Warn("remove a task's "+files.kind.noun+" files", "task", taskID, "err", err)
		}
	}
}

func (a *Agent) removeFromRuntime(rt Runtime, id string, grace time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), grace+10*time.Second)
	defer cancel()
	if err := rt.Stop(ctx, id, grace); err != nil && !errors.Is(err, ErrTaskNotFound) {
		a.log.Warn("stop task", "task", id, "err", err)
	}
	if err := rt.Remove(ctx, id); err != nil {
		a.log.Warn("remove task", "task", id, "err", err)
	}
}

// startController starts the state machine of a task; a.mu must be held.
func (a *Agent) startController(id string) {
	if _, ok := a.controllers[id]; ok {
		return
	}
	ctx, cancel := context.WithCancel(a.ctx)
	c := &taskController{a: a, id: id, poke: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	a.controllers[id] = c
	go c.run(ctx)
}

// task returns a copy of the local record of a task, or nil.
func (a *Agent) task(id string) *pb.Task {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.tasks[id]
	if !ok {
		return nil
	}
	return proto.Clone(t).(*pb.Task)
}

// taskGone takes a task of this node out of the node's mesh at once and
// tells the other nodes' meshes over gossip (best effort: the managers'
// endpoint update follows either way).
func (a *Agent) taskGone(id string) {
	if a.mesh == nil || !a.mesh.TaskGone(id) || a.gossip == nil {
		return
	}
	if _, err := a.gossip.SendToAll(mesh.TaskGoneMessage(id)); err != nil {
		a.log.Debug("tell other nodes a task left the mesh", "task", id, "err", err)
	}
}

// setStatus records a task's new observed status and queues its report.
// A task that stopped serving (exited, or failed its health check)
// leaves this node's mesh first, without waiting for the managers.
func (a *Agent) setStatus(id string, s *pb.TaskStatus) {
	if s.GetState() > pb.TaskState_TASK_STATE_RUNNING || s.GetHealth() == pb.HealthState_HEALTH_STATE_UNHEALTHY {
		a.taskGone(id)
	}
	a.mu.Lock()
	t, ok := a.tasks[id]
	if ok {
		t = proto.Clone(t).(*pb.Task)
		t.Status = s
		a.tasks[id] = t
		a.pending[id] = s
		if err := a.db.put(t); err != nil {
			a.log.Error("persist task status", "task", id, "err", err)
		}
	}
	a.mu.Unlock()
	if ok {
		a.log.Debug("task state", "task", id, "state", s.GetState().String(), "err", s.GetErr())
		select {
		case a.statusWake <- struct{}{}:
		default:
		}
	}
}

// applyAssignments brings the local task set in line with the managers'.
func (a *Agent) applyAssignments(as *pb.Assignments) {
	if as == nil {
		return
	}
	var toRemove []string
	a.mu.Lock()
	if as.GetType() == pb.AssignmentsType_ASSIGNMENTS_TYPE_COMPLETE {
		keep := map[string]bool{}
		for _, t := range as.GetUpdated() {
			keep[t.GetId()] = true
		}
		for id := range a.tasks {
			if !keep[id] {
				toRemove = append(toRemove, id)
			}
		}
	}
	toRemove = append(toRemove, as.GetRemoved()...)
	for _, u := range as.GetUpdated() {
		local := a.tasks[u.GetId()]
		next := merged(local, u)
		if local != nil && proto.Equal(local, next) {
			continue
		}
		a.tasks[u.GetId()] = next
		if err := a.db.put(next); err != nil {
			a.log.Error("persist task", "task", u.GetId(), "err", err)
		}
		if c, ok := a.controllers[u.GetId()]; ok {
			c.wake()
		} else {
			a.startController(u.GetId())
		}
	}
	a.mu.Unlock()
	for _, id := range toRemove {
		a.removeTask(id)
	}
}

// removeTask stops and forgets a task the managers no longer assign.
func (a *Agent) removeTask(id string) {
	a.mu.Lock()
	t := a.tasks[id]
	c := a.controllers[id]
	delete(a.tasks, id)
	delete(a.controllers, id)
	delete(a.pending, id)
	a.mu.Unlock()
	if c != nil {
		c.cancel()
		<-c.done
	}
	if t != nil {
		if rt, err := a.runtimeFor(t); err == nil {
			grace := time.Duration(t.GetSpec().GetContainer().GetStopGracePeriod())
			if grace <= 0 {
				grace = defaultStopGrace
			}
			a.removeFromRuntime(rt, id, grace)
		}
	}
	a.dropFiles(id)
	if err := a.db.delete(id); err != nil {
		a.log.Error("forget task", "task", id, "err", err)
	}
	a.log.Info("task removed", "task", id)
}

// managerCandidates lists manager addresses to try, best first: the
// leader's, then those of the last session, gossip's and the configured.
func (a *Agent) managerCandidates() []string {
	seen := map[string]bool{}
	var out []string
	add := func(addr string) {
		if addr != "" && !seen[addr] {
			seen[addr] = true
			out = append(out, addr)
		}
	}
	a.mu.Lock()
	add(a.leaderHint)
	a.mu.Unlock()
	stored := a.db.managers()
	sort.SliceStable(stored, func(i, j int) bool { return stored[i].GetLeader() && !stored[j].GetLeader() })
	for _, m := range stored {
		add(m.GetApiAddr())
	}
	for _, m := range a.gossip.Managers() {
		add(m.API)
	}
	for _, m := range a.cfg.Managers {
		add(m)
	}
	return out
}

// joinGossip meets the managers' gossip members until one answers.
func (a *Agent) joinGossip() {
	defer a.wg.Done()
	for {
		var addrs []string
		for _, m := range a.managerCandidates() {
			host, port, err := net.SplitHostPort(m)
			if err != nil {
				continue
			}
			p, _ := strconv.Atoi(port)
			addrs = append(addrs, net.JoinHostPort(host, strconv.Itoa(p+gossipPortOffset)))
		}
		if n, err := a.gossip.Join(addrs); err == nil && n > 0 {
			return
		}
		select {
		case <-a.ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// rememberManagers keeps the manager addresses in node.json too, so that
// `shoal leave` finds the cluster while this agent holds its task db.
func (a *Agent) rememberManagers(ms []*pb.ManagerAddr) {
	var addrs []string
	for _, m := range ms {
		addrs = append(addrs, m.GetApiAddr())
	}
	sort.Strings(addrs)
	a.mu.Lock()
	defer a.mu.Unlock()
	if slices.Equal(addrs, a.id.Managers) {
		return
	}
	a.id.Managers = addrs
	if err := datadir.Save(a.cfg.DataDir, a.id); err != nil {
		a.log.Warn("remember managers", "err", err)
	}
}

// offered lists the runtimes available right now.
func (a *Agent) offered() []string {
	var out []string
	for _, name := range a.runtimeNames {
		if av, ok := a.runtimes[name].(Availability); ok && !av.Available() {
			continue
		}
		out = append(out, name)
	}
	return out
}

// watchRuntimes ends the session when the set of available runtimes
// changes, so the next session tells the managers (the scheduler places
// tasks only on nodes that offer their runtime).
func (a *Agent) watchRuntimes(ctx context.Context, cancel context.CancelFunc, offered []string) {
	t := time.NewTicker(runtimeCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if now := a.offered(); !slices.Equal(now, offered) {
				a.log.Info("available runtimes changed; reconnecting to tell the managers", "was", offered, "now", now)
				cancel()
				return
			}
		}
	}
}

// runtimeCheckInterval is how often the agent looks at its runtimes.
const runtimeCheckInterval = 2 * time.Second

// reportStatuses sends pending task statuses in batches while a session
// is open, keeping them until the leader acknowledges.
func (a *Agent) reportStatuses() {
	defer a.wg.Done()
	t := time.NewTicker(a.cfg.StatusInterval)
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
		case <-a.statusWake:
		}
		a.mu.Lock()
		sess := a.session
		if sess == nil || len(a.pending) == 0 {
			a.mu.Unlock()
			continue
		}
		sent := make(map[string]*pb.TaskStatus, len(a.pending))
		req := &pb.UpdateTaskStatusRequest{SessionId: sess.id, NodeId: a.id.NodeID}
		for id, s := range a.pending {
			sent[id] = s
			req.Updates = append(req.Updates, &pb.TaskStatusUpdate{TaskId: id, Status: s})
		}
		a.mu.Unlock()
		// A report is a Raft write on the leader: two periods, so a leader
		// that went silent holds statuses back no longer than a heartbeat
		// does (they stay pending for the next session).
		period := sess.period
		if period <= 0 {
			period = defaultPeriod
		}
		ctx, cancel := context.WithTimeout(a.ctx, 2*period)
		_, err := pb.NewDispatcherClient(sess.conn).UpdateTaskStatus(ctx, req)
		cancel()
		if err != nil {
			a.log.Debug("report task status", "err", err)
			continue
		}
		a.mu.Lock()
		for id, s := range sent {
			if a.pending[id] == s {
				delete(a.pending, id)
			}
		}
		a.mu.Unlock()
	}
}

// forgetCluster runs when the managers say this node was removed (or
// left with `shoal leave`): its tasks stop, the data dir is marked so it
// cannot rejoin, and Removed is closed.
func (a *Agent) forgetCluster() {
	a.forgetOnce.Do(a.forget)
}

func (a *Agent) forget() {
	a.log.Warn("this node is no longer a member of the cluster; stopping its tasks")
	for _, t := range a.Tasks() {
		a.removeTask(t.GetId())
	}
	a.mu.Lock()
	clear(a.secrets)
	clear(a.configs)
	a.mu.Unlock()
	a.id.Removed = true
	if err := datadir.Save(a.cfg.DataDir, a.id); err != nil {
		a.log.Error("mark data dir removed", "err", err)
	}
	_ = a.gossip.Leave(time.Second)
	a.destroyTaskNetwork()
	close(a.removed)
}

// noteNode watches the node's own record for a promotion.
func (a *Agent) noteNode(n *pb.Node) {
	if n.GetRole() == pb.NodeRole_NODE_ROLE_WORKER && n.GetSpec().GetDesiredRole() == pb.NodeRole_NODE_ROLE_MANAGER {
		a.promoteOne.Do(func() {
			a.log.Info("this node was promoted to manager")
			close(a.promoted)
		})
	}
}

// Promoted is closed when the node was promoted: its owner should stop
// the agent (StopTasks first) and start the node as a manager.
func (a *Agent) Promoted() <-chan struct{} { return a.promoted }

// StopTasks stops and removes every task of this node; the managers place
// them elsewhere.
func (a *Agent) StopTasks() {
	for _, t := range a.Tasks() {
		a.removeTask(t.GetId())
	}
}

// ManagerAddrs lists the manager addresses this agent knows, best first.
func (a *Agent) ManagerAddrs() []string { return a.managerCandidates() }

// SessionID is the ID of the session open with the leader ("" for none).
func (a *Agent) SessionID() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.session == nil {
		return ""
	}
	return a.session.id
}

// Removed is closed when the cluster has removed this node.
func (a *Agent) Removed() <-chan struct{} { return a.removed }

// WaitConnected waits until the first session is open.
func (a *Agent) WaitConnected(ctx context.Context) error {
	select {
	case <-a.connected:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("no session with a manager yet: %w", ctx.Err())
	}
}

// ID is this node's ID.
func (a *Agent) ID() string { return a.id.NodeID }

// Credentials are the node's live TLS credentials: its certificate, the
// roots it trusts and the nodes it refuses.
func (a *Agent) Credentials() *rpc.Credentials { return a.creds.Creds() }

// HeldSecrets lists, sorted, the IDs of the secrets whose values this
// agent holds in memory (never the values).
func (a *Agent) HeldSecrets() []string { return a.heldIDs(a.secrets) }

// HeldConfigs lists, sorted, the IDs of the configs whose data this agent
// holds in memory.
func (a *Agent) HeldConfigs() []string { return a.heldIDs(a.configs) }

func (a *Agent) heldIDs(held map[string][]byte) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]string, 0, len(held))
	for id := range held {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// SecretsDir is the directory under which this agent writes its tasks'
// secret files ("" when the node has none).
func (a *Agent) SecretsDir() string { return a.secretFiles.root }

// ConfigsDir is the directory under which this agent writes its tasks'
// config files.
func (a *Agent) ConfigsDir() string { return a.configFiles.root }

// ClusterID is the cluster this node belongs to.
func (a *Agent) ClusterID() string { return a.id.ClusterID }

// Gossip is this node's gossip member.
func (a *Agent) Gossip() *gossip.Gossip { return a.gossip }

// MeshDatapathOf is what a node reports of its mesh's datapath.
func MeshDatapathOf(m *mesh.Mesh) *pb.MeshDatapath {
	if m == nil {
		return nil
	}
	dp := m.Datapath()
	return &pb.MeshDatapath{Name: dp.Name, Reason: dp.Reason, Table: dp.Table}
}

// Mesh is the node's routing mesh and resolver.
func (a *Agent) Mesh() *mesh.Mesh { return a.mesh }

// Tasks returns the local records of the assigned tasks.
func (a *Agent) Tasks() []*pb.Task {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*pb.Task, 0, len(a.tasks))
	for _, t := range a.tasks {
		out = append(out, proto.Clone(t).(*pb.Task))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetId() < out[j].GetId() })
	return out
}

// Close stops the agent and leaves its tasks running: a restarted agent
// reattaches to them.
func (a *Agent) Close() error {
	a.closeOnce.Do(func() {
		a.cancel()
		if a.grpc != nil {
			a.grpc.Stop()
		}
		a.mu.Lock()
		ctrls := make([]*taskController, 0, len(a.controllers))
		for _, c := range a.controllers {
			ctrls = append(ctrls, c)
		}
		a.mu.Unlock()
		for _, c := range ctrls {
			<-c.done
		}
		a.wg.Wait()
		if err := a.mesh.Close(); err != nil {
			a.log.Warn("stop mesh", "err", err)
		}
		if a.taskNet != nil {
			_ = a.taskNet.Close() // the bridge and the tasks' namespaces stay for the next agent
		}
		if err := a.gossip.Shutdown(); err != nil {
			a.log.Warn("stop gossip", "err", err)
		}
		if err := a.db.close(); err != nil {
			a.log.Warn("close task db", "err", err)
		}
		a.log.Info("worker stopped")
	})
	return nil
}

// Leave removes this node from the cluster: the managers forget it, its
// tasks are stopped and removed, gossip is told, and the data dir can no
// longer rejoin.
func (a *Agent) Leave(ctx context.Context) error {
	var lastErr error
	for _, addr := range a.managerCandidates() {
		conn, err := rpc.Dial(addr, a.creds.Creds(), grpc.WithUnaryInterceptor(rpc.RetryUnavailable()))
		if err != nil {
			lastErr = err
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = pb.NewMembershipClient(conn).Leave(lctx, &pb.LeaveRequest{NodeId: a.id.NodeID})
		cancel()
		conn.Close()
		if err == nil {
			lastErr = nil
			break
		}
		lastErr = fmt.Errorf("leave through %s: %s", addr, status.Convert(err).Message())
	}
	if lastErr != nil {
		return lastErr
	}
	a.forgetCluster()
	return a.Close()
}

// describe reports this node's resources and runtimes, and whether it
// has a task network.
func describe(cfg *Config, runtimes []string, taskNetwork bool) *pb.NodeDescription {
	d := &pb.NodeDescription{
		Hostname:     cfg.Hostname,
		Os:           runtime.GOOS,
		Arch:         runtime.GOARCH,
		Resources:    host.Resources(),
		EngineLabels: cfg.Labels,
	}
	d.Runtimes = runtimes
	d.TaskNetwork = taskNetwork
	if cfg.NotOffered != nil {
		reasons := cfg.NotOffered()
		for _, name := range slices.Sorted(maps.Keys(reasons)) {
			d.RuntimesNotOffered = append(d.RuntimesNotOffered, &pb.RuntimeNotOffered{Name: name, Reason: reasons[name]})
		}
	}
	return d
}

// newNodeID returns a 25-character lower-case ID like the managers'.
func newNodeID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567"
	b := make([]byte, 25)
	if _, err := rand.Read(b); err != nil {
		panic("worker: no randomness: " + err.Error())
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}
