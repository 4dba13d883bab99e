package main

// Service flags about the task itself: what runs (IMAGE and its arguments,
// on which runtime), how many copies (mode, replicas), as whom and where
// (user, working directory), and how long it has to stop.
//
// IMAGE becomes ContainerSpec.image; COMMAND and ARG... become
// ContainerSpec.args, verbatim (Docker does the same: its command line after
// the image is the container's args, and ContainerSpec.command is only set
// by an entrypoint override). The process runtime runs IMAGE as the program
// with args as its arguments; the docker runtime passes args as the
// container's CMD. Flag parsing stops at IMAGE, so the command's own flags
// (`shoal service create /bin/sleep -x`) are never taken for ours.

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/pflag"
)

const (
	maxReplicas      = 100000
	defaultStopGrace = 10 * time.Second
	runtimeProcess   = "process"
	runtimeDocker    = "docker"
	runtimeContainer = "container"
)

// taskFlags are --name, --mode, --replicas, --runtime and --max-concurrent
// (create), --image, --args and --force (update), and --workdir, --user,
// --stop-grace-period and --replicas (both).
type taskFlags struct {
	name, mode, runtime string
	replicas            int64
	maxConcurrent       int64
	image, args         string
	force               bool

	workdir, user string
	stopGrace     time.Duration
	readOnly      bool
}

func (f *taskFlags) registerCreate(fs *pflag.FlagSet) {
	fs.StringVar(&f.name, "name", "", "service name (default: chosen by the cluster)")
	fs.StringVar(&f.mode, "mode", "replicated", "replicated, global, replicated-job or global-job")
	fs.Int64Var(&f.replicas, "replicas", 1, "number of tasks (replicated jobs: completions)")
	fs.StringVar(&f.runtime, "runtime", "", "process (IMAGE is an absolute path to an executable), docker (IMAGE is a container image, run by the Docker Engine) or container (IMAGE is a container image, run by runc from the node's own image store); by default the IMAGE decides: a path runs as a process, anything else as a container")
	fs.Int64Var(&f.maxConcurrent, "max-concurrent", 1, "replicated jobs: how many tasks run at once")
	f.registerShared(fs)
}

func (f *taskFlags) registerUpdate(fs *pflag.FlagSet) {
	fs.StringVar(&f.image, "image", "", "new `image` (process runtime: absolute path of the executable)")
	fs.StringVar(&f.args, "args", "", "new `command` line for the task, split as a shell would (\"\" clears it)")
	fs.Int64Var(&f.replicas, "replicas", 0, "number of tasks (replicated jobs: completions)")
	fs.Int64Var(&f.maxConcurrent, "max-concurrent", 0, "replicated jobs: how many tasks run at once")
	fs.BoolVar(&f.force, "force", false, "replace every task even if nothing else changes")
	f.registerShared(fs)
}

func (f *taskFlags) registerShared(fs *pflag.FlagSet) {
	fs.StringVarP(&f.workdir, "workdir", "w", "", "working directory of the task (absolute `path`)")
	fs.StringVarP(&f.user, "user", "u", "", "`user` the task runs as (name or UID)")
	fs.DurationVar(&f.stopGrace, "stop-grace-period", defaultStopGrace, "how long a task has to stop before it is killed")
	fs.BoolVar(&f.readOnly, "read-only", false, "mount the container's root filesystem read-only (docker and container runtimes)")
}

// base builds the spec of `service create` from IMAGE [COMMAND] [ARG...],
// with the defaults every create sends explicitly (restart policy any, 5s;
// update and rollback parallelism 1, monitor 5s, pause, stop-first; stop
// grace period 10s), so that `inspect` shows what the service really does
// and the server's defaults do not matter.
func (f *taskFlags) base(pos []string) (*pb.ServiceSpec, error) {
	if len(pos) == 0 {
		return nil, usagef("service create needs an IMAGE: an absolute path to an executable (process runtime) or a container image (docker runtime)")
	}
	if f.name != "" {
		if err := validateServiceName(f.name); err != nil {
			return nil, err
		}
	}
	image := pos[0]
	runtime := f.runtime
	switch runtime {
	case runtimeProcess, runtimeDocker, runtimeContainer:
		if err := validateImage("IMAGE", runtime, image); err != nil {
			return nil, err
		}
	case "":
		runtime = runtimeFor(image)
		if err := validateImage("IMAGE", runtime, image); err != nil {
			return nil, err
		}
	default:
		return nil, usagef("--runtime %q: use process, docker or container", f.runtime)
	}
	return &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: f.name},
		Task: &pb.TaskSpec{
			Runtime: runtime,
			Container: &pb.ContainerSpec{
				Image:           image,
				Args:            append([]string(nil), pos[1:]...),
				StopGracePeriod: int64(defaultStopGrace),
			},
			Restart: defaultRestartPolicy(),
		},
		Update:   defaultUpdateConfig(),
		Rollback: defaultUpdateConfig(),
	}, nil
}

// runtimeFor is the runtime IMAGE runs on when --runtime is not given, as
// a Docker user expects: a path runs as a process, anything else is a
// container image. The managers apply the same rule to a spec that names
// no runtime. A container image's name never starts with '/', '.' or '~',
// so a relative path is taken for a path (and refused as such) rather than
// for an image no registry has.
func runtimeFor(image string) string {
	if strings.HasPrefix(image, "/") || strings.HasPrefix(image, ".") || strings.HasPrefix(image, "~") {
		return runtimeProcess
	}
	return runtimeDocker
}

func (f *taskFlags) create(spec *pb.ServiceSpec, set map[string]bool) error {
	if err := f.setMode(spec, set); err != nil {
		return err
	}
	return f.applyShared(spec, set)
}

func (f *taskFlags) setMode(spec *pb.ServiceSpec, set map[string]bool) error {
	replicas, err := checkReplicas(f.replicas)
	if err != nil {
		return err
	}
	switch f.mode {
	case "replicated":
		if set["max-concurrent"] {
			return usagef("--max-concurrent is for --mode replicated-job only")
		}
		spec.Mode = &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: replicas}}
	case "global", "global-job":
		if set["replicas"] {
			return usagef("--replicas cannot be used with --mode %s: it runs one task on every eligible node", f.mode)
		}
		if set["max-concurrent"] {
			return usagef("--max-concurrent is for --mode replicated-job only")
		}
		if set["max-replicas-per-node"] {
			return usagef("--max-replicas-per-node cannot be used with --mode %s: it runs one task per node", f.mode)
		}
		if f.mode == "global" {
			spec.Mode = &pb.ServiceSpec_Global{Global: &pb.GlobalService{}}
		} else {
			spec.Mode = &pb.ServiceSpec_GlobalJob{GlobalJob: &pb.GlobalJob{}}
		}
	case "replicated-job":
		conc := uint64(1)
		if set["max-concurrent"] {
			if f.maxConcurrent < 1 || f.maxConcurrent > maxReplicas {
				return usagef("--max-concurrent %d: use a number from 1 to %d", f.maxConcurrent, maxReplicas)
			}
			conc = uint64(f.maxConcurrent)
		}
		total := conc
		if set["replicas"] {
			if replicas == 0 {
				return errNoCompletions("--replicas 0")
			}
			total = replicas
		}
		spec.Mode = &pb.ServiceSpec_ReplicatedJob{ReplicatedJob: &pb.ReplicatedJob{MaxConcurrent: conc, TotalCompletions: total}}
	default:
		return usagef("--mode %q: use replicated, global, replicated-job or global-job", f.mode)
	}
	return nil
}

func (f *taskFlags) update(spec *pb.ServiceSpec, set map[string]bool) error {
	c := spec.Task.Container
	if set["image"] {
		runtime := spec.Task.GetRuntime()
		if runtime == "" {
			runtime = runtimeFor(f.image)
		}
		if err := validateImage("--image", runtime, f.image); err != nil {
			return err
		}
		c.Image = f.image
	}
	if set["args"] {
		args, err := splitArgs(f.args)
		if err != nil {
			return usagef("--args %q: %v", f.args, err)
		}
		c.Args = args
	}
	if set["replicas"] {
		n, err := checkReplicas(f.replicas)
		if err != nil {
			return err
		}
		switch m := spec.Mode.(type) {
		case *pb.ServiceSpec_Replicated:
			m.Replicated.Replicas = n
		case *pb.ServiceSpec_ReplicatedJob:
			if n == 0 {
				return errNoCompletions("--replicas 0")
			}
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
		if f.maxConcurrent < 1 || f.maxConcurrent > maxReplicas {
			return usagef("--max-concurrent %d: use a number from 1 to %d", f.maxConcurrent, maxReplicas)
		}
		m.ReplicatedJob.MaxConcurrent = uint64(f.maxConcurrent)
	}
	if err := f.applyShared(spec, set); err != nil {
		return err
	}
	if f.force {
		spec.Task.ForceUpdate++
	}
	return nil
}

// applyShared sets what --workdir, --user, --stop-grace-period and
// --read-only say.
func (f *taskFlags) applyShared(spec *pb.ServiceSpec, set map[string]bool) error {
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
	if set["read-only"] {
		c.ReadOnly = f.readOnly
	}
	return nil
}

// errNoCompletions refuses a replicated job of no completions (the spec
// could not tell it from "as many as --max-concurrent").
func errNoCompletions(what string) error {
	return usagef("%s: a replicated job needs at least one completion; remove the job with `shoal service rm` instead", what)
}

func checkReplicas(n int64) (uint64, error) {
	if n < 0 || n > maxReplicas {
		return 0, usagef("--replicas %d: use a number from 0 to %d", n, maxReplicas)
	}
	return uint64(n), nil
}

var serviceNameRE = regexp.MustCompile(`^[a-z]([a-z0-9_-]{0,61}[a-z0-9])?$`)

// validateServiceName checks that a name is a DNS label: lower-case
// letters, digits, '-' and '_' (a stack's services are STACK_NAME), 1 to
// 63 characters, starting with a letter and ending with a letter or digit.
func validateServiceName(name string) error {
	if !serviceNameRE.MatchString(name) {
		return usagef("--name %q: use 1 to 63 lower-case letters, digits, '-' and '_', starting with a letter and ending with a letter or digit (it becomes a DNS name)", name)
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
	if runtime == runtimeDocker || runtime == runtimeContainer {
		if strings.HasPrefix(image, "/") {
			return usagef("%s %q is a path, not a container image%s", flagName, image, hint(": drop --runtime "+runtime+" to run an executable"))
		}
		if strings.ContainsAny(image, " \t\n") || strings.HasPrefix(image, "-") {
			return usagef("%s %q is not a container image name", flagName, image)
		}
		return nil
	}
	if !filepath.IsAbs(image) {
		if runtimeFor(image) == runtimeProcess {
			// A relative path: a container image's name never looks like one.
			return usagef("%s %q: the process runtime runs an executable: give its absolute path (e.g. /usr/bin/python3 or $PWD/%s)", flagName, image, strings.TrimPrefix(image, "./"))
		}
		return usagef("%s %q: the process runtime runs an executable: give its absolute path (e.g. /usr/bin/python3)%s", flagName, image, hint(", or add --runtime docker for a container image"))
	}
	return nil
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
