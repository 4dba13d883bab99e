package controlapi

import (
	"context"
	"strings"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func netService(name string, nets ...*pb.NetworkAttachment) *pb.ServiceSpec {
	spec := configService(name, nil)
	spec.Task.Networks = nets
	return spec
}

func TestNetworks(t *testing.T) {
	s, store := newConfigServer(t)
	ctx := context.Background()
	create := func(name, driver string) (*pb.Network, error) {
		resp, err := s.CreateNetwork(ctx, &pb.CreateNetworkRequest{Spec: &pb.NetworkSpec{
			Annotations: &pb.Annotations{Name: name, Labels: map[string]string{"com.docker.stack.namespace": "demo"}}, Driver: driver}})
		return resp.GetNetwork(), err
	}
	n, err := create("demo_default", "")
	if err != nil || n.GetId() == "" || n.GetSpec().GetDriver() != "overlay" {
		t.Fatalf("create demo_default: %v %v", n, err)
	}
	before := storeIndex(store)
	for _, c := range []struct {
		name, net, driver string
		code              codes.Code
		substr            string
	}{
		{"taken", "demo_default", "overlay", codes.AlreadyExists, "network with name demo_default already exists"},
		{"bridge", "b", "bridge", codes.InvalidArgument, `driver "bridge" is not supported`},
		{"mesh name", "shoal", "", codes.InvalidArgument, "reserved"},
		{"ingress", "ingress", "", codes.InvalidArgument, "reserved"},
		{"bad name", "a/b", "", codes.InvalidArgument, "invalid network name"},
		{"no name", "", "", codes.InvalidArgument, "needs a name"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := create(c.net, c.driver)
			if st, _ := status.FromError(err); st.Code() != c.code || !strings.Contains(st.Message(), c.substr) {
				t.Fatalf("got %v, want %v with %q", err, c.code, c.substr)
			}
		})
	}
	if storeIndex(store) != before {
		t.Fatal("a refused network create changed the store")
	}

	// A service attaches by name, with aliases; the stored spec has the ID.
	resp, err := s.CreateService(ctx, &pb.CreateServiceRequest{Spec: netService("demo_api",
		&pb.NetworkAttachment{NetworkName: "demo_default", Aliases: []string{"api"}})})
	if err != nil {
		t.Fatal(err)
	}
	if w := strings.Join(resp.GetWarnings(), "\n"); !strings.Contains(w, "service demo_api declares no ports") {
		t.Fatalf("a service on a network of its own without ports got warnings %q, want the one on ports", w)
	}
	att := resp.GetService().GetSpec().GetTask().GetNetworks()
	if len(att) != 1 || att[0].GetNetworkId() != n.GetId() || att[0].GetNetworkName() != "demo_default" {
		t.Fatalf("attachment stored as %v", att)
	}
	// A second service with the same alias is accepted, with a warning.
	resp, err = s.CreateService(ctx, &pb.CreateServiceRequest{Spec: netService("other_api",
		&pb.NetworkAttachment{NetworkName: "shoal", Aliases: []string{"api"}})})
	if err != nil {
		t.Fatal(err)
	}
	if w := strings.Join(resp.GetWarnings(), "\n"); !strings.Contains(w, `network alias "api" of service other_api is also an alias of service demo_api`) {
		t.Fatalf("warnings %q", w)
	}
	if w := strings.Join(resp.GetWarnings(), "\n"); strings.Contains(w, "declares no ports") {
		t.Fatalf("a service on the mesh network alone got the ports warning: %q", w)
	}
	if got := resp.GetService().GetSpec().GetTask().GetNetworks()[0].GetNetworkId(); got != MeshNetworkID {
		t.Fatalf("attachment to the mesh stored as %q", got)
	}
	for _, c := range []struct {
		name string
		att  *pb.NetworkAttachment
		code codes.Code
		sub  string
	}{
		{"unknown network", &pb.NetworkAttachment{NetworkName: "nosuch"}, codes.NotFound, "network nosuch not found"},
		{"ingress", &pb.NetworkAttachment{NetworkName: "ingress"}, codes.InvalidArgument, "ingress network"},
		{"bad alias", &pb.NetworkAttachment{NetworkName: "demo_default", Aliases: []string{"a.b"}}, codes.InvalidArgument, `invalid network alias "a.b"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := s.CreateService(ctx, &pb.CreateServiceRequest{Spec: netService("x", c.att)})
			if st, _ := status.FromError(err); st.Code() != c.code || !strings.Contains(st.Message(), c.sub) {
				t.Fatalf("got %v, want %v with %q", err, c.code, c.sub)
			}
		})
	}

	got, err := s.GetNetwork(ctx, &pb.GetNetworkRequest{Ref: "demo_default"})
	if err != nil || strings.Join(got.GetServices(), ",") != "demo_api" {
		t.Fatalf("get: %v %v", got, err)
	}
	_, err = s.RemoveNetwork(ctx, &pb.RemoveNetworkRequest{Ref: n.GetId()})
	if st, _ := status.FromError(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "network demo_default is in use by service demo_api") {
		t.Fatalf("remove in use: %v", err)
	}
	if _, err := s.RemoveNetwork(ctx, &pb.RemoveNetworkRequest{Ref: "shoal"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("remove the mesh: %v", err)
	}
	if _, err := s.RemoveService(ctx, &pb.RemoveServiceRequest{Ref: "demo_api"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RemoveNetwork(ctx, &pb.RemoveNetworkRequest{Ref: "demo_default"}); err != nil {
		t.Fatalf("remove once unused: %v", err)
	}
	list, err := s.ListNetworks(ctx, &pb.ListNetworksRequest{})
	if err != nil || len(list.GetNetworks()) != 0 {
		t.Fatalf("list after remove: %v %v", list, err)
	}
}
