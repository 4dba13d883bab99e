package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/internal/rpc"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// logServer serves the output of this node's tasks to the managers.
type logServer struct {
	pb.UnimplementedTaskLogsServer
	a *Agent
}

// Logs streams one task's output.
func (s *logServer) Logs(req *pb.TaskLogsRequest, stream grpc.ServerStreamingServer[pb.LogChunk]) error {
	t := s.a.task(req.GetTaskId())
	if t == nil {
		return status.Errorf(codes.NotFound, "task %s is not on node %s", req.GetTaskId(), s.a.id.NodeID)
	}
	rt, err := s.a.runtimeFor(t)
	if err != nil {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	opts := LogOptions{Tail: int(req.GetTail()), Follow: req.GetFollow(), Timestamps: req.GetTimestamps()}
	if req.GetSince() != 0 {
		opts.Since = time.Unix(0, req.GetSince())
	}
	if req.GetUntil() != 0 {
		opts.Until = time.Unix(0, req.GetUntil())
	}
	rc, err := rt.Logs(stream.Context(), t.GetId(), opts)
	if errors.Is(err, ErrNoLogTimes) {
		return status.Errorf(codes.FailedPrecondition, "task %s: %v: leave out timestamps, since and until", t.GetId(), err)
	}
	if errors.Is(err, ErrTaskNotFound) {
		return status.Errorf(codes.NotFound, "task %s has no logs on node %s (it never started here)", t.GetId(), s.a.id.NodeID)
	}
	if err != nil {
		return status.Errorf(codes.Internal, "logs of task %s: %v", t.GetId(), err)
	}
	defer rc.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := rc.Read(buf)
		if n > 0 {
			if serr := stream.Send(&pb.LogChunk{Data: append([]byte(nil), buf[:n]...)}); serr != nil {
				return serr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if stream.Context().Err() != nil {
				return nil
			}
			return status.Errorf(codes.Internal, "read logs of task %s: %v", t.GetId(), err)
		}
	}
}

// serveAPI starts the node's gRPC server (task logs) on its API port.
func (a *Agent) serveAPI() error {
	addr := net.JoinHostPort(a.cfg.ListenIP, fmt.Sprint(a.cfg.APIPort))
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s for the node API: %w (is another node using this address and port?)", addr, err)
	}
	a.grpc = grpc.NewServer(rpc.ServerOptions(a.creds.Creds(), nil, a.log.With("link", "api"),
		grpc.ChainUnaryInterceptor(onlyManagersUnary), grpc.ChainStreamInterceptor(onlyManagersStream))...)
	pb.RegisterTaskLogsServer(a.grpc, &logServer{a: a})
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := a.grpc.Serve(lis); err != nil {
			a.log.Error("node API stopped", "err", err)
		}
	}()
	return nil
}

// onlyManagers refuses callers that are not managers: only they fetch
// task output from workers.
func onlyManagers(ctx context.Context) error {
	id, ok := rpc.PeerIdentity(ctx)
	if !ok || id.Role != pki.RoleManager {
		return status.Error(codes.PermissionDenied, "only managers may call a worker's API")
	}
	return nil
}

func onlyManagersUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := onlyManagers(ctx); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func onlyManagersStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := onlyManagers(ss.Context()); err != nil {
		return err
	}
	return handler(srv, ss)
}
