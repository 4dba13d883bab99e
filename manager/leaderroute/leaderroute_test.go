package leaderroute

import (
	"context"
	"errors"
	"fmt"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestToStatus: store errors, wrapped or not, become the gRPC codes
// clients act on; a status passes unchanged.
func TestToStatus(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{raftstore.ErrNotLeader, codes.Unavailable},
		{fmt.Errorf("leader x unknown: %w", raftstore.ErrNoLeader), codes.Unavailable},
		{raftstore.ErrOutcomeUnknown, codes.Unavailable},
		{raftstore.ErrClosed, codes.Unavailable},
		{raftstore.ErrNotFound, codes.NotFound},
		{raftstore.ErrExists, codes.AlreadyExists},
		{raftstore.ErrNameConflict, codes.AlreadyExists},
		{raftstore.ErrVersionConflict, codes.Aborted},
		{raftstore.ErrTooLarge, codes.ResourceExhausted},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{context.Canceled, codes.Canceled},
		{errors.New("something else"), codes.Unknown},
		{status.Error(codes.PermissionDenied, "no"), codes.PermissionDenied},
	} {
		if got := status.Code(ToStatus(tc.err)); got != tc.want {
			t.Errorf("ToStatus(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	if ToStatus(nil) != nil {
		t.Error("ToStatus(nil) is not nil")
	}
}

// TestNewResponse: a forwarded call's response message is found from its
// method name.
func TestNewResponse(t *testing.T) {
	m, err := newResponse(pb.Control_UpdateNode_FullMethodName)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m.(*pb.UpdateNodeResponse); !ok {
		t.Fatalf("response %T, want *pb.UpdateNodeResponse", m)
	}
	for _, bad := range []string{"nope", "/shoal.Nope/Call", "/" + pb.Control_ServiceDesc.ServiceName + "/Nope"} {
		if _, err := newResponse(bad); err == nil {
			t.Errorf("newResponse(%q) found a message", bad)
		}
	}
}
