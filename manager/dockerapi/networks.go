package dockerapi

import (
	"net/http"
	"strings"
	"time"

	"github.com/moby/moby/api/types/network"
)

// Shoal has one network: every service is on the routing mesh and
// resolves the others by name through its DNS. The API shows it as one
// overlay network and creates no others.
const meshNetworkName = "shoal"

func meshNetwork() network.Inspect {
	return network.Inspect{Network: network.Network{
		Name: meshNetworkName, ID: meshNetworkID, Created: time.Unix(0, 0).UTC(), Scope: "swarm", Driver: "overlay",
		Labels: map[string]string{}, Options: map[string]string{},
	}}
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
	n := meshNetwork()
	out := []network.Summary{}
	if f.prefix("name", n.Name) && f.prefix("id", n.ID) && f.labels("label", n.Labels) && f.exact("driver", n.Driver) && f.exact("scope", n.Scope) && f.exact("type", "builtin") && !f.has("dangling") {
		out = append(out, network.Summary{Network: n.Network})
	}
	return writeJSON(w, http.StatusOK, out)
}

func (s *Server) getNetwork(w http.ResponseWriter, r *http.Request) error {
	if !isMesh(r.PathValue("id")) {
		return notFound("network %s not found: Shoal has one network, %q (its routing mesh)", r.PathValue("id"), meshNetworkName)
	}
	return writeJSON(w, http.StatusOK, meshNetwork())
}

func (s *Server) createNetwork(_ http.ResponseWriter, _ *http.Request) error {
	return notImplemented("Shoal does not create networks: every service is on its one network, %q (the routing mesh), and reaches the others by service name", meshNetworkName)
}

func (s *Server) removeNetwork(_ http.ResponseWriter, r *http.Request) error {
	if !isMesh(r.PathValue("id")) {
		return notFound("network %s not found", r.PathValue("id"))
	}
	return &apiError{code: http.StatusForbidden, msg: "the " + meshNetworkName + " network is Shoal's routing mesh: it cannot be removed"}
}

// networkExists checks a service's network attachment: only the mesh.
func (s *Server) networkExists(_ *http.Request) networkLookup {
	return func(target string) error {
		if isMesh(target) {
			return nil
		}
		return notFound("network %s not found: Shoal has one network, %q (its routing mesh), which every service is on", target, meshNetworkName)
	}
}

// distribution answers `GET /distribution/{image}/json`: not served. The
// managers pin a docker-runtime service's image to its digest themselves
// when it is created or its image changes (the CLI warns that it could not,
// and goes on); a process-runtime path has no digest.
func (s *Server) distribution(_ http.ResponseWriter, r *http.Request) error {
	image := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/distribution/"), "/json")
	return notImplemented("Shoal does not serve registry lookups (%s): its managers pin a service's image to its digest themselves", image)
}
