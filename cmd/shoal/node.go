package main

import (
	"fmt"
	"sort"
	"strings"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
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

const nodeLsUsage = "shoal node ls [--format table|json] [-q]"

func runNodeLs(args []string) error {
	var c clientFlags
	fs := newFlags("node ls", nodeLsUsage)
	c.register(fs, true)
	quiet := fs.Bool("q", false, "print node IDs only")
	pos, err := parseFlags(fs, nodeLsUsage, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("node ls takes no arguments")
	}
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
	case *quiet:
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

const nodeInspectUsage = "shoal node inspect [--pretty] NODE [NODE...]"

func runNodeInspect(args []string) error {
	var c clientFlags
	fs := newFlags("node inspect", nodeInspectUsage)
	c.register(fs, false)
	pretty := fs.Bool("pretty", false, "human-readable output instead of JSON")
	pos, err := parseFlags(fs, nodeInspectUsage, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("node inspect needs at least one node ID or hostname")
	}
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
	if !*pretty {
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

const nodeUpdateUsage = "shoal node update [--availability active|pause|drain] [--label-add K=V] [--label-rm K] NODE"

func runNodeUpdate(args []string) error {
	var c clientFlags
	fs := newFlags("node update", nodeUpdateUsage)
	c.register(fs, false)
	availability := fs.String("availability", "", "active, pause or drain")
	var add, rm stringList
	fs.Var(&add, "label-add", "add or change a label KEY=VALUE (repeatable)")
	fs.Var(&rm, "label-rm", "remove a label KEY (repeatable)")
	pos, err := parseFlags(fs, nodeUpdateUsage, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("node update needs exactly one node ID or hostname")
	}
	var avail pb.NodeAvailability
	if *availability != "" {
		v, ok := pb.NodeAvailability_value["NODE_AVAILABILITY_"+strings.ToUpper(*availability)]
		if !ok {
			return usagef("--availability %q: use active, pause or drain", *availability)
		}
		avail = pb.NodeAvailability(v)
	}
	for _, kv := range add {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return usagef("--label-add %q: use KEY=VALUE", kv)
		}
	}
	if *availability == "" && len(add) == 0 && len(rm) == 0 {
		return usagef("nothing to update: give --availability, --label-add or --label-rm")
	}
	return updateNode(&c, pos[0], func(spec *pb.NodeSpec) error {
		if *availability != "" {
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

func runNodePromote(args []string) error {
	return changeRole(args, "promote", pb.NodeRole_NODE_ROLE_MANAGER)
}
func runNodeDemote(args []string) error {
	return changeRole(args, "demote", pb.NodeRole_NODE_ROLE_WORKER)
}

func changeRole(args []string, verb string, role pb.NodeRole) error {
	var c clientFlags
	usage := "shoal node " + verb + " NODE [NODE...]"
	fs := newFlags("node "+verb, usage)
	c.register(fs, false)
	pos, err := parseFlags(fs, usage, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("node %s needs at least one node ID or hostname", verb)
	}
	for _, ref := range pos {
		err := updateNode(&c, ref, func(spec *pb.NodeSpec) error {
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

const nodeRmUsage = "shoal node rm [--force] NODE [NODE...]"

func runNodeRm(args []string) error {
	var c clientFlags
	fs := newFlags("node rm", nodeRmUsage)
	c.register(fs, false)
	force := fs.Bool("force", false, "remove a manager or a node that is not down")
	pos, err := parseFlags(fs, nodeRmUsage, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("node rm needs at least one node ID or hostname")
	}
	s, err := c.connect()
	if err != nil {
		return err
	}
	defer s.close()
	for _, ref := range pos {
		if _, err := s.control.RemoveNode(s.ctx, &pb.RemoveNodeRequest{Ref: ref, Force: *force}); err != nil {
			return s.explain(err)
		}
		fmt.Println(ref)
	}
	return nil
}
