package scheduler

import (
	"strings"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
)

func TestParseConstraints(t *testing.T) {
	valid := []struct {
		expr  string
		key   string
		equal bool
		value string
	}{
		{"node.labels.zone==a", "node.labels.zone", true, "a"},
		{"node.labels.zone != a", "node.labels.zone", false, "a"},
		{"node.id==abc", "node.id", true, "abc"},
		{"node.hostname!=web-1", "node.hostname", false, "web-1"},
		{"node.role==manager", "node.role", true, "manager"},
		{"node.role==Worker", "node.role", true, "Worker"},
		{"engine.labels.gpu==nvidia", "engine.labels.gpu", true, "nvidia"},
		{"Node.Labels.Zone==a", "Node.Labels.Zone", true, "a"},
		{"node.platform.os==linux", "node.platform.os", true, "linux"},
		{"node.platform.arch==amd64", "node.platform.arch", true, "amd64"},
		{"node.labels.path==/a/b", "node.labels.path", true, "/a/b"},
	}
	for _, tt := range valid {
		cs, err := ParseConstraints([]string{tt.expr})
		if err != nil {
			t.Errorf("ParseConstraints(%q): %v", tt.expr, err)
			continue
		}
		if c := cs[0]; c.Key != tt.key || c.Equal != tt.equal || c.Value != tt.value {
			t.Errorf("ParseConstraints(%q) = %+v", tt.expr, c)
		}
	}

	invalid := []struct {
		expr string
		msg  string
	}{
		{"node.labels.zone=a", "expected ATTRIBUTE==VALUE or ATTRIBUTE!=VALUE"},
		{"node.labels.zone", "expected ATTRIBUTE==VALUE or ATTRIBUTE!=VALUE"},
		{"", "expected ATTRIBUTE==VALUE or ATTRIBUTE!=VALUE"},
		{"node.labels.zone==", "no value after the operator"},
		{"==a", "no attribute before the operator"},
		{"node.labels.==a", `"node.labels." names no label`},
		{"engine.labels.==a", `"engine.labels." names no label`},
		{"node.zone==a", `unknown attribute "node.zone"`},
		{"node.role==admin", `node.role is manager or worker, not "admin"`},
		{"node.id==a==b", "more than one operator"},
		{"node.id==a!=b", "more than one operator"},
		{"node.id===a", "malformed operator"},
		{"node.id!==a", "malformed operator"},
	}
	for _, tt := range invalid {
		_, err := ParseConstraints([]string{"node.role==worker", tt.expr})
		if err == nil {
			t.Errorf("ParseConstraints(%q) accepted a malformed constraint", tt.expr)
			continue
		}
		want := `invalid placement constraint "` + tt.expr + `": ` + tt.msg
		if !strings.HasPrefix(err.Error(), want) {
			t.Errorf("ParseConstraints(%q) error %q, want it to start with %q", tt.expr, err, want)
		}
	}
}

func TestConstraintMatch(t *testing.T) {
	n := mkNode("n1", withLabel("zone", "a"), withEngineLabel("gpu", "yes"))
	tests := []struct {
		expr string
		want bool
	}{
		{"node.labels.zone==a", true},
		{"node.labels.zone==A", true},
		{"node.labels.Zone==a", false}, // label keys are case-sensitive
		{"node.labels.zone!=a", false},
		{"node.labels.missing!=a", true},
		{"node.labels.missing==a", false},
		{"engine.labels.gpu==yes", true},
		{"node.labels.gpu==yes", false},
		{"node.id==n1", true},
		{"node.hostname==HOST-N1", true},
		{"node.role==worker", true},
		{"node.role!=worker", false},
		{"node.platform.os==Linux", true},
		{"node.platform.arch==amd64", true},
		{"node.platform.arch!=x86_64", false},
	}
	for _, tt := range tests {
		cs, err := ParseConstraints([]string{tt.expr})
		if err != nil {
			t.Fatalf("ParseConstraints(%q): %v", tt.expr, err)
		}
		if got := cs[0].Match(n); got != tt.want {
			t.Errorf("%s on node: %v, want %v", tt.expr, got, tt.want)
		}
	}
	// A node that has not reported its role yet uses the desired one.
	m := mkNode("m", withRole(pb.NodeRole_NODE_ROLE_UNSPECIFIED))
	m.Spec.DesiredRole = pb.NodeRole_NODE_ROLE_MANAGER
	cs, _ := ParseConstraints([]string{"node.role==manager"})
	if !cs[0].Match(m) {
		t.Errorf("node.role==manager does not match a node whose desired role is manager")
	}
}

func TestValidatePreferences(t *testing.T) {
	ok := []*pb.PlacementPreference{{SpreadDescriptor: "node.labels.zone"}, {SpreadDescriptor: "engine.labels.rack"}}
	if err := ValidatePreferences(ok); err != nil {
		t.Fatalf("ValidatePreferences: %v", err)
	}
	err := ValidatePreferences([]*pb.PlacementPreference{{SpreadDescriptor: "zone"}})
	if err == nil || !strings.Contains(err.Error(), `unknown attribute "zone"`) {
		t.Fatalf("ValidatePreferences(zone) = %v, want an unknown attribute error", err)
	}
}
