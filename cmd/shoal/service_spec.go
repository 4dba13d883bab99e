package main

// How the flags of `shoal service create` and `shoal service update` become
// a ServiceSpec. Each concern's flags live in a file of their own
// (service_flags_*.go): the task, its environment, secrets and configs,
// placement, ports, resources, restart policy, health check, and rolling
// updates. A
// concern registers its flags for create or update, and applies those
// given to a spec: create starts from IMAGE and the defaults, update from
// the service's current spec. The checks that span concerns are in
// validateSpec. Docker's `docker service create` and `update` are the model.

import (
	"fmt"
	"sort"
	"strings"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/pflag"
)

// specConcern is the flags of one concern of a service's spec.
type specConcern interface {
	registerCreate(fs *pflag.FlagSet)
	registerUpdate(fs *pflag.FlagSet)
	// create and update apply the flags given (set, by long name) to spec.
	create(spec *pb.ServiceSpec, set map[string]bool) error
	update(spec *pb.ServiceSpec, set map[string]bool) error
}

// serviceFlags are the spec flags of create and update, by concern.
type serviceFlags struct {
	task      taskFlags
	env       envFlags
	files     fileFlags
	placement placementFlags
	ports     portFlags
	resources resourceFlags
	restart   restartFlags
	health    healthFlags
	rollout   rolloutFlags
	autoscale autoscaleFlags
}

// titledConcern is a concern and the title of its flags in help.
type titledConcern struct {
	title string
	flags specConcern
}

// concerns lists the concerns in the order they apply and show in help.
func (f *serviceFlags) concerns() []titledConcern {
	return []titledConcern{
		{"Task", &f.task},
		{"Environment, labels and mounts", &f.env},
		{"Secrets and configs", &f.files},
		{"Placement", &f.placement},
		{"Ports and endpoint", &f.ports},
		{"Resources", &f.resources},
		{"Restart policy", &f.restart},
		{"Health check", &f.health},
		{"Update and rollback", &f.rollout},
		{"Autoscaling", &f.autoscale},
	}
}

// serviceFlagGroups are the titles of the service flag groups, in order.
func serviceFlagGroups() []string {
	var titles []string
	for _, c := range (&serviceFlags{}).concerns() {
		titles = append(titles, c.title)
	}
	return titles
}

// register adds every concern's flags to fs, each under its title in help.
// Update's flags show no default: a flag left out changes nothing.
func (f *serviceFlags) register(fs *pflag.FlagSet, update bool) {
	for _, c := range f.concerns() {
		register := c.flags.registerCreate
		if update {
			register = c.flags.registerUpdate
		}
		inFlagGroup(fs, c.title, update, register)
	}
}

func registerDetach(fs *pflag.FlagSet, detach, quiet *bool) {
	fs.BoolVarP(detach, "detach", "d", false, "return at once instead of waiting for the service to converge")
	fs.BoolVarP(quiet, "quiet", "q", false, "wait without printing progress")
}

// createOptions are the flags of `service create`.
type createOptions struct {
	serviceFlags
	registry      registryOptions
	detach, quiet bool
}

func (o *createOptions) register(fs *pflag.FlagSet) {
	o.serviceFlags.register(fs, false)
	o.registry.register(fs)
	registerDetach(fs, &o.detach, &o.quiet)
}

// spec builds the ServiceSpec of `service create` from the flags given
// (set) and the positional arguments IMAGE [COMMAND] [ARG...].
func (o *createOptions) spec(set map[string]bool, pos []string) (*pb.ServiceSpec, error) {
	spec, err := o.task.base(pos)
	if err != nil {
		return nil, err
	}
	for _, c := range o.concerns() {
		if err := c.flags.create(spec, set); err != nil {
			return nil, err
		}
	}
	tidySpec(spec)
	if err := jobSpec(spec, set, true); err != nil {
		return nil, err
	}
	if err := validateSpec(spec, nil); err != nil {
		return nil, err
	}
	return spec, nil
}

// updateOptions are the flags of `service update`; set holds the flags
// given, by long name.
type updateOptions struct {
	serviceFlags
	registry      registryOptions
	detach, quiet bool
	set           map[string]bool
}

func (o *updateOptions) register(fs *pflag.FlagSet) {
	o.serviceFlags.register(fs, true)
	o.registry.register(fs)
	registerDetach(fs, &o.detach, &o.quiet)
}

// changes reports whether any flag that changes the spec was given.
func (o *updateOptions) changes() bool {
	for name := range o.set {
		switch name {
		case "detach", "quiet", "timeout", "help", "host", "data-dir", "client-config", "log-level", "resolve-image":
		default:
			return true
		}
	}
	return false
}

// apply changes spec as the update flags say. spec is the service's
// current spec, read with GetService; it is changed in place.
func (o *updateOptions) apply(spec *pb.ServiceSpec) error {
	if spec.Task == nil {
		spec.Task = &pb.TaskSpec{}
	}
	if spec.Task.Container == nil {
		spec.Task.Container = &pb.ContainerSpec{}
	}
	if spec.Annotations == nil {
		spec.Annotations = &pb.Annotations{}
	}
	hadPlacement, hadEndpoint := spec.Task.Placement != nil, spec.Endpoint != nil
	for _, c := range o.concerns() {
		if err := c.flags.update(spec, o.set); err != nil {
			return err
		}
	}
	// Placement and endpoint are made on demand; drop them again if they
	// were absent and say nothing, so that the spec only differs where the
	// flags changed it.
	p, e := spec.Task.Placement, spec.Endpoint
	tidySpec(spec)
	if hadPlacement {
		spec.Task.Placement = p
	}
	if hadEndpoint {
		spec.Endpoint = e
	}
	if err := jobSpec(spec, o.set, false); err != nil {
		return err
	}
	return validateSpec(spec, o.set)
}

// tidySpec drops the parts of a spec that say nothing.
func tidySpec(spec *pb.ServiceSpec) {
	if p := spec.Task.Placement; p != nil && len(p.Constraints) == 0 && len(p.Preferences) == 0 && p.MaxReplicas == 0 {
		spec.Task.Placement = nil
	}
	if e := spec.Endpoint; e != nil && len(e.Ports) == 0 && e.Mode == pb.ResolutionMode_RESOLUTION_MODE_VIP {
		spec.Endpoint = nil
	}
	if c := spec.Task.Container; c != nil && len(c.Args) == 0 {
		c.Args = nil
	}
}

// validateSpec checks what depends on several concerns at once. create
// runs every check (changed is nil); update only those about what its flags
// changed, so that a service made some other way can still be updated.
func validateSpec(spec *pb.ServiceSpec, changed map[string]bool) error {
	touched := func(flags ...string) bool {
		if changed == nil {
			return true
		}
		for _, f := range flags {
			if changed[f] {
				return true
			}
		}
		return false
	}
	t := spec.GetTask()
	runtime := t.GetRuntime()
	if runtime == "" {
		runtime = runtimeFor(t.GetContainer().GetImage())
	}
	c := t.GetContainer()
	if runtime == runtimeProcess && len(c.GetMounts()) > 0 && touched("mount-add") {
		return usagef("the process runtime does not support mounts: drop --mount, or use --runtime docker")
	}
	if runtime == runtimeProcess && c.GetReadOnly() && touched("read-only") {
		return usagef("the process runtime has no root filesystem of its own to make read-only: drop --read-only, or use --runtime container or docker")
	}
	if hc := c.GetHealthcheck(); runtime == runtimeProcess && hc != nil && !hc.GetDisable() && !hasProbe(hc) &&
		touched("health-interval", "health-timeout", "health-start-period", "health-retries") {
		return usagef("the process runtime has no built-in health check: give %s with the --health-* timings", healthProbeFlagsUsage)
	}
	if r := t.GetResources(); r.GetLimits() != nil && r.GetReservations() != nil &&
		touched("reserve-cpu", "reserve-memory", "limit-cpu", "limit-memory") {
		l, res := r.GetLimits(), r.GetReservations()
		if l.GetNanoCpus() > 0 && res.GetNanoCpus() > l.GetNanoCpus() {
			return usagef("the CPU reservation (%s) is more than the CPU limit (%s)", formatCPUs(res.GetNanoCpus()), formatCPUs(l.GetNanoCpus()))
		}
		if l.GetMemoryBytes() > 0 && res.GetMemoryBytes() > l.GetMemoryBytes() {
			return usagef("the memory reservation (%s) is more than the memory limit (%s)", humanBytes(res.GetMemoryBytes()), humanBytes(l.GetMemoryBytes()))
		}
	}
	seen := map[string]bool{}
	for _, p := range spec.GetEndpoint().GetPorts() {
		if !touched("publish-add") {
			break
		}
		if p.GetPublishedPort() == 0 {
			continue
		}
		key := fmt.Sprintf("%d/%s", p.GetPublishedPort(), protoWord(p.GetProtocol()))
		if seen[key] {
			return usagef("port %s is published twice", key)
		}
		seen[key] = true
	}
	return nil
}

// jobSpec refuses the rolling update flags on a job, as Docker does: a job
// has no rolling update, every update runs it again. On create it also
// gives a job Docker's defaults: no update or rollback config, and a
// restart policy of on-failure unless --restart-condition says otherwise.
func jobSpec(spec *pb.ServiceSpec, set map[string]bool, create bool) error {
	if spec.GetReplicatedJob() == nil && spec.GetGlobalJob() == nil {
		return nil
	}
	var given []string
	for name := range set {
		if strings.HasPrefix(name, "update-") || strings.HasPrefix(name, "rollback-") {
			given = append(given, "--"+name)
		}
	}
	if len(given) > 0 {
		sort.Strings(given)
		return usagef("%s: a job (%s) has no rolling update or rollback; every `service update` runs it again from the start", strings.Join(given, ", "), modeWord(spec))
	}
	if create {
		spec.Update, spec.Rollback = nil, nil
		if !set["restart-condition"] && spec.Task.Restart != nil {
			spec.Task.Restart.Condition = pb.RestartCondition_RESTART_CONDITION_ON_FAILURE
		}
	}
	return nil
}
