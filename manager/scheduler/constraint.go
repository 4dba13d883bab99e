package scheduler

import (
	"fmt"
	"strings"

	"github.com/shoal-cluster/shoal/internal/pki"
	pb "github.com/shoal-cluster/shoal/proto"
)

// attrKind is a node attribute a constraint or a placement preference
// names.
type attrKind int

const (
	attrNodeID attrKind = iota + 1
	attrHostname
	attrRole
	attrNodeLabel
	attrEngineLabel
	attrOS
	attrArch
)

// attribute is a parsed attribute name: a kind and, for labels, the label
// key (case-sensitive, as in the node's maps).
type attribute struct {
	kind  attrKind
	label string
}

const knownAttributes = "node.id, node.hostname, node.role, node.labels.<key>, engine.labels.<key>, node.platform.os or node.platform.arch"

// parseAttribute parses an attribute name such as "node.labels.zone". The
// prefixes are case-insensitive, label keys are not.
func parseAttribute(s string) (attribute, error) {
	lower := strings.ToLower(s)
	switch lower {
	case "node.id":
		return attribute{kind: attrNodeID}, nil
	case "node.hostname":
		return attribute{kind: attrHostname}, nil
	case "node.role":
		return attribute{kind: attrRole}, nil
	case "node.platform.os":
		return attribute{kind: attrOS}, nil
	case "node.platform.arch":
		return attribute{kind: attrArch}, nil
	}
	for _, p := range []struct {
		prefix string
		kind   attrKind
	}{{"node.labels.", attrNodeLabel}, {"engine.labels.", attrEngineLabel}} {
		if strings.HasPrefix(lower, p.prefix) {
			label := s[len(p.prefix):]
			if label == "" {
				return attribute{}, fmt.Errorf("%q names no label: write %s<key>", s, p.prefix)
			}
			return attribute{kind: p.kind, label: label}, nil
		}
	}
	if s == "" {
		return attribute{}, fmt.Errorf("no attribute before the operator (use %s)", knownAttributes)
	}
	return attribute{}, fmt.Errorf("unknown attribute %q (use %s)", s, knownAttributes)
}

// value returns the node's value of the attribute; a missing label is "".
func (a attribute) value(n *pb.Node) string {
	switch a.kind {
	case attrNodeID:
		return n.GetId()
	case attrHostname:
		return n.GetDescription().GetHostname()
	case attrRole:
		return pki.NodeRoleName(nodeRole(n))
	case attrNodeLabel:
		return n.GetSpec().GetAnnotations().GetLabels()[a.label]
	case attrEngineLabel:
		return n.GetDescription().GetEngineLabels()[a.label]
	case attrOS:
		return n.GetDescription().GetOs()
	case attrArch:
		return n.GetDescription().GetArch()
	}
	return ""
}

// nodeRole is the role a node holds, or the one it is meant to hold when
// the current one is not recorded yet.
func nodeRole(n *pb.Node) pb.NodeRole {
	if r := n.GetRole(); r != pb.NodeRole_NODE_ROLE_UNSPECIFIED {
		return r
	}
	return n.GetSpec().GetDesiredRole()
}

// normalizeArch maps the usual aliases of an architecture to Go's names,
// so that node.platform.arch==amd64 matches a node reporting x86_64.
func normalizeArch(a string) string {
	switch strings.ToLower(a) {
	case "x86_64", "x86-64", "amd64":
		return "amd64"
	case "aarch64", "arm64":
		return "arm64"
	case "i386", "i686", "386":
		return "386"
	}
	return strings.ToLower(a)
}

// Constraint is one parsed placement constraint, e.g. node.labels.zone==a.
type Constraint struct {
	// Key is the attribute as written, e.g. "node.labels.zone".
	Key string
	// Equal is true for ==, false for !=.
	Equal bool
	// Value is the value compared with, as written.
	Value string

	attr attribute
}

// String renders the constraint as an expression.
func (c Constraint) String() string {
	op := "!="
	if c.Equal {
		op = "=="
	}
	return c.Key + op + c.Value
}

// Match reports whether node n satisfies the constraint. Values compare
// case-insensitively; a label the node lacks has the value "", so
// node.labels.x!=y holds on a node without the label x.
func (c Constraint) Match(n *pb.Node) bool {
	have, want := c.attr.value(n), c.Value
	if c.attr.kind == attrArch {
		have, want = normalizeArch(have), normalizeArch(want)
	}
	return strings.EqualFold(have, want) == c.Equal
}

// ParseConstraints parses placement constraints: each is ATTRIBUTE==VALUE
// or ATTRIBUTE!=VALUE, where ATTRIBUTE is node.id, node.hostname,
// node.role (manager or worker), node.labels.<key> (the node's spec
// labels), engine.labels.<key> (the labels the node reports),
// node.platform.os or node.platform.arch. The error names the first
// malformed expression and what is wrong with it.
func ParseConstraints(exprs []string) ([]Constraint, error) {
	out := make([]Constraint, 0, len(exprs))
	for _, e := range exprs {
		c, err := parseConstraint(e)
		if err != nil {
			return nil, fmt.Errorf("invalid placement constraint %q: %w", e, err)
		}
		out = append(out, c)
	}
	return out, nil
}

func parseConstraint(e string) (Constraint, error) {
	eq, ne := strings.Index(e, "=="), strings.Index(e, "!=")
	var (
		i     int
		equal bool
	)
	switch {
	case eq < 0 && ne < 0:
		return Constraint{}, fmt.Errorf("expected ATTRIBUTE==VALUE or ATTRIBUTE!=VALUE")
	case ne < 0 || (eq >= 0 && eq < ne):
		i, equal = eq, true
	default:
		i = ne
	}
	key, value := strings.TrimSpace(e[:i]), strings.TrimSpace(e[i+2:])
	if strings.Contains(value, "==") || strings.Contains(value, "!=") {
		return Constraint{}, fmt.Errorf("more than one operator: write one comparison per constraint")
	}
	attr, err := parseAttribute(key)
	if err != nil {
		return Constraint{}, err
	}
	if value == "" {
		return Constraint{}, fmt.Errorf("no value after the operator")
	}
	if value[0] == '=' || value[0] == '!' {
		return Constraint{}, fmt.Errorf("malformed operator: use == or !=")
	}
	if attr.kind == attrRole {
		if v := strings.ToLower(value); v != "manager" && v != "worker" {
			return Constraint{}, fmt.Errorf("node.role is manager or worker, not %q", value)
		}
	}
	return Constraint{Key: key, Equal: equal, Value: value, attr: attr}, nil
}

// ValidatePreferences checks placement preferences: each must spread over
// a node attribute, as in spread=node.labels.zone (spread_descriptor
// "node.labels.zone"). The control API may call it to validate input; the
// scheduler ignores a preference it cannot parse.
func ValidatePreferences(prefs []*pb.PlacementPreference) error {
	for _, p := range prefs {
		if _, err := parseAttribute(strings.TrimSpace(p.GetSpreadDescriptor())); err != nil {
			return fmt.Errorf("invalid placement preference spread=%s: %w", p.GetSpreadDescriptor(), err)
		}
	}
	return nil
}
