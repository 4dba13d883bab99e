package main

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker/tasknet"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
)

// enumWord turns NODE_STATE_READY into "Ready".
func enumWord(name, prefix string) string {
	w := strings.ToLower(strings.TrimPrefix(name, prefix))
	if w == "" {
		return ""
	}
	return strings.ToUpper(w[:1]) + strings.ReplaceAll(w[1:], "_", " ")
}

func roleWord(r pb.NodeRole) string { return strings.ToLower(enumWord(r.String(), "NODE_ROLE_")) }

func managerStatus(n *pb.Node) string {
	ms := n.GetManagerStatus()
	if n.GetRole() != pb.NodeRole_NODE_ROLE_MANAGER || ms == nil {
		return ""
	}
	if ms.GetLeader() {
		return "Leader"
	}
	return enumWord(ms.GetReachability().String(), "REACHABILITY_")
}

// nodeCommand is `shoal node`, as `docker node`.
func nodeCommand(g *globalFlags) *cobra.Command {
	return group("node", "Manage nodes",
		nodeLsCommand(g), nodeInspectCommand(g), nodeUpdateCommand(g),
		nodeRoleCommand(g, "promote", "Make workers managers", pb.NodeRole_NODE_ROLE_MANAGER),
		nodeRoleCommand(g, "demote", "Make managers workers", pb.NodeRole_NODE_ROLE_WORKER),
		nodeRmCommand(g), statsCommand(g, "node"))
}

func nodeLsCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var quiet bool
	cmd := &cobra.Command{
		Use:   "ls [OPTIONS]",
		Short: "List nodes",
		Args:  noArgs("node ls takes no arguments"),
		RunE:  func(*cobra.Command, []string) error { return runNodeLs(c, quiet) },
	}
	c.register(cmd.Flags(), true)
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print node IDs only")
	return cmd
}

func runNodeLs(c *clientFlags, quiet bool) error {
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	resp, err := s.control.ListNodes(s.ctx, &pb.ListNodesRequest{})
	if err != nil {
		return s.explain(err)
	}
	nodes := resp.GetNodes()
	sort.Slice(nodes, func(i, j int) bool {
		hi, hj := nodes[i].GetDescription().GetHostname(), nodes[j].GetDescription().GetHostname()
		if hi != hj {
			return hi < hj
		}
		return nodes[i].GetId() < nodes[j].GetId()
	})
	switch {
	case quiet:
		for _, n := range nodes {
			fmt.Println(n.GetId())
		}
		return nil
	case c.format == "json":
		return printJSON(nodes)
	}
	t := newTable("ID", "HOSTNAME", "ADDRESS", "ROLE", "STATUS", "AVAILABILITY", "RESOURCES", "MANAGER STATUS")
	for _, n := range nodes {
		id := n.GetId()
		if n.GetApiAddr() == s.addr {
			id += " *"
		}
		t.row(id, n.GetDescription().GetHostname(), n.GetStatus().GetAddr(), roleWord(n.GetRole()),
			enumWord(n.GetStatus().GetState().String(), "NODE_STATE_"),
			enumWord(n.GetSpec().GetAvailability().String(), "NODE_AVAILABILITY_"), resources(n), managerStatus(n))
	}
	t.flush()
	return nil
}

// resources formats a node's CPUs and memory, e.g. "2 CPU 23.5GiB".
func resources(n *pb.Node) string {
	r := n.GetDescription().GetResources()
	if r == nil {
		return "-"
	}
	return fmt.Sprintf("%g CPU %s", float64(r.GetNanoCpus())/1e9, humanBytes(r.GetMemoryBytes()))
}

func nodeInspectCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var pretty bool
	cmd := &cobra.Command{
		Use:   "inspect [OPTIONS] NODE [NODE...]",
		Short: "Show one or more nodes in detail",
		Args:  minArgs(1, "node inspect needs at least one node ID or hostname"),
		RunE:  func(_ *cobra.Command, pos []string) error { return runNodeInspect(c, pretty, pos) },
	}
	c.register(cmd.Flags(), false)
	cmd.Flags().BoolVar(&pretty, "pretty", false, "human-readable output instead of JSON")
	return cmd
}

func runNodeInspect(c *clientFlags, pretty bool, pos []string) error {
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	var nodes []*pb.Node
	for _, ref := range pos {
		resp, err := s.control.GetNode(s.ctx, &pb.GetNodeRequest{Ref: ref})
		if err != nil {
			return s.explain(err)
		}
		nodes = append(nodes, resp.GetNode())
	}
	if !pretty {
		return printJSON(nodes)
	}
	for i, n := range nodes {
		if i > 0 {
			fmt.Println()
		}
		printNodePretty(n)
	}
	return nil
}

func printNodePretty(n *pb.Node) {
	d := n.GetDescription()
	fmt.Printf("ID:\t\t\t%s\n", n.GetId())
	fmt.Printf("Hostname:\t\t%s\n", d.GetHostname())
	fmt.Printf("Joined at:\t\t%s\n", ago(n.GetMeta().GetCreatedAt()))
	fmt.Printf("Status:\n State:\t\t\t%s\n Availability:\t\t%s\n Address:\t\t%s\n",
		enumWord(n.GetStatus().GetState().String(), "NODE_STATE_"),
		enumWord(n.GetSpec().GetAvailability().String(), "NODE_AVAILABILITY_"),
		n.GetStatus().GetAddr())
	if n.GetRole() == pb.NodeRole_NODE_ROLE_WORKER {
		fmt.Printf(" Last heartbeat:\t%s\n", ago(n.GetStatus().GetLastHeartbeat()))
	}
	if ms := n.GetManagerStatus(); ms != nil && n.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER {
		fmt.Printf("Manager Status:\n Address:\t\t%s\n Raft ID:\t\t%s\n Raft Status:\t\t%s\n Leader:\t\t%v\n",
			ms.GetApiAddr(), ms.GetRaftId(), enumWord(ms.GetReachability().String(), "REACHABILITY_"), ms.GetLeader())
	}
	if labels := n.GetSpec().GetAnnotations().GetLabels(); len(labels) > 0 {
		fmt.Println("Labels:")
		keys := make([]string, 0, len(labels))
		for k := range labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Printf(" - %s = %s\n", k, labels[k])
		}
	}
	fmt.Printf("Platform:\n Operating System:\t%s\n Architecture:\t\t%s\n", d.GetOs(), d.GetArch())
	fmt.Printf("Resources:\n CPUs:\t\t\t%g\n Memory:\t\t%s\n", float64(d.GetResources().GetNanoCpus())/1e9, humanBytes(d.GetResources().GetMemoryBytes()))
	if len(d.GetRuntimes()) > 0 {
		fmt.Printf("Runtimes:\t\t%s\n", strings.Join(d.GetRuntimes(), ", "))
	}
	for _, no := range d.GetRuntimesNotOffered() {
		fmt.Printf("Runtime not offered:\t%s (%s)\n", no.GetName(), no.GetReason())
	}
	if dp := d.GetMeshDatapath(); dp != nil {
		switch {
		case dp.GetTable() != "":
			fmt.Printf("Mesh datapath:\t\t%s (nftables table %s: nft list table %s)\n", dp.GetName(), dp.GetTable(), dp.GetTable())
		default:
			fmt.Printf("Mesh datapath:\t\t%s (%s)\n", dp.GetName(), dp.GetReason())
		}
	}
	if sub := n.GetTaskSubnet(); sub != "" {
		fmt.Printf("Task subnet:\t\t%s (bridge %s)\n", sub, taskBridge(sub))
	}
	if c := n.GetCertificate(); c != nil {
		fmt.Printf("TLS certificate:\n Role:\t\t\t%s\n Expires:\t\t%s\n Root CA:\t\t%s\n",
			roleWord(c.GetRole()), time.Unix(0, c.GetNotAfter()).UTC().Format(time.RFC3339), c.GetRootDigest())
	}
}

func humanBytes(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%dB", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

// nodeUpdateFlags are the flags of `node update`.
type nodeUpdateFlags struct {
	availability string
	add, rm      []string
}

func nodeUpdateCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var f nodeUpdateFlags
	cmd := &cobra.Command{
		Use:   "update [OPTIONS] NODE",
		Short: "Change a node's availability or labels",
		Args:  exactArgs(1, "node update needs exactly one node ID or hostname"),
		RunE:  func(_ *cobra.Command, pos []string) error { return runNodeUpdate(c, &f, pos[0]) },
	}
	c.register(cmd.Flags(), false)
	cmd.Flags().StringVar(&f.availability, "availability", "", "active, pause or drain")
	cmd.Flags().StringArrayVar(&f.add, "label-add", nil, "add or change a label `KEY=VALUE` (repeatable)")
	cmd.Flags().StringArrayVar(&f.rm, "label-rm", nil, "remove a label `KEY` (repeatable)")
	return cmd
}

func runNodeUpdate(c *clientFlags, f *nodeUpdateFlags, ref string) error {
	add, rm := f.add, f.rm
	var avail pb.NodeAvailability
	if f.availability != "" {
		v, ok := pb.NodeAvailability_value["NODE_AVAILABILITY_"+strings.ToUpper(f.availability)]
		if !ok {
			return usagef("--availability %q: use active, pause or drain", f.availability)
		}
		avail = pb.NodeAvailability(v)
	}
	for _, kv := range add {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return usagef("--label-add %q: use KEY=VALUE", kv)
		}
	}
	if f.availability == "" && len(add) == 0 && len(rm) == 0 {
		return usagef("nothing to update: give --availability, --label-add or --label-rm")
	}
	return updateNode(c, ref, func(spec *pb.NodeSpec) error {
		if f.availability != "" {
			spec.Availability = avail
		}
		if spec.Annotations == nil {
			spec.Annotations = &pb.Annotations{}
		}
		if spec.Annotations.Labels == nil {
			spec.Annotations.Labels = map[string]string{}
		}
		for _, kv := range add {
			k, v, _ := strings.Cut(kv, "=")
			spec.Annotations.Labels[k] = v
		}
		for _, k := range rm {
			if _, ok := spec.Annotations.Labels[k]; !ok {
				return fmt.Errorf("node has no label %q", k)
			}
			delete(spec.Annotations.Labels, k)
		}
		return nil
	})
}

// updateNode reads a node, changes its spec and writes it back with the
// version it read, so a concurrent change is never silently overwritten.
func updateNode(c *clientFlags, ref string, change func(*pb.NodeSpec) error) error {
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	got, err := s.control.GetNode(s.ctx, &pb.GetNodeRequest{Ref: ref})
	if err != nil {
		return s.explain(err)
	}
	n := got.GetNode()
	spec := proto.Clone(n.GetSpec()).(*pb.NodeSpec)
	if spec == nil {
		spec = &pb.NodeSpec{}
	}
	if err := change(spec); err != nil {
		return err
	}
	if _, err := s.control.UpdateNode(s.ctx, &pb.UpdateNodeRequest{Ref: n.GetId(), Version: n.GetMeta().GetVersion(), Spec: spec}); err != nil {
		return s.explain(err)
	}
	fmt.Println(n.GetId())
	return nil
}

// nodeRoleCommand is `node promote` or `node demote`.
func nodeRoleCommand(g *globalFlags, verb, short string, role pb.NodeRole) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	cmd := &cobra.Command{
		Use:   verb + " NODE [NODE...]",
		Short: short,
		Args:  minArgs(1, fmt.Sprintf("node %s needs at least one node ID or hostname", verb)),
		RunE:  func(_ *cobra.Command, pos []string) error { return changeRole(c, pos, role) },
	}
	c.register(cmd.Flags(), false)
	return cmd
}

func changeRole(c *clientFlags, pos []string, role pb.NodeRole) error {
	for _, ref := range pos {
		err := updateNode(c, ref, func(spec *pb.NodeSpec) error {
			if spec.GetDesiredRole() == role {
				return fmt.Errorf("node %s is already a %s", ref, roleWord(role))
			}
			spec.DesiredRole = role
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func nodeRmCommand(g *globalFlags) *cobra.Command {
	c := &clientFlags{globalFlags: g}
	var force bool
	cmd := &cobra.Command{
		Use:   "rm [OPTIONS] NODE [NODE...]",
		Short: "Remove nodes from the cluster",
		Args:  minArgs(1, "node rm needs at least one node ID or hostname"),
		RunE:  func(_ *cobra.Command, pos []string) error { return runNodeRm(c, force, pos) },
	}
	c.register(cmd.Flags(), false)
	cmd.Flags().BoolVarP(&force, "force", "f", false, "remove a manager or a node that is not down")
	return cmd
}

func runNodeRm(c *clientFlags, force bool, pos []string) error {
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	for _, ref := range pos {
		if _, err := s.control.RemoveNode(s.ctx, &pb.RemoveNodeRequest{Ref: ref, Force: force}); err != nil {
			return s.explain(err)
		}
		fmt.Println(ref)
	}
	return nil
}

// taskBridge is the bridge a node makes for its task subnet.
func taskBridge(subnet string) string {
	p, err := netip.ParsePrefix(subnet)
	if err != nil {
		return "?"
	}
	return tasknet.BridgeName(p)
}
