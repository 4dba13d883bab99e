package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/shoal-cluster/shoal/internal/storetest"
	"github.com/shoal-cluster/shoal/manager/controlapi"
	pb "github.com/shoal-cluster/shoal/proto"
)

// controlAPI is the managers' real Control service on a memory store, for
// the client commands to talk to.
func controlAPI(t *testing.T) *controlapi.Server {
	t.Helper()
	return controlapi.New(controlapi.Config{Store: storetest.Memory(t, nil), Log: slog.New(slog.DiscardHandler)})
}

// TestConfigCommands runs the config commands against the control API:
// create from a file and from stdin, ls, inspect (with the data, as JSON
// and --pretty), rm (refused while a service uses the config), and the bad
// input refused with one line, changing nothing.
func TestConfigCommands(t *testing.T) {
	api := controlAPI(t)
	host := serveControl(t, api)
	cmd := func(args ...string) []string {
		return append(append([]string{"config", args[0]}, host...), args[1:]...)
	}
	file := filepath.Join(t.TempDir(), "app.conf")
	if err := os.WriteFile(file, []byte("port=80\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	idRE := regexp.MustCompile(`^[a-z0-9]{20,}\n$`)
	code, out, errOut := captureRun(t, cmd("create", "--label", "env=prod", "app.conf", file)...)
	if code != 0 || !idRE.MatchString(out) {
		t.Fatalf("create from a file: exit %d, stdout %q, stderr %q; want the ID", code, out, errOut)
	}
	appID := strings.TrimSpace(out)
	withStdin(t, []byte("level=debug"), func() {
		code, out, errOut = captureRun(t, cmd("create", "log.conf", "-")...)
	})
	if code != 0 || !idRE.MatchString(out) {
		t.Fatalf("create from stdin: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	ctx := context.Background()
	if _, err := api.CreateService(ctx, &pb.CreateServiceRequest{Spec: &pb.ServiceSpec{
		Annotations: &pb.Annotations{Name: "web"},
		Task:        &pb.TaskSpec{Runtime: "process", Container: &pb.ContainerSpec{Image: "/bin/app", Configs: []*pb.ConfigReference{{ConfigName: "log.conf"}}}},
		Mode:        &pb.ServiceSpec_Replicated{Replicated: &pb.ReplicatedService{Replicas: 1}},
	}}); err != nil {
		t.Fatal(err)
	}

	code, out, _ = captureRun(t, cmd("ls")...)
	if rows := parseTable(t, out); code != 0 || len(rows) != 2 || rows[0]["ID"] != appID || rows[0]["NAME"] != "app.conf" || rows[0]["SIZE"] != "8B" || rows[1]["NAME"] != "log.conf" {
		t.Errorf("ls: exit %d:\n%s", code, out)
	}
	code, out, _ = captureRun(t, cmd("inspect", "app.conf")...)
	if code != 0 || !strings.Contains(out, `"name": "app.conf"`) || !strings.Contains(out, `"env": "prod"`) || !strings.Contains(out, `"data": "cG9ydD04MAo="`) {
		t.Errorf("inspect: exit %d:\n%s", code, out)
	}
	code, out, _ = captureRun(t, cmd("inspect", "--pretty", "log.conf")...)
	if code != 0 || !strings.Contains(out, "Name:     log.conf\n") || !strings.Contains(out, "Used by:  web\n") || !strings.HasSuffix(out, "Data:\nlevel=debug\n") {
		t.Errorf("inspect --pretty: exit %d:\n%s", code, out)
	}
	code, out, errOut = captureRun(t, cmd("rm", "app.conf", "log.conf")...)
	if code != 1 || out != "app.conf\n" || !strings.Contains(errOut, `config "log.conf" is in use by service web`) {
		t.Errorf("rm: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	huge := filepath.Join(t.TempDir(), "huge")
	if err := os.WriteFile(huge, bytes.Repeat([]byte("x"), configCLI.maxRead()+1), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{cmd("create", "app"), 2, "config create needs a NAME and a FILE"},
		{cmd("create", "bad/name", file), 2, `invalid config name "bad/name"`},
		{cmd("create", "x", filepath.Join(t.TempDir(), "missing")), 1, "read the config's data: open"},
		{cmd("create", "x", huge), 1, "a config holds at most 1024000 bytes (1000 KiB)"},
		{cmd("inspect"), 2, "config inspect needs at least one config"},
		{cmd("rm"), 2, "config rm needs at least one config"},
	} {
		// One line says what is wrong (a usage error adds where help is).
		code, _, errOut := captureRun(t, tc.args...)
		if first, _, _ := strings.Cut(errOut, "\n"); code != tc.code || !strings.Contains(first, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit %d with a first line holding %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
	if ls, err := api.ListConfigs(ctx, &pb.ListConfigsRequest{}); err != nil || len(ls.GetConfigs()) != 1 {
		t.Errorf("after the bad input: %v, %v; want log.conf only", ls.GetConfigs(), err)
	}
}
