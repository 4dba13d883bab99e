package controlapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/shoal-cluster/shoal/internal/registry"
	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestPinImage checks when the managers ask the registry, what they store,
// and what they say when it cannot tell.
func TestPinImage(t *testing.T) {
	const (
		v1       = "127.0.0.1:5000/shoal/hello:v1"
		v2       = "127.0.0.1:5000/shoal/hello:v2"
		digestA  = "sha256:aaaa"
		digestB  = "sha256:bbbb"
		always   = pb.ResolveImage_RESOLVE_IMAGE_ALWAYS
		changed  = pb.ResolveImage_RESOLVE_IMAGE_CHANGED
		never    = pb.ResolveImage_RESOLVE_IMAGE_NEVER
		noAnswer = "registry down"
	)
	// The registry holds v1 at digestB (moved since digestA was pinned)
	// and v2 at digestB; "missing" is not there; "down" cannot be reached.
	right := &pb.RegistryAuth{Server: "127.0.0.1:5000", Username: "u", Password: "right"}
	wrong := &pb.RegistryAuth{Server: "127.0.0.1:5000", Username: "u", Password: "wrong"}
	resolve := func(_ context.Context, image string, auth *pb.RegistryAuth) (string, error) {
		switch {
		case strings.Contains(image, "private") && auth.GetPassword() != "right":
			return "", fmt.Errorf("image %s: %w (127.0.0.1:5000): UNAUTHORIZED", image, registry.ErrUnauthorized)
		case strings.Contains(image, "missing"):
			return "", fmt.Errorf("image %s: %w (127.0.0.1:5000): MANIFEST_UNKNOWN", image, registry.ErrNotFound)
		case strings.Contains(image, "down"):
			return "", errors.New(noAnswer)
		}
		return image + "@" + digestB, nil
	}
	spec := func(runtime, image string) *pb.ServiceSpec {
		return &pb.ServiceSpec{Task: &pb.TaskSpec{Runtime: runtime, Container: &pb.ContainerSpec{Image: image}}}
	}
	for _, c := range []struct {
		name    string
		spec    *pb.ServiceSpec
		cur     *pb.ServiceSpec
		mode    pb.ResolveImage
		auth    *pb.RegistryAuth
		want    string
		warning bool
		code    codes.Code
		advice  string // what a refusal says to do
	}{
		{name: "create pins", spec: spec("docker", v1), mode: always, want: v1 + "@" + digestB},
		{name: "create with changed pins", spec: spec("docker", v1), mode: changed, want: v1 + "@" + digestB},
		{name: "never", spec: spec("docker", v1), mode: never, want: v1},
		{name: "a digest given is kept", spec: spec("docker", v1+"@"+digestA), mode: always, want: v1 + "@" + digestA},
		{name: "process runtime", spec: spec("process", "/bin/hello"), mode: always, want: "/bin/hello"},
		{name: "update, same tag, always: resolved again", spec: spec("docker", v1), cur: spec("docker", v1+"@"+digestA), mode: always, want: v1 + "@" + digestB},
		{name: "update, same tag, changed: digest kept", spec: spec("docker", v1), cur: spec("docker", v1+"@"+digestA), mode: changed, want: v1 + "@" + digestA},
		{name: "update to v2, changed", spec: spec("docker", v2), cur: spec("docker", v1+"@"+digestA), mode: changed, want: v2 + "@" + digestB},
		{name: "registry down: unpinned, warned", spec: spec("docker", "127.0.0.1:5000/down:v1"), mode: always, want: "127.0.0.1:5000/down:v1", warning: true},
		{name: "unknown image refused", spec: spec("docker", "127.0.0.1:5000/missing:v1"), mode: always, code: codes.InvalidArgument, advice: "--resolve-image never"},
		{name: "private, right credentials: pinned", spec: spec("docker", "127.0.0.1:5000/private:v1"), mode: always, auth: right, want: "127.0.0.1:5000/private:v1@" + digestB},
		{name: "private, wrong credentials refused", spec: spec("docker", "127.0.0.1:5000/private:v1"), mode: always, auth: wrong, code: codes.InvalidArgument, advice: "docker login 127.0.0.1:5000"},
		{name: "private, no credentials: unpinned, warned", spec: spec("docker", "127.0.0.1:5000/private:v1"), mode: always, want: "127.0.0.1:5000/private:v1", warning: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := &Server{resolve: resolve, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			warnings, err := s.pinImage(context.Background(), c.spec, c.cur, c.mode, c.auth)
			if c.code != codes.OK {
				if status.Code(err) != c.code || !strings.Contains(err.Error(), c.advice) {
					t.Fatalf("err %v, want %s with what to do", err, c.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.spec.GetTask().GetContainer().GetImage(); got != c.want {
				t.Errorf("image %q, want %q", got, c.want)
			}
			if (len(warnings) > 0) != c.warning {
				t.Errorf("warnings %q, want some: %v", warnings, c.warning)
			}
			if c.warning && !strings.Contains(warnings[0], noAnswer) && !strings.Contains(warnings[0], "UNAUTHORIZED") {
				t.Errorf("the warning %q does not say why", warnings[0])
			}
		})
	}
}

func TestRedacted(t *testing.T) {
	svc := &pb.Service{Id: "s1", SealedRegistryAuth: []byte("sealed"), RegistryAuthServer: "127.0.0.1:5000"}
	out := redacted(svc)
	if len(out.GetSealedRegistryAuth()) != 0 || out.GetRegistryAuthServer() != "127.0.0.1:5000" {
		t.Errorf("redacted %+v", out)
	}
	if len(svc.GetSealedRegistryAuth()) == 0 {
		t.Error("redacted changed the stored service")
	}
}
