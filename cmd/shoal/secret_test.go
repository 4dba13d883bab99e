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

// fakeSecrets is a Control server that keeps secrets, as the managers do:
// the value goes in and never comes out.
type fakeSecrets struct {
	pb.UnimplementedControlServer
	mu      sync.Mutex
	secrets []*pb.Secret
	values  map[string][]byte
}

func (f *fakeSecrets) CreateSecret(_ context.Context, req *pb.CreateSecretRequest) (*pb.CreateSecretResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := req.GetSpec().GetAnnotations().GetName()
	if n := len(req.GetSpec().GetData()); n > manager.MaxSecretSize {
		return nil, status.Errorf(codes.InvalidArgument, "secret %q is %d bytes, more than the limit", name, n)
	}
	s := &pb.Secret{
		Id: fmt.Sprintf("sec%022d", len(f.secrets)+1), Size: uint64(len(req.GetSpec().GetData())),
		Meta: &pb.Meta{CreatedAt: time.Now().UnixNano(), UpdatedAt: time.Now().UnixNano()},
		Spec: &pb.SecretSpec{Annotations: req.GetSpec().GetAnnotations()},
	}
	f.secrets = append(f.secrets, s)
	f.values[name] = req.GetSpec().GetData()
	return &pb.CreateSecretResponse{Secret: s}, nil
}

func (f *fakeSecrets) find(ref string) (*pb.Secret, error) {
	for _, s := range f.secrets {
		if s.Id == ref || s.Spec.Annotations.Name == ref {
			return s, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "no secret %q; list secrets with `shoal secret ls`", ref)
}

func (f *fakeSecrets) GetSecret(_ context.Context, req *pb.GetSecretRequest) (*pb.GetSecretResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.find(req.GetRef())
	if err != nil {
		return nil, err
	}
	return &pb.GetSecretResponse{Secret: s, Services: []string{"web"}}, nil
}

func (f *fakeSecrets) ListSecrets(context.Context, *pb.ListSecretsRequest) (*pb.ListSecretsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &pb.ListSecretsResponse{Secrets: f.secrets}, nil
}

func (f *fakeSecrets) RemoveSecret(_ context.Context, req *pb.RemoveSecretRequest) (*pb.RemoveSecretResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if req.GetRef() == "used" {
		return nil, status.Error(codes.FailedPrecondition, `secret "used" is in use by service web; remove it from them first`)
	}
	s, err := f.find(req.GetRef())
	if err != nil {
		return nil, err
	}
	for i, x := range f.secrets {
		if x == s {
			f.secrets = append(f.secrets[:i], f.secrets[i+1:]...)
		}
	}
	return &pb.RemoveSecretResponse{}, nil
}

// withStdin runs fn with data as standard input.
func withStdin(t *testing.T, data []byte, fn func()) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "stdin")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	saved := os.Stdin
	os.Stdin = f
	defer func() { os.Stdin = saved }()
	fn()
}

func TestSecretCommandsFakeServer(t *testing.T) {
	fake := &fakeSecrets{values: map[string][]byte{}}
	host := serveControl(t, fake)
	cmd := func(args ...string) []string {
		return append(append([]string{"secret", args[0]}, host...), args[1:]...)
	}

	file := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(file, []byte("hunter2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := captureRun(t, cmd("create", "--label", "env=prod", "db", file)...)
	if code != 0 || out != "sec0000000000000000000001\n" {
		t.Fatalf("create from a file: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	withStdin(t, []byte("t0k3n"), func() {
		code, out, errOut = captureRun(t, cmd("create", "api", "-")...)
	})
	if code != 0 || out != "sec0000000000000000000002\n" {
		t.Fatalf("create from stdin: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if string(fake.values["db"]) != "hunter2\n" || string(fake.values["api"]) != "t0k3n" {
		t.Errorf("values sent: %q", fake.values)
	}
	if got := fake.secrets[0].Spec.Annotations.Labels; got["env"] != "prod" {
		t.Errorf("labels sent: %v", got)
	}

	code, out, _ = captureRun(t, cmd("ls")...)
	if code != 0 || !strings.Contains(out, "ID                          NAME   SIZE   CREATED    UPDATED") ||
		!strings.Contains(out, "sec0000000000000000000001   db     8B     just now   just now") {
		t.Errorf("ls: exit %d:\n%s", code, out)
	}
	if code, out, _ = captureRun(t, cmd("ls", "-q")...); code != 0 || out != "sec0000000000000000000001\nsec0000000000000000000002\n" {
		t.Errorf("ls -q: exit %d: %q", code, out)
	}
	code, out, _ = captureRun(t, cmd("inspect", "db")...)
	if code != 0 || !strings.Contains(out, `"name": "db"`) || !strings.Contains(out, `"size": "8"`) || !strings.Contains(out, `"services": [`) || strings.Contains(out, "hunter2") {
		t.Errorf("inspect: exit %d:\n%s", code, out)
	}
	code, out, _ = captureRun(t, cmd("inspect", "--pretty", "db")...)
	for _, want := range []string{"Name:  db\n", " env=prod\n", "Size:     8 bytes\n", "Used by:  web\n"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("inspect --pretty lacks %q: exit %d:\n%s", want, code, out)
		}
	}

	code, out, errOut = captureRun(t, cmd("rm", "api", "used", "nope")...)
	if code != 1 || out != "api\n" || !strings.Contains(errOut, `secret "used" is in use by service web`) || !strings.Contains(errOut, `no secret "nope"`) {
		t.Errorf("rm: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if len(fake.secrets) != 1 {
		t.Errorf("%d secrets left after rm, want 1", len(fake.secrets))
	}

	// Bad input: nothing reaches the server.
	huge := filepath.Join(t.TempDir(), "huge")
	if err := os.WriteFile(huge, bytes.Repeat([]byte("x"), maxSecretRead+1), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{cmd("create", "db"), 2, "secret create needs a NAME and a FILE"},
		{cmd("create", "bad/name", file), 2, `invalid secret name "bad/name"`},
		{cmd("create", "x", filepath.Join(t.TempDir(), "missing")), 1, "read the secret's value: open"},
		{cmd("create", "x", huge), 1, "a secret holds at most 512000 bytes (500 KiB)"},
		{cmd("inspect"), 2, "secret inspect needs at least one secret"},
		{cmd("rm"), 2, "secret rm needs at least one secret"},
		{cmd("ls", "extra"), 2, "secret ls takes no arguments"},
	} {
		code, _, errOut := captureRun(t, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit %d with %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
	if len(fake.secrets) != 1 {
		t.Errorf("bad input changed the secrets: %d", len(fake.secrets))
	}
}
