package main

import (
	"strings"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// fuzzArgs splits a fuzz input into command-line arguments, one per line.
func fuzzArgs(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// FuzzServiceCreateFlags feeds arbitrary command lines to `service create`'s
// flag parser and spec builder: no panic; a refusal is one non-empty
// error; a spec has a task with a program and survives the wire.
func FuzzServiceCreateFlags(f *testing.F) {
	for _, args := range [][]string{
		{"/bin/sleep", "100"},
		{"--name", "web", "--replicas", "3", "--publish", "8080:80", "--runtime", "docker", "shoal/hello:v1"},
		{"--mode", "global", "--constraint", "node.labels.zone==a", "--placement-pref", "spread=node.labels.zone", "/bin/app"},
		{"--mode", "replicated-job", "--max-concurrent", "2", "--replicas", "5", "/bin/app"},
		{"--env", "A=1", "--label", "team=a", "--reserve-cpu", "0.5", "--limit-memory", "64MiB", "/bin/app"},
		{"--mount", "type=tmpfs,target=/t", "--runtime", "docker", "img"},
		{"--publish", "published=53,target=53,protocol=udp,mode=host", "--health-cmd", "true", "--health-interval", "1s", "--runtime", "docker", "img"},
		{"--restart-condition", "on-failure", "--restart-max-attempts", "3", "--update-parallelism", "2", "--update-order", "start-first", "/bin/app"},
		{"--replicas", "-1", "/bin/app"},
		{"--", "/bin/app", "--replicas"},
	} {
		f.Add(strings.Join(args, "\n"))
	}
	f.Fuzz(func(t *testing.T, in string) {
		args := fuzzArgs(in)
		spec, err := createSpec(args...)
		if err != nil {
			if spec != nil || strings.TrimSpace(err.Error()) == "" {
				t.Fatalf("createSpec(%q) = %v, %q: want no spec and an error that says why", args, spec, err)
			}
			return
		}
		c := spec.GetTask().GetContainer()
		if c.GetImage() == "" && len(c.GetCommand()) == 0 {
			t.Fatalf("createSpec(%q) built a spec with no program", args)
		}
		checkWire(t, spec)
	})
}

// FuzzServiceUpdateFlags feeds arbitrary command lines to `service update`
// applied to an existing service: no panic, one error, and a spec that
// survives the wire.
func FuzzServiceUpdateFlags(f *testing.F) {
	for _, args := range [][]string{
		{"--replicas", "5"},
		{"--image", "shoal/hello:v2", "--env-add", "B=2", "--env-rm", "A"},
		{"--constraint-add", "node.labels.zone==b", "--constraint-rm", "node.role==worker"},
		{"--publish-add", "9090:90", "--publish-rm", "80", "--mount-rm", "/data"},
		{"--label-add", "x=y", "--label-rm", "team", "--limit-cpu", "2", "--reserve-memory", "1G"},
		{"--update-order", "start-first", "--rollback-parallelism", "0", "--force"},
		{"--health-cmd", "", "--health-http", "/healthz"},
	} {
		f.Add(strings.Join(args, "\n"))
	}
	f.Fuzz(func(t *testing.T, in string) {
		args := fuzzArgs(in)
		spec, err := updateSpec(existingSpec(), args...)
		if err != nil {
			if strings.TrimSpace(err.Error()) == "" {
				t.Fatalf("updateSpec(%q): an empty error", args)
			}
			return
		}
		checkWire(t, spec)
	})
}

// checkWire checks that a spec encodes and decodes to itself.
func checkWire(t *testing.T, spec *pb.ServiceSpec) {
	t.Helper()
	data, err := proto.Marshal(spec)
	if err != nil {
		t.Fatalf("the spec does not encode: %v", err)
	}
	var back pb.ServiceSpec
	if err := proto.Unmarshal(data, &back); err != nil || !proto.Equal(&back, spec) {
		t.Fatalf("the spec does not survive the wire: %v", err)
	}
}

// FuzzFlagValues feeds one arbitrary string to every parser of a flag or
// argument value: none may panic, and values that parse format and parse
// back to themselves where the CLI prints them.
func FuzzFlagValues(f *testing.F) {
	for _, s := range []string{"64MiB", "0.5", "1e3", "8080:80/udp", "published=80,target=8080,mode=host",
		"type=bind,source=/a,target=/b,readonly", "spread=node.labels.zone", "node.labels.zone!=a", "web=5",
		"desired-state=running", "all", "-1", "'a b' \"c\\\"d\" e\\ f", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if n, err := parseCPUs(s); err == nil {
			if back, err := parseCPUs(formatCPUs(n)); err != nil || back != n {
				t.Fatalf("parseCPUs(%q) = %d, but %q parses to %d, %v", s, n, formatCPUs(n), back, err)
			}
		}
		if n, err := parseBytes(s); err == nil && n < 0 {
			t.Fatalf("parseBytes(%q) = %d", s, n)
		}
		if p, err := parsePublish("--publish", s); err == nil && (p.GetTargetPort() == 0 || p.GetTargetPort() > 65535 || p.GetPublishedPort() > 65535) {
			t.Fatalf("parsePublish(%q) = %v: a port out of range", s, p)
		}
		if m, err := parseMount("--mount", s); err == nil && m.GetTarget() == "" {
			t.Fatalf("parseMount(%q) = %v: no target", s, m)
		}
		_, _ = parsePlacementPref("--placement-pref", s)
		_ = validateConstraint("--constraint", s)
		_, _ = parseTaskFilters([]string{s})
		_, _ = parseTail(s)
		if targets, err := parseScaleArgs([]string{s}); err == nil && (len(targets) != 1 || targets[0].ref == "") {
			t.Fatalf("parseScaleArgs(%q) = %v", s, targets)
		}
		if args, err := splitArgs(s); err == nil {
			for _, a := range args {
				if a == "" && !strings.ContainsAny(s, `'"`) {
					t.Fatalf("splitArgs(%q) = %q: an empty word without quotes", s, args)
				}
			}
		}
	})
}
