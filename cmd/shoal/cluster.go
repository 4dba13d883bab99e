package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-cluster/shoal/internal/pki"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/cobra"
)

// clusterCommand is `shoal cluster`.
func clusterCommand(g *globalFlags) *cobra.Command {
	return group("cluster", "Manage the cluster",
		clusterInfoCommand(g), joinTokenCommand(g), clientConfigCommand(g), caCommand(g), gossipKeyCommand(g))
}

func clusterInfoCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	cmd := &cobra.Command{
		Use:   "info [OPTIONS]",
		Short: "Show the cluster ID, the managers' Raft state and the leader",
		Args:  noArgs("cluster info takes no arguments"),
		RunE:  func(*cobra.Command, []string) error { return runClusterInfo(c) },
	}
	c.register(cmd.Flags(), true)
	return cmd
}

func runClusterInfo(c *clientFlags) error {
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	resp, err := s.control.GetCluster(s.ctx, &pb.GetClusterRequest{})
	if err != nil {
		return s.explain(err)
	}
	if c.format == "json" {
		// Join tokens are secrets: `cluster join-token` shows them on purpose.
		resp.Cluster.JoinTokens = nil
		return printJSON([]*pb.GetClusterResponse{resp})
	}
	leader := resp.GetLeaderNodeId()
	if leader == "" {
		leader = "none (no quorum, or an election is in progress)"
	}
	fmt.Printf("Cluster ID:\t%s\nManagers:\t%d\nLeader:\t\t%s\n", resp.GetCluster().GetId(), len(resp.GetManagers()), leader)
	fmt.Printf("Root CA:\t%s\n", resp.GetCluster().GetRootCa().GetDigest())
	if len(resp.GetCluster().GetRootCa().GetCrossSigned()) > 0 {
		fmt.Printf("\t\trotation in progress: %s\n", rotationProgress(s, resp.GetCluster().GetRootCa().GetDigest()))
	}
	fmt.Printf("Cert expiry:\t%s\n\n", time.Duration(resp.GetCluster().GetSpec().GetCertExpiry()))
	t := newTable("NODE", "HOSTNAME", "RAFT ADDRESS", "STATE", "TERM", "COMMIT INDEX", "APPLIED INDEX", "VOTER")
	for _, m := range resp.GetManagers() {
		state := m.GetState()
		if m.GetError() != "" {
			state = "Unreachable"
		}
		t.row(m.GetNodeId(), m.GetHostname(), m.GetRaftAddr(), state, u(m.GetTerm()), u(m.GetCommitIndex()), u(m.GetAppliedIndex()), strconv.FormatBool(m.GetVoter()))
	}
	t.flush()
	return nil
}

func u(v uint64) string {
	if v == 0 {
		return "-"
	}
	return strconv.FormatUint(v, 10)
}

func joinTokenCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var quiet, rotate bool
	cmd := &cobra.Command{
		Use:       "join-token [OPTIONS] worker|manager",
		Short:     "Show or rotate a join token",
		ValidArgs: []string{"worker", "manager"},
		Args: func(_ *cobra.Command, pos []string) error {
			if len(pos) != 1 || (pos[0] != "worker" && pos[0] != "manager") {
				return usagef("say which token: `shoal cluster join-token worker` or `shoal cluster join-token manager`")
			}
			return nil
		},
		RunE: func(_ *cobra.Command, pos []string) error { return runJoinToken(c, quiet, rotate, pos[0]) },
	}
	c.register(cmd.Flags(), false)
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print the token alone")
	cmd.Flags().BoolVar(&rotate, "rotate", false, "replace the token: the old one stops admitting nodes; existing nodes are unaffected")
	return cmd
}

func runJoinToken(c *clientFlags, quiet, rotate bool, which string) error {
	role := pb.NodeRole_NODE_ROLE_WORKER
	if which == "manager" {
		role = pb.NodeRole_NODE_ROLE_MANAGER
	}
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	var token string
	if rotate {
		resp, err := s.control.RotateJoinToken(s.ctx, &pb.RotateJoinTokenRequest{Role: role})
		if err != nil {
			return s.explain(err)
		}
		token = resp.GetToken()
	} else {
		resp, err := s.control.GetCluster(s.ctx, &pb.GetClusterRequest{})
		if err != nil {
			return s.explain(err)
		}
		token = resp.GetCluster().GetJoinTokens().GetWorker()
		if role == pb.NodeRole_NODE_ROLE_MANAGER {
			token = resp.GetCluster().GetJoinTokens().GetManager()
		}
	}
	if quiet {
		fmt.Println(token)
		return nil
	}
	if rotate {
		fmt.Printf("Rotated the %s join token.\n\n", which)
	}
	fmt.Printf("To add a %s to this cluster, run:\n\n    shoal join --data-dir DIR --advertise IP --token %s %s\n", which, token, strings.TrimSpace(s.addr))
	return nil
}

func clientConfigCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var dockerDir string
	cmd := &cobra.Command{
		Use:   "client-config [OPTIONS] > FILE",
		Short: "Export an admin client config for another machine (or, with --docker DIR, for the docker CLI)",
		Args:  noArgs("cluster client-config takes no arguments; redirect its output to a file"),
		RunE:  func(*cobra.Command, []string) error { return runClientConfig(c, dockerDir) },
	}
	c.register(cmd.Flags(), false)
	cmd.Flags().StringVar(&dockerDir, "docker", "", "write ca.pem, cert.pem and key.pem into `DIR` for the docker CLI (DOCKER_CERT_PATH=DIR DOCKER_TLS_VERIFY=1) instead")
	return cmd
}

// writeDockerCerts writes an admin certificate as the docker CLI reads
// one: DIR/ca.pem, cert.pem and key.pem. It refuses to overwrite them.
func writeDockerCerts(dir string, certPEM, keyPEM, rootsPEM []byte) error {
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{{"ca.pem", rootsPEM, 0o644}, {"cert.pem", certPEM, 0o644}, {"key.pem", keyPEM, 0o600}}
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(dir, f.name)); err == nil {
			return fmt.Errorf("%s already exists: remove it or give another directory", filepath.Join(dir, f.name))
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// runClientConfig exports an admin client config for another machine: a
// new key made here, a certificate the cluster signs for it, the roots and
// the manager's address. Use it there with --client-config FILE.
func runClientConfig(c *clientFlags, dockerDir string) error {
	if dockerDir != "" {
		for _, name := range []string{"ca.pem", "cert.pem", "key.pem"} {
			if _, err := os.Stat(filepath.Join(dockerDir, name)); err == nil {
				return usagef("%s already exists: remove it or give another directory", filepath.Join(dockerDir, name))
			}
		}
	}
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	keyPEM, csr, err := pki.NewKeyAndCSR()
	if err != nil {
		return err
	}
	resp, err := s.control.IssueClientCertificate(s.ctx, &pb.IssueClientCertificateRequest{Csr: csr})
	if err != nil {
		return s.explain(err)
	}
	if dockerDir != "" {
		if err := writeDockerCerts(dockerDir, resp.GetCertificate(), keyPEM, resp.GetRootCas()); err != nil {
			return err
		}
		fmt.Printf("Wrote ca.pem, cert.pem and key.pem to %s. Use them with a manager started with --docker-api-addr IP:PORT:\n\n", dockerDir)
		fmt.Printf("    DOCKER_HOST=tcp://IP:PORT DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=%s docker node ls\n\n", dockerDir)
		fmt.Println("Keep key.pem private: it grants full control of the cluster.")
		return nil
	}
	cc := &pki.ClientConfig{Host: s.addr, CertPEM: resp.GetCertificate(), KeyPEM: keyPEM, RootsPEM: resp.GetRootCas()}
	if _, err := os.Stdout.Write(cc.Encode()); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "Keep this file private: it grants full control of the cluster. Use it with --client-config FILE or SHOAL_CLIENT_CONFIG=FILE.")
	return nil
}

// caCommand rotates the cluster's root CA.
func caCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var rotate bool
	cmd := &cobra.Command{
		Use:   "ca --rotate",
		Short: "Rotate the cluster's root CA",
		RunE: func(_ *cobra.Command, pos []string) error {
			if len(pos) > 0 || !rotate {
				return usagef("say what to do: `shoal cluster ca --rotate`")
			}
			return runCA(c)
		},
	}
	c.register(cmd.Flags(), false)
	cmd.Flags().BoolVar(&rotate, "rotate", false, "make a new root CA; every node renews its certificate, then the old root is dropped")
	return cmd
}

func runCA(c *clientFlags) error {
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	resp, err := s.control.RotateRootCA(s.ctx, &pb.RotateRootCARequest{})
	if err != nil {
		return s.explain(err)
	}
	fmt.Printf("Root CA rotation started (new root digest %s).\n", resp.GetDigest())
	fmt.Println("Nodes renew their certificates now; the old root is trusted until all have. Join tokens changed: get them again with `shoal cluster join-token`.")
	fmt.Println("Admin client configs exported before the rotation stop working once it completes: export new ones with `shoal cluster client-config`.")
	return nil
}

// gossipKeyCommand rotates the gossip encryption key.
func gossipKeyCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var rotate bool
	cmd := &cobra.Command{
		Use:   "gossip-key --rotate",
		Short: "Rotate the gossip encryption key",
		RunE: func(_ *cobra.Command, pos []string) error {
			if len(pos) > 0 || !rotate {
				return usagef("say what to do: `shoal cluster gossip-key --rotate`")
			}
			return runGossipKey(c)
		},
	}
	c.register(cmd.Flags(), false)
	cmd.Flags().BoolVar(&rotate, "rotate", false, "make a new gossip key the primary one (nodes keep the previous key until the next rotation)")
	return cmd
}

func runGossipKey(c *clientFlags) error {
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	if _, err := s.control.RotateGossipKey(s.ctx, &pb.RotateGossipKeyRequest{}); err != nil {
		return s.explain(err)
	}
	fmt.Println("Gossip key rotated: nodes encrypt with the new key now and still accept the previous one until the next rotation.")
	return nil
}

// rotationProgress says how many nodes hold a certificate of the new root.
func rotationProgress(s *session, digest string) string {
	resp, err := s.control.ListNodes(s.ctx, &pb.ListNodesRequest{})
	if err != nil {
		return s.explain(err).Error()
	}
	done := 0
	for _, n := range resp.GetNodes() {
		if n.GetCertificate().GetRootDigest() == digest {
			done++
		}
	}
	return fmt.Sprintf("%d of %d nodes hold a certificate of the new root", done, len(resp.GetNodes()))
}
