package main

// Service flags about health checks: how a task shows it can serve. A
// task with a check counts as running, and joins the routing mesh, only
// once its check passes.

import (
	"math"
	"strings"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/pflag"
)

const healthProbeFlagsUsage = "--health-cmd, --health-http or --health-tcp"

// healthFlags are the --health-* flags and --no-healthcheck, the same on
// create and update.
type healthFlags struct {
	healthCmd      string
	healthHTTP     string
	healthTCP      int64
	healthInterval time.Duration
	healthTimeout  time.Duration
	healthStart    time.Duration
	healthRetries  int64
	noHealth       bool
}

func (f *healthFlags) registerCreate(fs *pflag.FlagSet) {
	fs.StringVar(&f.healthCmd, "health-cmd", "", "health check `command`, run with /bin/sh -c")
	fs.StringVar(&f.healthHTTP, "health-http", "", "health check: HTTP GET of this `path` (e.g. /healthz) on the task's first port")
	fs.Int64Var(&f.healthTCP, "health-tcp", 0, "health check: TCP connect to this `port`")
	fs.DurationVar(&f.healthInterval, "health-interval", 0, "time between health checks")
	fs.DurationVar(&f.healthTimeout, "health-timeout", 0, "how long one health check may take")
	fs.DurationVar(&f.healthStart, "health-start-period", 0, "grace period before failed checks count")
	fs.Int64Var(&f.healthRetries, "health-retries", 0, "consecutive failures that make a task unhealthy")
	fs.BoolVar(&f.noHealth, "no-healthcheck", false, "disable any health check, the image's included")
}

func (f *healthFlags) registerUpdate(fs *pflag.FlagSet) { f.registerCreate(fs) }

func (f *healthFlags) create(spec *pb.ServiceSpec, set map[string]bool) error {
	return f.apply(spec, set)
}

func (f *healthFlags) update(spec *pb.ServiceSpec, set map[string]bool) error {
	return f.apply(spec, set)
}

func hasProbe(hc *pb.HealthCheck) bool {
	return len(hc.GetCommand()) > 0 || hc.GetHttpGet() != "" || hc.GetTcpSocket() != 0
}

func (f *healthFlags) apply(spec *pb.ServiceSpec, set map[string]bool) error {
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
