package main

import (
	"fmt"
	"strconv"
	"strings"

	pb "github.com/shoal-cluster/shoal/proto"
)

const clusterInfoUsage = "shoal cluster info [--format table|json]"

func runClusterInfo(args []string) error {
	var c clientFlags
	fs := newFlags("cluster info", clusterInfoUsage)
	c.register(fs, true)
	pos, err := parseFlags(fs, clusterInfoUsage, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("cluster info takes no arguments")
	}
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
	fmt.Printf("Cluster ID:\t%s\nManagers:\t%d\nLeader:\t\t%s\n\n", resp.GetCluster().GetId(), len(resp.GetManagers()), leader)
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

const joinTokenUsage = "shoal cluster join-token [-q] [--rotate] worker|manager"

func runJoinToken(args []string) error {
	var c clientFlags
	fs := newFlags("cluster join-token", joinTokenUsage)
	c.register(fs, false)
	quiet := fs.Bool("q", false, "print the token alone")
	rotate := fs.Bool("rotate", false, "replace the token: the old one stops admitting nodes; existing nodes are unaffected")
	pos, err := parseFlags(fs, joinTokenUsage, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || (pos[0] != "worker" && pos[0] != "manager") {
		return usagef("say which token: `shoal cluster join-token worker` or `shoal cluster join-token manager`")
	}
	role := pb.NodeRole_NODE_ROLE_WORKER
	if pos[0] == "manager" {
		role = pb.NodeRole_NODE_ROLE_MANAGER
	}
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	var token string
	if *rotate {
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
	if *quiet {
		fmt.Println(token)
		return nil
	}
	if *rotate {
		fmt.Printf("Rotated the %s join token.\n\n", pos[0])
	}
	fmt.Printf("To add a %s to this cluster, run:\n\n    shoal join --data-dir DIR --advertise IP --token %s %s\n", pos[0], token, strings.TrimSpace(s.addr))
	return nil
}
