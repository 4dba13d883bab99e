package main

import (
	"context"
	"regexp"
	"strings"
	"testing"

	pb "github.com/shoal-cluster/shoal/proto"
)

// TestNetworkCommands runs the network commands against the control API:
// create, ls (the mesh first), inspect (JSON and --pretty), rm (refused
// while a service is attached), and bad input refused with one line,
// changing nothing.
func TestNetworkCommands(t *testing.T) {
	api := controlAPI(t)
	host := serveControl(t, api)
	cmd := func(args ...string) []string {
		return append(append([]string{"network", args[0]}, host...), args[1:]...)
	}
	code, out, errOut := captureRun(t, cmd("create", "--label", "team=a", "backend")...)
	if code != 0 || !regexp.MustCompile(`^[a-z0-9]{20,}\n$`).MatchString(out) {
		t.Fatalf("create: exit %d, stdout %q, stderr %q; want the ID", code, out, errOut)
	}
	id := strings.TrimSpace(out)
	if _, err := api.CreateService(context.Background(), &pb.CreateServiceRequest{Spec: &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: "app_api"},
		Task: &pb.TaskSpec{Runtime: "process", Container: &pb.ContainerSpec{Image: "/bin/app"},
			Networks: []*pb.NetworkAttachment{{NetworkName: "backend", Aliases: []string{"api"}}}},
		Mode: &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: 1}},
	}}); err != nil {
		t.Fatal(err)
	}
	code, out, _ = captureRun(t, cmd("ls")...)
	if rows := parseTable(t, out); code != 0 || len(rows) != 2 || rows[0]["NAME"] != "shoal" || rows[1]["ID"] != id || rows[1]["NAME"] != "backend" || rows[1]["DRIVER"] != "overlay" {
		t.Errorf("ls: exit %d:\n%s", code, out)
	}
	code, out, _ = captureRun(t, cmd("inspect", "backend")...)
	if code != 0 || !strings.Contains(out, `"name": "backend"`) || !strings.Contains(out, `"team": "a"`) || !strings.Contains(out, `"app_api"`) {
		t.Errorf("inspect: exit %d:\n%s", code, out)
	}
	code, out, _ = captureRun(t, cmd("inspect", "--pretty", "backend")...)
	if code != 0 || !strings.Contains(out, "Driver:    overlay\nLabels:    team=a\n") || !strings.Contains(out, "Services:  app_api\n") {
		t.Errorf("inspect --pretty: exit %d:\n%s", code, out)
	}
	// service create --network and update --network-rm/--network-add.
	svc := func(args ...string) []string {
		return append(append([]string{"service", args[0]}, host...), args[1:]...)
	}
	if code, out, errOut := captureRun(t, svc("create", "--detach", "--name", "app_web", "--network", "name=backend,alias=web,alias=front", "/bin/app")...); code != 0 {
		t.Fatalf("service create --network: exit %d %s %s", code, out, errOut)
	}
	web, err := api.GetService(context.Background(), &pb.GetServiceRequest{Ref: "app_web"})
	if att := web.GetService().GetSpec().GetTask().GetNetworks(); err != nil || len(att) != 1 || att[0].GetNetworkId() != id || strings.Join(att[0].GetAliases(), ",") != "web,front" {
		t.Fatalf("app_web attached as %v (%v)", att, err)
	}
	if code, out, errOut := captureRun(t, svc("update", "--detach", "--network-rm", "backend", "app_web")...); code != 0 {
		t.Fatalf("service update --network-rm: exit %d %s %s", code, out, errOut)
	}
	if web, _ = api.GetService(context.Background(), &pb.GetServiceRequest{Ref: "app_web"}); len(web.GetService().GetSpec().GetTask().GetNetworks()) != 0 {
		t.Fatalf("app_web still attached: %v", web.GetService().GetSpec().GetTask().GetNetworks())
	}
	if code, _, errOut := captureRun(t, svc("create", "--detach", "--network", "name=backend,driver-opt=x", "/bin/app")...); code != 2 || !strings.Contains(errOut, `"driver-opt=x" is not a field Shoal takes`) {
		t.Fatalf("--network with a driver option: exit %d %s", code, errOut)
	}
	code, _, errOut = captureRun(t, cmd("rm", "backend")...)
	if code != 1 || !strings.Contains(errOut, "network backend is in use by service app_api") {
		t.Errorf("rm in use: exit %d, stderr %q", code, errOut)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{cmd("create"), 2, "network create needs a NAME"},
		{cmd("create", "bad/name"), 2, `invalid network name "bad/name"`},
		{cmd("create", "--driver", "bridge", "n"), 2, "--driver bridge: Shoal's networks are overlay networks"},
		{cmd("create", "backend"), 1, "network with name backend already exists"},
		{cmd("create", "ingress"), 1, "reserved"},
		{cmd("rm", "shoal"), 1, "cannot be removed"},
		{cmd("inspect", "nosuch"), 1, `no network "nosuch"`},
	} {
		code, _, errOut := captureRun(t, tc.args...)
		if first, _, _ := strings.Cut(errOut, "\n"); code != tc.code || !strings.Contains(first, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit %d with a first line holding %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
	if ls, err := api.ListNetworks(context.Background(), &pb.ListNetworksRequest{}); err != nil || len(ls.GetNetworks()) != 1 {
		t.Errorf("after the bad input: %v, %v; want backend only", ls.GetNetworks(), err)
	}
}
