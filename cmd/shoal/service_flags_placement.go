package main

// Service flags about placement: which nodes may run a service's tasks
// (constraints), how tasks spread over them (preferences) and how many
// may share a node.

import (
	"fmt"
	"slices"
	"strings"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/proto"
)

// placementFlags are --constraint and --placement-pref (create), their
// -add and -rm forms (update), and --max-replicas-per-node.
type placementFlags struct {
	constraints, prefs          []string
	constraintAdd, constraintRm []string
	prefAdd, prefRm             []string
	maxPerNode                  int64
}

func (f *placementFlags) registerCreate(fs *pflag.FlagSet) {
	fs.StringArrayVar(&f.constraints, "constraint", nil, "placement `constraint` KEY==VALUE or KEY!=VALUE, e.g. node.labels.zone==a (repeatable)")
	fs.StringArrayVar(&f.prefs, "placement-pref", nil, "placement `preference` spread=DESCRIPTOR, e.g. spread=node.labels.zone (repeatable)")
	f.registerShared(fs)
}

func (f *placementFlags) registerUpdate(fs *pflag.FlagSet) {
	fs.StringArrayVar(&f.constraintAdd, "constraint-add", nil, "add a placement `constraint` KEY==VALUE or KEY!=VALUE, e.g. node.role==worker (repeatable)")
	fs.StringArrayVar(&f.constraintRm, "constraint-rm", nil, "remove a placement `constraint`, written as it was added (repeatable)")
	fs.StringArrayVar(&f.prefAdd, "placement-pref-add", nil, "add a placement `preference` spread=DESCRIPTOR (repeatable)")
	fs.StringArrayVar(&f.prefRm, "placement-pref-rm", nil, "remove a placement `preference` spread=DESCRIPTOR (repeatable)")
	f.registerShared(fs)
}

func (f *placementFlags) registerShared(fs *pflag.FlagSet) {
	fs.Int64Var(&f.maxPerNode, "max-replicas-per-node", 0, "most tasks of the service on one node (0: no limit)")
}

func (f *placementFlags) create(spec *pb.ServiceSpec, set map[string]bool) error {
	for _, expr := range f.constraints {
		if err := validateConstraint("--constraint", expr); err != nil {
			return err
		}
		placement(spec).Constraints = append(placement(spec).Constraints, expr)
	}
	for _, p := range f.prefs {
		pref, err := parsePlacementPref("--placement-pref", p)
		if err != nil {
			return err
		}
		placement(spec).Preferences = append(placement(spec).Preferences, pref)
	}
	return f.applyShared(spec, set)
}

func (f *placementFlags) update(spec *pb.ServiceSpec, set map[string]bool) error {
	for _, expr := range f.constraintRm {
		p := placement(spec)
		before := len(p.Constraints)
		p.Constraints = slices.DeleteFunc(p.Constraints, func(c string) bool { return normalizeConstraint(c) == normalizeConstraint(expr) })
		if len(p.Constraints) == before {
			return fmt.Errorf("--constraint-rm %q: the service has no such constraint", expr)
		}
	}
	for _, expr := range f.constraintAdd {
		if err := validateConstraint("--constraint-add", expr); err != nil {
			return err
		}
		p := placement(spec)
		if !slices.ContainsFunc(p.Constraints, func(c string) bool { return normalizeConstraint(c) == normalizeConstraint(expr) }) {
			p.Constraints = append(p.Constraints, expr)
		}
	}
	for _, s := range f.prefRm {
		pref, err := parsePlacementPref("--placement-pref-rm", s)
		if err != nil {
			return err
		}
		p := placement(spec)
		before := len(p.Preferences)
		p.Preferences = slices.DeleteFunc(p.Preferences, func(x *pb.PlacementPreference) bool { return proto.Equal(x, pref) })
		if len(p.Preferences) == before {
			return fmt.Errorf("--placement-pref-rm %q: the service has no such preference", s)
		}
	}
	for _, s := range f.prefAdd {
		pref, err := parsePlacementPref("--placement-pref-add", s)
		if err != nil {
			return err
		}
		placement(spec).Preferences = append(placement(spec).Preferences, pref)
	}
	return f.applyShared(spec, set)
}

func (f *placementFlags) applyShared(spec *pb.ServiceSpec, set map[string]bool) error {
	if set["max-replicas-per-node"] {
		if f.maxPerNode < 0 {
			return usagef("--max-replicas-per-node %d: use 0 (no limit) or more", f.maxPerNode)
		}
		switch spec.Mode.(type) {
		case *pb.ServiceSpec_Global, *pb.ServiceSpec_GlobalJob:
			return usagef("--max-replicas-per-node is for replicated services only")
		}
		placement(spec).MaxReplicas = uint64(f.maxPerNode)
	}
	return nil
}

func placement(spec *pb.ServiceSpec) *pb.Placement {
	if spec.Task.Placement == nil {
		spec.Task.Placement = &pb.Placement{}
	}
	return spec.Task.Placement
}

var constraintKeys = []string{"node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch"}

// validateConstraint checks an expression KEY==VALUE or KEY!=VALUE whose
// KEY is a node attribute or label.
func validateConstraint(flagName, expr string) error {
	var k, v string
	var ok bool
	if k, v, ok = strings.Cut(expr, "=="); !ok {
		if k, v, ok = strings.Cut(expr, "!="); !ok {
			return usagef("%s %q: use KEY==VALUE or KEY!=VALUE, e.g. node.labels.zone==a", flagName, expr)
		}
	}
	k, v = strings.TrimSpace(k), strings.TrimSpace(v)
	if v == "" || strings.ContainsAny(v, "=!") {
		return usagef("%s %q: give one value after == or !=, e.g. node.role==worker", flagName, expr)
	}
	switch {
	case slices.Contains(constraintKeys, k):
		if k == "node.role" && v != "manager" && v != "worker" {
			return usagef("%s %q: node.role is manager or worker", flagName, expr)
		}
	case strings.HasPrefix(k, "node.labels.") && len(k) > len("node.labels."),
		strings.HasPrefix(k, "engine.labels.") && len(k) > len("engine.labels."):
	default:
		return usagef("%s %q: unknown attribute %q: use %s, node.labels.NAME or engine.labels.NAME", flagName, expr, k, strings.Join(constraintKeys, ", "))
	}
	return nil
}

func normalizeConstraint(expr string) string { return strings.ReplaceAll(expr, " ", "") }

// parsePlacementPref reads spread=DESCRIPTOR.
func parsePlacementPref(flagName, s string) (*pb.PlacementPreference, error) {
	strategy, desc, ok := strings.Cut(s, "=")
	if !ok || strategy != "spread" || desc == "" {
		return nil, usagef("%s %q: use spread=node.labels.NAME", flagName, s)
	}
	if !strings.HasPrefix(desc, "node.") && !strings.HasPrefix(desc, "engine.labels.") {
		return nil, usagef("%s %q: spread over a node attribute, e.g. node.labels.zone", flagName, s)
	}
	return &pb.PlacementPreference{SpreadDescriptor: desc}, nil
}
