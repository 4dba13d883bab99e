package main

import (
	"fmt"

	"github.com/shoal-cluster/shoal/internal/datadir"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/cobra"
)

func leaveCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	cmd := &cobra.Command{
		Use:   "leave [OPTIONS]",
		Short: "Take the node in --data-dir out of the cluster",
		Args:  noArgs("leave takes no arguments"),
		RunE:  func(*cobra.Command, []string) error { return runLeave(c) },
	}
	c.register(cmd.Flags(), false)
	return cmd
}

// runLeave asks the cluster to remove the node in the data dir. The node's
// daemon notices, stops its tasks (a worker) or its Raft member (a
// manager, which first hands over leadership), and exits.
func runLeave(c *clientFlags) error {
	id, err := datadir.Load(c.dataDir)
	if err != nil {
		return fmt.Errorf("data dir %s: %w; point --data-dir at the node that should leave", c.dataDir, err)
	}
	if id.Removed {
		return fmt.Errorf("node %s already left the cluster", id.NodeID)
	}
	if c.host == "" {
		switch {
		case id.Role == "manager":
			c.host = id.Advertise
		case len(id.Managers) > 0:
			c.host = id.Managers[0]
		default:
			return usagef("no manager known for this worker yet; give one with --host")
		}
	}
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	if id.Role == "manager" {
		// A manager leaves as `node rm --force` would remove it: quorum checks apply.
		if _, err := s.control.RemoveNode(s.ctx, &pb.RemoveNodeRequest{Ref: id.NodeID, Force: true}); err != nil {
			return s.explain(err)
		}
	} else {
		_, err := pb.NewMembershipClient(s.conn).Leave(s.ctx, &pb.LeaveRequest{NodeId: id.NodeID})
		if err != nil {
			return s.explain(err)
		}
	}
	fmt.Printf("Node %s left the cluster; its daemon stops by itself.\n", id.NodeID)
	return nil
}
