package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
)

// logTail is how many lines of each task's output a log view starts with.
const logTail = 200

// LogLineView is one line of a service's output with the prefix
// `service logs` gives it: web.1.abcdef123456@w1.
type LogLineView struct {
	Prefix string `json:"prefix"`
	Line   string `json:"line"`
}

// logs follows a service's output (ServiceLogs with follow) as
// server-sent events: "lines" with a batch of lines, "note" when the
// stream moved to another manager or ended.
func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	id := r.PathValue("id")
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(event string, v any) {
		b, _ := json.Marshal(v)
		fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
		flusher.Flush()
	}
	ctx := r.Context()
	tail := int32(logTail)
	for ctx.Err() == nil {
		addr, err := s.followLogs(ctx, id, tail, send)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			send("note", "the service's output ended")
			return
		}
		if !movesOn(err) {
			_, text := httpError(err)
			send("note", text)
			return
		}
		send("note", fmt.Sprintf("lost the log stream from %s; reconnecting", addr))
		// Lines from before the break may show again: a few, to see the
		// context, rather than all.
		tail = 10
		select {
		case <-ctx.Done():
			return
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// followLogs streams one manager's view of the service's output, sending
// lines in batches of up to 100 ms.
func (s *Server) followLogs(ctx context.Context, id string, tail int32, send func(string, any)) (string, error) {
	// The manager the other calls go through: when it dies they move on,
	// and the next attempt here follows.
	addr := s.mgrs.order()[0]
	c, err := s.mgrs.client(addr)
	if err != nil {
		return addr, err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.ServiceLogs(sctx, &pb.ServiceLogsRequest{Ref: id, Follow: true, Tail: tail})
	if err != nil {
		return addr, err
	}
	lines := make(chan *pb.LogLine, 256)
	errc := make(chan error, 1)
	go func() {
		for {
			l, err := stream.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				errc <- err
				close(lines)
				return
			}
			select {
			case lines <- l:
			case <-sctx.Done(): // the page left
				errc <- sctx.Err()
				close(lines)
				return
			}
		}
	}()
	hostnames := s.hostnames()
	var batch []LogLineView
	flush := time.NewTicker(100 * time.Millisecond)
	defer flush.Stop()
	for {
		select {
		case <-ctx.Done():
			return addr, ctx.Err()
		case l, ok := <-lines:
			if !ok {
				if len(batch) > 0 {
					send("lines", batch)
				}
				return addr, <-errc
			}
			prefix := logPrefix(l, hostnames)
			for _, text := range strings.Split(strings.TrimSuffix(string(l.GetData()), "\n"), "\n") {
				batch = append(batch, LogLineView{Prefix: prefix, Line: text})
			}
		case <-flush.C:
			if len(batch) > 0 {
				send("lines", batch)
				batch = nil
			}
		}
	}
}

// logPrefix is Docker's log prefix: web.1.abcdef123456@w1.
func logPrefix(l *pb.LogLine, hostnames map[string]string) string {
	name := l.GetServiceName()
	if l.GetSlot() != 0 || l.GetNodeId() == "" {
		name += "." + strconv.FormatUint(l.GetSlot(), 10)
	} else {
		name += "." + shortID(l.GetNodeId())
	}
	if l.GetTaskId() != "" {
		name += "." + shortID(l.GetTaskId())
	}
	if n := hostnames[l.GetNodeId()]; n != "" {
		name += "@" + n
	}
	return name
}
