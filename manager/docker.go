package manager

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"path/filepath"

	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/manager/ca"
	"github.com/shoal-cluster/shoal/manager/controlapi"
	"github.com/shoal-cluster/shoal/manager/dockerapi"
	"github.com/shoal-cluster/shoal/manager/leaderroute"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

// DockerSocket is the name of the docker API's unix socket in a manager's
// data dir.
const DockerSocket = "docker.sock"

// startDockerAPI serves the Docker Engine API: always on the unix socket
// in the data dir, and with cfg.DockerAPIAddr on TCP with TLS. Calls go
// to the Control API through the router, so a follower forwards writes to
// the leader as it does for gRPC clients.
func (m *Manager) startDockerAPI(control *controlapi.Server, router *leaderroute.Router) error {
	api := dockerapi.New(dockerapi.Config{
		Control:     pb.NewControlClient(router.InProcess(&pb.Control_ServiceDesc, control)),
		Logs:        control.Logs,
		Events:      control.StreamEvents,
		NodeID:      m.id.NodeID,
		Hostname:    m.cfg.Hostname,
		AdvertiseIP: m.cfg.AdvertiseIP,
		Version:     m.cfg.Version,
		Log:         m.log.With("link", "docker-api"),
	})
	sock := filepath.Join(m.cfg.DataDir, DockerSocket)
	local := pki.Identity{ID: "docker-socket-" + m.id.NodeID[:8], Role: pki.RoleAdmin, ClusterID: m.id.ClusterID}
	if l, err := api.ListenUnix(sock, local); err != nil {
		m.log.Warn("no docker API socket", "err", err)
	} else {
		m.docker = append(m.docker, l)
	}
	if m.cfg.DockerAPIAddr == "" {
		return nil
	}
	l, err := api.ListenTLS(m.cfg.DockerAPIAddr, dockerCerts{m}, m.dockerNames())
	if err != nil {
		m.closeDockerAPI()
		return err
	}
	m.docker = append(m.docker, l)
	m.log.Info("serving the docker API", "addr", l.Addr().String(), "socket", sock)
	return nil
}

// dockerNames are the addresses and names the TLS listener's certificate
// is issued for: clients check them against the address they dial.
func (m *Manager) dockerNames() pki.ServerName {
	names := pki.ServerName{Hosts: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}}
	if m.cfg.Hostname != "" {
		names.Hosts = append(names.Hosts, m.cfg.Hostname)
	}
	add := func(s string) {
		if ip := net.ParseIP(s); ip != nil && !ip.IsUnspecified() {
			names.IPs = append(names.IPs, ip)
		}
	}
	add(m.cfg.AdvertiseIP)
	add(m.cfg.ListenIP)
	if host, _, err := net.SplitHostPort(m.cfg.DockerAPIAddr); err == nil {
		add(host)
	}
	return names
}

func (m *Manager) closeDockerAPI() {
	for _, l := range m.docker {
		if err := l.Close(); err != nil {
			m.log.Debug("close docker API listener", "err", err)
		}
	}
	m.docker = nil
}

// dockerCerts gives the docker API's TLS listener the cluster's roots and
// a server certificate signed by the cluster's CA (any manager holds it).
type dockerCerts struct{ m *Manager }

func (d dockerCerts) cluster() (*pb.Cluster, error) {
	var c *pb.Cluster
	d.m.store.View(func(tx *raftstore.Tx) { c = tx.Cluster() })
	if c == nil || c.GetRootCa() == nil {
		return nil, fmt.Errorf("this manager has not received the cluster's CA yet")
	}
	return c, nil
}

func (d dockerCerts) Roots() (*x509.CertPool, string, error) {
	c, err := d.cluster()
	if err != nil {
		return nil, "", err
	}
	pool, err := pki.Pool(c.GetRootCa().GetTrustBundle())
	return pool, c.GetId(), err
}

func (d dockerCerts) ServerCert(names pki.ServerName) (*tls.Certificate, error) {
	c, err := d.cluster()
	if err != nil {
		return nil, err
	}
	keyPEM, csr, err := pki.NewKeyAndCSR()
	if err != nil {
		return nil, err
	}
	certPEM, err := ca.IssueServer(c, csr, d.m.id.NodeID, names)
	if err != nil {
		return nil, fmt.Errorf("issue the docker API's certificate: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, err
		}
	}
	return &cert, nil
}
