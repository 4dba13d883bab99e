package controlapi

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/shoal-cluster/shoal/manager/endpoints"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// The routing mesh as a network: every service is on it, whether it says
// so or not. It is not stored; a service may name it in an attachment (to
// give itself aliases there).
const (
	// MeshNetworkName is the routing mesh's network name.
	MeshNetworkName = "shoal"
	// MeshNetworkID is the routing mesh's network ID.
	MeshNetworkID = "shoalmesh0000000000000000"
	// IngressNetworkName is Docker's name for its routing mesh: in Shoal
	// the mesh (MeshNetworkName) is the ingress, and no network may take
	// this name.
	IngressNetworkName = "ingress"
	// NetworkDriverOverlay is the one network driver Shoal offers.
	NetworkDriverOverlay = "overlay"
)

// Limits on networks and aliases.
const (
	maxNetworkNameLen = 64
	maxAliasLen       = 63
	maxAliases        = 32
	maxAttachments    = 32
)

// networkName is a network's name (Docker's rule).
var networkName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// aliasName is a DNS alias: one DNS label, letters, digits, '-' and '_'.
var aliasName = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9_-]*[a-zA-Z0-9])?$`)

func networkNameOf(n *pb.Network) string { return n.GetSpec().GetAnnotations().GetName() }

// isMeshRef reports whether ref names the routing mesh (by name, ID or ID
// prefix).
func isMeshRef(ref string) bool {
	return ref == MeshNetworkName || (len(ref) > 0 && strings.HasPrefix(MeshNetworkID, ref))
}

// validateNetworkSpec checks a new network's name, driver and labels.
func validateNetworkSpec(spec *pb.NetworkSpec) error {
	name := spec.GetAnnotations().GetName()
	switch {
	case name == "":
		return status.Error(codes.InvalidArgument, "a network needs a name")
	case len(name) > maxNetworkNameLen || !networkName.MatchString(name):
		return status.Errorf(codes.InvalidArgument, "invalid network name %q: use 1-%d letters, digits, '-', '_' and '.', starting with a letter or digit", name, maxNetworkNameLen)
	case name == MeshNetworkName || name == IngressNetworkName:
		return status.Errorf(codes.InvalidArgument, "network name %q is reserved: %q is Shoal's routing mesh, which every service is on and which serves as the ingress; pick another name", name, MeshNetworkName)
	case strings.HasPrefix(MeshNetworkID, name):
		return status.Errorf(codes.InvalidArgument, "network name %q is a prefix of the routing mesh's ID; pick another name", name)
	}
	if d := spec.GetDriver(); d != "" && d != NetworkDriverOverlay {
		return status.Errorf(codes.InvalidArgument, "Shoal's networks are overlay networks: driver %q is not supported (use --driver overlay or leave it out)", d)
	}
	for k := range spec.GetAnnotations().GetLabels() {
		if k == "" || strings.ContainsAny(k, " =\t\n") {
			return status.Errorf(codes.InvalidArgument, "invalid label key %q: no spaces or '='", k)
		}
	}
	return nil
}

// CreateNetwork stores a network under a name no other network has.
func (s *Server) CreateNetwork(ctx context.Context, req *pb.CreateNetworkRequest) (*pb.CreateNetworkResponse, error) {
	spec := proto.Clone(req.GetSpec()).(*pb.NetworkSpec)
	if spec == nil {
		spec = &pb.NetworkSpec{}
	}
	if err := validateNetworkSpec(spec); err != nil {
		return nil, err
	}
	spec.Driver = NetworkDriverOverlay
	name := spec.GetAnnotations().GetName()
	var id string
	_, err := s.store.Update(ctx, func(tx *raftstore.Tx) error {
		if other := tx.Networks().Find(raftstore.IndexName, name); len(other) > 0 {
			return status.Errorf(codes.AlreadyExists, "network with name %s already exists (%s)", name, other[0].GetId())
		}
		id = tx.NewID()
		return tx.Networks().Create(&pb.Network{Id: id, Spec: spec})
	})
	if err != nil {
		return nil, err
	}
	var out *pb.Network
	s.store.View(func(tx *raftstore.Tx) {
		// By name: a retried create that already committed did not run
		// its function again.
		if found := tx.Networks().Find(raftstore.IndexName, name); len(found) == 1 {
			out = found[0]
		}
	})
	if out == nil {
		return nil, status.Errorf(codes.NotFound, "network %q was removed meanwhile", name)
	}
	s.log.Info("network created", "network", name, "id", out.GetId())
	return &pb.CreateNetworkResponse{Network: out}, nil
}

// GetNetwork returns a network and the services attached to it.
func (s *Server) GetNetwork(ctx context.Context, req *pb.GetNetworkRequest) (*pb.GetNetworkResponse, error) {
	var (
		n     *pb.Network
		users []string
		err   error
	)
	verr := s.store.ViewConsistent(ctx, func(tx *raftstore.Tx) {
		if n, err = resolveRef(tx.Networks(), "network", req.GetRef()); err == nil {
			users = servicesOnNetwork(tx, n.GetId())
		}
	})
	if verr != nil {
		return nil, verr
	}
	if err != nil {
		return nil, err
	}
	return &pb.GetNetworkResponse{Network: n, Services: users}, nil
}

// ListNetworks returns every stored network, sorted by name.
func (s *Server) ListNetworks(ctx context.Context, _ *pb.ListNetworksRequest) (*pb.ListNetworksResponse, error) {
	var all []*pb.Network
	if err := s.store.ViewConsistent(ctx, func(tx *raftstore.Tx) { all = tx.Networks().List() }); err != nil {
		return nil, err
	}
	sort.Slice(all, func(i, j int) bool { return networkNameOf(all[i]) < networkNameOf(all[j]) })
	return &pb.ListNetworksResponse{Networks: all}, nil
}

// RemoveNetwork deletes a network no service is attached to.
func (s *Server) RemoveNetwork(ctx context.Context, req *pb.RemoveNetworkRequest) (*pb.RemoveNetworkResponse, error) {
	if isMeshRef(req.GetRef()) {
		return nil, status.Errorf(codes.PermissionDenied, "%s is Shoal's routing mesh, a pre-defined network: it cannot be removed", MeshNetworkName)
	}
	var name, id string
	_, err := s.store.Update(ctx, func(tx *raftstore.Tx) error {
		n, err := resolveRef(tx.Networks(), "network", req.GetRef())
		if err != nil {
			return err
		}
		name, id = networkNameOf(n), n.GetId()
		if users := servicesOnNetwork(tx, id); len(users) > 0 {
			return status.Errorf(codes.FailedPrecondition, "network %s is in use by %s %s; remove %s or detach %s first",
				name, plural(len(users), "service", "services"), strings.Join(users, ", "), plural(len(users), "it", "them"), plural(len(users), "it", "them"))
		}
		return tx.Networks().Delete(id)
	})
	if err != nil {
		return nil, err
	}
	if id != "" {
		s.log.Info("network removed", "network", name, "id", id)
	}
	return &pb.RemoveNetworkResponse{}, nil
}

// servicesOnNetwork lists, sorted, the names of the services attached to
// a network.
func servicesOnNetwork(tx *raftstore.Tx, id string) []string {
	var out []string
	for _, svc := range tx.Services().List() {
		for _, a := range svc.GetSpec().GetTask().GetNetworks() {
			if a.GetNetworkId() == id {
				out = append(out, svc.GetSpec().GetAnnotations().GetName())
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// resolveNetworkAttachments checks a service's network attachments and
// fills in each one's network ID and name: the target is given by name
// (network_name) or, in a spec read back from the store, by ID.
func resolveNetworkAttachments(tx *raftstore.Tx, task *pb.TaskSpec) error {
	if len(task.GetNetworks()) > maxAttachments {
		return status.Errorf(codes.InvalidArgument, "a service may be attached to at most %d networks", maxAttachments)
	}
	seen := map[string]bool{}
	for _, a := range task.GetNetworks() {
		ref := a.GetNetworkName()
		if ref == "" {
			ref = a.GetNetworkId()
		}
		switch {
		case ref == "":
			return status.Error(codes.InvalidArgument, "a network attachment needs the network's name or ID")
		case ref == IngressNetworkName:
			return status.Errorf(codes.InvalidArgument, "a service cannot be attached to the ingress network explicitly: every service is on Shoal's routing mesh (%s), which publishes its ports", MeshNetworkName)
		case isMeshRef(ref):
			a.NetworkId, a.NetworkName = MeshNetworkID, MeshNetworkName
		default:
			n, err := resolveRef(tx.Networks(), "network", ref)
			if err != nil {
				if status.Code(err) == codes.NotFound {
					return status.Errorf(codes.NotFound, "network %s not found; create it first with `shoal network create %s` (list them with `shoal network ls`)", ref, ref)
				}
				return err
			}
			a.NetworkId, a.NetworkName = n.GetId(), networkNameOf(n)
		}
		if seen[a.GetNetworkId()] {
			return status.Errorf(codes.InvalidArgument, "the service is attached to network %s twice; attach it once, with all its aliases", a.GetNetworkName())
		}
		seen[a.GetNetworkId()] = true
		if len(a.GetAliases()) > maxAliases {
			return status.Errorf(codes.InvalidArgument, "at most %d aliases per network attachment", maxAliases)
		}
		for _, al := range a.GetAliases() {
			if len(al) > maxAliasLen || !aliasName.MatchString(al) {
				return status.Errorf(codes.InvalidArgument, "invalid network alias %q: use one DNS label of 1-%d letters, digits, '-' and '_'", al, maxAliasLen)
			}
		}
	}
	return nil
}

// aliasWarnings says which of a service's aliases other services already
// answer to: Shoal's DNS is cluster-wide, not per network, so such a name
// resolves to one of them only (service names first, then aliases in
// service-name order, as the mesh's resolver does).
func aliasWarnings(tx *raftstore.Tx, spec *pb.ServiceSpec, selfID string) []string {
	self := spec.GetAnnotations().GetName()
	var warn []string
	for _, al := range endpoints.Aliases(spec) {
		var holders []string
		for _, other := range tx.Services().List() {
			if other.GetId() == selfID {
				continue
			}
			name := other.GetSpec().GetAnnotations().GetName()
			if strings.EqualFold(name, al) {
				holders = append(holders, "service "+name)
				continue
			}
			for _, oal := range endpoints.Aliases(other.GetSpec()) {
				if strings.EqualFold(oal, al) {
					holders = append(holders, "an alias of service "+name)
					break
				}
			}
		}
		if len(holders) > 0 {
			sort.Strings(holders)
			warn = append(warn, fmt.Sprintf("network alias %q of service %s is also %s: Shoal's DNS is cluster-wide, so the name resolves to one service only (a service's name first, then aliases in service-name order)",
				al, self, strings.Join(holders, " and ")))
		}
	}
	return warn
}

// portWarnings says when a service on a network of its own declares no
// ports: Docker's virtual IPs pass every port, Shoal's mesh only the ports
// a service declares, so a service others call by name on such a network
// (a compose service without `ports`) would not answer them.
func portWarnings(spec *pb.ServiceSpec) []string {
	if isJob(spec) || len(spec.GetEndpoint().GetPorts()) > 0 {
		return nil
	}
	for _, a := range spec.GetTask().GetNetworks() {
		if a.GetNetworkId() != MeshNetworkID {
			return []string{fmt.Sprintf("service %s declares no ports: other services reach a service by name only on the ports it declares (unlike Docker, which passes every port); if other services call it, declare them (compose: ports: [{target: PORT}], or --publish target=PORT)",
				spec.GetAnnotations().GetName())}
		}
	}
	return nil
}
