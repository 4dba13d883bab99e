package docker

import (
	"fmt"
	"net/netip"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
)

// Labels Shoal puts on every container it creates. The node label scopes
// List to this node's containers, since several nodes (in tests, or nodes
// sharing one Engine) may use the same Engine.
const (
	LabelTaskID      = "com.shoal.task.id"
	LabelServiceID   = "com.shoal.service.id"
	LabelServiceName = "com.shoal.service.name"
	LabelNodeID      = "com.shoal.node.id"
	LabelSlot        = "com.shoal.task.slot"
	// LabelPorts lists the task's published ports in the order of its
	// endpoint ("80/tcp,53/udp"), so reported bindings keep that order.
	LabelPorts = "com.shoal.task.ports"
)

// Health check defaults for a service's command check run by the Engine:
// the agent's own defaults, not Docker's (30s).
const (
	defaultHealthInterval = worker.DefaultHealthInterval
	defaultHealthTimeout  = worker.DefaultHealthTimeout
	defaultHealthRetries  = worker.DefaultHealthRetries
	defaultStopGrace      = 10 * time.Second
)

func permanent(format string, args ...any) error {
	return &worker.PermanentError{Err: fmt.Errorf(format, args...)}
}

var nameUnsafe = regexp.MustCompile(`[^a-zA-Z0-9_.-]`)

// ContainerName is the name of a task's container:
// <service>.<slot>.<task-id> for replicated tasks, <service>.<node-id>.<task-id>
// for global ones and task.<task-id> for tasks without a service name.
func ContainerName(t *pb.Task) string {
	var name string
	switch {
	case t.GetServiceName() == "":
		name = "task." + t.GetId()
	case t.GetSlot() == 0 && t.GetNodeId() != "":
		name = t.GetServiceName() + "." + t.GetNodeId() + "." + t.GetId()
	default:
		name = t.GetServiceName() + "." + strconv.FormatUint(t.GetSlot(), 10) + "." + t.GetId()
	}
	name = nameUnsafe.ReplaceAllString(name, "-")
	if name == "" || !isAlnum(name[0]) {
		name = "x" + name
	}
	return name
}

func isAlnum(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9'
}

// taskPorts are the ports a task publishes.
func taskPorts(t *pb.Task) []*pb.PortConfig {
	if ps := t.GetEndpoint().GetPorts(); len(ps) > 0 {
		return ps
	}
	return t.GetEndpoint().GetSpec().GetPorts()
}

func protoName(p pb.PortProtocol) network.IPProtocol {
	if p == pb.PortProtocol_PORT_PROTOCOL_UDP {
		return network.UDP
	}
	return network.TCP
}

var volumeName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`)

// createSpec is what Prepare asks the Engine to create.
type createSpec struct {
	name   string
	config *container.Config
	host   *container.HostConfig
}

// buildSpec maps a task onto a container. Problems with the spec itself
// are *worker.PermanentError. hostIP is where ports are published (the
// node's advertise address; invalid means all addresses). Each secret file
// is bind-mounted read-only at /run/secrets/<target>, each config file at
// its target.
func buildSpec(t *pb.Task, nodeID string, hostIP netip.Addr, files worker.TaskFiles) (*createSpec, error) {
	c := t.GetSpec().GetContainer()
	if c == nil || c.GetImage() == "" {
		return nil, permanent("task %s has no image: the docker runtime runs a container image", t.GetId())
	}
	env, err := taskEnv(t, nodeID)
	if err != nil {
		return nil, err
	}
	if d := c.GetDir(); d != "" && !path.IsAbs(d) {
		return nil, permanent("task %s: working directory %q is not an absolute path", t.GetId(), d)
	}
	grace := time.Duration(c.GetStopGracePeriod())
	if grace <= 0 {
		grace = defaultStopGrace
	}
	stopTimeout := graceSeconds(grace)

	labels := map[string]string{}
	for k, v := range c.GetLabels() {
		labels[k] = v
	}
	labels[LabelTaskID] = t.GetId()
	labels[LabelServiceID] = t.GetServiceId()
	labels[LabelServiceName] = t.GetServiceName()
	labels[LabelNodeID] = nodeID
	labels[LabelSlot] = strconv.FormatUint(t.GetSlot(), 10)

	cfg := &container.Config{
		Image:       c.GetImage(),
		Env:         env,
		WorkingDir:  c.GetDir(),
		User:        c.GetUser(),
		Labels:      labels,
		StopTimeout: &stopTimeout,
		Healthcheck: healthConfig(c.GetHealthcheck()),
	}
	if len(c.GetCommand()) > 0 {
		cfg.Entrypoint = append([]string(nil), c.GetCommand()...)
	}
	if len(c.GetArgs()) > 0 {
		cfg.Cmd = append([]string(nil), c.GetArgs()...)
	}

	host := &container.HostConfig{
		ReadonlyRootfs: c.GetReadOnly(),
		RestartPolicy:  container.RestartPolicy{Name: container.RestartPolicyDisabled},
	}
	if l := t.GetSpec().GetResources().GetLimits(); l != nil {
		host.Memory = l.GetMemoryBytes()
		host.NanoCPUs = l.GetNanoCpus()
	}
	if host.Mounts, err = mounts(t); err != nil {
		return nil, err
	}
	for _, set := range []struct {
		noun  string
		files []worker.TaskFile
		dir   string // what a target is relative to
	}{{"secret", files.Secrets.Files, worker.ContainerSecretsDir}, {"config", files.Configs.Files, "/"}} {
		for _, f := range set.files {
			target := path.Join(set.dir, f.Target)
			for _, m := range host.Mounts {
				if m.Target == target {
					return nil, permanent("task %s: a mount and the %s %q both use %s", t.GetId(), set.noun, f.Target, target)
				}
			}
			host.Mounts = append(host.Mounts, mount.Mount{Type: mount.TypeBind, Source: f.Path, Target: target, ReadOnly: true})
		}
	}

	var portList []string
	for _, pc := range taskPorts(t) {
		if pc.GetTargetPort() == 0 || pc.GetTargetPort() > 65535 {
			return nil, permanent("task %s: invalid target port %d", t.GetId(), pc.GetTargetPort())
		}
		port, _ := network.PortFrom(uint16(pc.GetTargetPort()), protoName(pc.GetProtocol()))
		if _, dup := host.PortBindings[port]; dup {
			continue
		}
		binding := network.PortBinding{HostIP: hostIP}
		if pc.GetPublishMode() == pb.PublishMode_PUBLISH_MODE_HOST && pc.GetPublishedPort() != 0 {
			binding.HostPort = strconv.Itoa(int(pc.GetPublishedPort()))
		}
		if cfg.ExposedPorts == nil {
			cfg.ExposedPorts = network.PortSet{}
			host.PortBindings = network.PortMap{}
		}
		cfg.ExposedPorts[port] = struct{}{}
		host.PortBindings[port] = []network.PortBinding{binding}
		portList = append(portList, port.String())
	}
	if len(portList) > 0 {
		labels[LabelPorts] = strings.Join(portList, ",")
	}
	return &createSpec{name: ContainerName(t), config: cfg, host: host}, nil
}

// taskEnv is the container's environment: Shoal's variables (as the
// process runtime sets them), then the spec's, which win.
func taskEnv(t *pb.Task, nodeID string) ([]string, error) {
	base := []string{
		"SHOAL_TASK_ID=" + t.GetId(),
		"SHOAL_TASK_NAME=" + ContainerName(t),
		"SHOAL_SERVICE_ID=" + t.GetServiceId(),
		"SHOAL_SERVICE_NAME=" + t.GetServiceName(),
		"SHOAL_TASK_SLOT=" + strconv.FormatUint(t.GetSlot(), 10),
		"SHOAL_NODE_ID=" + nodeID,
	}
	for _, kv := range t.GetSpec().GetContainer().GetEnv() {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, permanent("task %s: invalid environment entry %q: want KEY=VALUE", t.GetId(), kv)
		}
	}
	var out []string
	index := map[string]int{}
	for _, kv := range append(base, t.GetSpec().GetContainer().GetEnv()...) {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := index[k]; ok {
			out[i] = kv
			continue
		}
		index[k] = len(out)
		out = append(out, kv)
	}
	return out, nil
}

// healthConfig is the container's health check: the service's command
// (CMD form); NONE when checks are disabled or the agent probes the task
// itself (HTTP or TCP checks); nil (the image's own HEALTHCHECK) when the
// service sets none, with the service's timings if it sets some.
func healthConfig(hc *pb.HealthCheck) *container.HealthConfig {
	switch {
	case hc == nil:
		return nil
	case hc.GetDisable(), hc.GetHttpGet() != "", hc.GetTcpSocket() != 0:
		return &container.HealthConfig{Test: []string{"NONE"}}
	case len(hc.GetCommand()) > 0:
		retries := int(hc.GetRetries())
		if retries <= 0 {
			retries = defaultHealthRetries
		}
		return &container.HealthConfig{
			Test:        append([]string{"CMD"}, hc.GetCommand()...),
			Interval:    durationOr(hc.GetInterval(), defaultHealthInterval),
			Timeout:     durationOr(hc.GetTimeout(), defaultHealthTimeout),
			StartPeriod: time.Duration(max(hc.GetStartPeriod(), 0)),
			Retries:     retries,
		}
	case hc.GetInterval() > 0 || hc.GetTimeout() > 0 || hc.GetStartPeriod() > 0 || hc.GetRetries() > 0:
		// No test: the Engine keeps the image's, with these timings.
		return &container.HealthConfig{
			Interval:    time.Duration(max(hc.GetInterval(), 0)),
			Timeout:     time.Duration(max(hc.GetTimeout(), 0)),
			StartPeriod: time.Duration(max(hc.GetStartPeriod(), 0)),
			Retries:     int(hc.GetRetries()),
		}
	}
	return nil
}

func durationOr(ns int64, def time.Duration) time.Duration {
	if ns <= 0 {
		return def
	}
	return time.Duration(ns)
}

// graceSeconds rounds a grace period up to whole seconds, as the Engine
// counts them.
func graceSeconds(d time.Duration) int {
	return int((d + time.Second - 1) / time.Second)
}

// mounts maps the task's mounts. A bind mount's source must exist on
// this node (the Engine runs here).
func mounts(t *pb.Task) ([]mount.Mount, error) {
	var out []mount.Mount
	targets := map[string]bool{}
	for _, m := range t.GetSpec().GetContainer().GetMounts() {
		target := m.GetTarget()
		if !path.IsAbs(target) {
			return nil, permanent("task %s: mount target %q is not an absolute path", t.GetId(), target)
		}
		target = path.Clean(target)
		if targets[target] {
			return nil, permanent("task %s: two mounts on %s", t.GetId(), target)
		}
		targets[target] = true
		mm := mount.Mount{Target: target, Source: m.GetSource(), ReadOnly: m.GetReadOnly()}
		switch m.GetType() {
		case pb.MountType_MOUNT_TYPE_BIND:
			mm.Type = mount.TypeBind
			if !path.IsAbs(mm.Source) {
				return nil, permanent("task %s: bind mount source %q is not an absolute path", t.GetId(), mm.Source)
			}
			if _, err := os.Stat(mm.Source); err != nil {
				return nil, permanent("task %s: bind mount source %s does not exist on this node: %v", t.GetId(), mm.Source, err)
			}
		case pb.MountType_MOUNT_TYPE_VOLUME:
			mm.Type = mount.TypeVolume
			if mm.Source != "" && !volumeName.MatchString(mm.Source) {
				return nil, permanent("task %s: invalid volume name %q (letters, digits, _ . -)", t.GetId(), mm.Source)
			}
		case pb.MountType_MOUNT_TYPE_TMPFS:
			mm.Type = mount.TypeTmpfs
			if mm.Source != "" {
				return nil, permanent("task %s: a tmpfs mount takes no source (got %q)", t.GetId(), mm.Source)
			}
		default:
			return nil, permanent("task %s: unknown mount type %v", t.GetId(), m.GetType())
		}
		out = append(out, mm)
	}
	return out, nil
}
