package dockerapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/moby/moby/api/types/events"
	"github.com/shoal-cluster/shoal/internal/pki"
	pb "github.com/shoal-cluster/shoal/proto"
)

// TestEvents: Shoal's events in Docker's form, filtered as Docker filters
// them; since and until reach the journal; task events are left out.
func TestEvents(t *testing.T) {
	journal := []*pb.ClusterEvent{
		{Type: "service", Action: "create", Id: "s1", Name: "demo_web", Time: 1_700_000_000_500_000_000, Attributes: map[string]string{"image": "x", "replicas": "2"}},
		{Type: "service", Action: "scale", Id: "s1", Name: "demo_web", Time: 1_700_000_001_000_000_000, Attributes: map[string]string{"replicas": "3", "old_replicas": "2"}},
		{Type: "task", Action: "state", Id: "t1", Time: 1_700_000_001_000_000_000},
		{Type: "node", Action: "drain", Id: "n1", Name: "w1", Time: 1_700_000_002_000_000_000},
		{Type: "network", Action: "create", Id: "net1", Name: "demo_default", Time: 1_700_000_003_000_000_000},
		{Type: "service", Action: "remove", Id: "s2", Name: "demo_api", Time: 1_700_000_004_000_000_000},
	}
	var got *pb.EventsRequest
	s := New(Config{Control: logsControl{}, Events: func(_ context.Context, req *pb.EventsRequest, send func(*pb.ClusterEvent) error) error {
		got = req
		for _, e := range journal {
			if err := send(e); err != nil {
				return err
			}
		}
		return nil
	}})
	get := func(query string) (int, []events.Message, string) {
		r := httptest.NewRequest(http.MethodGet, "/v1.50/events?"+query, nil)
		r = r.WithContext(WithClient(r.Context(), pki.Identity{Role: pki.RoleAdmin}))
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		var out []events.Message
		dec := json.NewDecoder(strings.NewReader(w.Body.String()))
		for dec.More() {
			var m events.Message
			if err := dec.Decode(&m); err != nil {
				t.Fatalf("%s: %v in %q", query, err, w.Body.String())
			}
			out = append(out, m)
		}
		return w.Code, out, w.Body.String()
	}
	brief := func(ms []events.Message) string {
		var parts []string
		for _, m := range ms {
			parts = append(parts, string(m.Type)+" "+string(m.Action)+" "+m.Actor.Attributes["name"])
		}
		return strings.Join(parts, ", ")
	}
	code, all, _ := get("since=1700000000&until=1700000010")
	if code != http.StatusOK || brief(all) != "service create demo_web, service update demo_web, node update w1, network create demo_default, service remove demo_api" {
		t.Fatalf("all: %d %s", code, brief(all))
	}
	if got.GetSince() != 1_700_000_000_000_000_000 || got.GetUntil() != 1_700_000_010_000_000_000 || strings.Join(got.GetTypes(), ",") != "service,node,secret,config,network" {
		t.Fatalf("journal request %v", got)
	}
	if m := all[1]; m.Actor.Attributes["replicas.new"] != "3" || m.Actor.Attributes["replicas.old"] != "2" || m.Scope != "swarm" || m.TimeNano != 1_700_000_001_000_000_000 || m.Time != 1_700_000_001 {
		t.Fatalf("scale event %+v", m)
	}
	if all[2].Actor.Attributes["availability.new"] != "drain" {
		t.Fatalf("drain event %+v", all[2])
	}
	for _, tc := range []struct{ query, want string }{
		{`filters={"type":{"service":true},"event":{"create":true}}`, "service create demo_web"},
		{`filters={"service":{"demo_api":true}}`, "service remove demo_api"},
		{`filters={"network":{"net1":true}}`, "network create demo_default"},
		{`filters={"scope":{"local":true}}`, ""},
	} {
		if code, ms, body := get(strings.NewReplacer("{", "%7B", "}", "%7D", `"`, "%22", ":", "%3A").Replace(tc.query)); code != http.StatusOK || brief(ms) != tc.want {
			t.Errorf("%s: %d %q (%s), want %q", tc.query, code, brief(ms), body, tc.want)
		}
	}
	for _, tc := range []struct{ query, want string }{
		{"since=soon", "invalid since"},
		{"since=20&until=10", "until is before since"},
		{strings.NewReplacer("{", "%7B", "}", "%7D", `"`, "%22", ":", "%3A").Replace(`filters={"type":{"container":true}}`), "Shoal has no container events"},
		{strings.NewReplacer("{", "%7B", "}", "%7D", `"`, "%22", ":", "%3A").Replace(`filters={"image":{"x":true}}`), "no image events"},
	} {
		if code, _, body := get(tc.query); code != http.StatusBadRequest || !strings.Contains(body, tc.want) {
			t.Errorf("%s: %d %s, want 400 with %q", tc.query, code, body, tc.want)
		}
	}
}
