package dockerapi

import (
	"net/http"

	"github.com/moby/moby/api/types/swarm"
	pb "github.com/shoal-cluster/shoal/proto"
)

func (s *Server) listNodes(w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilters(r, "id", "label", "node.label", "membership", "name", "role")
	if err != nil {
		return err
	}
	resp, err := s.cfg.Control.ListNodes(r.Context(), &pb.ListNodesRequest{})
	if err != nil {
		return err
	}
	out := []swarm.Node{}
	for _, n := range resp.GetNodes() {
		d := nodeToDocker(n)
		if !f.prefix("id", d.ID) || !f.prefix("name", d.Description.Hostname) || !f.exact("role", string(d.Spec.Role)) ||
			!f.exact("membership", "accepted") || !f.labels("label", d.Description.Engine.Labels) || !f.labels("node.label", d.Spec.Labels) {
			continue
		}
		out = append(out, d)
	}
	return writeJSON(w, http.StatusOK, out)
}

// nodeRef resolves "self" to this manager, as the Engine does.
func (s *Server) nodeRef(ref string) string {
	if ref == "self" {
		return s.cfg.NodeID
	}
	return ref
}

func (s *Server) getNode(w http.ResponseWriter, r *http.Request) error {
	resp, err := s.cfg.Control.GetNode(r.Context(), &pb.GetNodeRequest{Ref: s.nodeRef(r.PathValue("id"))})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nodeToDocker(resp.GetNode()))
}

func (s *Server) updateNode(w http.ResponseWriter, r *http.Request) error {
	version, err := queryVersion(r)
	if err != nil {
		return err
	}
	var spec swarm.NodeSpec
	if err := decode(r, &spec); err != nil {
		return err
	}
	ps, err := nodeSpecFromDocker(spec)
	if err != nil {
		return err
	}
	ctx := r.Context()
	ref := s.nodeRef(r.PathValue("id"))
	cur, err := s.cfg.Control.GetNode(ctx, &pb.GetNodeRequest{Ref: ref})
	if err != nil {
		return err
	}
	if spec.Name != "" && spec.Name != cur.GetNode().GetSpec().GetAnnotations().GetName() {
		return badRequest("a node's name cannot be set: Shoal names nodes by hostname (--hostname when the node starts)")
	}
	ps.Annotations.Name = cur.GetNode().GetSpec().GetAnnotations().GetName()
	if _, err := s.cfg.Control.UpdateNode(ctx, &pb.UpdateNodeRequest{Ref: cur.GetNode().GetId(), Version: version, Spec: ps}); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func (s *Server) removeNode(w http.ResponseWriter, r *http.Request) error {
	_, err := s.cfg.Control.RemoveNode(r.Context(), &pb.RemoveNodeRequest{Ref: s.nodeRef(r.PathValue("id")), Force: boolQuery(r, "force")})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func nodeSpecFromDocker(spec swarm.NodeSpec) (*pb.NodeSpec, error) {
	out := &pb.NodeSpec{Annotations: &pb.Annotations{Labels: spec.Labels}}
	switch spec.Role {
	case swarm.NodeRoleManager:
		out.DesiredRole = pb.NodeRole_NODE_ROLE_MANAGER
	case swarm.NodeRoleWorker:
		out.DesiredRole = pb.NodeRole_NODE_ROLE_WORKER
	default:
		return nil, badRequest("invalid node role %q: use worker or manager", spec.Role)
	}
	switch spec.Availability {
	case swarm.NodeAvailabilityActive:
		out.Availability = pb.NodeAvailability_NODE_AVAILABILITY_ACTIVE
	case swarm.NodeAvailabilityPause:
		out.Availability = pb.NodeAvailability_NODE_AVAILABILITY_PAUSE
	case swarm.NodeAvailabilityDrain:
		out.Availability = pb.NodeAvailability_NODE_AVAILABILITY_DRAIN
	default:
		return nil, badRequest("invalid availability %q: use active, pause or drain", spec.Availability)
	}
	return out, nil
}

func nodeToDocker(n *pb.Node) swarm.Node {
	d := swarm.Node{
		ID:   n.GetId(),
		Meta: meta(n.GetMeta()),
		Spec: swarm.NodeSpec{
			Annotations: swarm.Annotations{Name: n.GetSpec().GetAnnotations().GetName(), Labels: orEmpty(n.GetSpec().GetAnnotations().GetLabels())},
			Role:        swarm.NodeRoleWorker,
		},
		Description: swarm.NodeDescription{
			Hostname:  n.GetDescription().GetHostname(),
			Platform:  swarm.Platform{Architecture: archName(n.GetDescription().GetArch()), OS: n.GetDescription().GetOs()},
			Resources: swarm.Resources{NanoCPUs: n.GetDescription().GetResources().GetNanoCpus(), MemoryBytes: n.GetDescription().GetResources().GetMemoryBytes()},
			Engine:    swarm.EngineDescription{EngineVersion: n.GetDescription().GetVersion(), Labels: n.GetDescription().GetEngineLabels()},
		},
		Status: swarm.NodeStatus{Message: n.GetStatus().GetMessage(), Addr: n.GetStatus().GetAddr()},
	}
	if n.GetSpec().GetDesiredRole() == pb.NodeRole_NODE_ROLE_MANAGER {
		d.Spec.Role = swarm.NodeRoleManager
	}
	switch n.GetSpec().GetAvailability() {
	case pb.NodeAvailability_NODE_AVAILABILITY_PAUSE:
		d.Spec.Availability = swarm.NodeAvailabilityPause
	case pb.NodeAvailability_NODE_AVAILABILITY_DRAIN:
		d.Spec.Availability = swarm.NodeAvailabilityDrain
	default:
		d.Spec.Availability = swarm.NodeAvailabilityActive
	}
	switch n.GetStatus().GetState() {
	case pb.NodeState_NODE_STATE_READY:
		d.Status.State = swarm.NodeStateReady
	case pb.NodeState_NODE_STATE_DOWN:
		d.Status.State = swarm.NodeStateDown
	case pb.NodeState_NODE_STATE_DISCONNECTED:
		d.Status.State = swarm.NodeStateDisconnected
	default:
		d.Status.State = swarm.NodeStateUnknown
	}
	if ms := n.GetManagerStatus(); ms != nil && n.GetRole() == pb.NodeRole_NODE_ROLE_MANAGER {
		d.ManagerStatus = &swarm.ManagerStatus{Leader: ms.GetLeader(), Addr: ms.GetApiAddr()}
		switch ms.GetReachability() {
		case pb.Reachability_REACHABILITY_REACHABLE:
			d.ManagerStatus.Reachability = swarm.ReachabilityReachable
		case pb.Reachability_REACHABILITY_UNREACHABLE:
			d.ManagerStatus.Reachability = swarm.ReachabilityUnreachable
		default:
			d.ManagerStatus.Reachability = swarm.ReachabilityUnknown
		}
	}
	return d
}

// archName names an architecture as Docker's nodes report it.
func archName(goarch string) string {
	switch goarch {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	}
	return goarch
}

func orEmpty(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}
