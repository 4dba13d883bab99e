package main

import (
	"bytes"
	"context"
	"fmt"
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
)

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
	host := serveFakeControl(t, fake)
	cmd := func(args ...string) []string {
		return append(append([]string{"config", args[0]}, host...), args[1:]...)
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
