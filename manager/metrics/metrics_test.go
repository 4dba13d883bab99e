package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
)

func TestCountEvent(t *testing.T) {
	created := &pb.Task{Id: "t", Meta: &pb.Meta{CreatedAt: 1e9}}
	assigned := &pb.Task{Id: "t", NodeId: "n1", Meta: &pb.Meta{CreatedAt: 1e9}}
	ready := &pb.Node{Id: "n", Status: &pb.NodeStatus{State: pb.NodeState_NODE_STATE_READY}}
	down := &pb.Node{Id: "n", Status: &pb.NodeStatus{State: pb.NodeState_NODE_STATE_DOWN}}
	cases := []struct {
		name                       string
		ev                         raftstore.Event
		placements, downs, leaders float64
	}{
		{"task assigned", raftstore.Event{Kind: raftstore.EventUpdate, Old: created, Object: assigned, Time: 3e9}, 1, 0, 0},
		{"task created on a node", raftstore.Event{Kind: raftstore.EventCreate, Object: assigned, Time: 3e9}, 1, 0, 0},
		{"assigned task updated", raftstore.Event{Kind: raftstore.EventUpdate, Old: assigned, Object: assigned}, 0, 0, 0},
		{"task removed", raftstore.Event{Kind: raftstore.EventDelete, Old: assigned, Object: assigned}, 0, 0, 0},
		{"node down", raftstore.Event{Kind: raftstore.EventUpdate, Old: ready, Object: down}, 0, 1, 0},
		{"down node updated", raftstore.Event{Kind: raftstore.EventUpdate, Old: down, Object: down}, 0, 0, 0},
		{"leader elected", raftstore.Event{Kind: raftstore.EventUpdate, Old: &pb.Cluster{Leader: "a", LeaderTerm: 2}, Object: &pb.Cluster{Leader: "b", LeaderTerm: 3}}, 0, 0, 1},
		{"same leader", raftstore.Event{Kind: raftstore.EventUpdate, Old: &pb.Cluster{Leader: "a", LeaderTerm: 2}, Object: &pb.Cluster{Leader: "a", LeaderTerm: 2}}, 0, 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := New()
			m.countEvent(c.ev)
			got := []float64{testutil.ToFloat64(m.placements), testutil.ToFloat64(m.nodesDown), testutil.ToFloat64(m.leaders)}
			want := []float64{c.placements, c.downs, c.leaders}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("placements, downs, leaders = %v, want %v", got, want)
				}
			}
		})
	}
}

func TestPendingReason(t *testing.T) {
	for in, want := range map[string]string{
		"": "unknown",
		"no suitable node (insufficient memory on 3 nodes)": "no suitable node (insufficient memory on N nodes)",
		"no node offers the docker runtime":                 "no node offers the docker runtime",
	} {
		if got := pendingReason(in); got != want {
			t.Errorf("pendingReason(%q) = %q, want %q", in, got, want)
		}
	}
}
