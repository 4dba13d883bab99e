package dockerapi

import (
	"encoding/binary"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Stream numbers of Docker's multiplexed log framing.
const (
	streamStdout = 1
	streamStderr = 2
)

func (s *Server) serviceLogs(w http.ResponseWriter, r *http.Request) error {
	return s.logs(w, r, r.PathValue("id"), "")
}

func (s *Server) taskLogs(w http.ResponseWriter, r *http.Request) error {
	t, err := s.findTask(r, r.PathValue("id"))
	if err != nil {
		return err
	}
	return s.logs(w, r, t.GetServiceId(), t.GetId())
}

// logs streams a service's output (one task's, when taskID is set) in
// Docker's multiplexed framing: an 8-byte header [stream 0 0 0 size] per
// line, each line prefixed, with details=1, by the com.docker.swarm.*
// context the CLI needs to name the task it comes from.
func (s *Server) logs(w http.ResponseWriter, r *http.Request, ref, taskID string) error {
	q := r.URL.Query()
	if !boolQuery(r, "stdout") && !boolQuery(r, "stderr") {
		return badRequest("logs need stdout=1, stderr=1 or both")
	}
	req := &pb.ServiceLogsRequest{Ref: ref, Follow: boolQuery(r, "follow"), Timestamps: boolQuery(r, "timestamps")}
	for name, into := range map[string]*int64{"since": &req.Since, "until": &req.Until} {
		t, err := parseLogTime(q.Get(name))
		if err != nil {
			return badRequest("invalid %s %q: give a Unix time (seconds[.nanoseconds]) or an RFC 3339 time", name, q.Get(name))
		}
		*into = t
	}
	switch tail := q.Get("tail"); tail {
	case "", "all":
	default:
		n, err := strconv.Atoi(tail)
		if err != nil || n < 0 {
			return badRequest("invalid tail %q: give a number of lines or all", tail)
		}
		if n == 0 {
			w.Header().Set("Content-Type", "application/vnd.docker.multiplexed-stream")
			w.WriteHeader(http.StatusOK)
			return nil
		}
		req.Tail = int32(min(n, 1<<30))
	}
	ctx := r.Context()
	// Resolve the service first, so that an unknown one is a 404 before
	// the stream starts (the CLI falls back to task logs on it).
	svc, err := s.cfg.Control.GetService(ctx, &pb.GetServiceRequest{Ref: ref})
	if err != nil {
		return err
	}
	if svc.GetService().GetSpec().GetTask().GetContainer() == nil {
		return status.Error(codes.FailedPrecondition, "the service has no container spec")
	}
	// Refused before the stream starts, with a status the CLI shows.
	if rt := svc.GetService().GetSpec().GetTask().GetRuntime(); rt != "docker" && (req.Timestamps || req.Since != 0 || req.Until != 0) {
		return badRequest("service %s runs on the %s runtime, which keeps no times with its tasks' output: leave out --timestamps, --since and --until (--tail works)",
			svc.GetService().GetSpec().GetAnnotations().GetName(), rt)
	}
	req.Ref = svc.GetService().GetId()
	details := boolQuery(r, "details")
	stream := byte(streamStdout)
	if !boolQuery(r, "stdout") {
		stream = streamStderr
	}
	w.Header().Set("Content-Type", "application/vnd.docker.multiplexed-stream")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	var mu sync.Mutex
	send := func(l *pb.LogLine) error {
		if taskID != "" && l.GetTaskId() != taskID {
			return nil
		}
		var line strings.Builder
		if req.Timestamps {
			// Docker's fixed-width form, before the details: the CLI
			// finds the details as the second field then.
			line.WriteString(time.Unix(0, l.GetTimestamp()).UTC().Format(rfc3339NanoFixed) + " ")
		}
		if details {
			line.WriteString("com.docker.swarm.node.id=" + l.GetNodeId() +
				",com.docker.swarm.service.id=" + req.Ref +
				",com.docker.swarm.task.id=" + l.GetTaskId() + " ")
		}
		line.Write(l.GetData())
		line.WriteByte('\n')
		frame := make([]byte, 8, 8+line.Len())
		frame[0] = stream
		binary.BigEndian.PutUint32(frame[4:], uint32(line.Len()))
		frame = append(frame, line.String()...)
		mu.Lock()
		defer mu.Unlock()
		if _, err := w.Write(frame); err != nil {
			return err
		}
		if flusher != nil && req.Follow {
			flusher.Flush()
		}
		return nil
	}
	if err := s.cfg.Logs(ctx, req, send); err != nil && ctx.Err() == nil {
		// The status line is sent: the stream just ends. (Tasks whose
		// node cannot be reached have a line saying so in the stream.)
		s.log.Warn("docker API logs ended early", "service", req.Ref, "err", status.Convert(err).Message())
	}
	return nil
}

// isNotFound reports whether err is a "no such object".
func isNotFound(err error) bool { return status.Code(err) == codes.NotFound }

// rfc3339NanoFixed is the Engine's time format for log lines: RFC 3339
// with nanoseconds always nine digits.
const rfc3339NanoFixed = "2006-01-02T15:04:05.000000000Z07:00"

// parseLogTime reads a logs request's since or until: "" or "0" is none
// (0), else Unix seconds with optional nanoseconds ("1700000000.5", as
// the CLI sends them) or an RFC 3339 time. The result is Unix
// nanoseconds.
func parseLogTime(v string) (int64, error) {
	if v == "" || v == "0" {
		return 0, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t.UnixNano(), nil
	}
	secs, frac, _ := strings.Cut(v, ".")
	s, err := strconv.ParseInt(secs, 10, 64)
	if err != nil || s < 0 || s > 1<<33 {
		return 0, fmt.Errorf("invalid time %q", v)
	}
	var ns int64
	if frac != "" {
		if len(frac) > 9 {
			return 0, fmt.Errorf("invalid time %q", v)
		}
		n, err := strconv.ParseInt(frac+strings.Repeat("0", 9-len(frac)), 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("invalid time %q", v)
		}
		ns = n
	}
	return s*int64(time.Second) + ns, nil
}
