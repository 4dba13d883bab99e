package manager

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/host"
	"github.com/shoal-cluster/shoal/manager/ca"
	"github.com/shoal-cluster/shoal/manager/controlapi"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

// Default ports: the API port is advertised; Raft and gossip sit just above.
const (
	DefaultAPIPort  = 4242
	raftPortOffset  = 1
	gossipPortOfset = 2
)

// DefaultCertExpiry is the default lifetime of node certificates.
const DefaultCertExpiry = ca.DefaultCertExpiry

// MaxSecretSize is the largest secret value a manager accepts.
const MaxSecretSize = controlapi.MaxSecretSize

// MaxConfigSize is the largest config a manager accepts.
const MaxConfigSize = controlapi.MaxConfigSize

// Config configures a manager node.
type Config struct {
	// DataDir holds node.json and the Raft state (raft/).
	DataDir string
	// Hostname is the name the node registers with (default: os.Hostname).
	Hostname string
	// AdvertiseIP is the address other nodes reach this one on.
	AdvertiseIP string
	// APIPort is the gRPC port; Raft uses APIPort+1 and gossip APIPort+2.
	APIPort int
	// ListenIP is the address the servers bind to (default: AdvertiseIP).
	ListenIP string
	// Timing are the Raft timings (default raftstore.DefaultTiming).
	Timing raftstore.Timing
	// SnapshotThreshold and TrailingLogs tune log compaction (0: defaults).
	SnapshotThreshold uint64
	TrailingLogs      uint64
	// ProbeInterval is how often the leader checks the other managers.
	ProbeInterval time.Duration
	// HeartbeatPeriod is how often workers report; a worker that misses
	// three periods is marked Down (default 1s).
	HeartbeatPeriod time.Duration
	// GossipFast uses LAN-local gossip timings (loopback clusters, tests).
	GossipFast bool
	// MeshDatapath is the routing mesh's datapath: mesh.DatapathAuto (the
	// default: nftables when possible) or mesh.DatapathUserspace.
	MeshDatapath string
	// TaskSubnetPool is where this manager, while it leads, hands out
	// workers' task subnets (/24s; default tasksubnet.DefaultPool,
	// 10.201.0.0/16). Give every manager the same: a node keeps the subnet
	// it got, whichever manager led then.
	TaskSubnetPool netip.Prefix
	// EventHistory is how many events this manager keeps for `shoal
	// events --since` and for clients resuming after a failover (default
	// 10,000).
	EventHistory int
	// CertExpiry is the lifetime of node certificates, set at init
	// (default 90 days); nodes renew theirs after two thirds of it.
	CertExpiry time.Duration
	// CertCheckInterval is how often a manager checks whether its
	// certificate is due for renewal and follows CA and gossip key
	// rotations (default 1s).
	CertCheckInterval time.Duration
	// DockerAPIAddr is the IP:PORT the Docker Engine API is served on with
	// TLS (admin client certificates only); empty: only on the unix socket
	// in the data dir.
	DockerAPIAddr string
	// Version is this build's version, as `docker version` shows it.
	Version string
	// WrapRaftStream wraps the Raft transport's stream layer (fault
	// injection in tests); TLS is beneath it.
	WrapRaftStream func(raft.StreamLayer) raft.StreamLayer
	Logger         *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.DataDir == "" {
		return fmt.Errorf("a data dir is required (--data-dir)")
	}
	if c.AdvertiseIP == "" {
		return fmt.Errorf("an advertise address is required (--advertise IP[:PORT])")
	}
	if ip := net.ParseIP(c.AdvertiseIP); ip == nil || ip.IsUnspecified() {
		return fmt.Errorf("advertise address %q must be a concrete IP address other nodes can reach", c.AdvertiseIP)
	}
	if c.APIPort == 0 {
		c.APIPort = DefaultAPIPort
	}
	if c.APIPort < 1 || c.APIPort > 65535-gossipPortOfset {
		return fmt.Errorf("API port %d out of range (1-%d)", c.APIPort, 65535-gossipPortOfset)
	}
	if c.ListenIP == "" {
		c.ListenIP = c.AdvertiseIP
	}
	if c.Hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			h = "localhost"
		}
		c.Hostname = h
	}
	if c.Timing == (raftstore.Timing{}) {
		c.Timing = raftstore.DefaultTiming()
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = time.Second
	}
	if c.HeartbeatPeriod == 0 {
		c.HeartbeatPeriod = time.Second
	}
	if c.CertExpiry == 0 {
		c.CertExpiry = DefaultCertExpiry
	}
	if c.CertExpiry < 3*time.Second {
		return fmt.Errorf("certificate expiry %s is too short (at least 3s; the default is 90 days)", c.CertExpiry)
	}
	if c.CertCheckInterval == 0 {
		c.CertCheckInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// adoptIdentity fills the address and hostname a node was created with,
// and refuses a different advertise address: other managers know this one.
func (c *Config) adoptIdentity(id *datadir.Identity) error {
	if c.Hostname == "" {
		c.Hostname = id.Hostname
	}
	if id.Advertise == "" {
		return nil
	}
	host, portStr, err := net.SplitHostPort(id.Advertise)
	if err != nil {
		return fmt.Errorf("node.json: bad advertise address %q: %w", id.Advertise, err)
	}
	port, _ := strconv.Atoi(portStr)
	if c.AdvertiseIP == "" {
		c.AdvertiseIP, c.APIPort = host, port
		return nil
	}
	if c.APIPort == 0 {
		c.APIPort = DefaultAPIPort
	}
	if c.AdvertiseIP != host || c.APIPort != port {
		return fmt.Errorf("this node was created with advertise address %s; restart it with that address (or without --advertise)", id.Advertise)
	}
	return nil
}

// APIAddr is the advertised gRPC address.
func (c *Config) APIAddr() string { return hostPort(c.AdvertiseIP, c.APIPort) }

// RaftAddr is the advertised Raft address.
func (c *Config) RaftAddr() string { return hostPort(c.AdvertiseIP, c.APIPort+raftPortOffset) }

// GossipAddr is the advertised gossip address.
func (c *Config) GossipAddr() string { return hostPort(c.AdvertiseIP, c.APIPort+gossipPortOfset) }

func (c *Config) listenAPI() string { return hostPort(c.ListenIP, c.APIPort) }

// GossipAddrOf derives a node's gossip address from its API address.
func GossipAddrOf(apiAddr string) (string, bool) {
	host, port, err := net.SplitHostPort(apiAddr)
	if err != nil {
		return "", false
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return "", false
	}
	return hostPort(host, p+gossipPortOfset), true
}

// GossipPort is the gossip port for an API port.
func GossipPort(apiPort int) int     { return apiPort + gossipPortOfset }
func (c *Config) listenRaft() string { return hostPort(c.ListenIP, c.APIPort+raftPortOffset) }

func hostPort(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }

// WithDefaultPort appends the default API port to an address without one.
func WithDefaultPort(addr string) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	return hostPort(strings.Trim(addr, "[]"), DefaultAPIPort)
}

// describeHost reports this machine's platform and resources.
func describeHost(hostname string) *pb.NodeDescription {
	return &pb.NodeDescription{Hostname: hostname, Os: runtime.GOOS, Arch: runtime.GOARCH, Resources: host.Resources()}
}
