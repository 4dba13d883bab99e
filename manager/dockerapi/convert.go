package dockerapi

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
	pb "github.com/shoal-cluster/shoal/proto"
)

// Health check tests Shoal has beyond Docker's: an HTTP GET of a path and
// a TCP connect, written as Test = [kind, value] so that a spec read
// through this API and sent back keeps them.
const (
	testHTTP = "SHOAL-HTTP"
	testTCP  = "SHOAL-TCP"
)

// defaultMonitor is Docker's (and Shoal's) update monitor period, used
// when a spec leaves it 0.
const defaultMonitor = 5 * time.Second

// defaultRestartDelay is the restart delay when a policy leaves it unset.
const defaultRestartDelay = 5 * time.Second

// refusals collects the fields of a spec Shoal cannot honour.
type refusals []string

func (r *refusals) add(cond bool, field string) {
	if cond {
		*r = append(*r, field)
	}
}

func (r refusals) err() error {
	if len(r) == 0 {
		return nil
	}
	return badRequest("Shoal does not support %s in a service spec; leave it out", strings.Join(r, ", "))
}

// serviceSpecFromDocker converts a Docker service spec to Shoal's,
// refusing every field Shoal would not honour.
func serviceSpecFromDocker(d swarm.ServiceSpec) (*pb.ServiceSpec, error) {
	var no refusals
	t := d.TaskTemplate
	no.add(t.PluginSpec != nil, "TaskTemplate.PluginSpec (plugins)")
	no.add(t.NetworkAttachmentSpec != nil, "TaskTemplate.NetworkAttachmentSpec")
	no.add(t.LogDriver != nil && t.LogDriver.Name != "", "TaskTemplate.LogDriver (--log-driver; compose logging)")
	no.add(t.Runtime != "" && t.Runtime != swarm.RuntimeContainer, fmt.Sprintf("TaskTemplate.Runtime %q", t.Runtime))
	spec := &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: d.Name, Labels: d.Labels},
		Task:        &pb.TaskSpec{ForceUpdate: t.ForceUpdate},
	}
	if t.ContainerSpec == nil {
		return nil, badRequest("the service spec needs TaskTemplate.ContainerSpec with an image")
	}
	c, err := containerFromDocker(t.ContainerSpec, &no)
	if err != nil {
		return nil, err
	}
	spec.Task.Container = c
	if res := t.Resources; res != nil {
		no.add(res.SwapBytes != nil, "Resources.SwapBytes")
		no.add(res.MemorySwappiness != nil, "Resources.MemorySwappiness")
		rr := &pb.ResourceRequirements{}
		if l := res.Limits; l != nil {
			no.add(l.Pids != 0, "Resources.Limits.Pids (--limit-pids; compose deploy.resources.limits.pids)")
			rr.Limits = &pb.Resources{NanoCpus: l.NanoCPUs, MemoryBytes: l.MemoryBytes}
		}
		if rv := res.Reservations; rv != nil {
			no.add(len(rv.GenericResources) > 0, "Resources.Reservations.GenericResources (--generic-resource; compose deploy.resources.reservations.generic_resources)")
			rr.Reservations = &pb.Resources{NanoCpus: rv.NanoCPUs, MemoryBytes: rv.MemoryBytes}
		}
		spec.Task.Resources = rr
	}
	if rp := t.RestartPolicy; rp != nil {
		p := &pb.RestartPolicy{Delay: int64(defaultRestartDelay)}
		switch rp.Condition {
		case "", swarm.RestartPolicyConditionAny:
			p.Condition = pb.RestartCondition_RESTART_CONDITION_ANY
		case swarm.RestartPolicyConditionOnFailure:
			p.Condition = pb.RestartCondition_RESTART_CONDITION_ON_FAILURE
		case swarm.RestartPolicyConditionNone:
			p.Condition = pb.RestartCondition_RESTART_CONDITION_NONE
		default:
			return nil, badRequest("invalid restart condition %q: use none, on-failure or any", rp.Condition)
		}
		if rp.Delay != nil {
			p.Delay = int64(*rp.Delay)
		}
		if rp.MaxAttempts != nil {
			p.MaxAttempts = *rp.MaxAttempts
		}
		if rp.Window != nil {
			p.Window = int64(*rp.Window)
		}
		spec.Task.Restart = p
	}
	if pl := t.Placement; pl != nil {
		no.add(len(pl.Platforms) > 0, "Placement.Platforms")
		p := &pb.Placement{Constraints: pl.Constraints, MaxReplicas: pl.MaxReplicas}
		for _, pref := range pl.Preferences {
			if pref.Spread == nil {
				return nil, badRequest("a placement preference must be spread=...")
			}
			p.Preferences = append(p.Preferences, &pb.PlacementPreference{SpreadDescriptor: pref.Spread.SpreadDescriptor})
		}
		if len(p.Constraints) > 0 || len(p.Preferences) > 0 || p.MaxReplicas > 0 {
			spec.Task.Placement = p
		}
	}
	for _, n := range t.Networks {
		no.add(len(n.DriverOpts) > 0, "network attachment DriverOpts (compose networks.NAME.driver_opts)")
		if n.Target == "" {
			return nil, badRequest("a network attachment needs a Target: the network's name or ID")
		}
		// The managers resolve the target (a name or an ID) and check
		// the aliases.
		spec.Task.Networks = append(spec.Task.Networks, &pb.NetworkAttachment{NetworkName: n.Target, Aliases: n.Aliases})
	}
	m := d.Mode
	modes := 0
	for _, set := range []bool{m.Replicated != nil, m.Global != nil, m.ReplicatedJob != nil, m.GlobalJob != nil} {
		if set {
			modes++
		}
	}
	if modes > 1 {
		return nil, badRequest("a service has one mode: replicated, global, replicated-job or global-job")
	}
	switch {
	case m.Global != nil:
		spec.Mode = &pb.ServiceSpec_Global{Global: &pb.GlobalService{}}
	case m.ReplicatedJob != nil:
		j := &pb.ReplicatedJob{}
		if m.ReplicatedJob.MaxConcurrent != nil {
			j.MaxConcurrent = *m.ReplicatedJob.MaxConcurrent
		}
		if m.ReplicatedJob.TotalCompletions != nil {
			j.TotalCompletions = *m.ReplicatedJob.TotalCompletions
		}
		spec.Mode = &pb.ServiceSpec_ReplicatedJob{ReplicatedJob: j}
	case m.GlobalJob != nil:
		spec.Mode = &pb.ServiceSpec_GlobalJob{GlobalJob: &pb.GlobalJob{}}
	default:
		replicas := uint64(1)
		if m.Replicated != nil && m.Replicated.Replicas != nil {
			replicas = *m.Replicated.Replicas
		}
		spec.Mode = &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: replicas}}
	}
	if spec.Update, err = updateConfigFromDocker(d.UpdateConfig, "UpdateConfig"); err != nil {
		return nil, err
	}
	if spec.Rollback, err = updateConfigFromDocker(d.RollbackConfig, "RollbackConfig"); err != nil {
		return nil, err
	}
	if e := d.EndpointSpec; e != nil {
		es := &pb.EndpointSpec{}
		switch e.Mode {
		case "", swarm.ResolutionModeVIP:
		case swarm.ResolutionModeDNSRR:
			es.Mode = pb.ResolutionMode_RESOLUTION_MODE_DNSRR
		default:
			return nil, badRequest("invalid endpoint mode %q: use vip or dnsrr", e.Mode)
		}
		for _, p := range e.Ports {
			pc := &pb.PortConfig{Name: p.Name, TargetPort: p.TargetPort, PublishedPort: p.PublishedPort}
			switch p.Protocol {
			case "", network.TCP:
			case network.UDP:
				pc.Protocol = pb.PortProtocol_PORT_PROTOCOL_UDP
			default:
				return nil, badRequest("Shoal publishes tcp and udp ports, not %s (port %d)", p.Protocol, p.TargetPort)
			}
			switch p.PublishMode {
			case "", swarm.PortConfigPublishModeIngress:
			case swarm.PortConfigPublishModeHost:
				pc.PublishMode = pb.PublishMode_PUBLISH_MODE_HOST
			default:
				return nil, badRequest("invalid publish mode %q: use ingress or host", p.PublishMode)
			}
			es.Ports = append(es.Ports, pc)
		}
		spec.Endpoint = es
	}
	if err := no.err(); err != nil {
		return nil, err
	}
	return spec, nil
}

func containerFromDocker(c *swarm.ContainerSpec, no *refusals) (*pb.ContainerSpec, error) {
	no.add(c.Hostname != "", "ContainerSpec.Hostname (--hostname; compose hostname)")
	no.add(len(c.Groups) > 0, "ContainerSpec.Groups (--group)")
	no.add(c.Privileges != nil && (c.Privileges.CredentialSpec != nil || c.Privileges.SELinuxContext != nil ||
		c.Privileges.Seccomp != nil || c.Privileges.AppArmor != nil || c.Privileges.NoNewPrivileges), "ContainerSpec.Privileges (--credential-spec; compose credential_spec)")
	no.add(c.Init != nil && *c.Init, "ContainerSpec.Init (--init; compose init)")
	no.add(c.StopSignal != "", "ContainerSpec.StopSignal (--stop-signal; compose stop_signal)")
	no.add(c.TTY, "ContainerSpec.TTY (--tty; compose tty)")
	no.add(c.OpenStdin, "ContainerSpec.OpenStdin (compose stdin_open)")
	no.add(len(c.Hosts) > 0, "ContainerSpec.Hosts (--host; compose extra_hosts)")
	no.add(c.DNSConfig != nil && (len(c.DNSConfig.Nameservers) > 0 || len(c.DNSConfig.Search) > 0 || len(c.DNSConfig.Options) > 0), "ContainerSpec.DNSConfig (--dns*; compose dns, dns_search)")
	no.add(c.Isolation != "" && c.Isolation != container.IsolationDefault, "ContainerSpec.Isolation (--isolation; compose isolation)")
	no.add(len(c.Sysctls) > 0, "ContainerSpec.Sysctls (--sysctl; compose sysctls)")
	no.add(len(c.CapabilityAdd) > 0 || len(c.CapabilityDrop) > 0, "ContainerSpec.CapabilityAdd/Drop (--cap-add, --cap-drop; compose cap_add, cap_drop)")
	no.add(len(c.Ulimits) > 0, "ContainerSpec.Ulimits (--ulimit; compose ulimits)")
	no.add(c.OomScoreAdj != 0, "ContainerSpec.OomScoreAdj (--oom-score-adj; compose oom_score_adj)")
	out := &pb.ContainerSpec{
		Image:   c.Image,
		Command: c.Command,
		Args:    c.Args,
		Env:     c.Env,
		Dir:     c.Dir,
		User:    c.User,
		Labels:  c.Labels,
		// The container and docker runtimes honour it; the process
		// runtime refuses such a task.
		ReadOnly: c.ReadOnly,
	}
	if c.StopGracePeriod != nil {
		out.StopGracePeriod = int64(*c.StopGracePeriod)
	}
	for _, m := range c.Mounts {
		pm := &pb.Mount{Source: m.Source, Target: m.Target, ReadOnly: m.ReadOnly}
		switch m.Type {
		case mount.TypeBind:
			pm.Type = pb.MountType_MOUNT_TYPE_BIND
		case mount.TypeVolume:
			pm.Type = pb.MountType_MOUNT_TYPE_VOLUME
		case mount.TypeTmpfs:
			pm.Type = pb.MountType_MOUNT_TYPE_TMPFS
		default:
			return nil, badRequest("Shoal mounts bind, volume and tmpfs only, not %s (mount at %s)", m.Type, m.Target)
		}
		no.add(m.Consistency != "" && m.Consistency != mount.ConsistencyDefault, "Mount.Consistency (compose volumes consistency)")
		no.add(m.BindOptions != nil && (m.BindOptions.Propagation != "" || m.BindOptions.NonRecursive || m.BindOptions.CreateMountpoint || m.BindOptions.ReadOnlyNonRecursive || m.BindOptions.ReadOnlyForceRecursive), "Mount.BindOptions (compose volumes bind.*)")
		no.add(m.VolumeOptions != nil && (m.VolumeOptions.NoCopy || len(m.VolumeOptions.Labels) > 0 || m.VolumeOptions.DriverConfig != nil || m.VolumeOptions.Subpath != ""), "Mount.VolumeOptions (compose volumes volume.* and top-level volumes: labels, driver, nocopy)")
		no.add(m.TmpfsOptions != nil && (m.TmpfsOptions.SizeBytes != 0 || m.TmpfsOptions.Mode != 0 || len(m.TmpfsOptions.Options) > 0), "Mount.TmpfsOptions (compose volumes tmpfs.*)")
		no.add(m.ImageOptions != nil || m.ClusterOptions != nil, "Mount.ImageOptions/ClusterOptions")
		out.Mounts = append(out.Mounts, pm)
	}
	if h := c.Healthcheck; h != nil {
		hc := &pb.HealthCheck{Interval: int64(h.Interval), Timeout: int64(h.Timeout), StartPeriod: int64(h.StartPeriod), Retries: uint32(max(h.Retries, 0))}
		no.add(h.StartInterval != 0, "Healthcheck.StartInterval (--health-start-interval; compose healthcheck.start_interval)")
		switch kind := first(h.Test); {
		case len(h.Test) == 0:
			// The image's own check, with these timings.
		case kind == "NONE":
			hc.Disable = true
		case kind == "CMD" && len(h.Test) > 1:
			hc.Command = h.Test[1:]
		case kind == "CMD-SHELL" && len(h.Test) == 2:
			hc.Command = []string{"/bin/sh", "-c", h.Test[1]}
		case kind == testHTTP && len(h.Test) == 2:
			hc.HttpGet = h.Test[1]
		case kind == testTCP && len(h.Test) == 2:
			port, err := strconv.ParseUint(h.Test[1], 10, 16)
			if err != nil || port == 0 {
				return nil, badRequest("invalid %s health check port %q", testTCP, h.Test[1])
			}
			hc.TcpSocket = uint32(port)
		default:
			return nil, badRequest("invalid health check test %q: use [\"CMD\", ...], [\"CMD-SHELL\", cmd], [\"NONE\"], [%q, path] or [%q, port]", h.Test, testHTTP, testTCP)
		}
		out.Healthcheck = hc
	}
	for _, s := range c.Secrets {
		ref := &pb.SecretReference{SecretId: s.SecretID, SecretName: s.SecretName}
		if s.File != nil {
			no.add(s.File.UID != "" && s.File.UID != "0" || s.File.GID != "" && s.File.GID != "0", "SecretReference.File.UID/GID (compose secrets uid, gid)")
			ref.Target, ref.Mode = s.File.Name, uint32(s.File.Mode.Perm())
		}
		out.Secrets = append(out.Secrets, ref)
	}
	for _, cf := range c.Configs {
		no.add(cf.Runtime != nil, "ConfigReference.Runtime (credential specs; compose credential_spec.config)")
		ref := &pb.ConfigReference{ConfigId: cf.ConfigID, ConfigName: cf.ConfigName}
		if cf.File != nil {
			ref.Target, ref.Mode, ref.Uid, ref.Gid = cf.File.Name, uint32(cf.File.Mode.Perm()), cf.File.UID, cf.File.GID
		}
		out.Configs = append(out.Configs, ref)
	}
	return out, nil
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

func updateConfigFromDocker(u *swarm.UpdateConfig, what string) (*pb.UpdateConfig, error) {
	if u == nil {
		return nil, nil
	}
	out := &pb.UpdateConfig{Parallelism: u.Parallelism, Delay: int64(u.Delay), Monitor: int64(u.Monitor), MaxFailureRatio: u.MaxFailureRatio}
	if out.Monitor == 0 {
		out.Monitor = int64(defaultMonitor)
	}
	switch u.FailureAction {
	case "", swarm.UpdateFailureActionPause:
	case swarm.UpdateFailureActionContinue:
		out.FailureAction = pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_CONTINUE
	case swarm.UpdateFailureActionRollback:
		if what == "RollbackConfig" {
			return nil, badRequest("a rollback cannot roll back on failure: use pause or continue")
		}
		out.FailureAction = pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK
	default:
		return nil, badRequest("invalid %s.FailureAction %q: use pause, continue or rollback", what, u.FailureAction)
	}
	switch u.Order {
	case "", swarm.UpdateOrderStopFirst:
	case swarm.UpdateOrderStartFirst:
		out.Order = pb.UpdateOrder_UPDATE_ORDER_START_FIRST
	default:
		return nil, badRequest("invalid %s.Order %q: use stop-first or start-first", what, u.Order)
	}
	return out, nil
}

// serviceSpecToDocker converts a Shoal service spec to Docker's; what it
// writes, serviceSpecFromDocker reads back unchanged.
func serviceSpecToDocker(s *pb.ServiceSpec) swarm.ServiceSpec {
	d := swarm.ServiceSpec{
		Annotations:  swarm.Annotations{Name: s.GetAnnotations().GetName(), Labels: orEmpty(s.GetAnnotations().GetLabels())},
		TaskTemplate: taskSpecToDocker(s.GetTask()),
	}
	switch m := s.GetMode().(type) {
	case *pb.ServiceSpec_Global:
		d.Mode.Global = &swarm.GlobalService{}
	case *pb.ServiceSpec_ReplicatedJob:
		d.Mode.ReplicatedJob = &swarm.ReplicatedJob{MaxConcurrent: ptr(m.ReplicatedJob.GetMaxConcurrent()), TotalCompletions: ptr(m.ReplicatedJob.GetTotalCompletions())}
	case *pb.ServiceSpec_GlobalJob:
		d.Mode.GlobalJob = &swarm.GlobalJob{}
	default:
		d.Mode.Replicated = &swarm.ReplicatedService{Replicas: ptr(s.GetReplicated().GetReplicas())}
	}
	d.UpdateConfig = updateConfigToDocker(s.GetUpdate())
	d.RollbackConfig = updateConfigToDocker(s.GetRollback())
	es := &swarm.EndpointSpec{Mode: swarm.ResolutionModeVIP}
	if s.GetEndpoint().GetMode() == pb.ResolutionMode_RESOLUTION_MODE_DNSRR {
		es.Mode = swarm.ResolutionModeDNSRR
	}
	es.Ports = portsToDocker(s.GetEndpoint().GetPorts())
	d.EndpointSpec = es
	return d
}

func portsToDocker(ports []*pb.PortConfig) []swarm.PortConfig {
	var out []swarm.PortConfig
	for _, p := range ports {
		pc := swarm.PortConfig{Name: p.GetName(), Protocol: network.TCP, TargetPort: p.GetTargetPort(), PublishedPort: p.GetPublishedPort(), PublishMode: swarm.PortConfigPublishModeIngress}
		if p.GetProtocol() == pb.PortProtocol_PORT_PROTOCOL_UDP {
			pc.Protocol = network.UDP
		}
		if p.GetPublishMode() == pb.PublishMode_PUBLISH_MODE_HOST {
			pc.PublishMode = swarm.PortConfigPublishModeHost
		}
		out = append(out, pc)
	}
	return out
}

func updateConfigToDocker(u *pb.UpdateConfig) *swarm.UpdateConfig {
	if u == nil {
		return nil
	}
	out := &swarm.UpdateConfig{Parallelism: u.GetParallelism(), Delay: time.Duration(u.GetDelay()), Monitor: time.Duration(u.GetMonitor()),
		MaxFailureRatio: u.GetMaxFailureRatio(), FailureAction: swarm.UpdateFailureActionPause, Order: swarm.UpdateOrderStopFirst}
	switch u.GetFailureAction() {
	case pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_CONTINUE:
		out.FailureAction = swarm.UpdateFailureActionContinue
	case pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK:
		out.FailureAction = swarm.UpdateFailureActionRollback
	}
	if u.GetOrder() == pb.UpdateOrder_UPDATE_ORDER_START_FIRST {
		out.Order = swarm.UpdateOrderStartFirst
	}
	return out
}

func taskSpecToDocker(t *pb.TaskSpec) swarm.TaskSpec {
	c := t.GetContainer()
	cs := &swarm.ContainerSpec{
		Image:    c.GetImage(),
		Labels:   c.GetLabels(),
		Command:  c.GetCommand(),
		Args:     c.GetArgs(),
		Env:      c.GetEnv(),
		Dir:      c.GetDir(),
		User:     c.GetUser(),
		ReadOnly: c.GetReadOnly(),
	}
	if g := c.GetStopGracePeriod(); g != 0 {
		cs.StopGracePeriod = ptr(time.Duration(g))
	}
	for _, m := range c.GetMounts() {
		dm := mount.Mount{Source: m.GetSource(), Target: m.GetTarget(), ReadOnly: m.GetReadOnly(), Type: mount.TypeBind}
		switch m.GetType() {
		case pb.MountType_MOUNT_TYPE_VOLUME:
			dm.Type = mount.TypeVolume
		case pb.MountType_MOUNT_TYPE_TMPFS:
			dm.Type = mount.TypeTmpfs
		}
		cs.Mounts = append(cs.Mounts, dm)
	}
	if hc := c.GetHealthcheck(); hc != nil {
		h := &container.HealthConfig{Interval: time.Duration(hc.GetInterval()), Timeout: time.Duration(hc.GetTimeout()),
			StartPeriod: time.Duration(hc.GetStartPeriod()), Retries: int(hc.GetRetries())}
		switch cmd := hc.GetCommand(); {
		case hc.GetDisable():
			h.Test = []string{"NONE"}
		case len(cmd) == 3 && cmd[0] == "/bin/sh" && cmd[1] == "-c":
			h.Test = []string{"CMD-SHELL", cmd[2]}
		case len(cmd) > 0:
			h.Test = append([]string{"CMD"}, cmd...)
		case hc.GetHttpGet() != "":
			h.Test = []string{testHTTP, hc.GetHttpGet()}
		case hc.GetTcpSocket() != 0:
			h.Test = []string{testTCP, strconv.FormatUint(uint64(hc.GetTcpSocket()), 10)}
		}
		cs.Healthcheck = h
	}
	for _, s := range c.GetSecrets() {
		cs.Secrets = append(cs.Secrets, &swarm.SecretReference{SecretID: s.GetSecretId(), SecretName: s.GetSecretName(),
			File: &swarm.SecretReferenceFileTarget{Name: s.GetTarget(), UID: "0", GID: "0", Mode: os.FileMode(s.GetMode())}})
	}
	for _, cf := range c.GetConfigs() {
		cs.Configs = append(cs.Configs, &swarm.ConfigReference{ConfigID: cf.GetConfigId(), ConfigName: cf.GetConfigName(),
			File: &swarm.ConfigReferenceFileTarget{Name: cf.GetTarget(), UID: cf.GetUid(), GID: cf.GetGid(), Mode: os.FileMode(cf.GetMode())}})
	}
	d := swarm.TaskSpec{ContainerSpec: cs, ForceUpdate: t.GetForceUpdate()}
	for _, n := range t.GetNetworks() {
		target := n.GetNetworkId()
		if target == "" {
			target = n.GetNetworkName()
		}
		d.Networks = append(d.Networks, swarm.NetworkAttachmentConfig{Target: target, Aliases: n.GetAliases()})
	}
	if r := t.GetResources(); r != nil {
		d.Resources = &swarm.ResourceRequirements{}
		if l := r.GetLimits(); l != nil {
			d.Resources.Limits = &swarm.Limit{NanoCPUs: l.GetNanoCpus(), MemoryBytes: l.GetMemoryBytes()}
		}
		if rv := r.GetReservations(); rv != nil {
			d.Resources.Reservations = &swarm.Resources{NanoCPUs: rv.GetNanoCpus(), MemoryBytes: rv.GetMemoryBytes()}
		}
	}
	if p := t.GetRestart(); p != nil {
		rp := &swarm.RestartPolicy{Delay: ptr(time.Duration(p.GetDelay())), MaxAttempts: ptr(p.GetMaxAttempts()), Window: ptr(time.Duration(p.GetWindow()))}
		switch p.GetCondition() {
		case pb.RestartCondition_RESTART_CONDITION_ON_FAILURE:
			rp.Condition = swarm.RestartPolicyConditionOnFailure
		case pb.RestartCondition_RESTART_CONDITION_NONE:
			rp.Condition = swarm.RestartPolicyConditionNone
		default:
			rp.Condition = swarm.RestartPolicyConditionAny
		}
		d.RestartPolicy = rp
	}
	if p := t.GetPlacement(); p != nil {
		pl := &swarm.Placement{Constraints: p.GetConstraints(), MaxReplicas: p.GetMaxReplicas()}
		for _, pref := range p.GetPreferences() {
			pl.Preferences = append(pl.Preferences, swarm.PlacementPreference{Spread: &swarm.SpreadOver{SpreadDescriptor: pref.GetSpreadDescriptor()}})
		}
		d.Placement = pl
	}
	return d
}
