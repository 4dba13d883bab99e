package main

// Service flags about the task's environment, labels and mounts.

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/pflag"
)

// envFlags are --env, --label, --container-label and --mount (create) and
// their -add and -rm forms (update).
type envFlags struct {
	env, labels, containerLabels, mounts []string

	envAdd, envRm                       []string
	labelAdd, labelRm                   []string
	containerLabelAdd, containerLabelRm []string
	mountAdd, mountRm                   []string
}

func (f *envFlags) registerCreate(fs *pflag.FlagSet) {
	fs.StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable `KEY=VALUE` (repeatable)")
	fs.StringArrayVarP(&f.labels, "label", "l", nil, "service label `KEY=VALUE` (repeatable)")
	fs.StringArrayVar(&f.containerLabels, "container-label", nil, "container label `KEY=VALUE` (repeatable)")
	fs.StringArrayVar(&f.mounts, "mount", nil, "`mount` a volume, host path or tmpfs: type=bind|volume|tmpfs,source=SRC,target=DST[,readonly] (repeatable)")
}

func (f *envFlags) registerUpdate(fs *pflag.FlagSet) {
	fs.StringArrayVar(&f.envAdd, "env-add", nil, "add or change an environment variable `KEY=VALUE` (repeatable)")
	fs.StringArrayVar(&f.envRm, "env-rm", nil, "remove an environment variable `KEY` (repeatable)")
	fs.StringArrayVar(&f.labelAdd, "label-add", nil, "add or change a service label `KEY=VALUE` (repeatable)")
	fs.StringArrayVar(&f.labelRm, "label-rm", nil, "remove a service label `KEY` (repeatable)")
	fs.StringArrayVar(&f.containerLabelAdd, "container-label-add", nil, "add or change a container label `KEY=VALUE` (repeatable)")
	fs.StringArrayVar(&f.containerLabelRm, "container-label-rm", nil, "remove a container label `KEY` (repeatable)")
	fs.StringArrayVar(&f.mountAdd, "mount-add", nil, "add or replace a `mount`, as --mount of create: type=bind|volume|tmpfs,source=SRC,target=DST[,readonly] (repeatable)")
	fs.StringArrayVar(&f.mountRm, "mount-rm", nil, "remove the mount at this `target` path (repeatable)")
}

func (f *envFlags) create(spec *pb.ServiceSpec, _ map[string]bool) error {
	labels, err := parseLabels("--label", f.labels)
	if err != nil {
		return err
	}
	spec.Annotations.Labels = labels
	c := spec.Task.Container
	if c.Labels, err = parseLabels("--container-label", f.containerLabels); err != nil {
		return err
	}
	for _, kv := range f.env {
		if err := validateEnv("--env", kv); err != nil {
			return err
		}
		c.Env = setEnv(c.Env, kv)
	}
	for _, m := range f.mounts {
		mount, err := parseMount("--mount", m)
		if err != nil {
			return err
		}
		c.Mounts = append(c.Mounts, mount)
	}
	return nil
}

func (f *envFlags) update(spec *pb.ServiceSpec, _ map[string]bool) error {
	c := spec.Task.Container
	for _, k := range f.envRm {
		before := len(c.Env)
		c.Env = slices.DeleteFunc(c.Env, func(kv string) bool { key, _, _ := strings.Cut(kv, "="); return key == k })
		if len(c.Env) == before {
			return fmt.Errorf("--env-rm %s: the service has no such environment variable", k)
		}
	}
	for _, kv := range f.envAdd {
		if err := validateEnv("--env-add", kv); err != nil {
			return err
		}
		c.Env = setEnv(c.Env, kv)
	}
	var err error
	if spec.Annotations.Labels, err = changeLabels("label", spec.Annotations.Labels, f.labelAdd, f.labelRm); err != nil {
		return err
	}
	if c.Labels, err = changeLabels("container-label", c.Labels, f.containerLabelAdd, f.containerLabelRm); err != nil {
		return err
	}
	for _, target := range f.mountRm {
		before := len(c.Mounts)
		c.Mounts = slices.DeleteFunc(c.Mounts, func(m *pb.Mount) bool { return m.GetTarget() == filepath.Clean(target) })
		if len(c.Mounts) == before {
			return fmt.Errorf("--mount-rm %s: the service has no mount at that target", target)
		}
	}
	for _, s := range f.mountAdd {
		m, err := parseMount("--mount-add", s)
		if err != nil {
			return err
		}
		c.Mounts = slices.DeleteFunc(c.Mounts, func(old *pb.Mount) bool { return old.GetTarget() == m.GetTarget() })
		c.Mounts = append(c.Mounts, m)
	}
	return nil
}

func changeLabels(flagName string, labels map[string]string, add, rm []string) (map[string]string, error) {
	for _, k := range rm {
		if _, ok := labels[k]; !ok {
			return nil, fmt.Errorf("--%s-rm %s: the service has no such label", flagName, k)
		}
		delete(labels, k)
	}
	parsed, err := parseLabels("--"+flagName+"-add", add)
	if err != nil {
		return nil, err
	}
	for k, v := range parsed {
		if labels == nil {
			labels = map[string]string{}
		}
		labels[k] = v
	}
	if len(labels) == 0 {
		return nil, nil
	}
	return labels, nil
}

func validateEnv(flagName, kv string) error {
	k, _, ok := strings.Cut(kv, "=")
	if !ok || k == "" || strings.ContainsAny(k, " \t\n") {
		return usagef("%s %q: use KEY=VALUE", flagName, kv)
	}
	return nil
}

// setEnv sets KEY=VALUE in env, replacing an earlier value of KEY.
func setEnv(env []string, kv string) []string {
	k, _, _ := strings.Cut(kv, "=")
	for i, old := range env {
		if ok, _, _ := strings.Cut(old, "="); ok == k {
			env[i] = kv
			return env
		}
	}
	return append(env, kv)
}

// parseLabels reads KEY=VALUE (or KEY alone, for an empty value).
func parseLabels(flagName string, kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	labels := map[string]string{}
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		if k == "" || strings.ContainsAny(k, " \t\n") {
			return nil, usagef("%s %q: use KEY=VALUE", flagName, kv)
		}
		labels[k] = v
	}
	return labels, nil
}

// parseMount reads type=bind|volume|tmpfs,source=SRC,target=DST[,readonly].
func parseMount(flagName, s string) (*pb.Mount, error) {
	m := &pb.Mount{Type: pb.MountType_MOUNT_TYPE_VOLUME}
	bad := func(format string, args ...any) error {
		return usagef("%s %q: %s", flagName, s, fmt.Sprintf(format, args...))
	}
	if s == "" {
		return nil, bad("use type=bind|volume|tmpfs,source=SRC,target=DST[,readonly]")
	}
	for _, field := range strings.Split(s, ",") {
		k, v, hasValue := strings.Cut(field, "=")
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "type":
			switch v {
			case "bind":
				m.Type = pb.MountType_MOUNT_TYPE_BIND
			case "volume":
				m.Type = pb.MountType_MOUNT_TYPE_VOLUME
			case "tmpfs":
				m.Type = pb.MountType_MOUNT_TYPE_TMPFS
			default:
				return nil, bad("type %q: use bind, volume or tmpfs", v)
			}
		case "source", "src":
			m.Source = v
		case "target", "destination", "dst":
			m.Target = v
		case "readonly", "ro":
			if !hasValue {
				m.ReadOnly = true
				break
			}
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, bad("readonly=%q: use true or false", v)
			}
			m.ReadOnly = b
		default:
			return nil, bad("unknown field %q: use type, source, target and readonly", k)
		}
	}
	if m.Target == "" || !filepath.IsAbs(m.Target) {
		return nil, bad("give target=ABSOLUTE-PATH inside the task")
	}
	m.Target = filepath.Clean(m.Target)
	switch m.Type {
	case pb.MountType_MOUNT_TYPE_BIND:
		if !filepath.IsAbs(m.Source) {
			return nil, bad("a bind mount needs source=ABSOLUTE-PATH on the node")
		}
	case pb.MountType_MOUNT_TYPE_TMPFS:
		if m.Source != "" {
			return nil, bad("a tmpfs mount takes no source")
		}
	}
	return m, nil
}
