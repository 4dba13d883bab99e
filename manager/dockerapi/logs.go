package dockerapi

import (
	"encoding/binary"
	"net/http"
	"strconv"
	"strings"
	"sync"

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
	if boolQuery(r, "timestamps") {
		return badRequest("Shoal's task logs carry no timestamps: leave out --timestamps")
	}
	if v := q.Get("since"); v != "" && v != "0" {
		return badRequest("Shoal's task logs carry no timestamps, so --since cannot select lines: use --tail")
	}
	if v := q.Get("until"); v != "" && v != "0" {
		return badRequest("Shoal's task logs carry no timestamps, so --until cannot select lines: use --tail")
	}
	req := &pb.ServiceLogsRequest{Ref: ref, Follow: boolQuery(r, "follow")}
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
