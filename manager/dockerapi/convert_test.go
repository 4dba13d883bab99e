package dockerapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// richSpec uses every field the conversion carries.
func richSpec() *pb.ServiceSpec {
	return &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: "web", Labels: map[string]string{"team": "a"}},
		Task: &pb.TaskSpec{
			Container: &pb.ContainerSpec{
				Image: "/usr/local/bin/hello", Command: []string{"/bin/hello"}, Args: []string{"-v"}, Env: []string{"A=1"},
				Dir: "/tmp", User: "1000", Labels: map[string]string{"l": "v"}, StopGracePeriod: int64(3 * time.Second), ReadOnly: true,
				Mounts:      []*pb.Mount{{Type: pb.MountType_MOUNT_TYPE_VOLUME, Source: "data", Target: "/data", ReadOnly: true}},
				Healthcheck: &pb.HealthCheck{HttpGet: "/healthz", Interval: int64(time.Second), Timeout: int64(time.Second), Retries: 3},
				Secrets:     []*pb.SecretReference{{SecretId: "s1", SecretName: "db", Target: "db", Mode: 0o400}},
				Configs:     []*pb.ConfigReference{{ConfigId: "c1", ConfigName: "app", Target: "/app.conf", Mode: 0o444, Uid: "10", Gid: "20"}},
			},
			Resources:   &pb.ResourceRequirements{Limits: &pb.Resources{NanoCpus: 5e8, MemoryBytes: 1 << 20}, Reservations: &pb.Resources{NanoCpus: 1e8}},
			Restart:     &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ON_FAILURE, Delay: int64(time.Second), MaxAttempts: 3, Window: int64(time.Minute)},
			Placement:   &pb.Placement{Constraints: []string{"node.labels.zone==a"}, Preferences: []*pb.PlacementPreference{{SpreadDescriptor: "node.labels.rack"}}, MaxReplicas: 2},
			ForceUpdate: 2,
			Networks:    []*pb.NetworkAttachment{{NetworkName: "n1", Aliases: []string{"www", "front"}}, {NetworkName: "shoal"}},
		},
		Mode:     &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: 3}},
		Update:   &pb.UpdateConfig{Parallelism: 2, Delay: int64(time.Second), FailureAction: pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK, Monitor: int64(2 * time.Second), MaxFailureRatio: 0.5, Order: pb.UpdateOrder_UPDATE_ORDER_START_FIRST},
		Rollback: &pb.UpdateConfig{Parallelism: 1, FailureAction: pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_CONTINUE, Monitor: int64(5 * time.Second)},
		Endpoint: &pb.EndpointSpec{Mode: pb.ResolutionMode_RESOLUTION_MODE_DNSRR, Ports: []*pb.PortConfig{
			{TargetPort: 80, PublishedPort: 8080}, {Protocol: pb.PortProtocol_PORT_PROTOCOL_UDP, TargetPort: 53, PublishedPort: 53, PublishMode: pb.PublishMode_PUBLISH_MODE_HOST}}},
	}
}

// TestSpecRoundTrip: what a GET returns, sent back through JSON as the CLI
// does, is the same Shoal spec (so an update changes only what it means
// to), for every mode and health check kind.
func TestSpecRoundTrip(t *testing.T) {
	hc := func(h *pb.HealthCheck) *pb.ServiceSpec {
		s := richSpec()
		s.Task.Container.Healthcheck = h
		return s
	}
	mode := func(m func(*pb.ServiceSpec)) *pb.ServiceSpec {
		s := richSpec()
		m(s)
		return s
	}
	for _, tc := range []struct {
		name string
		spec *pb.ServiceSpec
	}{
		{"rich", richSpec()},
		{"exec health check", hc(&pb.HealthCheck{Command: []string{"/bin/check", "x"}})},
		{"shell health check", hc(&pb.HealthCheck{Command: []string{"/bin/sh", "-c", "curl -f localhost"}})},
		{"tcp health check", hc(&pb.HealthCheck{TcpSocket: 8080})},
		{"health check disabled", hc(&pb.HealthCheck{Disable: true})},
		{"global", mode(func(s *pb.ServiceSpec) { s.Mode = &pb.ServiceSpec_Global{Global: &pb.GlobalService{}} })},
		{"replicated job", mode(func(s *pb.ServiceSpec) {
			s.Mode = &pb.ServiceSpec_ReplicatedJob{ReplicatedJob: &pb.ReplicatedJob{MaxConcurrent: 2, TotalCompletions: 6}}
		})},
		{"global job", mode(func(s *pb.ServiceSpec) { s.Mode = &pb.ServiceSpec_GlobalJob{GlobalJob: &pb.GlobalJob{}} })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body, err := json.Marshal(serviceSpecToDocker(tc.spec))
			if err != nil {
				t.Fatal(err)
			}
			var d swarm.ServiceSpec
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&d); err != nil {
				t.Fatal(err)
			}
			back, err := serviceSpecFromDocker(d)
			if err != nil {
				t.Fatalf("the spec as read is refused when sent back: %v\n%s", err, body)
			}
			if !proto.Equal(back, tc.spec) {
				t.Fatalf("round trip changed the spec:\n got %v\nwant %v", back, tc.spec)
			}
		})
	}
}

// TestSpecRefusals: fields Shoal cannot honour are refused by name, never
// dropped.
func TestSpecRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, json, want string
	}{
		{"hostname", `{"TaskTemplate":{"ContainerSpec":{"Image":"x","Hostname":"h"}}}`, "ContainerSpec.Hostname"},
		{"tty", `{"TaskTemplate":{"ContainerSpec":{"Image":"x","TTY":true}}}`, "ContainerSpec.TTY"},
		{"capabilities", `{"TaskTemplate":{"ContainerSpec":{"Image":"x","CapabilityAdd":["NET_ADMIN"]}}}`, "CapabilityAdd"},
		{"dns", `{"TaskTemplate":{"ContainerSpec":{"Image":"x","DNSConfig":{"Search":["a"]}}}}`, "DNSConfig"},
		{"log driver", `{"TaskTemplate":{"ContainerSpec":{"Image":"x"},"LogDriver":{"Name":"syslog"}}}`, "LogDriver"},
		{"plugin runtime", `{"TaskTemplate":{"ContainerSpec":{"Image":"x"},"Runtime":"plugin"}}`, `Runtime "plugin"`},
		{"pids limit", `{"TaskTemplate":{"ContainerSpec":{"Image":"x"},"Resources":{"Limits":{"Pids":5}}}}`, "Pids"},
		{"generic resources", `{"TaskTemplate":{"ContainerSpec":{"Image":"x"},"Resources":{"Reservations":{"GenericResources":[{"DiscreteResourceSpec":{"Kind":"gpu","Value":1}}]}}}}`, "GenericResources"},
		{"npipe mount", `{"TaskTemplate":{"ContainerSpec":{"Image":"x","Mounts":[{"Type":"npipe","Target":"/p"}]}}}`, "not npipe"},
		{"tmpfs size", `{"TaskTemplate":{"ContainerSpec":{"Image":"x","Mounts":[{"Type":"tmpfs","Target":"/t","TmpfsOptions":{"SizeBytes":5}}]}}}`, "TmpfsOptions"},
		{"sctp", `{"TaskTemplate":{"ContainerSpec":{"Image":"x"}},"EndpointSpec":{"Ports":[{"Protocol":"sctp","TargetPort":1}]}}`, "not sctp"},
		{"two modes", `{"TaskTemplate":{"ContainerSpec":{"Image":"x"}},"Mode":{"Global":{},"Replicated":{}}}`, "one mode"},
		{"bad health test", `{"TaskTemplate":{"ContainerSpec":{"Image":"x","Healthcheck":{"Test":["WHAT"]}}}}`, "invalid health check test"},
		{"no container", `{"Name":"x"}`, "ContainerSpec"},
		{"network driver options", `{"TaskTemplate":{"ContainerSpec":{"Image":"x"},"Networks":[{"Target":"backend","DriverOpts":{"a":"b"}}]}}`, "network attachment DriverOpts"},
		{"network without target", `{"TaskTemplate":{"ContainerSpec":{"Image":"x"},"Networks":[{"Aliases":["a"]}]}}`, "needs a Target"},
		{"rollback on rollback", `{"TaskTemplate":{"ContainerSpec":{"Image":"x"}},"RollbackConfig":{"FailureAction":"rollback"}}`, "cannot roll back"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d swarm.ServiceSpec
			if err := json.Unmarshal([]byte(tc.json), &d); err != nil {
				t.Fatal(err)
			}
			_, err := serviceSpecFromDocker(d)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one naming %q", err, tc.want)
			}
		})
	}
}

// TestSpecDefaults: what the CLI sends for a plain `service create` is
// accepted, with Docker's defaults where it leaves a field 0.
func TestSpecDefaults(t *testing.T) {
	body := `{"Name":"web","Labels":{},"TaskTemplate":{"ContainerSpec":{"Image":"/bin/hello","Init":false,"StopGracePeriod":10000000000,
		"DNSConfig":{},"Isolation":"default"},"Resources":{"Limits":{},"Reservations":{}},"RestartPolicy":{"Condition":"any","MaxAttempts":0},
		"Placement":{},"Networks":[{"Target":"shoal"}],"ForceUpdate":0,"Runtime":"container"},"Mode":{"Replicated":{"Replicas":2}},
		"UpdateConfig":{"Parallelism":1,"FailureAction":"pause","MaxFailureRatio":0,"Order":"stop-first"},
		"RollbackConfig":{"Parallelism":1,"FailureAction":"pause","MaxFailureRatio":0,"Order":"stop-first"},"EndpointSpec":{"Mode":"vip"}}`
	var d swarm.ServiceSpec
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		t.Fatal(err)
	}
	spec, err := serviceSpecFromDocker(d)
	if err != nil {
		t.Fatal(err)
	}
	if got := spec.GetUpdate().GetMonitor(); got != int64(defaultMonitor) {
		t.Errorf("update monitor %d, want the default %d", got, defaultMonitor)
	}
	if got := spec.GetTask().GetRestart().GetDelay(); got != int64(defaultRestartDelay) {
		t.Errorf("restart delay %d, want the default %d", got, defaultRestartDelay)
	}
	if spec.GetTask().GetPlacement() != nil {
		t.Errorf("an empty placement became %v", spec.GetTask().GetPlacement())
	}
	if spec.GetReplicated().GetReplicas() != 2 || spec.GetTask().GetRuntime() != "" {
		t.Errorf("mode %v, runtime %q", spec.GetMode(), spec.GetTask().GetRuntime())
	}
}

func TestFilters(t *testing.T) {
	for _, tc := range []struct {
		name, query string
		allowed     []string
		want        filters
		err         string
	}{
		{"none", "", []string{"id"}, filters{}, ""},
		{"current format", `{"name":{"web":true,"api":true},"label":{"a=b":true}}`, []string{"name", "label"}, filters{"name": {"api", "web"}, "label": {"a=b"}}, ""},
		{"old format", `{"id":["abc"]}`, []string{"id"}, filters{"id": {"abc"}}, ""},
		{"unknown key", `{"nosuch":{"x":true}}`, []string{"id", "name"}, nil, "invalid filter 'nosuch'"},
		{"not JSON", `{name`, []string{"name"}, nil, "invalid filters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/services?filters="+urlQueryEscape(tc.query), nil)
			got, err := parseFilters(r, tc.allowed...)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for k, vs := range tc.want {
				if strings.Join(got[k], ",") != strings.Join(vs, ",") {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
	f := filters{"label": {"a", "b=2"}}
	if !f.labels("label", map[string]string{"a": "x", "b": "2"}) || f.labels("label", map[string]string{"a": "x", "b": "3"}) {
		t.Error("label filter: k matches any value, k=v that value only")
	}
}

func urlQueryEscape(s string) string {
	r := strings.NewReplacer("%", "%25", "{", "%7B", "}", "%7D", `"`, "%22", " ", "%20", "&", "%26", "=", "%3D", "[", "%5B", "]", "%5D", ",", "%2C", ":", "%3A")
	return r.Replace(s)
}

// FuzzServiceSpec feeds request bodies through the decoding and the
// conversion: never a panic, and a spec accepted converts back to Docker's
// form and in again unchanged.
func FuzzServiceSpec(f *testing.F) {
	seed, _ := json.Marshal(serviceSpecToDocker(richSpec()))
	f.Add(seed)
	f.Add([]byte(`{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"/bin/true","Healthcheck":{"Test":["CMD-SHELL","true"]}}}}`))
	f.Add([]byte(`{"TaskTemplate":{"ContainerSpec":{"Image":"x","Mounts":[{"Type":"bind","Source":"/a","Target":"/b"}]}},"Mode":{"ReplicatedJob":{}}}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest(http.MethodPost, "/services/create", bytes.NewReader(body))
		var d swarm.ServiceSpec
		if err := decode(r, &d); err != nil {
			return
		}
		spec, err := serviceSpecFromDocker(d)
		if err != nil {
			return
		}
		again, err := serviceSpecFromDocker(serviceSpecToDocker(spec))
		if err != nil {
			t.Fatalf("a converted spec is refused when converted back: %v", err)
		}
		if !proto.Equal(normalise(spec), normalise(again)) {
			t.Fatalf("conversion is not stable:\n%v\n%v", spec, again)
		}
	})
}

// normalise clears what a first conversion may fill with defaults.
func normalise(s *pb.ServiceSpec) *pb.ServiceSpec {
	s = proto.Clone(s).(*pb.ServiceSpec)
	if s.GetAnnotations() != nil && len(s.Annotations.Labels) == 0 {
		s.Annotations.Labels = nil
	}
	if proto.Equal(s.GetEndpoint(), &pb.EndpointSpec{}) {
		s.Endpoint = nil // the managers default it to empty
	}
	return s
}

func TestRegistryAuthHeader(t *testing.T) {
	enc := func(s string) string { return base64.URLEncoding.EncodeToString([]byte(s)) }
	for _, tc := range []struct {
		name, header string
		want         *pb.RegistryAuth
		err          string
	}{
		{"none", "", nil, ""},
		{"empty object", enc(`{}`), nil, ""},
		{"password", enc(`{"username":"u","password":"p","serveraddress":"127.0.0.1:5000"}`), &pb.RegistryAuth{Server: "127.0.0.1:5000", Username: "u", Password: "p"}, ""},
		{"auth field", enc(`{"auth":"` + base64.StdEncoding.EncodeToString([]byte("u:p")) + `","serveraddress":"r"}`), &pb.RegistryAuth{Server: "r", Username: "u", Password: "p"}, ""},
		{"token", enc(`{"identitytoken":"tok","serveraddress":"r"}`), &pb.RegistryAuth{Server: "r", IdentityToken: "tok"}, ""},
		{"not base64", "!!!", nil, "not base64"},
		{"not JSON", enc("nope"), nil, "invalid X-Registry-Auth"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/services/create", nil)
			if tc.header != "" {
				r.Header.Set("X-Registry-Auth", tc.header)
			}
			got, err := registryAuth(r)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || !proto.Equal(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// TestNetworkCreateRefusals: options Shoal's networks cannot honour are
// refused by name; what docker stack deploy sends is accepted.
func TestNetworkCreateRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, json, want string
	}{
		{"stack network", `{"Name":"demo_default","Driver":"overlay","Labels":{"com.docker.stack.namespace":"demo"}}`, ""},
		{"no driver", `{"Name":"n"}`, ""},
		{"default ipam", `{"Name":"n","IPAM":{"Driver":"default"}}`, ""},
		{"no name", `{"Driver":"overlay"}`, "needs a name"},
		{"bridge", `{"Name":"n","Driver":"bridge"}`, `driver "bridge" is not supported`},
		{"subnet", `{"Name":"n","IPAM":{"Config":[{"Subnet":"10.9.0.0/24"}]}}`, "IPAM"},
		{"internal", `{"Name":"n","Internal":true}`, "Internal"},
		{"attachable", `{"Name":"n","Attachable":true}`, "Attachable"},
		{"ingress", `{"Name":"n","Ingress":true}`, "Ingress"},
		{"ipv6", `{"Name":"n","EnableIPv6":true}`, "EnableIPv6"},
		{"options", `{"Name":"n","Options":{"encrypted":"","com.docker.network.driver.mtu":"1400"}}`, "driver options com.docker.network.driver.mtu, encrypted"},
		{"local scope", `{"Name":"n","Scope":"local"}`, "Scope local"},
		{"config only", `{"Name":"n","ConfigOnly":true}`, "ConfigOnly"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/networks/create", strings.NewReader(tc.json))
			var d network.CreateRequest
			if err := decode(r, &d); err != nil {
				t.Fatal(err)
			}
			spec, err := networkSpecFromDocker(d)
			if tc.want == "" {
				if err != nil || spec.GetDriver() != "overlay" || spec.GetAnnotations().GetName() != d.Name {
					t.Fatalf("got %v, %v; want an overlay network %s", spec, err, d.Name)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one naming %q", err, tc.want)
			}
		})
	}
}

// FuzzNetworkCreate feeds network create bodies through the decoding and
// the conversion: never a panic; an accepted one is an overlay network
// with the name asked for.
func FuzzNetworkCreate(f *testing.F) {
	f.Add([]byte(`{"Name":"demo_default","Driver":"overlay","Labels":{"com.docker.stack.namespace":"demo"}}`))
	f.Add([]byte(`{"Name":"n","IPAM":{"Driver":"default","Config":[{"Subnet":"10.0.0.0/24","Gateway":"10.0.0.1"}]},"Options":{"a":"b"}}`))
	f.Add([]byte(`{"Name":"n","EnableIPv4":false,"ConfigFrom":{"Network":"x"}}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest(http.MethodPost, "/networks/create", bytes.NewReader(body))
		var d network.CreateRequest
		if err := decode(r, &d); err != nil {
			return
		}
		spec, err := networkSpecFromDocker(d)
		if err != nil {
			return
		}
		if spec.GetDriver() != "overlay" || spec.GetAnnotations().GetName() != d.Name || d.Name == "" {
			t.Fatalf("accepted %s as %v", body, spec)
		}
	})
}
