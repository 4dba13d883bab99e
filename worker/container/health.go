package container

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
)

var _ worker.HealthReporter = (*Runtime)(nil)

// healthRecord is an image's HEALTHCHECK as the runtime runs it.
type healthRecord struct {
	// Argv is the command (CMD), or ["/bin/sh", "-c", line] (CMD-SHELL).
	Argv        []string      `json:"argv"`
	Interval    time.Duration `json:"interval"`
	Timeout     time.Duration `json:"timeout"`
	StartPeriod time.Duration `json:"start_period"`
	Retries     int           `json:"retries"`
}

// imageHealthRecord is the image's own health check, or nil when it has
// none (or disables it).
func imageHealthRecord(img Image) *healthRecord {
	hc := img.Config.Healthcheck
	if hc == nil || len(hc.Test) == 0 {
		return nil
	}
	var argv []string
	switch hc.Test[0] {
	case "CMD":
		argv = hc.Test[1:]
	case "CMD-SHELL":
		if len(hc.Test) < 2 {
			return nil
		}
		argv = []string{"/bin/sh", "-c", hc.Test[1]}
	default: // NONE, or inherited ([]): no check
		return nil
	}
	if len(argv) == 0 {
		return nil
	}
	rec := &healthRecord{Argv: argv, Interval: hc.Interval, Timeout: hc.Timeout, StartPeriod: hc.StartPeriod, Retries: hc.Retries}
	if rec.Interval <= 0 {
		rec.Interval = 30 * time.Second // Docker's default
	}
	if rec.Timeout <= 0 {
		rec.Timeout = 30 * time.Second
	}
	if rec.Retries <= 0 {
		rec.Retries = 3
	}
	return rec
}

// imageHealth is where one task's image health check stands.
type imageHealth struct {
	started  time.Time
	next     time.Time
	failures int
	state    pb.HealthState
	output   string
}

// Health reports the task's health by its image's HEALTHCHECK, as the
// Docker Engine would: STARTING until a probe passes, HEALTHY, and
// UNHEALTHY after Retries consecutive failures (failures in the start
// period do not count). The probes run (runc exec) as the agent asks, at
// most once per interval; a task whose image has no check reports NONE.
func (r *Runtime) Health(ctx context.Context, id string) (pb.HealthState, string, error) {
	if !r.prepared(id) {
		return pb.HealthState_HEALTH_STATE_NONE, "", notFound(id)
	}
	var rec taskRecord
	if _, err := readJSON(filepath.Join(r.bundles, id), taskFile, &rec); err != nil {
		return pb.HealthState_HEALTH_STATE_NONE, "", err
	}
	hc := rec.HealthCheck
	if hc == nil {
		return pb.HealthState_HEALTH_STATE_NONE, "", nil
	}
	info, err := r.inner.Inspect(ctx, id)
	if err != nil {
		return pb.HealthState_HEALTH_STATE_NONE, "", r.mapErr(id, err)
	}
	r.healthMu.Lock()
	h := r.health[id]
	if h == nil {
		h = &imageHealth{started: time.Now(), state: pb.HealthState_HEALTH_STATE_STARTING}
		r.health[id] = h
	}
	due := info.State == worker.RunRunning && !time.Now().Before(h.next)
	if due {
		h.next = time.Now().Add(hc.Interval)
	}
	state, out := h.state, h.output
	r.healthMu.Unlock()
	if !due {
		return state, out, nil
	}

	code, out, err := r.ProbeCommand(ctx, id, hc.Argv, hc.Timeout)
	if ctx.Err() != nil {
		return state, out, ctx.Err()
	}
	if err == nil && code != 0 {
		err = fmt.Errorf("health command exited with %d: %s", code, out)
	}
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	switch {
	case err == nil:
		h.failures, h.state, h.output = 0, pb.HealthState_HEALTH_STATE_HEALTHY, out
	case time.Since(h.started) >= hc.StartPeriod || h.state == pb.HealthState_HEALTH_STATE_HEALTHY:
		h.failures++
		h.output = err.Error()
		if h.failures >= hc.Retries {
			h.state = pb.HealthState_HEALTH_STATE_UNHEALTHY
		}
	}
	return h.state, h.output, nil
}
