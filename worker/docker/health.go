package docker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	pb "github.com/shoal-cluster/shoal/proto"
)

// maxProbeOutput is how much of a health command's output is kept.
const maxProbeOutput = 512

// ProbeCommand runs a health command inside the task's container (docker
// exec) and returns its exit code and output. The agent uses it for a
// service's command health check.
func (r *Runtime) ProbeCommand(ctx context.Context, taskID string, argv []string, timeout time.Duration) (int, string, error) {
	if len(argv) == 0 {
		return -1, "", fmt.Errorf("health check of task %s: empty command", taskID)
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	id, err := r.containerID(ctx, taskID)
	if err != nil {
		return -1, "", err
	}
	ex, err := r.cli.ExecCreate(ctx, id, client.ExecCreateOptions{Cmd: argv, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return -1, "", engineError(taskID, "health check of", err)
	}
	att, err := r.cli.ExecAttach(ctx, ex.ID, client.ExecAttachOptions{})
	if err != nil {
		return -1, "", engineError(taskID, "health check of", err)
	}
	defer att.Close()
	stop := context.AfterFunc(ctx, func() { att.Close() }) // unblock the read
	defer stop()
	var out bytes.Buffer
	_, err = stdcopy.StdCopy(&limitedBuffer{&out, maxProbeOutput}, &limitedBuffer{&out, maxProbeOutput}, att.Reader)
	if ctx.Err() != nil {
		return -1, out.String(), fmt.Errorf("health command %q timed out after %s", strings.Join(argv, " "), timeout)
	}
	if err != nil && err != io.EOF {
		return -1, out.String(), fmt.Errorf("health check of task %s: read output: %w", taskID, err)
	}
	// The output ends when the command does; its exit code follows shortly.
	for {
		res, err := r.cli.ExecInspect(ctx, ex.ID, client.ExecInspectOptions{})
		if err != nil {
			if ctx.Err() != nil {
				return -1, out.String(), fmt.Errorf("health command %q timed out after %s", strings.Join(argv, " "), timeout)
			}
			return -1, out.String(), fmt.Errorf("health check of task %s: %w", taskID, err)
		}
		if !res.Running {
			return res.ExitCode, out.String(), nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// limitedBuffer keeps the first n bytes written to it and drops the rest.
type limitedBuffer struct {
	b *bytes.Buffer
	n int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.n - l.b.Len(); room > 0 {
		l.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// Health reports the Engine's view of the container's own health check
// (the image's HEALTHCHECK, or the service's command): NONE when the
// container has none.
func (r *Runtime) Health(ctx context.Context, taskID string) (pb.HealthState, string, error) {
	c, err := r.inspect(ctx, taskID)
	if err != nil {
		return pb.HealthState_HEALTH_STATE_NONE, "", err
	}
	if c.State == nil || c.State.Health == nil {
		return pb.HealthState_HEALTH_STATE_NONE, "", nil
	}
	h := c.State.Health
	out := ""
	if n := len(h.Log); n > 0 && h.Log[n-1] != nil {
		last := h.Log[n-1]
		out = strings.TrimSpace(last.Output)
		if last.ExitCode != 0 {
			msg := fmt.Sprintf("the container's health check exited with %d (%d failures in a row)", last.ExitCode, h.FailingStreak)
			if out != "" {
				msg += ": " + out
			}
			out = msg
		}
	}
	switch h.Status {
	case container.Healthy:
		return pb.HealthState_HEALTH_STATE_HEALTHY, out, nil
	case container.Unhealthy:
		return pb.HealthState_HEALTH_STATE_UNHEALTHY, out, nil
	case container.Starting:
		return pb.HealthState_HEALTH_STATE_STARTING, out, nil
	}
	return pb.HealthState_HEALTH_STATE_NONE, out, nil
}
