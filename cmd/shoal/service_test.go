package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
)

// parseArgs parses a command's command line as run does: arguments that
// are not UTF-8 refused, single-dash long flags, pflag's errors worded as
// the CLI words them.
func parseArgs(cmd *cobra.Command, args []string) ([]string, error) {
	if err := checkUTF8(args); err != nil {
		return nil, err
	}
	if err := cmd.ParseFlags(normalizeFlags(cmd, args)); err != nil {
		return nil, flagError(cmd, err)
	}
	return cmd.Flags().Args(), nil
}

// createSpec runs the flag parsing of `service create` on args.
func createSpec(args ...string) (*pb.ServiceSpec, error) {
	var o createOptions
	cmd := serviceCreateCommand(&globalFlags{}, &o)
	pos, err := parseArgs(cmd, args)
	if err != nil {
		return nil, err
	}
	return o.spec(changedFlags(cmd), pos)
}

// updateSpec applies `service update` flags to a copy of spec.
func updateSpec(spec *pb.ServiceSpec, args ...string) (*pb.ServiceSpec, error) {
	var o updateOptions
	cmd := serviceUpdateCommand(&globalFlags{}, &o)
	pos, err := parseArgs(cmd, append(args, "web"))
	if err != nil {
		return nil, err
	}
	if len(pos) != 1 {
		return nil, errors.New("want one positional argument")
	}
	o.set = changedFlags(cmd)
	out := proto.Clone(spec).(*pb.ServiceSpec)
	return out, o.apply(out)
}

// baseSpec is what `service create IMAGE ARGS...` sends with no flags.
func baseSpec(image string, args ...string) *pb.ServiceSpec {
	return &pb.ServiceSpec{
		Annotations: &pb.Annotations{},
		Task: &pb.TaskSpec{
			Runtime:   "process",
			Container: &pb.ContainerSpec{Image: image, Args: args, StopGracePeriod: int64(10 * time.Second)},
			Restart:   &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ANY, Delay: int64(5 * time.Second)},
		},
		Mode:     &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: 1}},
		Update:   &pb.UpdateConfig{Parallelism: 1, Monitor: int64(5 * time.Second)},
		Rollback: &pb.UpdateConfig{Parallelism: 1, Monitor: int64(5 * time.Second)},
	}
}

func docker(s *pb.ServiceSpec) *pb.ServiceSpec {
	s.Task.Runtime = "docker"
	return s
}

func text(m proto.Message) string { return prototext.MarshalOptions{Multiline: true}.Format(m) }

func TestServiceCreateFlagsToSpec(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want func() *pb.ServiceSpec
	}{
		{"image only", []string{"/bin/sleep"}, func() *pb.ServiceSpec { return baseSpec("/bin/sleep") }},
		{"command and args go to args", []string{"/bin/sh", "-c", "echo hi"}, func() *pb.ServiceSpec {
			return baseSpec("/bin/sh", "-c", "echo hi")
		}},
		{"flags after IMAGE belong to the command", []string{"--name", "web", "/bin/app", "--name", "x", "-d"}, func() *pb.ServiceSpec {
			s := baseSpec("/bin/app", "--name", "x", "-d")
			s.Annotations.Name = "web"
			return s
		}},
		{"-- ends our flags", []string{"--", "/bin/app", "--replicas"}, func() *pb.ServiceSpec { return baseSpec("/bin/app", "--replicas") }},
		{"journey 3", []string{"--runtime", "docker", "--name", "web", "--replicas", "3", "--publish", "8080:80", "shoal/hello:v1"}, func() *pb.ServiceSpec {
			s := docker(baseSpec("shoal/hello:v1"))
			s.Annotations.Name = "web"
			s.Mode = &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: 3}}
			s.Endpoint = &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80, PublishedPort: 8080}}}
			return s
		}},
		{"zero replicas", []string{"--replicas", "0", "/bin/app"}, func() *pb.ServiceSpec {
			s := baseSpec("/bin/app")
			s.Mode = &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{}}
			return s
		}},
		{"global", []string{"--mode", "global", "/bin/app"}, func() *pb.ServiceSpec {
			s := baseSpec("/bin/app")
			s.Mode = &pb.ServiceSpec_Global{Global: &pb.GlobalService{}}
			return s
		}},
		{"replicated job", []string{"--mode", "replicated-job", "--replicas", "5", "--max-concurrent", "2", "/bin/app"}, func() *pb.ServiceSpec {
			s := jobBaseSpec("/bin/app")
			s.Mode = &pb.ServiceSpec_ReplicatedJob{ReplicatedJob: &pb.ReplicatedJob{MaxConcurrent: 2, TotalCompletions: 5}}
			return s
		}},
		{"replicated job defaults", []string{"--mode", "replicated-job", "/bin/app"}, func() *pb.ServiceSpec {
			s := jobBaseSpec("/bin/app")
			s.Mode = &pb.ServiceSpec_ReplicatedJob{ReplicatedJob: &pb.ReplicatedJob{MaxConcurrent: 1, TotalCompletions: 1}}
			return s
		}},
		{"global job", []string{"--mode", "global-job", "/bin/app"}, func() *pb.ServiceSpec {
			s := jobBaseSpec("/bin/app")
			s.Mode = &pb.ServiceSpec_GlobalJob{GlobalJob: &pb.GlobalJob{}}
			return s
		}},
		{"resources", []string{"--reserve-cpu", "0.5", "--reserve-memory", "64MiB", "--limit-cpu", "2", "--limit-memory", "1G", "/bin/app"}, func() *pb.ServiceSpec {
			s := baseSpec("/bin/app")
			s.Task.Resources = &pb.ResourceRequirements{
				Reservations: &pb.Resources{NanoCpus: 500_000_000, MemoryBytes: 64 << 20},
				Limits:       &pb.Resources{NanoCpus: 2_000_000_000, MemoryBytes: 1 << 30},
			}
			return s
		}},
		{"memory only", []string{"--limit-memory", "512M", "/bin/app"}, func() *pb.ServiceSpec {
			s := baseSpec("/bin/app")
			s.Task.Resources = &pb.ResourceRequirements{Limits: &pb.Resources{MemoryBytes: 512 << 20}}
			return s
		}},
		{"env, labels, workdir, user", []string{"--env", "A=1", "--env", "B=x=y", "--env", "A=2", "--label", "team=web", "--label", "flag",
			"--container-label", "c=d", "--workdir", "/srv", "--user", "nobody", "/bin/app"}, func() *pb.ServiceSpec {
			s := baseSpec("/bin/app")
			s.Annotations.Labels = map[string]string{"team": "web", "flag": ""}
			c := s.Task.Container
			c.Env = []string{"A=2", "B=x=y"}
			c.Labels = map[string]string{"c": "d"}
			c.Dir, c.User = "/srv", "nobody"
			return s
		}},
		{"mounts", []string{"--runtime", "docker", "--mount", "type=bind,source=/data,target=/var/data,readonly",
			"--mount", "type=volume,src=cache,dst=/cache", "--mount", "type=tmpfs,target=/tmp/", "--mount", "target=/anon,ro=false", "nginx"}, func() *pb.ServiceSpec {
			s := docker(baseSpec("nginx"))
			s.Task.Container.Mounts = []*pb.Mount{
				{Type: pb.MountType_MOUNT_TYPE_BIND, Source: "/data", Target: "/var/data", ReadOnly: true},
				{Type: pb.MountType_MOUNT_TYPE_VOLUME, Source: "cache", Target: "/cache"},
				{Type: pb.MountType_MOUNT_TYPE_TMPFS, Target: "/tmp"},
				{Type: pb.MountType_MOUNT_TYPE_VOLUME, Target: "/anon"},
			}
			return s
		}},
		{"health cmd", []string{"--health-cmd", "curl -f http://localhost/ || exit 1", "--health-interval", "5s", "--health-timeout", "2s",
			"--health-retries", "3", "--health-start-period", "10s", "/bin/app"}, func() *pb.ServiceSpec {
			s := baseSpec("/bin/app")
			s.Task.Container.Healthcheck = &pb.HealthCheck{Command: []string{"/bin/sh", "-c", "curl -f http://localhost/ || exit 1"},
				Interval: int64(5 * time.Second), Timeout: int64(2 * time.Second), Retries: 3, StartPeriod: int64(10 * time.Second)}
			return s
		}},
		{"health http", []string{"--health-http", "/healthz", "/bin/app"}, func() *pb.ServiceSpec {
			s := baseSpec("/bin/app")
			s.Task.Container.Healthcheck = &pb.HealthCheck{HttpGet: "/healthz"}
			return s
		}},
		{"health tcp", []string{"--health-tcp", "8080", "/bin/app"}, func() *pb.ServiceSpec {
			s := baseSpec("/bin/app")
			s.Task.Container.Healthcheck = &pb.HealthCheck{TcpSocket: 8080}
			return s
		}},
		{"no healthcheck", []string{"--no-healthcheck", "/bin/app"}, func() *pb.ServiceSpec {
			s := baseSpec("/bin/app")
			s.Task.Container.Healthcheck = &pb.HealthCheck{Disable: true}
			return s
		}},
		{"docker image's own check, new timings", []string{"--runtime", "docker", "--health-interval", "1s", "redis"}, func() *pb.ServiceSpec {
			s := docker(baseSpec("redis"))
			s.Task.Container.Healthcheck = &pb.HealthCheck{Interval: int64(time.Second)}
			return s
		}},
		{"restart", []string{"--restart-condition", "on-failure", "--restart-delay", "1s", "--restart-max-attempts", "3", "--restart-window", "1m", "/bin/app"}, func() *pb.ServiceSpec {
			s := baseSpec("/bin/app")
			s.Task.Restart = &pb.RestartPolicy{Condition: pb.RestartCondition_RESTART_CONDITION_ON_FAILURE, Delay: int64(time.Second), MaxAttempts: 3, Window: int64(time.Minute)}
			return s
		}},
		{"restart none keeps the default delay", []string{"--restart-condition", "none", "/bin/app"}, func() *pb.ServiceSpec {
			s := baseSpec("/bin/app")
			s.Task.Restart.Condition = pb.RestartCondition_RESTART_CONDITION_NONE
			return s
		}},
		{"update and rollback", []string{"--update-parallelism", "2", "--update-delay", "10s", "--update-order", "start-first",
			"--update-failure-action", "rollback", "--update-monitor", "30s", "--update-max-failure-ratio", "0.25",
			"--rollback-parallelism", "0", "--rollback-failure-action", "continue", "--rollback-order", "start-first", "/bin/app"}, func() *pb.ServiceSpec {
			s := baseSpec("/bin/app")
			s.Update = &pb.UpdateConfig{Parallelism: 2, Delay: int64(10 * time.Second), Order: pb.UpdateOrder_UPDATE_ORDER_START_FIRST,
				FailureAction: pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK, Monitor: int64(30 * time.Second), MaxFailureRatio: 0.25}
			s.Rollback = &pb.UpdateConfig{Parallelism: 0, Monitor: int64(5 * time.Second), Order: pb.UpdateOrder_UPDATE_ORDER_START_FIRST,
				FailureAction: pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_CONTINUE}
			return s
		}},
		{"placement", []string{"--constraint", "node.labels.zone==a", "--constraint", "node.role != manager", "--placement-pref", "spread=node.labels.rack",
			"--max-replicas-per-node", "2", "/bin/app"}, func() *pb.ServiceSpec {
			s := baseSpec("/bin/app")
			s.Task.Placement = &pb.Placement{Constraints: []string{"node.labels.zone==a", "node.role != manager"},
				Preferences: []*pb.PlacementPreference{{SpreadDescriptor: "node.labels.rack"}}, MaxReplicas: 2}
			return s
		}},
		{"stop grace and dnsrr", []string{"--stop-grace-period", "30s", "--endpoint-mode", "dnsrr", "/bin/app"}, func() *pb.ServiceSpec {
			s := baseSpec("/bin/app")
			s.Task.Container.StopGracePeriod = int64(30 * time.Second)
			s.Endpoint = &pb.EndpointSpec{Mode: pb.ResolutionMode_RESOLUTION_MODE_DNSRR}
			return s
		}},
		{"publish forms", []string{"--publish", "8080:80", "--publish", "53:53/udp", "--publish", "9000",
			"--publish", "published=8443,target=443,protocol=tcp,mode=host", "/bin/app"}, func() *pb.ServiceSpec {
			s := baseSpec("/bin/app")
			s.Endpoint = &pb.EndpointSpec{Ports: []*pb.PortConfig{
				{PublishedPort: 8080, TargetPort: 80},
				{PublishedPort: 53, TargetPort: 53, Protocol: pb.PortProtocol_PORT_PROTOCOL_UDP},
				{TargetPort: 9000},
				{PublishedPort: 8443, TargetPort: 443, PublishMode: pb.PublishMode_PUBLISH_MODE_HOST},
			}}
			return s
		}},
		{"same port, two protocols", []string{"-publish", "53:53", "--publish=53:53/udp", "/bin/app"}, func() *pb.ServiceSpec {
			s := baseSpec("/bin/app")
			s.Endpoint = &pb.EndpointSpec{Ports: []*pb.PortConfig{
				{PublishedPort: 53, TargetPort: 53},
				{PublishedPort: 53, TargetPort: 53, Protocol: pb.PortProtocol_PORT_PROTOCOL_UDP},
			}}
			return s
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := createSpec(tt.args...)
			if err != nil {
				t.Fatalf("createSpec(%q): %v", tt.args, err)
			}
			if want := tt.want(); !proto.Equal(got, want) {
				t.Errorf("createSpec(%q)\n got: %s\nwant: %s", tt.args, text(got), text(want))
			}
		})
	}
}

func TestServiceCreateFlagErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // part of the error
	}{
		{"no image", []string{"--name", "web"}, "needs an IMAGE"},
		{"an argument that is not UTF-8", []string{"/bin/\xdb"}, `argument "/bin/\xdb" is not valid UTF-8 text`},
		{"negative replicas", []string{"--replicas", "-1", "/bin/app"}, "--replicas -1: use a number from 0 to 100000"},
		{"too many replicas", []string{"--replicas", "100001", "/bin/app"}, "--replicas 100001"},
		{"replicas not a number", []string{"--replicas", "three", "/bin/app"}, `invalid value "three" for flag -replicas`},
		{"replicas with global", []string{"--mode", "global", "--replicas", "3", "/bin/app"}, "--replicas cannot be used with --mode global"},
		{"replicas with global job", []string{"--mode", "global-job", "--replicas", "3", "/bin/app"}, "--replicas cannot be used with --mode global-job"},
		{"max per node with global", []string{"--mode", "global", "--max-replicas-per-node", "1", "/bin/app"}, "--max-replicas-per-node cannot be used"},
		{"max concurrent with replicated", []string{"--max-concurrent", "2", "/bin/app"}, "--max-concurrent is for --mode replicated-job only"},
		{"max concurrent with global", []string{"--mode", "global", "--max-concurrent", "2", "/bin/app"}, "--max-concurrent is for --mode replicated-job only"},
		{"a job of no completions", []string{"--mode", "replicated-job", "--replicas", "0", "/bin/app"}, "--replicas 0: a replicated job needs at least one completion"},
		{"update flags on a job", []string{"--mode", "replicated-job", "--update-parallelism", "2", "/bin/app"}, "--update-parallelism: a job (replicated job) has no rolling update or rollback"},
		{"rollback flags on a global job", []string{"--mode", "global-job", "--rollback-order", "start-first", "/bin/app"}, "--rollback-order: a job (global job) has no rolling update or rollback"},
		{"bad mode", []string{"--mode", "daemonset", "/bin/app"}, `--mode "daemonset": use replicated, global, replicated-job or global-job`},
		{"bad runtime", []string{"--runtime", "podman", "/bin/app"}, `--runtime "podman": use process, docker or container`},
		{"relative path", []string{"./app"}, `IMAGE "./app": the process runtime runs an executable: give its absolute path`},
		{"relative path in a dir", []string{"--runtime", "process", "bin/app"}, "give its absolute path"},
		{"bare name", []string{"--runtime", "process", "sleep", "10"}, "give its absolute path"},
		{"image name with process runtime", []string{"--runtime", "process", "shoal/hello:v1"}, "or add --runtime docker for a container image"},
		{"path with docker runtime", []string{"--runtime", "docker", "/bin/sleep"}, "is a path, not a container image"},
		{"upper-case name", []string{"--name", "Web", "/bin/app"}, `--name "Web": use 1 to 63 lower-case letters`},
		{"name starts with a digit", []string{"--name", "1web", "/bin/app"}, "starting with a letter"},
		{"name ending with underscore", []string{"--name", "web_", "/bin/app"}, "--name"},
		{"name ends with -", []string{"--name", "web-", "/bin/app"}, "ending with a letter or digit"},
		{"name too long", []string{"--name", "a" + strings.Repeat("b", 63), "/bin/app"}, "1 to 63"},
		{"constraint missing ==", []string{"--constraint", "node.labels.zone=a", "/bin/app"}, `--constraint "node.labels.zone=a": use KEY==VALUE or KEY!=VALUE`},
		{"constraint unknown key", []string{"--constraint", "node.color==red", "/bin/app"}, `unknown attribute "node.color"`},
		{"constraint bad role", []string{"--constraint", "node.role==boss", "/bin/app"}, "node.role is manager or worker"},
		{"constraint no value", []string{"--constraint", "node.labels.zone==", "/bin/app"}, "give one value"},
		{"constraint empty label", []string{"--constraint", "node.labels.==a", "/bin/app"}, "unknown attribute"},
		{"placement pref", []string{"--placement-pref", "pack=node.labels.zone", "/bin/app"}, "use spread=node.labels.NAME"},
		{"update order", []string{"--update-order", "random", "/bin/app"}, `--update-order "random": use stop-first or start-first`},
		{"rollback order", []string{"--rollback-order", "x", "/bin/app"}, `--rollback-order "x"`},
		{"update failure action", []string{"--update-failure-action", "panic", "/bin/app"}, "use pause, continue or rollback"},
		{"rollback failure action rollback", []string{"--rollback-failure-action", "rollback", "/bin/app"}, "use pause or continue"},
		{"failure ratio", []string{"--update-max-failure-ratio", "1.5", "/bin/app"}, "use a number from 0 to 1"},
		{"negative parallelism", []string{"--update-parallelism", "-1", "/bin/app"}, "--update-parallelism -1"},
		{"negative update delay", []string{"--update-delay", "-1s", "/bin/app"}, "must not be negative"},
		{"restart condition", []string{"--restart-condition", "always", "/bin/app"}, "use none, on-failure or any"},
		{"negative restart attempts", []string{"--restart-max-attempts", "-2", "/bin/app"}, "--restart-max-attempts -2"},
		{"bad duration", []string{"--restart-delay", "5x", "/bin/app"}, `invalid value "5x" for flag -restart-delay`},
		{"memory unit", []string{"--reserve-memory", "12X", "/bin/app"}, `--reserve-memory "12X": unknown unit "X"`},
		{"memory negative", []string{"--limit-memory", "-1G", "/bin/app"}, "must not be negative"},
		{"memory not a number", []string{"--limit-memory", "lots", "/bin/app"}, "use a number"},
		{"cpu not a number", []string{"--reserve-cpu", "half", "/bin/app"}, `--reserve-cpu "half": use a number of CPUs`},
		{"cpu too precise", []string{"--limit-cpu", "0.0000000001", "/bin/app"}, "too precise"},
		{"cpu negative", []string{"--limit-cpu", "-1", "/bin/app"}, "must not be negative"},
		{"reservation above limit", []string{"--reserve-memory", "1G", "--limit-memory", "512M", "/bin/app"}, "the memory reservation (1.0GiB) is more than the memory limit (512.0MiB)"},
		{"cpu reservation above limit", []string{"--reserve-cpu", "2", "--limit-cpu", "1", "/bin/app"}, "the CPU reservation (2) is more than the CPU limit (1)"},
		{"publish garbage", []string{"--publish", "web", "/bin/app"}, `--publish "web"`},
		{"publish missing target", []string{"--publish", "8080:", "/bin/app"}, "target port"},
		{"publish too high", []string{"--publish", "70000:80", "/bin/app"}, "not a port number from 1 to 65535"},
		{"publish with IP", []string{"--publish", "127.0.0.1:8080:80", "/bin/app"}, "there is no IP to give"},
		{"publish range", []string{"--publish", "8080-8081:80-81", "/bin/app"}, "port ranges are not supported"},
		{"publish protocol", []string{"--publish", "8080:80/sctp", "/bin/app"}, `protocol "sctp": use tcp or udp`},
		{"publish long without target", []string{"--publish", "published=8080", "/bin/app"}, "give target=PORT"},
		{"publish long bad mode", []string{"--publish", "target=80,mode=bogus", "/bin/app"}, "mode=bogus: use ingress or host"},
		{"publish long unknown field", []string{"--publish", "target=80,ip=1.2.3.4", "/bin/app"}, `unknown field "ip"`},
		{"publish twice", []string{"--publish", "8080:80", "--publish", "8080:81", "/bin/app"}, "port 8080/tcp is published twice"},
		{"mount with process runtime", []string{"--mount", "type=tmpfs,target=/tmp", "/bin/app"}, "the process runtime does not support mounts"},
		{"mount type", []string{"--runtime", "docker", "--mount", "type=nfs,target=/x", "nginx"}, `type "nfs": use bind, volume or tmpfs`},
		{"mount relative target", []string{"--runtime", "docker", "--mount", "type=volume,target=data", "nginx"}, "target=ABSOLUTE-PATH"},
		{"bind without source", []string{"--runtime", "docker", "--mount", "type=bind,target=/x", "nginx"}, "a bind mount needs source=ABSOLUTE-PATH"},
		{"tmpfs with source", []string{"--runtime", "docker", "--mount", "type=tmpfs,source=x,target=/x", "nginx"}, "a tmpfs mount takes no source"},
		{"mount unknown field", []string{"--runtime", "docker", "--mount", "type=volume,target=/x,size=1G", "nginx"}, `unknown field "size"`},
		{"two health probes", []string{"--health-cmd", "true", "--health-http", "/h", "/bin/app"}, "give only one of --health-cmd, --health-http or --health-tcp"},
		{"no healthcheck with cmd", []string{"--no-healthcheck", "--health-cmd", "true", "/bin/app"}, "--no-healthcheck cannot be combined"},
		{"health http without slash", []string{"--health-http", "healthz", "/bin/app"}, "give a path starting with /"},
		{"health tcp port", []string{"--health-tcp", "70000", "/bin/app"}, "--health-tcp 70000: give a port from 1 to 65535"},
		{"health timings without probe", []string{"--health-interval", "5s", "/bin/app"}, "the process runtime has no built-in health check"},
		{"empty health cmd", []string{"--health-cmd", " ", "/bin/app"}, "--health-cmd is empty"},
		{"env without =", []string{"--env", "FOO", "/bin/app"}, `--env "FOO": use KEY=VALUE`},
		{"label without key", []string{"--label", "=x", "/bin/app"}, `--label "=x": use KEY=VALUE`},
		{"relative workdir", []string{"--workdir", "srv", "/bin/app"}, `--workdir "srv": use an absolute path`},
		{"unknown flag", []string{"--bogus", "/bin/app"}, "flag provided but not defined: -bogus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := createSpec(tt.args...)
			if err == nil {
				t.Fatalf("createSpec(%q) = %s, want an error with %q", tt.args, text(spec), tt.want)
			}
			var ue usageError
			if !errors.As(err, &ue) {
				t.Errorf("createSpec(%q): %v is not a usage error (exit status 2)", tt.args, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("createSpec(%q) error %q, want it to contain %q", tt.args, err, tt.want)
			}
		})
	}
}

// TestServiceCreateUsageExitStatus runs the command as main does: command
// line mistakes exit 2 with one line and a pointer to --help, before any
// connection is tried.
func TestServiceCreateUsageExitStatus(t *testing.T) {
	var stderr bytes.Buffer
	code := run([]string{"service", "create", "--host", "127.0.0.1:1", "--replicas", "-1", "/bin/app"}, &stderr)
	if code != 2 {
		t.Errorf("exit status %d, want 2", code)
	}
	want := "Error: --replicas -1: use a number from 0 to 100000\nSee 'shoal service create --help'.\n"
	if stderr.String() != want {
		t.Errorf("stderr %q, want %q", stderr.String(), want)
	}
	stderr.Reset()
	if code := run([]string{"service", "frobnicate"}, &stderr); code != 2 || !strings.Contains(stderr.String(), `unknown command "frobnicate" for "shoal service"`) {
		t.Errorf("unknown subcommand: exit %d, stderr %q", code, stderr.String())
	}
	for _, args := range [][]string{
		{"service", "update", "web"},
		{"service", "update", "--detach", "web"},
		{"service", "scale", "web"},
		{"service", "scale", "web=-1"},
		{"service", "ps"},
		{"service", "ps", "--filter", "color=red", "web"},
		{"service", "logs", "--tail", "some", "web"},
		{"service", "rm"},
		{"service", "ls", "extra"},
		{"service", "inspect"},
		{"service", "rollback"},
	} {
		stderr.Reset()
		if code := run(args, &stderr); code != 2 {
			t.Errorf("%q: exit status %d, want 2 (stderr %q)", args, code, stderr.String())
		}
	}
}

func TestParseBytes(t *testing.T) {
	good := map[string]int64{
		"0": 0, "4096": 4096, "100B": 100, "100b": 100,
		"2K": 2 << 10, "2k": 2 << 10, "2Ki": 2 << 10, "3KiB": 3 << 10, "10KB": 10 << 10,
		"64MiB": 64 << 20, "512M": 512 << 20, "512m": 512 << 20, "512Mi": 512 << 20, "512MB": 512 << 20,
		"1G": 1 << 30, "1g": 1 << 30, "1Gi": 1 << 30, "1GiB": 1 << 30, "1.5GiB": 3 << 29, "2T": 2 << 40,
	}
	for in, want := range good {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "abc", "12X", "1MiBs", "-1M", "1.2.3M", "M", "1 GB extra", "NaN", "1e400"} {
		if got, err := parseBytes(in); err == nil {
			t.Errorf("parseBytes(%q) = %d, want an error", in, got)
		}
	}
}

func TestParseCPUs(t *testing.T) {
	good := map[string]int64{"0.5": 500_000_000, "2": 2_000_000_000, "0.001": 1_000_000, "1.25": 1_250_000_000, "0": 0, "0.000000001": 1}
	for in, want := range good {
		if got, err := parseCPUs(in); err != nil || got != want {
			t.Errorf("parseCPUs(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "half", "-1", "0.0000000001", "1e30"} {
		if got, err := parseCPUs(in); err == nil {
			t.Errorf("parseCPUs(%q) = %d, want an error", in, got)
		}
	}
}

func TestParsePublish(t *testing.T) {
	tcp, udp := pb.PortProtocol_PORT_PROTOCOL_TCP, pb.PortProtocol_PORT_PROTOCOL_UDP
	good := []struct {
		in   string
		want *pb.PortConfig
	}{
		{"8080:80", &pb.PortConfig{PublishedPort: 8080, TargetPort: 80, Protocol: tcp}},
		{"8080:80/tcp", &pb.PortConfig{PublishedPort: 8080, TargetPort: 80, Protocol: tcp}},
		{"5353:53/udp", &pb.PortConfig{PublishedPort: 5353, TargetPort: 53, Protocol: udp}},
		{"53/UDP", &pb.PortConfig{TargetPort: 53, Protocol: udp}},
		{"80", &pb.PortConfig{TargetPort: 80}},
		{"0:80", &pb.PortConfig{TargetPort: 80}},
		{"published=8080,target=80", &pb.PortConfig{PublishedPort: 8080, TargetPort: 80}},
		{"target=80,published=8080,protocol=udp,mode=host", &pb.PortConfig{PublishedPort: 8080, TargetPort: 80, Protocol: udp, PublishMode: pb.PublishMode_PUBLISH_MODE_HOST}},
		{"published=8080,target=80,mode=ingress", &pb.PortConfig{PublishedPort: 8080, TargetPort: 80}},
		{"target=80,name=http", &pb.PortConfig{TargetPort: 80, Name: "http"}},
		{"published=8080,target=80,local=true,proxy-protocol=1", &pb.PortConfig{PublishedPort: 8080, TargetPort: 80, Local: true, ProxyProtocol: true}},
		{"target=80,proxy-protocol=true", &pb.PortConfig{TargetPort: 80, ProxyProtocol: true}},
	}
	for _, tt := range good {
		got, err := parsePublish("--publish", tt.in)
		if err != nil || !proto.Equal(got, tt.want) {
			t.Errorf("parsePublish(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"", "web", ":80", "8080:", "8080:0", "0", "65536:80", "8080:80:90", "1.2.3.4:8080:80", "8080-8090:80",
		"8080:80/sctp", "8080:80/", "published=8080", "target=0", "target=80,protocol=icmp", "target=80,mode=", "target=80,published", "target=x",
		"published=8080,target=80,local=maybe", "target=80,local=true", "published=8080,target=80,mode=host,local=true"} {
		if got, err := parsePublish("--publish", in); err == nil {
			t.Errorf("parsePublish(%q) = %v, want an error", in, got)
		}
	}
}

func TestParseMount(t *testing.T) {
	got, err := parseMount("--mount", "type=bind,src=/a,dst=/b/,readonly=true")
	want := &pb.Mount{Type: pb.MountType_MOUNT_TYPE_BIND, Source: "/a", Target: "/b", ReadOnly: true}
	if err != nil || !proto.Equal(got, want) {
		t.Errorf("parseMount = %v, %v; want %v", got, err, want)
	}
	for _, in := range []string{"", "target=/x,readonly=maybe", "type=bind,source=rel,target=/x", "source=v", "type=tmpfs,source=x,target=/t", "foo"} {
		if m, err := parseMount("--mount", in); err == nil {
			t.Errorf("parseMount(%q) = %v, want an error", in, m)
		}
	}
}

func TestParseSplitArgs(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  ", nil},
		{"-c 'echo hi'", []string{"-c", "echo hi"}},
		{`a "b c" d\ e`, []string{"a", "b c", "d e"}},
		{`"say \"hi\"" ''`, []string{`say "hi"`, ""}},
		{`x'y'"z"`, []string{"xyz"}},
	}
	for _, tt := range tests {
		got, err := splitArgs(tt.in)
		if err != nil || strings.Join(got, "|") != strings.Join(tt.want, "|") || len(got) != len(tt.want) {
			t.Errorf("splitArgs(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{`'open`, `"open`, `end\`} {
		if got, err := splitArgs(in); err == nil {
			t.Errorf("splitArgs(%q) = %q, want an error", in, got)
		}
	}
}

func TestParseScaleArgs(t *testing.T) {
	got, err := parseScaleArgs([]string{"web=5", "api=0"})
	if err != nil || len(got) != 2 || got[0] != (scaleTarget{"web", 5}) || got[1] != (scaleTarget{"api", 0}) {
		t.Errorf("parseScaleArgs = %v, %v", got, err)
	}
	for _, bad := range [][]string{nil, {"web"}, {"web="}, {"=3"}, {"web=x"}, {"web=-1"}, {"web=100001"}} {
		if _, err := parseScaleArgs(bad); err == nil {
			t.Errorf("parseScaleArgs(%q): no error", bad)
		}
	}
	global := &pb.ServiceSpec{Annotations: &pb.Annotations{Name: "web"}, Mode: &pb.ServiceSpec_Global{Global: &pb.GlobalService{}}}
	err = scaleSpec(global, 3)
	if err == nil || err.Error() != "scale: service web is global (one task on every eligible node); only replicated services and replicated jobs can be scaled" {
		t.Errorf("scaleSpec(global) = %v", err)
	}
	gjob := &pb.ServiceSpec{Annotations: &pb.Annotations{Name: "once"}, Mode: &pb.ServiceSpec_GlobalJob{GlobalJob: &pb.GlobalJob{}}}
	if err = scaleSpec(gjob, 3); err == nil || !strings.Contains(err.Error(), "scale: service once is global job (one task on every eligible node)") {
		t.Errorf("scaleSpec(global job) = %v", err)
	}
	rjob := jobBaseSpec("/bin/app")
	rjob.Annotations.Name = "batch"
	rjob.Mode = &pb.ServiceSpec_ReplicatedJob{ReplicatedJob: &pb.ReplicatedJob{MaxConcurrent: 2, TotalCompletions: 4}}
	if err := scaleSpec(rjob, 9); err != nil || rjob.GetReplicatedJob().GetTotalCompletions() != 9 {
		t.Errorf("scaleSpec(replicated job) = %v, completions %d", err, rjob.GetReplicatedJob().GetTotalCompletions())
	}
	if err := scaleSpec(rjob, 0); err == nil || !strings.Contains(err.Error(), "scale: batch=0: a replicated job needs at least one completion") {
		t.Errorf("scaleSpec(replicated job, 0) = %v", err)
	}
	rep := baseSpec("/bin/app")
	if err := scaleSpec(rep, 7); err != nil || rep.GetReplicated().GetReplicas() != 7 {
		t.Errorf("scaleSpec(replicated) = %v, replicas %d", err, rep.GetReplicated().GetReplicas())
	}
}

// existingSpec is a service as GetService might return it.
func existingSpec() *pb.ServiceSpec {
	s := docker(baseSpec("shoal/hello:v1", "--port", "80"))
	s.Annotations.Name = "web"
	s.Annotations.Labels = map[string]string{"team": "a"}
	s.Mode = &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: 3}}
	s.Task.Container.Env = []string{"A=1", "C=3"}
	s.Task.Container.Healthcheck = &pb.HealthCheck{Command: []string{"/bin/sh", "-c", "true"}, Interval: int64(time.Second)}
	s.Task.Container.Mounts = []*pb.Mount{{Type: pb.MountType_MOUNT_TYPE_VOLUME, Source: "data", Target: "/data"}}
	s.Task.Placement = &pb.Placement{Constraints: []string{"node.role==worker"}}
	s.Task.Resources = &pb.ResourceRequirements{Reservations: &pb.Resources{NanoCpus: 1e8, MemoryBytes: 64 << 20}}
	s.Endpoint = &pb.EndpointSpec{Ports: []*pb.PortConfig{{PublishedPort: 8080, TargetPort: 80}}}
	return s
}

func TestServiceUpdateFlagsApply(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		change func(s *pb.ServiceSpec) // from existingSpec to the expected spec
	}{
		{"image", []string{"--image", "shoal/hello:v2"}, func(s *pb.ServiceSpec) { s.Task.Container.Image = "shoal/hello:v2" }},
		{"args", []string{"--args", "--port 81 --name 'a b'"}, func(s *pb.ServiceSpec) { s.Task.Container.Args = []string{"--port", "81", "--name", "a b"} }},
		{"clear args", []string{"--args", ""}, func(s *pb.ServiceSpec) { s.Task.Container.Args = nil }},
		{"replicas", []string{"--replicas", "5"}, func(s *pb.ServiceSpec) { s.GetReplicated().Replicas = 5 }},
		{"env", []string{"--env-add", "A=2", "--env-add", "B=1", "--env-rm", "C"}, func(s *pb.ServiceSpec) { s.Task.Container.Env = []string{"A=2", "B=1"} }},
		{"labels", []string{"--label-add", "tier=front", "--label-rm", "team", "--container-label-add", "x=y"}, func(s *pb.ServiceSpec) {
			s.Annotations.Labels = map[string]string{"tier": "front"}
			s.Task.Container.Labels = map[string]string{"x": "y"}
		}},
		{"mounts", []string{"--mount-rm", "/data", "--mount-add", "type=tmpfs,target=/tmp"}, func(s *pb.ServiceSpec) {
			s.Task.Container.Mounts = []*pb.Mount{{Type: pb.MountType_MOUNT_TYPE_TMPFS, Target: "/tmp"}}
		}},
		{"mount replaced at the same target", []string{"--mount-add", "type=volume,source=other,target=/data"}, func(s *pb.ServiceSpec) {
			s.Task.Container.Mounts[0].Source = "other"
		}},
		{"constraints", []string{"--constraint-rm", "node.role == worker", "--constraint-add", "node.labels.zone==a", "--constraint-add", "node.labels.zone==a"}, func(s *pb.ServiceSpec) {
			s.Task.Placement.Constraints = []string{"node.labels.zone==a"}
		}},
		{"last constraint removed", []string{"--constraint-rm", "node.role==worker"}, func(s *pb.ServiceSpec) { s.Task.Placement = &pb.Placement{} }},
		{"placement prefs", []string{"--placement-pref-add", "spread=node.labels.zone", "--max-replicas-per-node", "2"}, func(s *pb.ServiceSpec) {
			s.Task.Placement.Preferences = []*pb.PlacementPreference{{SpreadDescriptor: "node.labels.zone"}}
			s.Task.Placement.MaxReplicas = 2
		}},
		{"publish add and rm by target", []string{"--publish-rm", "80", "--publish-add", "9090:90/udp"}, func(s *pb.ServiceSpec) {
			s.Endpoint.Ports = []*pb.PortConfig{{PublishedPort: 9090, TargetPort: 90, Protocol: pb.PortProtocol_PORT_PROTOCOL_UDP}}
		}},
		{"publish rm by published:target", []string{"--publish-rm", "8080:80/tcp"}, func(s *pb.ServiceSpec) { s.Endpoint.Ports = nil }},
		{"publish again replaces", []string{"--publish-add", "8081:80"}, func(s *pb.ServiceSpec) {
			s.Endpoint.Ports = []*pb.PortConfig{{PublishedPort: 8081, TargetPort: 80}}
		}},
		{"resources", []string{"--reserve-memory", "0", "--limit-memory", "1GiB", "--limit-cpu", "1.5"}, func(s *pb.ServiceSpec) {
			s.Task.Resources = &pb.ResourceRequirements{Reservations: &pb.Resources{NanoCpus: 1e8}, Limits: &pb.Resources{NanoCpus: 1_500_000_000, MemoryBytes: 1 << 30}}
		}},
		{"all reservations cleared", []string{"--reserve-memory", "0", "--reserve-cpu", "0"}, func(s *pb.ServiceSpec) { s.Task.Resources = nil }},
		{"restart", []string{"--restart-max-attempts", "3"}, func(s *pb.ServiceSpec) { s.Task.Restart.MaxAttempts = 3 }},
		{"restart on a spec without one", []string{"--restart-condition", "on-failure"}, func(s *pb.ServiceSpec) {
			s.Task.Restart.Condition = pb.RestartCondition_RESTART_CONDITION_ON_FAILURE
		}},
		{"health probe replaced, timings kept", []string{"--health-http", "/ready", "--health-retries", "5"}, func(s *pb.ServiceSpec) {
			s.Task.Container.Healthcheck = &pb.HealthCheck{HttpGet: "/ready", Interval: int64(time.Second), Retries: 5}
		}},
		{"health timing only", []string{"--health-timeout", "3s"}, func(s *pb.ServiceSpec) { s.Task.Container.Healthcheck.Timeout = int64(3 * time.Second) }},
		{"no healthcheck", []string{"--no-healthcheck"}, func(s *pb.ServiceSpec) { s.Task.Container.Healthcheck = &pb.HealthCheck{Disable: true} }},
		{"update config", []string{"--update-parallelism", "2", "--update-order", "start-first"}, func(s *pb.ServiceSpec) {
			s.Update.Parallelism = 2
			s.Update.Order = pb.UpdateOrder_UPDATE_ORDER_START_FIRST
		}},
		{"rollback config", []string{"--rollback-monitor", "1m", "--rollback-failure-action", "continue"}, func(s *pb.ServiceSpec) {
			s.Rollback.Monitor = int64(time.Minute)
			s.Rollback.FailureAction = pb.UpdateFailureAction_UPDATE_FAILURE_ACTION_CONTINUE
		}},
		{"force", []string{"--force"}, func(s *pb.ServiceSpec) { s.Task.ForceUpdate = 1 }},
		{"workdir, user, grace", []string{"--workdir", "/srv", "--user", "1000", "--stop-grace-period", "1m"}, func(s *pb.ServiceSpec) {
			s.Task.Container.Dir, s.Task.Container.User = "/srv", "1000"
			s.Task.Container.StopGracePeriod = int64(time.Minute)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := updateSpec(existingSpec(), tt.args...)
			if err != nil {
				t.Fatalf("update %q: %v", tt.args, err)
			}
			want := existingSpec()
			tt.change(want)
			if !proto.Equal(got, want) {
				t.Errorf("update %q\n got: %s\nwant: %s", tt.args, text(got), text(want))
			}
		})
	}

	// A spec without the optional parts keeps them absent.
	bare := baseSpec("/bin/app")
	bare.Task.Restart, bare.Update = nil, nil
	got, err := updateSpec(bare, "--restart-delay", "1s", "--update-delay", "2s", "--env-add", "A=1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Task.Placement != nil || got.Endpoint != nil {
		t.Errorf("placement %v, endpoint %v: want both absent", got.Task.Placement, got.Endpoint)
	}
	if want := (&pb.RestartPolicy{Delay: int64(time.Second)}); !proto.Equal(got.Task.Restart, want) {
		t.Errorf("restart %v, want %v (defaults, then the flag)", got.Task.Restart, want)
	}
	if want := (&pb.UpdateConfig{Parallelism: 1, Monitor: int64(5 * time.Second), Delay: int64(2 * time.Second)}); !proto.Equal(got.Update, want) {
		t.Errorf("update config %v, want %v", got.Update, want)
	}
}

func TestServiceUpdateFlagErrors(t *testing.T) {
	global := existingSpec()
	global.Mode = &pb.ServiceSpec_Global{Global: &pb.GlobalService{}}
	process := baseSpec("/bin/app")
	job := jobBaseSpec("/bin/app")
	job.Mode = &pb.ServiceSpec_GlobalJob{GlobalJob: &pb.GlobalJob{}}
	tests := []struct {
		name string
		spec *pb.ServiceSpec
		args []string
		want string
	}{
		{"replicas of a global service", global, []string{"--replicas", "3"}, "--replicas: service web is global; only replicated services have replicas"},
		{"negative replicas", existingSpec(), []string{"--replicas", "-3"}, "--replicas -3"},
		{"relative image, process runtime", process, []string{"--image", "app"}, "give its absolute path"},
		{"path image, docker runtime", existingSpec(), []string{"--image", "/bin/app"}, "is a path"},
		{"env-rm of a missing variable", existingSpec(), []string{"--env-rm", "NOPE"}, "--env-rm NOPE: the service has no such environment variable"},
		{"label-rm of a missing label", existingSpec(), []string{"--label-rm", "nope"}, "--label-rm nope"},
		{"constraint-rm of a missing constraint", existingSpec(), []string{"--constraint-rm", "node.role==manager"}, "no such constraint"},
		{"bad constraint-add", existingSpec(), []string{"--constraint-add", "zone=a"}, "use KEY==VALUE"},
		{"publish-rm of a port not published", existingSpec(), []string{"--publish-rm", "81"}, "publishes no such port"},
		{"publish-rm long form", existingSpec(), []string{"--publish-rm", "target=80"}, "use TARGET[/udp]"},
		{"publish clash", existingSpec(), []string{"--publish-add", "8080:81"}, ""}, // replaced: not an error
		{"mount-rm missing", existingSpec(), []string{"--mount-rm", "/nope"}, "no mount at that target"},
		{"update order", existingSpec(), []string{"--update-order", "sideways"}, "use stop-first or start-first"},
		{"mounts on process runtime", process, []string{"--mount-add", "type=tmpfs,target=/t"}, "does not support mounts"},
		{"reservation above the existing limit", existingSpec(), []string{"--limit-cpu", "0.05"}, "the CPU reservation (0.1) is more than the CPU limit (0.05)"},
		{"max concurrent on a service", existingSpec(), []string{"--max-concurrent", "2"}, "not a replicated job"},
		{"max concurrent on a global job", job, []string{"--max-concurrent", "2"}, "not a replicated job"},
		{"update flags on a job", job, []string{"--update-delay", "1s", "--rollback-monitor", "1s"}, "--rollback-monitor, --update-delay: a job (global job) has no rolling update or rollback"},
		{"replicas of a global job", job, []string{"--replicas", "3"}, "only replicated services have replicas"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := updateSpec(tt.spec, tt.args...)
			if tt.want == "" {
				if err != nil {
					t.Errorf("update %q: %v", tt.args, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("update %q: error %v, want it to contain %q", tt.args, err, tt.want)
			}
		})
	}

	// A service made some other way, that create would refuse, can still
	// get changes that do not touch what is odd about it.
	odd := baseSpec("app")
	odd.Task.Container.Mounts = []*pb.Mount{{Type: pb.MountType_MOUNT_TYPE_TMPFS, Target: "/t"}}
	odd.Task.Resources = &pb.ResourceRequirements{Limits: &pb.Resources{MemoryBytes: 1}, Reservations: &pb.Resources{MemoryBytes: 2}}
	if _, err := updateSpec(odd, "--env-add", "A=1", "--replicas", "2"); err != nil {
		t.Errorf("update of an odd service: %v", err)
	}
	if _, err := updateSpec(odd, "--reserve-memory", "2M"); err == nil || !strings.Contains(err.Error(), "more than the memory limit") {
		t.Errorf("update of an odd service's resources: %v", err)
	}
	// update's messages do not suggest create's flags.
	if _, err := updateSpec(existingSpec(), "--image", "/bin/app"); err == nil || err.Error() != `--image "/bin/app" is a path, not a container image` {
		t.Errorf("--image path on docker: %v", err)
	}

	// Only client flags and --detach: nothing to update.
	var o updateOptions
	g := &globalFlags{}
	root := &cobra.Command{Use: "shoal"}
	g.register(root.PersistentFlags())
	cmd := serviceUpdateCommand(g, &o)
	root.AddCommand(cmd)
	if _, err := parseArgs(cmd, []string{"--detach", "--timeout", "5s", "--host", "x", "web"}); err != nil {
		t.Fatal(err)
	}
	o.set = changedFlags(cmd)
	if o.changes() {
		t.Errorf("changes() = true with only --detach, --timeout and --host")
	}
}

// ---------------------------------------------------------------- rendering

var (
	testNow = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	nodeMap = map[string]string{"n1aaaaaaaaaaaaaaaaaaaaaaa": "w1", "n2bbbbbbbbbbbbbbbbbbbbbbb": "w2"}
)

func ago_(d time.Duration) int64 { return testNow.Add(-d).UnixNano() }

func task(id string, slot uint64, node string, desired, state pb.TaskState, created time.Duration) *pb.Task {
	return &pb.Task{
		Id: id, ServiceId: "svc1", ServiceName: "web", Slot: slot, NodeId: node,
		Meta:         &pb.Meta{CreatedAt: ago_(created)},
		Spec:         &pb.TaskSpec{Container: &pb.ContainerSpec{Image: "shoal/hello:v1"}},
		SpecVersion:  1,
		DesiredState: desired,
		Status:       &pb.TaskStatus{State: state, Timestamp: ago_(created)},
	}
}

const (
	running  = pb.TaskState_TASK_STATE_RUNNING
	shutdown = pb.TaskState_TASK_STATE_SHUTDOWN
	failed   = pb.TaskState_TASK_STATE_FAILED
	pending  = pb.TaskState_TASK_STATE_PENDING
)

func TestRenderTaskList(t *testing.T) {
	cur := task("t1currentaaaaaaaaaaaaaaaa", 1, "n1aaaaaaaaaaaaaaaaaaaaaaa", running, running, 5*time.Second)
	cur.Status.Ports = []*pb.PortBinding{{TargetPort: 80, HostPort: 30001}}
	old := task("t1oldbbbbbbbbbbbbbbbbbbbb", 1, "n1aaaaaaaaaaaaaaaaaaaaaaa", shutdown, failed, 2*time.Minute)
	old.Status.Err = "task: non-zero exit (1): the program could not open its config file"
	older := task("t1olderccccccccccccccccccc", 1, "n2bbbbbbbbbbbbbbbbbbbbbbb", shutdown, shutdown, 3*time.Hour)
	pend := task("t2pendingddddddddddddddddd", 2, "", running, pending, 2*time.Minute)
	pend.PendingReason = "no node has 4 CPUs free"
	gone := task("t3goneeeeeeeeeeeeeeeeeeeeee", 3, "nXunknownnodeidxxxxxxxxxx", running, pb.TaskState_TASK_STATE_STARTING, 0)
	gone.Status.Timestamp = 0
	tasks := []*pb.Task{pend, older, cur, gone, old}
	sortTasks(tasks)

	var b bytes.Buffer
	renderTaskList(&b, tasks, nodeMap, false, testNow)
	want := `ID             NAME        IMAGE            NODE           DESIRED STATE   CURRENT STATE           ERROR                             PORTS
t1currentaaa   web.1       shoal/hello:v1   w1             Running         Running 5 seconds ago                                     *:30001->80/tcp
t1oldbbbbbbb    \_ web.1   shoal/hello:v1   w1             Shutdown        Failed 2 minutes ago    "task: non-zero exit (1): the…"
t1olderccccc    \_ web.1   shoal/hello:v1   w2             Shutdown        Shutdown 3 hours ago
t2pendingddd   web.2       shoal/hello:v1                  Running         Pending 2 minutes ago   "no node has 4 CPUs free"
t3goneeeeeee   web.3       shoal/hello:v1   nXunknownnod   Running         Starting
`
	if got := b.String(); got != want {
		t.Errorf("renderTaskList:\n%s\nwant:\n%s", got, want)
	}

	b.Reset()
	renderTaskList(&b, tasks[1:2], nodeMap, true, testNow)
	if !strings.Contains(b.String(), `"`+old.Status.Err+`"`) || !strings.Contains(b.String(), old.Id) {
		t.Errorf("--no-trunc output lacks the full ID or error:\n%s", b.String())
	}
}

func TestRenderTaskListGlobal(t *testing.T) {
	a := task("ta", 0, "n2bbbbbbbbbbbbbbbbbbbbbbb", running, running, time.Minute)
	b := task("tb", 0, "n1aaaaaaaaaaaaaaaaaaaaaaa", running, running, time.Hour)
	c := task("tc", 0, "n1aaaaaaaaaaaaaaaaaaaaaaa", shutdown, failed, 2*time.Hour)
	tasks := []*pb.Task{a, c, b}
	sortTasks(tasks)
	var out bytes.Buffer
	renderTaskList(&out, tasks, nodeMap, false, testNow)
	lines := strings.Split(out.String(), "\n")
	for i, want := range []string{"tb   web.n1aaaaaaaaaa ", `tc    \_ web.n1aaaaaaaaaa `, "ta   web.n2bbbbbbbbbb "} {
		if !strings.HasPrefix(lines[i+1], want) {
			t.Errorf("line %d = %q, want prefix %q", i+1, lines[i+1], want)
		}
	}
	if !strings.Contains(lines[1], "Running about an hour ago") {
		t.Errorf("line 1 = %q: want the state with its age", lines[1])
	}
}

func TestParseTaskFilters(t *testing.T) {
	tasks := []*pb.Task{
		task("t1", 1, "n1aaaaaaaaaaaaaaaaaaaaaaa", running, running, 0),
		task("t2", 1, "n2bbbbbbbbbbbbbbbbbbbbbbb", shutdown, failed, time.Minute),
		task("t3", 2, "n2bbbbbbbbbbbbbbbbbbbbbbb", running, running, 0),
	}
	tests := []struct {
		filters []string
		want    string
	}{
		{nil, "t1 t2 t3"},
		{[]string{"desired-state=running"}, "t1 t3"},
		{[]string{"desired-state=shutdown"}, "t2"},
		{[]string{"desired-state=running", "desired-state=shutdown"}, "t1 t2 t3"},
		{[]string{"node=w2"}, "t2 t3"},
		{[]string{"node=n1a"}, "t1"},
		{[]string{"node=w2", "desired-state=running"}, "t3"},
		{[]string{"name=web.1"}, "t1 t2"},
		{[]string{"id=t3"}, "t3"},
	}
	for _, tt := range tests {
		f, err := parseTaskFilters(tt.filters)
		if err != nil {
			t.Fatalf("%q: %v", tt.filters, err)
		}
		var got []string
		for _, task := range tasks {
			if f.match(task, nodeMap) {
				got = append(got, task.Id)
			}
		}
		if strings.Join(got, " ") != tt.want {
			t.Errorf("filter %q matched %q, want %q", tt.filters, got, tt.want)
		}
	}
	for _, bad := range []string{"desired-state", "desired-state=sleeping", "color=red", "node="} {
		if _, err := parseTaskFilters([]string{bad}); err == nil {
			t.Errorf("filter %q: no error", bad)
		}
	}
}

func TestRenderServiceList(t *testing.T) {
	web := &pb.Service{Id: "svcwebaaaaaaaaaaaaaaaaaaa", Spec: existingSpec()}
	web.Endpoint = &pb.Endpoint{Ports: []*pb.PortConfig{{PublishedPort: 8080, TargetPort: 80}, {PublishedPort: 5353, TargetPort: 53, Protocol: pb.PortProtocol_PORT_PROTOCOL_UDP}}}
	agent := &pb.Service{Id: "svcagentbbbbbbbbbbbbbbbbb", Spec: &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: "agent"},
		Task:        &pb.TaskSpec{Container: &pb.ContainerSpec{Image: "/usr/bin/agent"}},
		Mode:        &pb.ServiceSpec_Global{Global: &pb.GlobalService{}},
		Endpoint:    &pb.EndpointSpec{Ports: []*pb.PortConfig{{PublishedPort: 9100, TargetPort: 9100, PublishMode: pb.PublishMode_PUBLISH_MODE_HOST}}},
	}}
	spread := &pb.Service{Id: "svcspread", Spec: &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: "spread"},
		Task:        &pb.TaskSpec{Container: &pb.ContainerSpec{Image: "/bin/app"}, Placement: &pb.Placement{MaxReplicas: 1}},
		Mode:        &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: 2}},
	}}
	job := &pb.Service{Id: "svcjob", Spec: &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: "migrate"},
		Task:        &pb.TaskSpec{Container: &pb.ContainerSpec{Image: "/bin/migrate"}},
		Mode:        &pb.ServiceSpec_ReplicatedJob{ReplicatedJob: &pb.ReplicatedJob{MaxConcurrent: 2, TotalCompletions: 10}},
	}}
	services := []*pb.Service{web, spread, job, agent}
	sortServices(services)
	counts := []*pb.ServiceTaskCounts{
		{ServiceId: web.Id, Running: 2, Desired: 3},
		{ServiceId: agent.Id, Running: 4, Desired: 4},
		{ServiceId: job.Id, Running: 2, Desired: 2, Completed: 3},
	}
	var b bytes.Buffer
	renderServiceList(&b, services, counts)
	want := `ID             NAME      MODE             REPLICAS               IMAGE            PORTS
svcagentbbbb   agent     global           4/4                    /usr/bin/agent   *:9100->9100/tcp (host)
svcjob         migrate   replicated job   2/2 (3/10 completed)   /bin/migrate
svcspread      spread    replicated       0/2 (max 1 per node)   /bin/app
svcwebaaaaaa   web       replicated       2/3                    shoal/hello:v1   *:8080->80/tcp, *:5353->53/udp
`
	if got := b.String(); got != want {
		t.Errorf("renderServiceList:\n%s\nwant:\n%s", got, want)
	}
}

func TestRenderServicesJSON(t *testing.T) {
	var b bytes.Buffer
	services := []*pb.Service{{Id: "s1", Spec: &pb.ServiceSpec{Annotations: &pb.Annotations{Name: "web"}}}, {}}
	if err := printServicesJSON(&b, services, []*pb.ServiceTaskCounts{{ServiceId: "s1", Running: 1, Desired: 3}}); err != nil {
		t.Fatal(err)
	}
	var got []struct {
		ID   string `json:"id"`
		Spec struct {
			Annotations struct{ Name string }
		}
		TaskCounts struct {
			Running string `json:"running"`
			Desired string `json:"desired"`
		} `json:"task_counts"`
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("%v in:\n%s", err, b.String())
	}
	if len(got) != 2 || got[0].ID != "s1" || got[0].Spec.Annotations.Name != "web" || got[0].TaskCounts.Running != "1" || got[0].TaskCounts.Desired != "3" || got[1].TaskCounts.Running != "0" {
		t.Errorf("decoded %+v from:\n%s", got, b.String())
	}
}

func TestRenderServicePretty(t *testing.T) {
	svc := &pb.Service{
		Id: "svc1", Spec: existingSpec(), SpecVersion: 4,
		Meta:         &pb.Meta{CreatedAt: ago_(time.Hour), UpdatedAt: ago_(time.Minute)},
		UpdateStatus: &pb.UpdateStatus{State: pb.UpdateState_UPDATE_STATE_ROLLBACK_STARTED, StartedAt: ago_(30 * time.Second), Message: "update rolled back: task failed"},
	}
	var b bytes.Buffer
	renderServicePretty(&b, svc, testNow)
	out := regexp.MustCompile(`(\S) {2,}`).ReplaceAllString(b.String(), "$1 ")
	for _, want := range []string{
		"ID: svc1\n", "Name: web\n", "Service Mode: Replicated\n", " Replicas: 3\n",
		"UpdateStatus:\n", " State: rollback_started\n", " Started: 30 seconds ago\n", " Message: update rolled back: task failed\n",
		" Constraints: node.role==worker\n", " On failure: pause\n", " Order: stop-first\n",
		" Runtime: docker\n", " Image: shoal/hello:v1\n", " Args: --port 80\n",
		" volume: data -> /data\n", " Command: /bin/sh -c true\n", " CPU: 0.1\n", " Memory: 64.0MiB\n",
		" Condition: any\n", "Endpoint Mode: vip\n", " PublishedPort = 8080\n", " TargetPort = 80\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect --pretty lacks %q:\n%s", want, out)
		}
	}
	// A job shows its iteration.
	job := proto.Clone(svc).(*pb.Service)
	job.UpdateStatus = nil
	job.Spec.Mode = &pb.ServiceSpec_ReplicatedJob{ReplicatedJob: &pb.ReplicatedJob{MaxConcurrent: 2, TotalCompletions: 10}}
	job.JobStatus = &pb.JobStatus{JobIteration: 3, LastExecution: ago_(2 * time.Minute)}
	b.Reset()
	renderServicePretty(&b, job, testNow)
	out = regexp.MustCompile(`(\S) {2,}`).ReplaceAllString(b.String(), "$1 ")
	for _, want := range []string{"Service Mode: Replicated job\n", " Max concurrent: 2\n", " Total completions: 10\n",
		"JobStatus:\n", " Iteration: 3\n", " Last execution: 2 minutes ago\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect --pretty of a job lacks %q:\n%s", want, out)
		}
	}
	for state, word := range map[pb.UpdateState]string{
		pb.UpdateState_UPDATE_STATE_UPDATING: "updating", pb.UpdateState_UPDATE_STATE_PAUSED: "paused",
		pb.UpdateState_UPDATE_STATE_COMPLETED: "completed", pb.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED: "rollback_completed",
	} {
		if got := updateStateWord(state); got != word {
			t.Errorf("updateStateWord(%v) = %q, want %q", state, got, word)
		}
	}
}

func TestRenderLogLines(t *testing.T) {
	var b bytes.Buffer
	p := &logPrinter{w: &b, nodes: nodeMap}
	lines := []*pb.LogLine{
		{TaskId: "abcdef123456789", NodeId: "n1aaaaaaaaaaaaaaaaaaaaaaa", Slot: 1, ServiceName: "web", Data: []byte("hello\n")},
		{TaskId: "bcdef1234567890", NodeId: "nZzzzzzzzzzzzzzzzzzzzzzzz", Slot: 10, ServiceName: "web", Data: []byte("two\nlines")},
		{TaskId: "cdef", NodeId: "n2bbbbbbbbbbbbbbbbbbbbbbb", Slot: 0, ServiceName: "agent", Data: []byte("global")},
	}
	for _, l := range lines {
		if err := p.print(l); err != nil {
			t.Fatal(err)
		}
	}
	want := "web.1.abcdef123456@w1    | hello\n" +
		"web.10.bcdef1234567@nZzzzzzzzzzz    | two\n" +
		"web.10.bcdef1234567@nZzzzzzzzzzz    | lines\n" +
		"agent.n2bbbbbbbbbb.cdef@w2          | global\n"
	if b.String() != want {
		t.Errorf("logs:\n%q\nwant:\n%q", b.String(), want)
	}
	b.Reset()
	p = &logPrinter{w: &b, nodes: nodeMap, noTaskIDs: true}
	_ = p.print(lines[0])
	if b.String() != "web.1@w1    | hello\n" {
		t.Errorf("--no-task-ids: %q", b.String())
	}
	b.Reset()
	p = &logPrinter{w: &b, raw: true}
	_ = p.print(lines[1])
	if b.String() != "two\nlines\n" {
		t.Errorf("--raw: %q", b.String())
	}
	if n, err := parseTail("all"); n != 0 || err != nil {
		t.Errorf("parseTail(all) = %d, %v", n, err)
	}
	if n, err := parseTail("20"); n != 20 || err != nil {
		t.Errorf("parseTail(20) = %d, %v", n, err)
	}
	if _, err := parseTail("-1"); err == nil {
		t.Errorf("parseTail(-1): no error")
	}
}

func TestRenderHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "Less than a second", time.Second: "1 second", 5 * time.Second: "5 seconds", 70 * time.Second: "About a minute",
		2 * time.Minute: "2 minutes", 61 * time.Minute: "About an hour", 3 * time.Hour: "3 hours", 72 * time.Hour: "3 days",
		15 * 24 * time.Hour: "2 weeks", 90 * 24 * time.Hour: "3 months", 800 * 24 * time.Hour: "2 years",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

// TestRenderPullProgress: a task pulling its image shows the pull's
// progress with its state; images show without their digest unless
// --no-trunc, as Docker's do.
func TestRenderPullProgress(t *testing.T) {
	const pinned = "127.0.0.1:5000/shoal/hello:v1@sha256:5320539538ac033e00786e3c805faad191e197037505530ee2266523c5f33928"
	pulling := task("t1pullingaaaaaaaaaaaaaaaa", 1, "n1aaaaaaaaaaaaaaaaaaaaaaa", running, pb.TaskState_TASK_STATE_PREPARING, 3*time.Second)
	pulling.Status.Message = "pulling 3/5 layers"
	pulling.Spec.Container.Image = pinned
	preparing := task("t2preparingbbbbbbbbbbbbbbb", 2, "n1aaaaaaaaaaaaaaaaaaaaaaa", running, pb.TaskState_TASK_STATE_PREPARING, 3*time.Second)
	preparing.Status.Message = "preparing"
	tasks := []*pb.Task{pulling, preparing}
	for _, c := range []struct {
		noTrunc bool
		want    []string
	}{
		{false, []string{"127.0.0.1:5000/shoal/hello:v1 ", "Preparing 3 seconds ago (pulling 3/5 layers)", "Preparing 3 seconds ago\n"}},
		{true, []string{pinned}},
	} {
		var b bytes.Buffer
		renderTaskList(&b, tasks, nodeMap, c.noTrunc, testNow)
		for _, w := range c.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("no-trunc=%v: output lacks %q:\n%s", c.noTrunc, w, b.String())
			}
		}
		if !c.noTrunc && strings.Contains(b.String(), "sha256:") {
			t.Errorf("the digest shows without --no-trunc:\n%s", b.String())
		}
	}
}

// jobBaseSpec is what create makes of a job: baseSpec with Docker's job
// defaults (restart on failure, no update or rollback config).
func jobBaseSpec(image string) *pb.ServiceSpec {
	s := baseSpec(image)
	s.Update, s.Rollback = nil, nil
	s.Task.Restart.Condition = pb.RestartCondition_RESTART_CONDITION_ON_FAILURE
	return s
}
