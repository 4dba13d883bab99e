package ca

import (
	"slices"
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
)

func TestRevokedNodes(t *testing.T) {
	later := time.Now().Add(time.Hour).UnixNano()
	earlier := time.Now().Add(-time.Hour).UnixNano()
	for _, tc := range []struct {
		name    string
		cluster *pb.Cluster
		want    []string
	}{
		{name: "no cluster yet", cluster: nil, want: nil},
		{name: "removed nodes, sorted", cluster: &pb.Cluster{RemovedNodes: []string{"w2", "m3"}}, want: []string{"m3", "w2"}},
		{name: "a demoted manager whose certificates may be valid", cluster: &pb.Cluster{DemotedManagers: map[string]int64{"m2": later}}, want: []string{"m2"}},
		{name: "a demoted manager whose certificates expired", cluster: &pb.Cluster{DemotedManagers: map[string]int64{"m2": earlier}}, want: nil},
		{name: "demoted, then removed: listed once", cluster: &pb.Cluster{RemovedNodes: []string{"m2"}, DemotedManagers: map[string]int64{"m2": later, "m4": later}}, want: []string{"m2", "m4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := RevokedNodes(tc.cluster)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("revokedNodes = %v, want %v", got, tc.want)
			}
		})
	}
}
