package leaderroute

import (
	"context"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// leaderRaft is a Raft that leads.
type leaderRaft struct{}

func (leaderRaft) IsLeader() bool                     { return true }
func (leaderRaft) Leader() (string, string)           { return "self", "127.0.0.1:1" }
func (leaderRaft) VerifyLeader(context.Context) error { return nil }

// fakeControl answers GetService with a service it keeps.
type fakeControl struct {
	pb.UnimplementedControlServer
	svc *pb.Service
	got string
}

func (f *fakeControl) GetService(_ context.Context, req *pb.GetServiceRequest) (*pb.GetServiceResponse, error) {
	f.got = req.GetRef()
	if req.GetRef() != f.svc.GetSpec().GetAnnotations().GetName() {
		return nil, status.Error(codes.NotFound, "no such service")
	}
	return &pb.GetServiceResponse{Service: f.svc}, nil
}

// TestInProcess: a call through the in-process connection reaches the
// server's method through the router, its answer is a copy (the caller
// never shares the server's memory), errors keep their codes, and
// streaming is refused.
func TestInProcess(t *testing.T) {
	srv := &fakeControl{svc: &pb.Service{Id: "s1", Spec: &pb.ServiceSpec{Annotations: &pb.Annotations{Name: "web"}}}}
	r := New(Config{Raft: leaderRaft{}})
	client := pb.NewControlClient(r.InProcess(&pb.Control_ServiceDesc, srv))
	ctx := context.Background()

	resp, err := client.GetService(ctx, &pb.GetServiceRequest{Ref: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if srv.got != "web" || resp.GetService().GetId() != "s1" {
		t.Fatalf("got ref %q, answer %v", srv.got, resp)
	}
	resp.Service.Id = "changed"
	if srv.svc.GetId() != "s1" {
		t.Fatal("the answer shares memory with the server's object")
	}
	if _, err := client.GetService(ctx, &pb.GetServiceRequest{Ref: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown service: %v, want NotFound", err)
	}
	if _, err := client.ListNodes(ctx, &pb.ListNodesRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("an unimplemented method: %v, want Unimplemented", err)
	}
	if _, err := client.Events(ctx, &pb.EventsRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("a stream: %v, want Unimplemented", err)
	}
}
