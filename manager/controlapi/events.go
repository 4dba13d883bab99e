package controlapi

import (
	"context"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Events streams the cluster's events from this manager's own history;
// any manager serves it, leader or not.
func (s *Server) Events(req *pb.EventsRequest, stream grpc.ServerStreamingServer[pb.ClusterEvent]) error {
	if s.events == nil {
		return status.Error(codes.Unimplemented, "this manager keeps no event history")
	}
	return s.events.Stream(stream.Context(), req, stream.Send)
}

// StreamEvents is Events for a Go caller (the Docker API): each event goes
// to send until the history ends (with until) or ctx ends.
func (s *Server) StreamEvents(ctx context.Context, req *pb.EventsRequest, send func(*pb.ClusterEvent) error) error {
	if s.events == nil {
		return status.Error(codes.Unimplemented, "this manager keeps no event history")
	}
	return s.events.Stream(ctx, req, send)
}
