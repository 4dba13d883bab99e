package controlapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ServiceLogs streams the output of a service's tasks, fetched from every
// node that ran them. It reads this manager's replica, so any manager
// serves it.
func (s *Server) ServiceLogs(req *pb.ServiceLogsRequest, stream grpc.ServerStreamingServer[pb.LogLine]) error {
	return s.Logs(stream.Context(), req, stream.Send)
}

// Logs is ServiceLogs for a Go caller: each line goes to send until the
// output ends (or, following, until ctx ends); an error from send ends
// it.
func (s *Server) Logs(ctx context.Context, req *pb.ServiceLogsRequest, send func(*pb.LogLine) error) error {
	var (
		svc   *pb.Service
		tasks []*pb.Task
		nodes = map[string]*pb.Node{}
		err   error
	)
	s.store.View(func(tx *raftstore.Tx) {
		if svc, err = resolveService(tx, req.GetRef()); err != nil {
			return
		}
		tasks = tx.Tasks().Find(raftstore.IndexService, svc.GetId())
		for _, n := range tx.Nodes().List() {
			nodes[n.GetId()] = n
		}
	})
	if err != nil {
		return err
	}
	if (req.GetTimestamps() || req.GetSince() != 0 || req.GetUntil() != 0) && svc.GetSpec().GetTask().GetRuntime() != "docker" {
		return status.Errorf(codes.FailedPrecondition, "service %s runs on the %s runtime, which keeps no times with its tasks' output: leave out timestamps, since and until (tail works)",
			svc.GetSpec().GetAnnotations().GetName(), svc.GetSpec().GetTask().GetRuntime())
	}
	if req.GetSince() != 0 && req.GetUntil() != 0 && req.GetUntil() < req.GetSince() {
		return status.Error(codes.InvalidArgument, "until is before since: no line can be in that window")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lines := make(chan *pb.LogLine, 256)
	var wg sync.WaitGroup
	for _, t := range tasks {
		n := nodes[t.GetNodeId()]
		if n == nil || n.GetApiAddr() == "" || t.GetStatus().GetState() < pb.TaskState_TASK_STATE_STARTING {
			continue // never started anywhere: no output
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.taskLogs(ctx, t, n, req, lines); err != nil && ctx.Err() == nil {
				line := &pb.LogLine{TaskId: t.GetId(), NodeId: n.GetId(), Slot: t.GetSlot(), ServiceName: t.GetServiceName(),
					Data: []byte(fmt.Sprintf("shoal: logs unavailable from node %s: %s", n.GetDescription().GetHostname(), status.Convert(err).Message()))}
				select {
				case lines <- line:
				case <-ctx.Done():
				}
			}
		}()
	}
	go func() { wg.Wait(); close(lines) }()
	for l := range lines {
		if err := send(l); err != nil {
			cancel()
			for range lines { // let the readers finish
			}
			return err
		}
	}
	return nil
}

// taskLogs reads one task's output from its node and splits it into lines.
func (s *Server) taskLogs(ctx context.Context, t *pb.Task, n *pb.Node, req *pb.ServiceLogsRequest, out chan<- *pb.LogLine) error {
	conn, err := s.workers.Worker(n.GetApiAddr())
	if err != nil {
		return err
	}
	rs, err := pb.NewTaskLogsClient(conn).Logs(ctx, &pb.TaskLogsRequest{TaskId: t.GetId(), Follow: req.GetFollow(), Tail: req.GetTail(),
		Timestamps: req.GetTimestamps(), Since: req.GetSince(), Until: req.GetUntil()})
	if err != nil {
		return err
	}
	var partial []byte
	emit := func(data []byte) bool {
		line := &pb.LogLine{TaskId: t.GetId(), NodeId: n.GetId(), Slot: t.GetSlot(), ServiceName: t.GetServiceName(), Data: data}
		if req.GetTimestamps() {
			line.Timestamp, line.Data = splitTimestamp(data)
		}
		select {
		case out <- line:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		chunk, err := rs.Recv()
		if err != nil {
			if len(partial) > 0 {
				emit(partial)
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		data := append(partial, chunk.GetData()...)
		for {
			i := bytes.IndexByte(data, '\n')
			if i < 0 {
				break
			}
			if !emit(append([]byte(nil), data[:i]...)) {
				return nil
			}
			data = data[i+1:]
		}
		partial = append([]byte(nil), data...)
	}
}

// splitTimestamp cuts the time a worker put before a line (RFC 3339 with
// nanoseconds, then a space) off it: the time in Unix nanoseconds (0 when
// the line has none) and the rest.
func splitTimestamp(line []byte) (int64, []byte) {
	ts, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok {
		ts, rest = line, nil
	}
	t, err := time.Parse(time.RFC3339Nano, string(ts))
	if err != nil {
		return 0, line
	}
	return t.UnixNano(), rest
}
