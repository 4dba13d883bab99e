package main

// Flags of `shoal service create` and `shoal service update`, and their
// conversion into a ServiceSpec.
//
// Mapping decisions (Docker's `docker service create` is the model):
//   - IMAGE becomes ContainerSpec.image; COMMAND and ARG... become
//     ContainerSpec.args, verbatim (Docker does the same: its command line
//     after the image is the container's args, and ContainerSpec.command is
//     only set by an entrypoint override). The process runtime runs IMAGE as
//     the program with args as its arguments; the docker runtime passes args
//     as the container's CMD. ContainerSpec.command is left empty.
//   - Flag parsing stops at IMAGE, so the command's own flags
//     (`shoal service create /bin/sleep -x`) are never taken for ours.
//   - Every create sends explicit defaults for the restart policy (any, 5s),
//     the update and rollback configs (parallelism 1, monitor 5s, pause,
//     stop-first) and the stop grace period (10s), so `inspect` shows what
//     the service really does and the server's defaults do not matter.
//   - Sizes use binary units whatever the spelling, as Docker does:
//     512M = 512Mi = 512MiB = 512*2^20 bytes; a bare number is bytes.

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"math/big"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// Defaults sent on create.
const (
	defaultRestartDelay   = 5 * time.Second
	defaultUpdateMonitor  = 5 * time.Second
	defaultStopGrace      = 10 * time.Second
	maxReplicas           = 100000
	runtimeProcess        = "process"
	runtimeDocker         = "docker"
	healthProbeFlagsUsage = "--health-cmd, --health-http or --health-tcp"
)

// updateConfigFlags are the --update-* or --rollback-* flags.
type updateConfigFlags struct {
	parallelism     int64
	delay           time.Duration
	failureAction   string
	monitor         time.Duration
	maxFailureRatio float64
	order           string
}

func (u *updateConfigFlags) register(fs *flag.FlagSet, prefix, verb string) {
	actions := "pause, continue or rollback"
	if prefix == "rollback" {
		actions = "pause or continue"
	}
	fs.Int64Var(&u.parallelism, prefix+"-parallelism", 1, "how many tasks to "+verb+" at once (0: all at once)")
	fs.DurationVar(&u.delay, prefix+"-delay", 0, "time to wait between two batches of tasks to "+verb)
	fs.StringVar(&u.failureAction, prefix+"-failure-action", "pause", "what to do when a task fails to "+verb+": "+actions)
	fs.DurationVar(&u.monitor, prefix+"-monitor", defaultUpdateMonitor, "how long to watch each new task for a failure")
	fs.Float64Var(&u.maxFailureRatio, prefix+"-max-failure-ratio", 0, "share of tasks that may fail before the failure action (0 to 1)")
	fs.StringVar(&u.order, prefix+"-order", "stop-first", "stop-first (stop the old task, then start the new) or start-first")
}

// specFlags are the flags create and update share: they set a field of the
// spec to a value.
type specFlags struct {
	workdir      string
	user         string
	stopGrace    time.Duration
	reserveCPU   string
	reserveMem   string
	limitCPU     string
	limitMem     string
	maxPerNode   int64
	endpointMode string

	restartCondition string
	restartDelay     time.Duration
	restartMax       int64
	restartWindow    time.Duration

	healthCmd      string
	healthHTTP     string
	healthTCP      int64
	healthInterval time.Duration
	healthTimeout  time.Duration
	healthStart    time.Duration
	healthRetries  int64
	noHealth       bool

	update, rollback updateConfigFlags
	maxConcurrent    int64
}

func (f *specFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.workdir, "workdir", "", "working directory of the task (absolute path)")
	fs.StringVar(&f.user, "user", "", "user the task runs as (name or UID)")
	fs.DurationVar(&f.stopGrace, "stop-grace-period", defaultStopGrace, "how long a task has to stop before it is killed")
	fs.StringVar(&f.reserveCPU, "reserve-cpu", "", "CPUs to reserve per task, e.g. 0.5")
	fs.StringVar(&f.reserveMem, "reserve-memory", "", "memory to reserve per task, e.g. 64MiB, 512M, 1G")
	fs.StringVar(&f.limitCPU, "limit-cpu", "", "CPUs a task may use at most, e.g. 1.5")
	fs.StringVar(&f.limitMem, "limit-memory", "", "memory a task may use at most, e.g. 256MiB")
	fs.Int64Var(&f.maxPerNode, "max-replicas-per-node", 0, "most tasks of the service on one node (0: no limit)")
	fs.StringVar(&f.endpointMode, "endpoint-mode", "vip", "how the service is reached: vip or dnsrr")

	fs.StringVar(&f.restartCondition, "restart-condition", "any", "when to replace a task that ended: none, on-failure or any")
	fs.DurationVar(&f.restartDelay, "restart-delay", defaultRestartDelay, "wait before replacing a task that ended")
	fs.Int64Var(&f.restartMax, "restart-max-attempts", 0, "give up after this many restarts in the window (0: never)")
	fs.DurationVar(&f.restartWindow, "restart-window", 0, "window the restart attempts are counted in (0: forever)")

	fs.StringVar(&f.healthCmd, "health-cmd", "", "health check command, run with /bin/sh -c")
	fs.StringVar(&f.healthHTTP, "health-http", "", "health check: HTTP GET of this path (e.g. /healthz) on the task's first port")
	fs.Int64Var(&f.healthTCP, "health-tcp", 0, "health check: TCP connect to this port")
	fs.DurationVar(&f.healthInterval, "health-interval", 0, "time between health checks")
	fs.DurationVar(&f.healthTimeout, "health-timeout", 0, "how long one health check may take")
	fs.DurationVar(&f.healthStart, "health-start-period", 0, "grace period before failed checks count")
	fs.Int64Var(&f.healthRetries, "health-retries", 0, "consecutive failures that make a task unhealthy")
	fs.BoolVar(&f.noHealth, "no-healthcheck", false, "disable any health check, the image's included")

	f.update.register(fs, "update", "update")
	f.rollback.register(fs, "rollback", "roll back")
	fs.Int64Var(&f.maxConcurrent, "max-concurrent", 1, "replicated jobs: how many tasks run at once")
}

// createOptions are the flags of `service create`.
type createOptions struct {
	specFlags
	name            string
	mode            string
	replicas        int64
	runtime         string
	env             stringList
	labels          stringList
	containerLabels stringList
	mounts          stringList
	secrets         stringList
	constraints     stringList
	placementPrefs  stringList
	publish         stringList
	detach          bool
	quiet           bool
}

func (o *createOptions) register(fs *flag.FlagSet) {
	o.specFlags.register(fs)
	fs.StringVar(&o.name, "name", "", "service name (default: chosen by the cluster)")
	fs.StringVar(&o.mode, "mode", "replicated", "replicated, global, replicated-job or global-job")
	fs.Int64Var(&o.replicas, "replicas", 1, "number of tasks (replicated jobs: completions)")
	fs.StringVar(&o.runtime, "runtime", runtimeProcess, "process (IMAGE is an absolute path to an executable) or docker (IMAGE is a container image)")
	fs.Var(&o.env, "env", "set an environment variable KEY=VALUE (repeatable)")
	fs.Var(&o.labels, "label", "service label KEY=VALUE (repeatable)")
	fs.Var(&o.containerLabels, "container-label", "container label KEY=VALUE (repeatable)")
	fs.Var(&o.mounts, "mount", "type=bind|volume|tmpfs,source=SRC,target=DST[,readonly] (repeatable)")
	fs.Var(&o.secrets, "secret", "give the tasks a secret as a file: NAME[,target=FILE][,mode=0400] (repeatable)")
	fs.Var(&o.constraints, "constraint", "placement constraint, e.g. node.labels.zone==a (repeatable)")
	fs.Var(&o.placementPrefs, "placement-pref", "placement preference, e.g. spread=node.labels.zone (repeatable)")
	fs.Var(&o.publish, "publish", "publish a port: PUBLISHED:TARGET[/udp] or published=P,target=T[,protocol=udp][,mode=host] (repeatable)")
	registerDetach(fs, &o.detach, &o.quiet)
}

func registerDetach(fs *flag.FlagSet, detach, quiet *bool) {
	fs.BoolVar(detach, "detach", false, "return at once instead of waiting for the service to converge")
	fs.BoolVar(detach, "d", false, "short for --detach")
	fs.BoolVar(quiet, "q", false, "wait without printing progress")
}

// updateOptions are the flags of `service update`.
type updateOptions struct {
	specFlags
	image                               string
	args                                string
	replicas                            int64
	envAdd, envRm                       stringList
	labelAdd, labelRm                   stringList
	containerLabelAdd, containerLabelRm stringList
	mountAdd, mountRm                   stringList
	secretAdd, secretRm                 stringList
	constraintAdd, constraintRm         stringList
	placementPrefAdd, placementPrefRm   stringList
	publishAdd, publishRm               stringList
	force, detach, quiet                bool
	set                                 map[string]bool
}

func (o *updateOptions) register(fs *flag.FlagSet) {
	o.specFlags.register(fs)
	fs.StringVar(&o.image, "image", "", "new image (process runtime: absolute path of the executable)")
	fs.StringVar(&o.args, "args", "", "new command and arguments, split as a shell would (\"\" clears them)")
	fs.Int64Var(&o.replicas, "replicas", 0, "number of tasks (replicated jobs: completions)")
	fs.Var(&o.envAdd, "env-add", "add or change an environment variable KEY=VALUE (repeatable)")
	fs.Var(&o.envRm, "env-rm", "remove an environment variable KEY (repeatable)")
	fs.Var(&o.labelAdd, "label-add", "add or change a service label KEY=VALUE (repeatable)")
	fs.Var(&o.labelRm, "label-rm", "remove a service label KEY (repeatable)")
	fs.Var(&o.containerLabelAdd, "container-label-add", "add or change a container label KEY=VALUE (repeatable)")
	fs.Var(&o.containerLabelRm, "container-label-rm", "remove a container label KEY (repeatable)")
	fs.Var(&o.mountAdd, "mount-add", "add or replace a mount, as --mount of create (repeatable)")
	fs.Var(&o.mountRm, "mount-rm", "remove the mount at this target path (repeatable)")
	fs.Var(&o.secretAdd, "secret-add", "add or replace a secret, as --secret of create (repeatable)")
	fs.Var(&o.secretRm, "secret-rm", "remove a secret by name or ID (repeatable)")
	fs.Var(&o.constraintAdd, "constraint-add", "add a placement constraint, e.g. node.role==worker (repeatable)")
	fs.Var(&o.constraintRm, "constraint-rm", "remove a placement constraint, written as it was added (repeatable)")
	fs.Var(&o.placementPrefAdd, "placement-pref-add", "add a placement preference spread=DESCRIPTOR (repeatable)")
	fs.Var(&o.placementPrefRm, "placement-pref-rm", "remove a placement preference spread=DESCRIPTOR (repeatable)")
	fs.Var(&o.publishAdd, "publish-add", "publish a port, as --publish of create (repeatable)")
	fs.Var(&o.publishRm, "publish-rm", "stop publishing TARGET[/PROTOCOL] or PUBLISHED:TARGET[/PROTOCOL] (repeatable)")
	fs.BoolVar(&o.force, "force", false, "replace every task even if nothing else changes")
	registerDetach(fs, &o.detach, &o.quiet)
	// A flag left out changes nothing: its create default means nothing here.
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name != "host" && f.Name != "data-dir" && f.Name != "timeout" {
			f.DefValue = ""
		}
	})
}

// changes reports whether any flag that changes the spec was given.
func (o *updateOptions) changes() bool {
	for name := range o.set {
		switch name {
		case "detach", "d", "q", "host", "data-dir", "timeout", "help":
		default:
			return true
		}
	}
	return false
}

// setFlags returns the names of the flags given on the command line.
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

// parseFlagsUntilArg parses flags up to the first positional argument;
// everything from there on is positional, verbatim, so that a service's own
// command line (`/bin/sleep -x`) is never read as our flags.
func parseFlagsUntilArg(fs *flag.FlagSet, usage string, args []string) ([]string, error) {
	if err := checkUTF8(args); err != nil {
		return nil, err
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printFlags(fs, usage)
			return nil, flag.ErrHelp
		}
		return nil, usageError{err.Error()}
	}
	return fs.Args(), nil
}

// ---------------------------------------------------------------- create

// spec builds the ServiceSpec of `service create` from the flags and the
// positional arguments IMAGE [COMMAND] [ARG...].
func (o *createOptions) spec(set map[string]bool, pos []string) (*pb.ServiceSpec, error) {
	if len(pos) == 0 {
		return nil, usagef("service create needs an IMAGE: an absolute path to an executable (process runtime) or a container image (--runtime docker)")
	}
	if o.name != "" {
		if err := validateServiceName(o.name); err != nil {
			return nil, err
		}
	}
	if o.runtime != runtimeProcess && o.runtime != runtimeDocker {
		return nil, usagef("--runtime %q: use process or docker", o.runtime)
	}
	image := pos[0]
	if err := validateImage("IMAGE", o.runtime, image); err != nil {
		return nil, err
	}
	spec := &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: o.name},
		Task: &pb.TaskSpec{
			Runtime: o.runtime,
			Container: &pb.ContainerSpec{
				Image: image,
				Args:  append([]string(nil), pos[1:]...),
			},
		},
	}
	if err := o.setMode(spec, set); err != nil {
		return nil, err
	}

	labels, err := parseLabels("--label", o.labels)
	if err != nil {
		return nil, err
	}
	spec.Annotations.Labels = labels
	c := spec.Task.Container
	if c.Labels, err = parseLabels("--container-label", o.containerLabels); err != nil {
		return nil, err
	}
	for _, kv := range o.env {
		if err := validateEnv("--env", kv); err != nil {
			return nil, err
		}
		c.Env = setEnv(c.Env, kv)
	}
	for _, m := range o.mounts {
		mount, err := parseMount("--mount", m)
		if err != nil {
			return nil, err
		}
		c.Mounts = append(c.Mounts, mount)
	}
	for _, v := range o.secrets {
		ref, err := parseSecretRef("--secret", v)
		if err != nil {
			return nil, err
		}
		if i := slices.IndexFunc(c.Secrets, func(r *pb.SecretReference) bool { return r.GetTarget() == ref.GetTarget() }); i >= 0 {
			return nil, usagef("--secret %q: secret %s already uses the target %q; give one of them another target=FILE", v, c.Secrets[i].GetSecretName(), ref.GetTarget())
		}
		c.Secrets = append(c.Secrets, ref)
	}
	for _, expr := range o.constraints {
		if err := validateConstraint("--constraint", expr); err != nil {
			return nil, err
		}
		placement(spec).Constraints = append(placement(spec).Constraints, expr)
	}
	for _, p := range o.placementPrefs {
		pref, err := parsePlacementPref("--placement-pref", p)
		if err != nil {
			return nil, err
		}
		placement(spec).Preferences = append(placement(spec).Preferences, pref)
	}
	for _, p := range o.publish {
		port, err := parsePublish("--publish", p)
		if err != nil {
			return nil, err
		}
		endpoint(spec).Ports = append(endpoint(spec).Ports, port)
	}

	// The defaults are sent explicitly; the flags given change them.
	spec.Task.Restart = defaultRestartPolicy()
	spec.Update = defaultUpdateConfig()
	spec.Rollback = defaultUpdateConfig()
	spec.Task.Container.StopGracePeriod = int64(defaultStopGrace)
	if err := o.specFlags.apply(spec, set); err != nil {
		return nil, err
	}
	tidySpec(spec)
	if err := validateSpec(spec, nil); err != nil {
		return nil, err
	}
	return spec, nil
}

func (o *createOptions) setMode(spec *pb.ServiceSpec, set map[string]bool) error {
	replicas, err := checkReplicas(o.replicas)
	if err != nil {
		return err
	}
	switch o.mode {
	case "replicated":
		if set["max-concurrent"] {
			return usagef("--max-concurrent is for --mode replicated-job only")
		}
		spec.Mode = &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: replicas}}
	case "global", "global-job":
		if set["replicas"] {
			return usagef("--replicas cannot be used with --mode %s: it runs one task on every eligible node", o.mode)
		}
		if set["max-concurrent"] {
			return usagef("--max-concurrent is for --mode replicated-job only")
		}
		if set["max-replicas-per-node"] {
			return usagef("--max-replicas-per-node cannot be used with --mode %s: it runs one task per node", o.mode)
		}
		if o.mode == "global" {
			spec.Mode = &pb.ServiceSpec_Global{Global: &pb.GlobalService{}}
		} else {
			spec.Mode = &pb.ServiceSpec_GlobalJob{GlobalJob: &pb.GlobalJob{}}
		}
	case "replicated-job":
		conc := uint64(1)
		if set["max-concurrent"] {
			if o.maxConcurrent < 1 || o.maxConcurrent > maxReplicas {
				return usagef("--max-concurrent %d: use a number from 1 to %d", o.maxConcurrent, maxReplicas)
			}
			conc = uint64(o.maxConcurrent)
		}
		total := conc
		if set["replicas"] {
			total = replicas
		}
		spec.Mode = &pb.ServiceSpec_ReplicatedJob{ReplicatedJob: &pb.ReplicatedJob{MaxConcurrent: conc, TotalCompletions: total}}
	default:
		return usagef("--mode %q: use replicated, global, replicated-job or global-job", o.mode)
	}
	return nil
}

func checkReplicas(n int64) (uint64, error) {
	if n < 0 || n > maxReplicas {
		return 0, usagef("--replicas %d: use a number from 0 to %d", n, maxReplicas)
	}
	return uint64(n), nil
}

var serviceNameRE = regexp.MustCompile(`^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`)

// validateServiceName checks that a name is a DNS label: lower-case
// letters, digits and '-', 1 to 63 characters, starting with a letter and
// not ending with '-'.
func validateServiceName(name string) error {
	if !serviceNameRE.MatchString(name) {
		return usagef("--name %q: use 1 to 63 lower-case letters, digits and '-', starting with a letter and not ending with '-' (it becomes a DNS name)", name)
	}
	return nil
}

// validateImage checks IMAGE of create (flagName "IMAGE") or --image of
// update against the runtime.
func validateImage(flagName, runtime, image string) error {
	hint := func(h string) string {
		if flagName == "IMAGE" {
			return h
		}
		return ""
	}
	if image == "" {
		return usagef("%s is empty", flagName)
	}
	if runtime == runtimeDocker {
		if strings.HasPrefix(image, "/") {
			return usagef("%s %q is a path, not a container image%s", flagName, image, hint(": drop --runtime docker to run an executable"))
		}
		if strings.ContainsAny(image, " \t\n") || strings.HasPrefix(image, "-") {
			return usagef("%s %q is not a container image name", flagName, image)
		}
		return nil
	}
	if !filepath.IsAbs(image) {
		return usagef("%s %q: the process runtime runs an executable: give its absolute path (e.g. /usr/bin/python3)%s", flagName, image, hint(", or add --runtime docker for a container image"))
	}
	return nil
}

func defaultRestartPolicy() *pb.RestartPolicy {
	return &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY, Delay: int64(defaultRestartDelay)}
}

func defaultUpdateConfig() *pb.UpdateConfig {
	return &pb.UpdateConfig{Parallelism: 1, Monitor: int64(defaultUpdateMonitor)}
}

func placement(spec *pb.ServiceSpec) *pb.Placement {
	if spec.Task.Placement == nil {
		spec.Task.Placement = &pb.Placement{}
	}
	return spec.Task.Placement
}

func endpoint(spec *pb.ServiceSpec) *pb.EndpointSpec {
	if spec.Endpoint == nil {
		spec.Endpoint = &pb.EndpointSpec{}
	}
	return spec.Endpoint
}

// apply sets the spec fields of the shared flags that are in set.
func (f *specFlags) apply(spec *pb.ServiceSpec, set map[string]bool) error {
	c := spec.Task.Container
	if set["workdir"] {
		if f.workdir != "" && !filepath.IsAbs(f.workdir) {
			return usagef("--workdir %q: use an absolute path", f.workdir)
		}
		c.Dir = f.workdir
	}
	if set["user"] {
		c.User = f.user
	}
	if set["stop-grace-period"] {
		if f.stopGrace < 0 {
			return usagef("--stop-grace-period %s: must not be negative", f.stopGrace)
		}
		c.StopGracePeriod = int64(f.stopGrace)
	}
	if err := f.applyResources(spec, set); err != nil {
		return err
	}
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
	if set["endpoint-mode"] {
		switch f.endpointMode {
		case "vip":
			endpoint(spec).Mode = pb.ResolutionMode_RESOLUTION_MODE_VIP
		case "dnsrr":
			endpoint(spec).Mode = pb.ResolutionMode_RESOLUTION_MODE_DNSRR
		default:
			return usagef("--endpoint-mode %q: use vip or dnsrr", f.endpointMode)
		}
	}
	if err := f.applyRestart(spec, set); err != nil {
		return err
	}
	if err := f.applyHealth(spec, set); err != nil {
		return err
	}
	if err := f.update.apply(&spec.Update, "update", set); err != nil {
		return err
	}
	return f.rollback.apply(&spec.Rollback, "rollback", set)
}

func (f *specFlags) applyResources(spec *pb.ServiceSpec, set map[string]bool) error {
	type res struct {
		flag, value string
		field       func(r *pb.ResourceRequirements) *pb.Resources
		memory      bool
	}
	limits := func(r *pb.ResourceRequirements) *pb.Resources {
		if r.Limits == nil {
			r.Limits = &pb.Resources{}
		}
		return r.Limits
	}
	reservations := func(r *pb.ResourceRequirements) *pb.Resources {
		if r.Reservations == nil {
			r.Reservations = &pb.Resources{}
		}
		return r.Reservations
	}
	for _, x := range []res{
		{"reserve-cpu", f.reserveCPU, reservations, false},
		{"reserve-memory", f.reserveMem, reservations, true},
		{"limit-cpu", f.limitCPU, limits, false},
		{"limit-memory", f.limitMem, limits, true},
	} {
		if !set[x.flag] {
			continue
		}
		if spec.Task.Resources == nil {
			spec.Task.Resources = &pb.ResourceRequirements{}
		}
		r := x.field(spec.Task.Resources)
		if x.memory {
			n, err := parseBytes(x.value)
			if err != nil {
				return usagef("--%s %q: %v", x.flag, x.value, err)
			}
			r.MemoryBytes = n
		} else {
			n, err := parseCPUs(x.value)
			if err != nil {
				return usagef("--%s %q: %v", x.flag, x.value, err)
			}
			r.NanoCpus = n
		}
	}
	// Drop what is all zero, so that "0" clears a setting.
	if r := spec.Task.Resources; r != nil {
		if r.Limits != nil && r.Limits.NanoCpus == 0 && r.Limits.MemoryBytes == 0 {
			r.Limits = nil
		}
		if r.Reservations != nil && r.Reservations.NanoCpus == 0 && r.Reservations.MemoryBytes == 0 {
			r.Reservations = nil
		}
		if r.Limits == nil && r.Reservations == nil {
			spec.Task.Resources = nil
		}
	}
	return nil
}

func (f *specFlags) applyRestart(spec *pb.ServiceSpec, set map[string]bool) error {
	if !set["restart-condition"] && !set["restart-delay"] && !set["restart-max-attempts"] && !set["restart-window"] {
		return nil
	}
	if spec.Task.Restart == nil {
		spec.Task.Restart = defaultRestartPolicy()
	}
	r := spec.Task.Restart
	if set["restart-condition"] {
		switch f.restartCondition {
		case "any":
			r.Condition = pb.RestartCondition_RESTART_CONDITION_ANY
		case "on-failure":
			r.Condition = pb.RestartCondition_RESTART_CONDITION_ON_FAILURE
		case "none":
			r.Condition = pb.RestartCondition_RESTART_CONDITION_NONE
		default:
			return usagef("--restart-condition %q: use none, on-failure or any", f.restartCondition)
		}
	}
	if set["restart-delay"] {
		if f.restartDelay < 0 {
			return usagef("--restart-delay %s: must not be negative", f.restartDelay)
		}
		r.Delay = int64(f.restartDelay)
	}
	if set["restart-max-attempts"] {
		if f.restartMax < 0 {
			return usagef("--restart-max-attempts %d: use 0 (no limit) or more", f.restartMax)
		}
		r.MaxAttempts = uint64(f.restartMax)
	}
	if set["restart-window"] {
		if f.restartWindow < 0 {
			return usagef("--restart-window %s: must not be negative", f.restartWindow)
		}
		r.Window = int64(f.restartWindow)
	}
	return nil
}

func (f *specFlags) applyHealth(spec *pb.ServiceSpec, set map[string]bool) error {
	probes := 0
	for _, n := range []string{"health-cmd", "health-http", "health-tcp"} {
		if set[n] {
			probes++
		}
	}
	timings := set["health-interval"] || set["health-timeout"] || set["health-start-period"] || set["health-retries"]
	if set["no-healthcheck"] && f.noHealth {
		if probes > 0 || timings {
			return usagef("--no-healthcheck cannot be combined with other --health-* flags")
		}
		spec.Task.Container.Healthcheck = &pb.HealthCheck{Disable: true}
		return nil
	}
	if probes > 1 {
		return usagef("give only one of %s", healthProbeFlagsUsage)
	}
	if probes == 0 && !timings {
		return nil
	}
	c := spec.Task.Container
	if c.Healthcheck == nil || c.Healthcheck.Disable {
		c.Healthcheck = &pb.HealthCheck{}
	}
	hc := c.Healthcheck
	if probes == 1 {
		hc.Command, hc.HttpGet, hc.TcpSocket = nil, "", 0
	}
	switch {
	case set["health-cmd"]:
		if strings.TrimSpace(f.healthCmd) == "" {
			return usagef("--health-cmd is empty")
		}
		hc.Command = []string{"/bin/sh", "-c", f.healthCmd}
	case set["health-http"]:
		if !strings.HasPrefix(f.healthHTTP, "/") {
			return usagef("--health-http %q: give a path starting with /, e.g. /healthz", f.healthHTTP)
		}
		hc.HttpGet = f.healthHTTP
	case set["health-tcp"]:
		if f.healthTCP < 1 || f.healthTCP > 65535 {
			return usagef("--health-tcp %d: give a port from 1 to 65535", f.healthTCP)
		}
		hc.TcpSocket = uint32(f.healthTCP)
	}
	for _, d := range []struct {
		name  string
		v     time.Duration
		field *int64
	}{
		{"health-interval", f.healthInterval, &hc.Interval},
		{"health-timeout", f.healthTimeout, &hc.Timeout},
		{"health-start-period", f.healthStart, &hc.StartPeriod},
	} {
		if !set[d.name] {
			continue
		}
		if d.v < 0 {
			return usagef("--%s %s: must not be negative", d.name, d.v)
		}
		*d.field = int64(d.v)
	}
	if set["health-retries"] {
		if f.healthRetries < 0 || f.healthRetries > math.MaxUint32 {
			return usagef("--health-retries %d: use 0 or more", f.healthRetries)
		}
		hc.Retries = uint32(f.healthRetries)
	}
	return nil
}

func (u *updateConfigFlags) apply(cfg **pb.UpdateConfig, prefix string, set map[string]bool) error {
	given := false
	for _, n := range []string{"parallelism", "delay", "failure-action", "monitor", "max-failure-ratio", "order"} {
		if set[prefix+"-"+n] {
			given = true
		}
	}
	if !given {
		return nil
	}
	if *cfg == nil {
		*cfg = defaultUpdateConfig()
	}
	c := *cfg
	if set[prefix+"-parallelism"] {
		if u.parallelism < 0 {
			return usagef("--%s-parallelism %d: use 0 (all at once) or more", prefix, u.parallelism)
		}
		c.Parallelism = uint64(u.parallelism)
	}
	if set[prefix+"-delay"] {
		if u.delay < 0 {
			return usagef("--%s-delay %s: must not be negative", prefix, u.delay)
		}
		c.Delay = int64(u.delay)
	}
	if set[prefix+"-monitor"] {
		if u.monitor < 0 {
			return usagef("--%s-monitor %s: must not be negative", prefix, u.monitor)
		}
		c.Monitor = int64(u.monitor)
	}
	if set[prefix+"-failure-action"] {
		switch u.failureAction {
		case "pause":
			c.FailureAction = pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_PAUSE
		case "continue":
			c.FailureAction = pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_CONTINUE
		case "rollback":
			if prefix == "rollback" {
				return usagef("--rollback-failure-action %q: use pause or continue", u.failureAction)
			}
			c.FailureAction = pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK
		default:
			if prefix == "rollback" {
				return usagef("--rollback-failure-action %q: use pause or continue", u.failureAction)
			}
			return usagef("--%s-failure-action %q: use pause, continue or rollback", prefix, u.failureAction)
		}
	}
	if set[prefix+"-max-failure-ratio"] {
		if u.maxFailureRatio < 0 || u.maxFailureRatio > 1 || math.IsNaN(u.maxFailureRatio) {
			return usagef("--%s-max-failure-ratio %g: use a number from 0 to 1", prefix, u.maxFailureRatio)
		}
		c.MaxFailureRatio = float32(u.maxFailureRatio)
	}
	if set[prefix+"-order"] {
		switch u.order {
		case "stop-first":
			c.Order = pb.UpdateOrder_UPDATE_ORDER_STOP_FIRST
		case "start-first":
			c.Order = pb.UpdateOrder_UPDATE_ORDER_START_FIRST
		default:
			return usagef("--%s-order %q: use stop-first or start-first", prefix, u.order)
		}
	}
	return nil
}

// validateSpec checks what depends on several fields at once. create runs
// every check (changed is nil); update only those about what its flags
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
		runtime = runtimeProcess
	}
	c := t.GetContainer()
	if runtime == runtimeProcess && len(c.GetMounts()) > 0 && touched("mount-add") {
		return usagef("the process runtime does not support mounts: drop --mount, or use --runtime docker")
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

func hasProbe(hc *pb.HealthCheck) bool {
	return len(hc.GetCommand()) > 0 || hc.GetHttpGet() != "" || hc.GetTcpSocket() != 0
}

// ---------------------------------------------------------------- update

// apply changes spec as the update flags say. spec is the service's
// current spec, read with GetService; it is changed in place.
func (o *updateOptions) apply(spec *pb.ServiceSpec) error {
	set := o.set
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
	c := spec.Task.Container
	if set["image"] {
		runtime := spec.Task.GetRuntime()
		if runtime == "" {
			runtime = runtimeProcess
		}
		if err := validateImage("--image", runtime, o.image); err != nil {
			return err
		}
		c.Image = o.image
	}
	if set["args"] {
		args, err := splitArgs(o.args)
		if err != nil {
			return usagef("--args %q: %v", o.args, err)
		}
		c.Args = args
	}
	if set["replicas"] {
		n, err := checkReplicas(o.replicas)
		if err != nil {
			return err
		}
		switch m := spec.Mode.(type) {
		case *pb.ServiceSpec_Replicated:
			m.Replicated.Replicas = n
		case *pb.ServiceSpec_ReplicatedJob:
			m.ReplicatedJob.TotalCompletions = n
		default:
			return fmt.Errorf("--replicas: service %s is %s; only replicated services have replicas", spec.Annotations.GetName(), modeWord(spec))
		}
	}
	if set["max-concurrent"] {
		m, ok := spec.Mode.(*pb.ServiceSpec_ReplicatedJob)
		if !ok {
			return fmt.Errorf("--max-concurrent: service %s is not a replicated job", spec.Annotations.GetName())
		}
		if o.maxConcurrent < 1 || o.maxConcurrent > maxReplicas {
			return usagef("--max-concurrent %d: use a number from 1 to %d", o.maxConcurrent, maxReplicas)
		}
		m.ReplicatedJob.MaxConcurrent = uint64(o.maxConcurrent)
	}

	for _, k := range o.envRm {
		before := len(c.Env)
		c.Env = slices.DeleteFunc(c.Env, func(kv string) bool { key, _, _ := strings.Cut(kv, "="); return key == k })
		if len(c.Env) == before {
			return fmt.Errorf("--env-rm %s: the service has no such environment variable", k)
		}
	}
	for _, kv := range o.envAdd {
		if err := validateEnv("--env-add", kv); err != nil {
			return err
		}
		c.Env = setEnv(c.Env, kv)
	}
	var err error
	if spec.Annotations.Labels, err = changeLabels("label", spec.Annotations.Labels, o.labelAdd, o.labelRm); err != nil {
		return err
	}
	if c.Labels, err = changeLabels("container-label", c.Labels, o.containerLabelAdd, o.containerLabelRm); err != nil {
		return err
	}

	for _, target := range o.mountRm {
		before := len(c.Mounts)
		c.Mounts = slices.DeleteFunc(c.Mounts, func(m *pb.Mount) bool { return m.GetTarget() == filepath.Clean(target) })
		if len(c.Mounts) == before {
			return fmt.Errorf("--mount-rm %s: the service has no mount at that target", target)
		}
	}
	for _, s := range o.mountAdd {
		m, err := parseMount("--mount-add", s)
		if err != nil {
			return err
		}
		c.Mounts = slices.DeleteFunc(c.Mounts, func(old *pb.Mount) bool { return old.GetTarget() == m.GetTarget() })
		c.Mounts = append(c.Mounts, m)
	}

	for _, v := range o.secretRm {
		before := len(c.Secrets)
		c.Secrets = slices.DeleteFunc(c.Secrets, func(r *pb.SecretReference) bool { return r.GetSecretName() == v || r.GetSecretId() == v })
		if len(c.Secrets) == before {
			return fmt.Errorf("--secret-rm %s: the service uses no such secret", v)
		}
	}
	for _, v := range o.secretAdd {
		ref, err := parseSecretRef("--secret-add", v)
		if err != nil {
			return err
		}
		// A secret on a target already in use replaces the one there.
		c.Secrets = slices.DeleteFunc(c.Secrets, func(r *pb.SecretReference) bool { return r.GetTarget() == ref.GetTarget() })
		c.Secrets = append(c.Secrets, ref)
	}

	for _, expr := range o.constraintRm {
		p := placement(spec)
		before := len(p.Constraints)
		p.Constraints = slices.DeleteFunc(p.Constraints, func(c string) bool { return normalizeConstraint(c) == normalizeConstraint(expr) })
		if len(p.Constraints) == before {
			return fmt.Errorf("--constraint-rm %q: the service has no such constraint", expr)
		}
	}
	for _, expr := range o.constraintAdd {
		if err := validateConstraint("--constraint-add", expr); err != nil {
			return err
		}
		p := placement(spec)
		if !slices.ContainsFunc(p.Constraints, func(c string) bool { return normalizeConstraint(c) == normalizeConstraint(expr) }) {
			p.Constraints = append(p.Constraints, expr)
		}
	}
	for _, s := range o.placementPrefRm {
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
	for _, s := range o.placementPrefAdd {
		pref, err := parsePlacementPref("--placement-pref-add", s)
		if err != nil {
			return err
		}
		placement(spec).Preferences = append(placement(spec).Preferences, pref)
	}

	for _, s := range o.publishRm {
		target, published, proto, err := parsePublishRef(s)
		if err != nil {
			return err
		}
		e := endpoint(spec)
		before := len(e.Ports)
		e.Ports = slices.DeleteFunc(e.Ports, func(p *pb.PortConfig) bool {
			return p.GetTargetPort() == target && p.GetProtocol() == proto && (published == 0 || p.GetPublishedPort() == published)
		})
		if len(e.Ports) == before {
			return fmt.Errorf("--publish-rm %s: the service publishes no such port", s)
		}
	}
	for _, s := range o.publishAdd {
		port, err := parsePublish("--publish-add", s)
		if err != nil {
			return err
		}
		e := endpoint(spec)
		// A port published again replaces the old one.
		e.Ports = slices.DeleteFunc(e.Ports, func(p *pb.PortConfig) bool {
			return p.GetProtocol() == port.GetProtocol() && (p.GetTargetPort() == port.GetTargetPort() ||
				(port.GetPublishedPort() != 0 && p.GetPublishedPort() == port.GetPublishedPort()))
		})
		e.Ports = append(e.Ports, port)
	}

	if err := o.specFlags.apply(spec, set); err != nil {
		return err
	}
	if o.force {
		spec.Task.ForceUpdate++
	}
	// Placement and endpoint are made on demand above; drop them again if
	// they were absent and say nothing, so that the spec only differs
	// where the flags changed it.
	p, e := spec.Task.Placement, spec.Endpoint
	tidySpec(spec)
	if hadPlacement {
		spec.Task.Placement = p
	}
	if hadEndpoint {
		spec.Endpoint = e
	}
	return validateSpec(spec, set)
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

// ---------------------------------------------------------------- values

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

// parseBytes reads a size like 64MiB, 512M, 1G, 1.5GiB, 100KB or 4096.
// K, M, G and T are binary (1024) multiples, whatever the spelling.
func parseBytes(s string) (int64, error) {
	num := strings.TrimRightFunc(s, func(r rune) bool { return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' })
	unit := strings.ToLower(s[len(num):])
	num = strings.TrimSpace(num)
	if num == "" {
		return 0, errors.New("use a number with an optional unit, e.g. 64MiB, 512M or 1G")
	}
	var mult float64
	switch unit {
	case "", "b":
		mult = 1
	case "k", "ki", "kib", "kb":
		mult = 1 << 10
	case "m", "mi", "mib", "mb":
		mult = 1 << 20
	case "g", "gi", "gib", "gb":
		mult = 1 << 30
	case "t", "ti", "tib", "tb":
		mult = 1 << 40
	default:
		return 0, fmt.Errorf("unknown unit %q: use B, K, M, G or T (or KiB, MiB, GiB, TiB)", s[len(s)-len(unit):])
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, errors.New("use a number with an optional unit, e.g. 64MiB, 512M or 1G")
	}
	if v < 0 {
		return 0, errors.New("must not be negative")
	}
	n := v * mult
	if n > math.MaxInt64/2 {
		return 0, errors.New("too large")
	}
	return int64(n), nil
}

// parseCPUs reads a number of CPUs like 0.5 into nano-CPUs.
func parseCPUs(s string) (int64, error) {
	r, ok := new(big.Rat).SetString(strings.TrimSpace(s))
	if !ok {
		return 0, errors.New("use a number of CPUs, e.g. 0.5 or 2")
	}
	if r.Sign() < 0 {
		return 0, errors.New("must not be negative")
	}
	nano := r.Mul(r, big.NewRat(1e9, 1))
	if !nano.IsInt() {
		return 0, errors.New("too precise: at most 9 decimal places")
	}
	if !nano.Num().IsInt64() || nano.Num().Int64() > 1e15 {
		return 0, errors.New("too large")
	}
	return nano.Num().Int64(), nil
}

func formatCPUs(nano int64) string {
	return strconv.FormatFloat(float64(nano)/1e9, 'f', -1, 64)
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

// secretNameRE and secretTargetRE mirror the managers' rules, so mistakes
// are caught before anything is sent.
var (
	secretNameRE   = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$`)
	secretTargetRE = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,255}$`)
)

// parseSecretRef parses NAME[,target=FILE][,mode=0400] (also Docker's
// source=NAME,...). The target defaults to the name, the mode to 0400.
func parseSecretRef(flagName, s string) (*pb.SecretReference, error) {
	bad := func(format string, args ...any) error {
		return usagef("%s %q: %s", flagName, s, fmt.Sprintf(format, args...))
	}
	ref := &pb.SecretReference{Mode: 0o400}
	for i, field := range strings.Split(s, ",") {
		k, v, hasValue := strings.Cut(field, "=")
		if i == 0 && !hasValue {
			ref.SecretName = k
			continue
		}
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "source", "src":
			ref.SecretName = v
		case "target":
			ref.Target = v
		case "mode":
			m, err := strconv.ParseUint(v, 8, 32)
			if err != nil || m > 0o777 {
				return nil, bad("mode=%q: use an octal permission mode such as 0400 or 0440", v)
			}
			ref.Mode = uint32(m)
		case "uid", "gid":
			return nil, bad("%s is not supported: the file belongs to the task's user (process runtime) or root (docker); use mode=0444 to let any user read it", k)
		default:
			return nil, bad("unknown field %q: use NAME[,target=FILE][,mode=0400]", k)
		}
	}
	if !secretNameRE.MatchString(ref.SecretName) {
		return nil, bad("give the secret's name: letters, digits, '-', '_' and '.', starting with a letter or digit")
	}
	if ref.Target == "" {
		ref.Target = ref.SecretName
	}
	if !secretTargetRE.MatchString(ref.Target) || ref.Target == "." || ref.Target == ".." {
		return nil, bad("target=%q: use a plain file name (no '/'); tasks find it in $SHOAL_SECRETS_DIR (process) or /run/secrets (docker)", ref.Target)
	}
	return ref, nil
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

// parsePublish reads PUBLISHED:TARGET[/PROTOCOL], TARGET[/PROTOCOL], or
// published=P,target=T[,protocol=tcp|udp][,mode=ingress|host].
func parsePublish(flagName, s string) (*pb.PortConfig, error) {
	bad := func(format string, args ...any) error {
		return usagef("%s %q: %s", flagName, s, fmt.Sprintf(format, args...))
	}
	p := &pb.PortConfig{}
	if strings.Contains(s, "=") {
		for _, field := range strings.Split(s, ",") {
			k, v, ok := strings.Cut(field, "=")
			if !ok {
				return nil, bad("field %q: use KEY=VALUE", field)
			}
			switch strings.TrimSpace(k) {
			case "published":
				n, err := parsePort(v, true)
				if err != nil {
					return nil, bad("published=%s: %v", v, err)
				}
				p.PublishedPort = n
			case "target":
				n, err := parsePort(v, false)
				if err != nil {
					return nil, bad("target=%s: %v", v, err)
				}
				p.TargetPort = n
			case "protocol":
				proto, err := parseProtocol(v)
				if err != nil {
					return nil, bad("%v", err)
				}
				p.Protocol = proto
			case "mode":
				switch v {
				case "ingress":
					p.PublishMode = pb.PublishMode_PUBLISH_MODE_INGRESS
				case "host":
					p.PublishMode = pb.PublishMode_PUBLISH_MODE_HOST
				default:
					return nil, bad("mode=%s: use ingress or host", v)
				}
			case "name":
				p.Name = v
			default:
				return nil, bad("unknown field %q: use published, target, protocol and mode", k)
			}
		}
		if p.TargetPort == 0 {
			return nil, bad("give target=PORT, the port the task listens on")
		}
		return p, nil
	}
	spec, protoStr, hasProto := strings.Cut(s, "/")
	if hasProto {
		proto, err := parseProtocol(protoStr)
		if err != nil {
			return nil, bad("%v", err)
		}
		p.Protocol = proto
	}
	parts := strings.Split(spec, ":")
	switch len(parts) {
	case 1:
		n, err := parsePort(parts[0], false)
		if err != nil {
			return nil, bad("%v; use PUBLISHED:TARGET, e.g. 8080:80", err)
		}
		p.TargetPort = n
	case 2:
		pub, err := parsePort(parts[0], true)
		if err != nil {
			return nil, bad("published port: %v; use PUBLISHED:TARGET, e.g. 8080:80", err)
		}
		target, err := parsePort(parts[1], false)
		if err != nil {
			return nil, bad("target port: %v; use PUBLISHED:TARGET, e.g. 8080:80", err)
		}
		p.PublishedPort, p.TargetPort = pub, target
	default:
		return nil, bad("use PUBLISHED:TARGET[/tcp|udp], e.g. 8080:80 (ports are published on every node; there is no IP to give)")
	}
	return p, nil
}

// parsePublishRef reads what --publish-rm takes: TARGET[/PROTOCOL] or
// PUBLISHED:TARGET[/PROTOCOL].
func parsePublishRef(s string) (target, published uint32, proto pb.PortProtocol, err error) {
	p, perr := parsePublish("--publish-rm", s)
	if perr != nil || strings.Contains(s, "=") {
		return 0, 0, 0, usagef("--publish-rm %q: use TARGET[/udp] or PUBLISHED:TARGET[/udp], e.g. 80 or 8080:80", s)
	}
	return p.GetTargetPort(), p.GetPublishedPort(), p.GetProtocol(), nil
}

func parsePort(s string, zeroOK bool) (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
	if err != nil || n > 65535 || (n == 0 && !zeroOK) {
		if strings.Contains(s, "-") {
			return 0, fmt.Errorf("%q: port ranges are not supported; publish each port", s)
		}
		return 0, fmt.Errorf("%q is not a port number from 1 to 65535", s)
	}
	return uint32(n), nil
}

func parseProtocol(s string) (pb.PortProtocol, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return pb.PortProtocol_PORT_PROTOCOL_TCP, nil
	case "udp":
		return pb.PortProtocol_PORT_PROTOCOL_UDP, nil
	}
	return 0, fmt.Errorf("protocol %q: use tcp or udp", s)
}

// splitArgs splits a command line as a POSIX shell would, without
// expansions: single and double quotes and backslash escapes.
func splitArgs(s string) ([]string, error) {
	var args []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == ' ' || ch == '\t' || ch == '\n':
			if inWord {
				args = append(args, cur.String())
				cur.Reset()
				inWord = false
			}
		case ch == '\\':
			if i+1 >= len(s) {
				return nil, errors.New("ends with a lone backslash")
			}
			i++
			cur.WriteByte(s[i])
			inWord = true
		case ch == '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, errors.New("unterminated single quote")
			}
			cur.WriteString(s[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case ch == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0 {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, errors.New("unterminated double quote")
			}
			inWord = true
		default:
			cur.WriteByte(ch)
			inWord = true
		}
	}
	if inWord {
		args = append(args, cur.String())
	}
	return args, nil
}
