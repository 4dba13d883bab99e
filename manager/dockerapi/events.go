package dockerapi

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/moby/moby/api/types/events"
	pb "github.com/shoal-cluster/shoal/proto"
)

// Events streams the cluster's events, as controlapi.Server.StreamEvents
// does, from this manager's own history.
type Events func(ctx context.Context, req *pb.EventsRequest, send func(*pb.ClusterEvent) error) error

// dockerEventTypes are the swarm event types Docker has and Shoal gives.
// Task events have no Docker form and are left out.
var dockerEventTypes = []string{"service", "node", "secret", "config", "network"}

// dockerEvent maps one of Shoal's events to Docker's: create, update and
// remove of services, nodes, secrets, configs and networks, with the
// name and what changed as attributes. ok is false for an event Docker
// has no form for (tasks).
func dockerEvent(e *pb.ClusterEvent) (events.Message, bool) {
	typ := e.GetType()
	switch typ {
	case "service", "node", "secret", "config", "network":
	default:
		return events.Message{}, false
	}
	attrs := map[string]string{}
	if e.GetName() != "" {
		attrs["name"] = e.GetName()
	}
	a := e.GetAttributes()
	var action events.Action
	switch e.GetAction() {
	case "create", "join":
		action = events.ActionCreate
	case "remove":
		action = events.ActionRemove
	default:
		action = events.ActionUpdate
	}
	switch typ {
	case "service":
		if r, ok := a["replicas"]; ok && action == events.ActionUpdate {
			attrs["replicas.new"] = r
			if old, ok := a["old_replicas"]; ok {
				attrs["replicas.old"] = old
			}
		}
		if img, ok := a["image"]; ok && action == events.ActionUpdate {
			attrs["image.new"] = img
		}
		if st, ok := a["updatestate"]; ok {
			attrs["updatestate.new"] = st
		}
		if m, ok := a["message"]; ok && m != "" {
			attrs["updatestate.message"] = m
		}
		if e.GetAction() == "rollback" {
			attrs["updatestate.new"] = "rollback_started"
		}
	case "node":
		switch e.GetAction() {
		case "ready", "down", "unknown":
			attrs["state.new"] = e.GetAction()
		case "active", "pause", "drain":
			attrs["availability.new"] = e.GetAction()
		case "promote":
			attrs["role.new"] = "manager"
		case "demote":
			attrs["role.new"] = "worker"
		case "leader":
			attrs["leader.new"] = "true"
			if t, ok := a["term"]; ok {
				attrs["leader.term"] = t
			}
		}
	}
	return events.Message{
		Type:     events.Type(typ),
		Action:   action,
		Actor:    events.Actor{ID: e.GetId(), Attributes: attrs},
		Scope:    "swarm",
		Time:     e.GetTime() / 1e9,
		TimeNano: e.GetTime(),
	}, true
}

// events serves GET /events: the cluster's events in Docker's form, one
// JSON message a line, filtered by type, event (action), scope and the
// object's name or ID (service, node, secret, config, network); since
// and until as Docker's. Without until the stream follows new events.
func (s *Server) events(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Events == nil {
		return notImplemented("this manager keeps no event history")
	}
	f, err := parseFilters(r, "type", "event", "scope", "service", "node", "secret", "config", "network", "container", "image", "volume", "plugin", "daemon", "label")
	if err != nil {
		return err
	}
	for _, k := range []string{"container", "image", "volume", "plugin", "daemon", "label"} {
		if f.has(k) {
			return badRequest("Shoal has no %s events to filter on: its events are swarm-scoped events of services, nodes, secrets, configs and networks", k)
		}
	}
	for _, t := range f["type"] {
		if !slices.Contains(dockerEventTypes, t) {
			return badRequest("Shoal has no %s events: filter type on %s", t, strings.Join(dockerEventTypes, ", "))
		}
	}
	for _, sc := range f["scope"] {
		if sc != "swarm" && sc != "local" {
			return badRequest("invalid filter 'scope=%s': use swarm or local", sc)
		}
	}
	req := &pb.EventsRequest{}
	q := r.URL.Query()
	if req.Since, err = parseLogTime(q.Get("since")); err != nil {
		return badRequest("invalid since %q: give a Unix time (seconds[.nanoseconds]) or an RFC 3339 time", q.Get("since"))
	}
	if req.Until, err = parseLogTime(q.Get("until")); err != nil {
		return badRequest("invalid until %q: give a Unix time (seconds[.nanoseconds]) or an RFC 3339 time", q.Get("until"))
	}
	if req.Since != 0 && req.Until != 0 && req.Until < req.Since {
		return badRequest("until is before since: no event can be in that window")
	}
	// Shoal's journal filters by type; the rest is filtered here.
	req.Types = append(req.Types, f["type"]...)
	if len(req.Types) == 0 {
		req.Types = dockerEventTypes
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	if f.has("scope") && !f.exact("scope", "swarm") {
		return nil // Shoal has no local events
	}
	var mu sync.Mutex
	enc := json.NewEncoder(w)
	send := func(e *pb.ClusterEvent) error {
		m, ok := dockerEvent(e)
		if !ok || !f.exact("type", string(m.Type)) || !f.exact("event", string(m.Action)) {
			return nil
		}
		// As the Engine's: each object filter set must match the
		// event's actor, by name or ID prefix, whatever its type.
		for _, k := range dockerEventTypes {
			if f.has(k) && !f.prefix(k, m.Actor.ID) && !f.exact(k, m.Actor.Attributes["name"]) {
				return nil
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if err := enc.Encode(m); err != nil {
			return err
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	}
	ctx := r.Context()
	if err := s.cfg.Events(ctx, req, send); err != nil && ctx.Err() == nil {
		// The status line is sent: the stream just ends.
		s.log.Warn("docker API events ended early", "err", err)
	}
	return nil
}
