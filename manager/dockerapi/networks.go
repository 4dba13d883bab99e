package dockerapi

import (
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/moby/moby/api/types/network"
	"github.com/shoal-cluster/shoal/manager/controlapi"
	pb "github.com/shoal-cluster/shoal/proto"
)

// Networks: the routing mesh, "shoal", is a pre-defined network every
// service is on (Docker's ingress); stored networks are overlay networks
// by name (stacks create theirs), which group services and carry their
// DNS aliases. Every service reaches every other through the mesh: a
// network does not isolate.
const (
	meshNetworkName = controlapi.MeshNetworkName
	meshNetworkID   = controlapi.MeshNetworkID
)

// networkScope is the scope of every Shoal network: cluster-wide.
const networkScope = "swarm"

func meshNetwork() network.Inspect {
	return network.Inspect{Network: network.Network{
		Name: meshNetworkName, ID: meshNetworkID, Created: time.Unix(0, 0).UTC(), Scope: networkScope, Driver: controlapi.NetworkDriverOverlay,
		EnableIPv4: true, Ingress: true, IPAM: network.IPAM{Driver: "default"},
		Labels: map[string]string{}, Options: map[string]string{},
	}, Containers: map[string]network.EndpointResource{}}
}

func networkToDocker(n *pb.Network) network.Inspect {
	return network.Inspect{Network: network.Network{
		Name: n.GetSpec().GetAnnotations().GetName(), ID: n.GetId(), Created: unixTime(n.GetMeta().GetCreatedAt()),
		Scope: networkScope, Driver: n.GetSpec().GetDriver(), EnableIPv4: true, IPAM: network.IPAM{Driver: "default"},
		Labels: orEmpty(n.GetSpec().GetAnnotations().GetLabels()), Options: map[string]string{},
	}, Containers: map[string]network.EndpointResource{}}
}

// isMesh reports whether ref names the mesh network (by name, ID or ID
// prefix).
func isMesh(ref string) bool {
	return ref == meshNetworkName || (len(ref) > 0 && strings.HasPrefix(meshNetworkID, ref))
}

func (s *Server) listNetworks(w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilters(r, "name", "id", "label", "driver", "scope", "type", "dangling")
	if err != nil {
		return err
	}
	for _, v := range f["type"] {
		if v != "builtin" && v != "custom" {
			return badRequest("invalid filter 'type=%s': use builtin or custom", v)
		}
	}
	var dangling *bool
	for _, v := range f["dangling"] {
		switch strings.ToLower(v) {
		case "true", "1":
			dangling = ptr(true)
		case "false", "0":
			dangling = ptr(false)
		default:
			return badRequest("invalid filter 'dangling=%s': use true or false", v)
		}
	}
	resp, err := s.cfg.Control.ListNetworks(r.Context(), &pb.ListNetworksRequest{})
	if err != nil {
		return err
	}
	var used map[string]bool
	if dangling != nil {
		svcs, err := s.cfg.Control.ListServices(r.Context(), &pb.ListServicesRequest{})
		if err != nil {
			return err
		}
		used = map[string]bool{}
		for _, svc := range svcs.GetServices() {
			for _, a := range svc.GetSpec().GetTask().GetNetworks() {
				used[a.GetNetworkId()] = true
			}
		}
	}
	all := []network.Inspect{meshNetwork()}
	for _, n := range resp.GetNetworks() {
		all = append(all, networkToDocker(n))
	}
	out := []network.Summary{}
	for _, n := range all {
		typ := "custom"
		if n.ID == meshNetworkID {
			typ = "builtin"
		}
		if !f.contains("name", n.Name) || !f.prefix("id", n.ID) || !f.labels("label", n.Labels) || !f.exact("driver", n.Driver) ||
			!f.exact("scope", n.Scope) || !f.exact("type", typ) {
			continue
		}
		// A dangling network is a custom one no service is attached to.
		if dangling != nil && *dangling != (typ == "custom" && !used[n.ID]) {
			continue
		}
		out = append(out, network.Summary{Network: n.Network})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return writeJSON(w, http.StatusOK, out)
}

func (s *Server) getNetwork(w http.ResponseWriter, r *http.Request) error {
	ref := r.PathValue("id")
	if err := checkScope(r); err != nil {
		return err
	}
	if isMesh(ref) {
		return writeJSON(w, http.StatusOK, meshNetwork())
	}
	resp, err := s.cfg.Control.GetNetwork(r.Context(), &pb.GetNetworkRequest{Ref: ref})
	if err != nil {
		if isNotFound(err) {
			return notFound("network %s not found", ref)
		}
		return err
	}
	return writeJSON(w, http.StatusOK, networkToDocker(resp.GetNetwork()))
}

// checkScope refuses a scope other than swarm: Shoal has no local
// networks.
func checkScope(r *http.Request) error {
	if sc := r.URL.Query().Get("scope"); sc != "" && sc != networkScope {
		return notFound("network %s not found: Shoal's networks are all swarm-scoped, none is %s", r.PathValue("id"), sc)
	}
	return nil
}

// createNetwork creates an overlay network, refusing every option Shoal
// would not honour by name.
func (s *Server) createNetwork(w http.ResponseWriter, r *http.Request) error {
	var d network.CreateRequest
	if err := decode(r, &d); err != nil {
		return err
	}
	spec, err := networkSpecFromDocker(d)
	if err != nil {
		return err
	}
	resp, err := s.cfg.Control.CreateNetwork(r.Context(), &pb.CreateNetworkRequest{Spec: spec})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, network.CreateResponse{ID: resp.GetNetwork().GetId()})
}

// networkSpecFromDocker converts a network create request, refusing by
// name every option Shoal would not honour.
func networkSpecFromDocker(d network.CreateRequest) (*pb.NetworkSpec, error) {
	if d.Name == "" {
		return nil, badRequest("a network needs a name")
	}
	if d.Driver != "" && d.Driver != controlapi.NetworkDriverOverlay {
		return nil, badRequest("Shoal's networks are overlay networks: driver %q is not supported (use --driver overlay; every service reaches every other through Shoal's routing mesh)", d.Driver)
	}
	var no refusals
	no.add(d.Scope != "" && d.Scope != networkScope, "Scope "+d.Scope+" (--scope: Shoal's networks are swarm-scoped)")
	no.add(d.EnableIPv6 != nil && *d.EnableIPv6, "EnableIPv6 (--ipv6)")
	no.add(d.EnableIPv4 != nil && !*d.EnableIPv4, "EnableIPv4=false (--ipv4=false)")
	no.add(d.IPAM != nil && (d.IPAM.Driver != "" && d.IPAM.Driver != "default" || len(d.IPAM.Config) > 0 || len(d.IPAM.Options) > 0),
		"IPAM (--subnet, --ip-range, --gateway, --ipam-driver, --ipam-opt; compose ipam: the mesh assigns addresses)")
	no.add(d.Internal, "Internal (--internal; compose internal: Shoal's networks do not isolate)")
	no.add(d.Attachable, "Attachable (--attachable; compose attachable: Shoal runs no standalone containers)")
	no.add(d.Ingress, "Ingress (--ingress: Shoal's routing mesh, network "+meshNetworkName+", is the ingress)")
	no.add(d.ConfigOnly, "ConfigOnly (--config-only)")
	no.add(d.ConfigFrom != nil && d.ConfigFrom.Network != "", "ConfigFrom (--config-from)")
	if len(d.Options) > 0 {
		keys := make([]string, 0, len(d.Options))
		for k := range d.Options {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		no = append(no, "driver options "+strings.Join(keys, ", ")+" (--opt; compose driver_opts)")
	}
	if len(no) > 0 {
		return nil, badRequest("Shoal does not support %s in a network; leave it out", strings.Join(no, ", "))
	}
	return &pb.NetworkSpec{Annotations: &pb.Annotations{Name: d.Name, Labels: d.Labels}, Driver: controlapi.NetworkDriverOverlay}, nil
}

func (s *Server) removeNetwork(w http.ResponseWriter, r *http.Request) error {
	ref := r.PathValue("id")
	if isMesh(ref) {
		return &apiError{code: http.StatusForbidden, msg: meshNetworkName + " is a pre-defined network (Shoal's routing mesh) and cannot be removed"}
	}
	if err := whenTasksStopped(r.Context(), func() error {
		_, err := s.cfg.Control.RemoveNetwork(r.Context(), &pb.RemoveNetworkRequest{Ref: ref})
		return err
	}); err != nil {
		if isNotFound(err) {
			return notFound("network %s not found", ref)
		}
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// distribution answers `GET /distribution/{image}/json`: not served. The
// managers pin a docker-runtime service's image to its digest themselves
// when it is created or its image changes (the CLI warns that it could not,
// and goes on); a process-runtime path has no digest.
func (s *Server) distribution(_ http.ResponseWriter, r *http.Request) error {
	image := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/distribution/"), "/json")
	return notImplemented("Shoal does not serve registry lookups (%s): its managers pin a service's image to its digest themselves", image)
}
