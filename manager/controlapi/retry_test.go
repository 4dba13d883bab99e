package controlapi

import (
	"context"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

// TestCreateServiceRetriedAfterCommit: a create retried with its request ID
// after it committed (a client or a forwarding manager that lost the
// answer in a failover) succeeds with the service it made, as the first
// attempt would have answered; a create under the same name with another
// request ID is refused.
func TestCreateServiceRetriedAfterCommit(t *testing.T) {
	s, _ := newConfigServer(t)
	spec := configService("web", nil)
	ctx := raftstore.WithRequestID(context.Background(), "create-web-1")
	first, err := s.CreateService(ctx, &pb.CreateServiceRequest{Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.CreateService(ctx, &pb.CreateServiceRequest{Spec: spec})
	if err != nil {
		t.Fatalf("the retried create: %v, want the service it made", err)
	}
	if again.GetService().GetId() != first.GetService().GetId() {
		t.Fatalf("the retry answered service %s, the create made %s", again.GetService().GetId(), first.GetService().GetId())
	}
	other := raftstore.WithRequestID(context.Background(), "create-web-2")
	if _, err := s.CreateService(other, &pb.CreateServiceRequest{Spec: spec}); err == nil {
		t.Fatal("a second create of web with another request ID succeeded")
	}
}
