package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/manager"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

func TestConfigFlagsOnCreate(t *testing.T) {
	tests := []struct {
		args []string
		want []*pb.ConfigReference
	}{
		{[]string{"--config", "app.conf"}, []*pb.ConfigReference{{ConfigName: "app.conf", Target: "/app.conf", Mode: 0o444}}},
		{[]string{"--config", "source=app,target=/etc/app/app.conf,mode=0440,uid=1000,gid=100"}, []*pb.ConfigReference{
			{ConfigName: "app", Target: "/etc/app/app.conf", Mode: 0o440, Uid: "1000", Gid: "100"}}},
		{[]string{"--config", "a", "--config", "src=b,target=/b.conf"}, []*pb.ConfigReference{
			{ConfigName: "a", Target: "/a", Mode: 0o444}, {ConfigName: "b", Target: "/b.conf", Mode: 0o444}}},
	}
	for _, tt := range tests {
		spec, err := createSpec(append(tt.args, "/bin/app")...)
		if err != nil {
			t.Fatalf("create %q: %v", tt.args, err)
		}
		want := baseSpec("/bin/app")
		want.Task.Container.Configs = tt.want
		if !proto.Equal(spec, want) {
			t.Errorf("create %q\n got: %s\nwant: %s", tt.args, text(spec), text(want))
		}
	}
}

func TestConfigFlagErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--config", ""}, "give the config's name"},
		{[]string{"--config", "bad/name"}, "give the config's name"},
		{[]string{"--config", "app,target=etc/app.conf"}, `target="etc/app.conf": use an absolute file path`},
		{[]string{"--config", "app,target=/etc/../x"}, "use an absolute file path"},
		{[]string{"--config", "app,target=/"}, "use an absolute file path"},
		{[]string{"--config", "app,mode=0999"}, "use an octal permission mode"},
		{[]string{"--config", "app,uid=root"}, `uid="root": use a numeric ID`},
		{[]string{"--config", "app,colour=red"}, `unknown field "colour"`},
		{[]string{"--config", "a,target=/x", "--config", "b,target=/x"}, `config a already uses the target "/x"`},
	}
	for _, tt := range tests {
		_, err := createSpec(append(tt.args, "/bin/app")...)
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("create %q: %v, want one line with %q", tt.args, err, tt.want)
		}
	}
}

func TestConfigFlagsOnUpdate(t *testing.T) {
	existing := existingSpec()
	existing.Task.Container.Configs = []*pb.ConfigReference{
		{ConfigId: "c1", ConfigName: "app", Target: "/app", Mode: 0o444},
		{ConfigId: "c2", ConfigName: "nginx", Target: "/etc/nginx.conf", Mode: 0o444},
	}
	tests := []struct {
		name string
		args []string
		want []*pb.ConfigReference
	}{
		{"rm by name, add", []string{"--config-rm", "app", "--config-add", "app2"}, []*pb.ConfigReference{
			{ConfigId: "c2", ConfigName: "nginx", Target: "/etc/nginx.conf", Mode: 0o444}, {ConfigName: "app2", Target: "/app2", Mode: 0o444}}},
		{"rm by ID", []string{"--config-rm", "c2"}, []*pb.ConfigReference{{ConfigId: "c1", ConfigName: "app", Target: "/app", Mode: 0o444}}},
		{"add on a used target replaces", []string{"--config-add", "nginx2,target=/etc/nginx.conf"}, []*pb.ConfigReference{
			{ConfigId: "c1", ConfigName: "app", Target: "/app", Mode: 0o444}, {ConfigName: "nginx2", Target: "/etc/nginx.conf", Mode: 0o444}}},
	}
	for _, tt := range tests {
		got, err := updateSpec(existing, tt.args...)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		want := proto.Clone(existing).(*pb.ServiceSpec)
		want.Task.Container.Configs = tt.want
		if !proto.Equal(got, want) {
			t.Errorf("%s\n got: %s\nwant: %s", tt.name, text(got), text(want))
		}
	}
	if _, err := updateSpec(existing, "--config-rm", "nope"); err == nil || !strings.Contains(err.Error(), "--config-rm nope: the service uses no such config") {
		t.Errorf("--config-rm of an unknown config: %v", err)
	}
}

// fakeConfigs is a Control server that keeps configs, as the managers do.
type fakeConfigs struct {
	pb.UnimplementedControlServer
	mu      sync.Mutex
	configs []*pb.Config
}

func (f *fakeConfigs) CreateConfig(_ context.Context, req *pb.CreateConfigRequest) (*pb.CreateConfigResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := req.GetSpec().GetAnnotations().GetName()
	if n := len(req.GetSpec().GetData()); n > manager.MaxConfigSize {
		return nil, status.Errorf(codes.InvalidArgument, "config %q is %d bytes, more than the limit", name, n)
	}
	now := time.Now().UnixNano()
	c := &pb.Config{Id: fmt.Sprintf("cfg%022d", len(f.configs)+1), Size: uint64(len(req.GetSpec().GetData())),
		Meta: &pb.Meta{CreatedAt: now, UpdatedAt: now}, Spec: req.GetSpec()}
	f.configs = append(f.configs, c)
	return &pb.CreateConfigResponse{Config: c}, nil
}

func (f *fakeConfigs) GetConfig(_ context.Context, req *pb.GetConfigRequest) (*pb.GetConfigResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.configs {
		if c.Id == req.GetRef() || c.Spec.Annotations.Name == req.GetRef() {
			return &pb.GetConfigResponse{Config: c, Services: []string{"web"}}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "no config %q; list configs with `shoal config ls`", req.GetRef())
}

func (f *fakeConfigs) ListConfigs(context.Context, *pb.ListConfigsRequest) (*pb.ListConfigsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &pb.ListConfigsResponse{Configs: f.configs}, nil
}

func (f *fakeConfigs) RemoveConfig(_ context.Context, req *pb.RemoveConfigRequest) (*pb.RemoveConfigResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if req.GetRef() == "used" {
		return nil, status.Error(codes.FailedPrecondition, `config "used" is in use by service web; remove it from them first`)
	}
	return &pb.RemoveConfigResponse{}, nil
}

// TestConfigCommandsFakeServer: create from a file and from stdin, ls,
// inspect (with the data, as JSON and --pretty), rm, and the bad input
// that never reaches the server.
func TestConfigCommandsFakeServer(t *testing.T) {
	fake := &fakeConfigs{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, tlsFlags := fakeTLSServer(t)
	pb.RegisterControlServer(srv, fake)
	go srv.Serve(l)
	defer srv.Stop()
	cmd := func(args ...string) []string {
		return append(append([]string{"config", args[0], "--host", l.Addr().String()}, tlsFlags...), args[1:]...)
	}
	file := filepath.Join(t.TempDir(), "app.conf")
	if err := os.WriteFile(file, []byte("port=80\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := captureRun(t, cmd("create", "--label", "env=prod", "app.conf", file)...)
	if code != 0 || out != "cfg0000000000000000000001\n" {
		t.Fatalf("create from a file: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	withStdin(t, []byte("level=debug"), func() {
		code, out, errOut = captureRun(t, cmd("create", "log.conf", "-")...)
	})
	if code != 0 || out != "cfg0000000000000000000002\n" || string(fake.configs[1].Spec.Data) != "level=debug" || fake.configs[0].Spec.Annotations.Labels["env"] != "prod" {
		t.Fatalf("create from stdin: exit %d, stdout %q, stderr %q; stored %v", code, out, errOut, fake.configs)
	}
	code, out, _ = captureRun(t, cmd("ls")...)
	if code != 0 || !strings.Contains(out, "cfg0000000000000000000001   app.conf   8B     just now   just now") {
		t.Errorf("ls: exit %d:\n%s", code, out)
	}
	code, out, _ = captureRun(t, cmd("inspect", "app.conf")...)
	if code != 0 || !strings.Contains(out, `"name": "app.conf"`) || !strings.Contains(out, `"data": "cG9ydD04MAo="`) {
		t.Errorf("inspect: exit %d:\n%s", code, out)
	}
	code, out, _ = captureRun(t, cmd("inspect", "--pretty", "log.conf")...)
	if code != 0 || !strings.Contains(out, "Name:     log.conf\n") || !strings.Contains(out, "Used by:  web\n") || !strings.HasSuffix(out, "Data:\nlevel=debug\n") {
		t.Errorf("inspect --pretty: exit %d:\n%s", code, out)
	}
	code, out, errOut = captureRun(t, cmd("rm", "log.conf", "used")...)
	if code != 1 || out != "log.conf\n" || !strings.Contains(errOut, `config "used" is in use by service web`) {
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
	if len(fake.configs) != 2 {
		t.Errorf("bad input changed the configs: %d", len(fake.configs))
	}
}
