package controlapi

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/internal/storetest"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// FuzzCreateServiceSpec feeds arbitrary CreateServiceRequest bytes (what a
// client sends) through the handler's decoding, defaults and validation
// against a real store: no panic, and a refusal is one InvalidArgument,
// AlreadyExists or NotFound (a secret or config that does not exist)
// status that says what to fix.
func FuzzCreateServiceSpec(f *testing.F) {
	store := storetest.OpenLeader(f)
	// A secret and a config for references to find.
	if _, err := store.Update(context.Background(), func(tx *raftstore.Tx) error {
		if err := tx.Secrets().Create(&pb.Secret{Id: "s1", Spec: &pb.SecretSpec{Annotations: &pb.Annotations{Name: "pw"}}}); err != nil {
			return err
		}
		return tx.Configs().Create(&pb.Config{Id: "c1", Spec: &pb.ConfigSpec{Annotations: &pb.Annotations{Name: "app.conf"}, Data: []byte("x")}})
	}); err != nil {
		f.Fatal(err)
	}
	for _, spec := range []*pb.ServiceSpec{
		{},
		{Annotations: &pb.Annotations{Name: "web"}, Task: &pb.TaskSpec{Runtime: "process", Container: &pb.ContainerSpec{Image: "/bin/app", Env: []string{"A=1"}}}},
		{Task: &pb.TaskSpec{Runtime: "docker", Container: &pb.ContainerSpec{Image: "shoal/hello:v1"},
			Placement: &pb.Placement{Constraints: []string{"node.labels.zone==a"}, Preferences: []*pb.PlacementPreference{{SpreadDescriptor: "node.labels.zone"}}},
			Resources: &pb.ResourceRequirements{Reservations: &pb.Resources{NanoCpus: 1e8}}},
			Mode:     &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: 3}},
			Endpoint: &pb.EndpointSpec{Ports: []*pb.PortConfig{{TargetPort: 80, PublishedPort: 8080}, {TargetPort: 81, PublishedPort: 8080}}}},
		{Mode: &pb.ServiceSpec_Global{Global: &pb.GlobalService{}}, Task: &pb.TaskSpec{Container: &pb.ContainerSpec{Command: []string{"/bin/sh"},
			Healthcheck: &pb.HealthCheck{HttpGet: "/", TcpSocket: 80, Interval: -1}}}},
		{Update: &pb.UpdateConfig{MaxFailureRatio: 2, Delay: int64(time.Second)}},
		{Annotations: &pb.Annotations{Name: "files"}, Task: &pb.TaskSpec{Runtime: "process", Container: &pb.ContainerSpec{Image: "/bin/app",
			Secrets: []*pb.SecretReference{{SecretName: "pw"}},
			Configs: []*pb.ConfigReference{{ConfigName: "app.conf", Target: "/etc/app.conf", Mode: 0o444, Uid: "1000"}, {ConfigId: "x", Target: "/run/secrets/pw"}}}}},
	} {
		data, err := proto.Marshal(&pb.CreateServiceRequest{Spec: spec})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.CreateServiceRequest
		if err := proto.Unmarshal(data, &req); err != nil || req.GetSpec() == nil {
			return
		}
		spec := proto.Clone(req.GetSpec()).(*pb.ServiceSpec)
		defaultServiceSpec(spec)
		var err error
		store.View(func(tx *raftstore.Tx) { err = validateServiceSpec(tx, spec, "") })
		if err == nil {
			return
		}
		st, ok := status.FromError(err)
		if !ok || (st.Code() != codes.InvalidArgument && st.Code() != codes.AlreadyExists && st.Code() != codes.NotFound) || st.Message() == "" || strings.Contains(st.Message(), "\n") {
			t.Fatalf("validation refused with %v: want one InvalidArgument, AlreadyExists or NotFound status on one line", err)
		}
	})
}

// FuzzNodeSpec feeds arbitrary UpdateNodeRequest bytes to the node spec
// validation: no panic, and a refusal is one InvalidArgument status.
func FuzzNodeSpec(f *testing.F) {
	for _, spec := range []*pb.NodeSpec{
		{DesiredRole: pb.NodeRole_NODE_ROLE_WORKER, Availability: pb.NodeAvailability_NODE_AVAILABILITY_DRAIN},
		{DesiredRole: pb.NodeRole_NODE_ROLE_MANAGER, Annotations: &pb.Annotations{Labels: map[string]string{"zone": "a", "bad key": "x"}}},
		{Availability: 42},
	} {
		data, err := proto.Marshal(&pb.UpdateNodeRequest{Ref: "n1", Spec: spec})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.UpdateNodeRequest
		if err := proto.Unmarshal(data, &req); err != nil {
			return
		}
		if err := validateNodeSpec(req.GetSpec()); err != nil {
			if st, ok := status.FromError(err); !ok || st.Code() != codes.InvalidArgument {
				t.Fatalf("validation refused with %v: want one InvalidArgument status", err)
			}
		}
	})
}
