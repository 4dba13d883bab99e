package registry_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/shoal-cluster/shoal/internal/registry"
	"github.com/shoal-cluster/shoal/internal/registrytest"
	pb "github.com/shoal-cluster/shoal/proto"
)

func TestDigestHelpers(t *testing.T) {
	for _, c := range []struct{ image, stripped, digest, host string }{
		{"127.0.0.1:5000/shoal/hello:v1@sha256:abc", "127.0.0.1:5000/shoal/hello:v1", "sha256:abc", ""},
		{"127.0.0.1:5000/shoal/hello:v1", "127.0.0.1:5000/shoal/hello:v1", "", "127.0.0.1:5000"},
		{"nginx", "nginx", "", "index.docker.io"},
	} {
		if got := registry.StripDigest(c.image); got != c.stripped {
			t.Errorf("StripDigest(%q) = %q, want %q", c.image, got, c.stripped)
		}
		if got := registry.Digest(c.image); got != c.digest {
			t.Errorf("Digest(%q) = %q, want %q", c.image, got, c.digest)
		}
		if got := registry.HasDigest(c.image); got != (c.digest != "") {
			t.Errorf("HasDigest(%q) = %v", c.image, got)
		}
		if c.host != "" && registry.Host(c.image) != c.host {
			t.Errorf("Host(%q) = %q, want %q", c.image, registry.Host(c.image), c.host)
		}
	}
	id := registry.AuthSecretID("svc1")
	if svc, ok := registry.AuthSecretService(id); !ok || svc != "svc1" {
		t.Errorf("AuthSecretService(%q) = %q %v", id, svc, ok)
	}
	if _, ok := registry.AuthSecretService("secret1"); ok {
		t.Error("a plain secret ID names registry credentials")
	}
}

// TestResolveAgainstRealRegistries pins tags through Debian's registry:
// plain HTTP, then TLS with htpasswd users and the CA where the Engine
// would trust it.
func TestResolveAgainstRealRegistries(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	img, err := random.Image(256, 2)
	if err != nil {
		t.Fatal(err)
	}

	plain := registrytest.StartT(t, registrytest.Options{})
	ref, digest, err := plain.PushImage(ctx, img, "shoal/rand:v1", "", "")
	if err != nil {
		t.Fatal(err)
	}
	got, err := registry.Resolve(ctx, ref, nil)
	if err != nil || got != ref+"@"+digest {
		t.Fatalf("Resolve(%s) = %q, %v; want %s@%s", ref, got, err, ref, digest)
	}
	if again, err := registry.Resolve(ctx, got, nil); err != nil || again != got {
		t.Errorf("a pinned image resolves to itself: %q, %v", again, err)
	}

	origCerts := registry.CertsDir
	registry.CertsDir = t.TempDir()
	t.Cleanup(func() { registry.CertsDir = origCerts })
	private := registrytest.StartT(t, registrytest.Options{TLS: true, Users: map[string]string{"alice": "right"}})
	if err := private.Trust(registry.CertsDir); err != nil {
		t.Fatal(err)
	}
	pref, pdigest, err := private.PushImage(ctx, img, "shoal/rand:v1", "alice", "right")
	if err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name  string
		image string
		auth  *pb.RegistryAuth
		want  string // the pinned image, or
		is    error  // the error it wraps, or
		msg   string // words of the error
	}{
		{name: "private with credentials", image: pref, auth: &pb.RegistryAuth{Server: private.Host, Username: "alice", Password: "right"}, want: pref + "@" + pdigest},
		{name: "private without credentials", image: pref, is: registry.ErrUnauthorized, msg: "UNAUTHORIZED"},
		{name: "private, wrong password", image: pref, auth: &pb.RegistryAuth{Username: "alice", Password: "wrong"}, is: registry.ErrUnauthorized},
		{name: "no such tag", image: plain.Host + "/shoal/rand:v9", is: registry.ErrNotFound, msg: "MANIFEST_UNKNOWN"},
		{name: "no such repository", image: plain.Host + "/shoal/none:v1", is: registry.ErrNotFound},
		{name: "bad reference", image: "Shoal/UPPER::v1", is: registry.ErrInvalidReference},
		{name: "registry down", image: "127.0.0.1:1/shoal/rand:v1", msg: "cannot be reached"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := registry.Resolve(ctx, c.image, c.auth)
			switch {
			case c.want != "":
				if err != nil || got != c.want {
					t.Fatalf("got %q, %v; want %q", got, err, c.want)
				}
				return
			case err == nil:
				t.Fatalf("got %q, want an error", got)
			case c.is != nil && !errors.Is(err, c.is):
				t.Fatalf("error %v, want one wrapping %v", err, c.is)
			case c.is == nil && (errors.Is(err, registry.ErrNotFound) || errors.Is(err, registry.ErrUnauthorized)):
				t.Fatalf("error %v says the registry answered", err)
			case !strings.Contains(err.Error(), c.msg):
				t.Fatalf("error %v lacks %q", err, c.msg)
			}
		})
	}

	// Without the CA where it is looked for, TLS fails: nothing is pinned.
	private.Untrust()
	if _, err := registry.Resolve(ctx, pref, &pb.RegistryAuth{Username: "alice", Password: "right"}); err == nil {
		t.Error("resolved through TLS without trusting the CA")
	}
}

func TestCredentialsFor(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("HOME", dir) // no ~/.docker/config.json of the machine's user
	cfg := filepath.Join(dir, "docker")
	if err := os.MkdirAll(cfg, 0o700); err != nil {
		t.Fatal(err)
	}
	// {"auths":{"127.0.0.1:5443":{"auth":base64("alice:s3cret")}}}
	if err := os.WriteFile(filepath.Join(cfg, "config.json"), []byte(`{"auths":{"127.0.0.1:5443":{"auth":"YWxpY2U6czNjcmV0"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", cfg)
	a, err := registry.CredentialsFor("127.0.0.1:5443/shoal/hello:v1")
	if err != nil || a.GetUsername() != "alice" || a.GetPassword() != "s3cret" || a.GetServer() != "127.0.0.1:5443" {
		t.Fatalf("CredentialsFor = %+v, %v", a, err)
	}
	_, err = registry.CredentialsFor("127.0.0.1:5999/shoal/hello:v1")
	if err == nil || !strings.Contains(err.Error(), "docker login 127.0.0.1:5999") {
		t.Fatalf("no credentials: %v", err)
	}
}
