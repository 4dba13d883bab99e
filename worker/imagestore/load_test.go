package imagestore

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/shoal-cluster/shoal/internal/registry"
	"github.com/shoal-cluster/shoal/internal/registrytest"
)

var (
	imagesOnce sync.Once
	imagesErr  error
)

// savedHello writes `docker save shoal/hello:TAG` from the local Docker
// Engine (building the sample images with scripts/images.sh when
// missing) and returns the file; it skips t without an Engine (fails it
// when SHOAL_REQUIRE_DOCKER=1).
func savedHello(t *testing.T, tag string) string {
	t.Helper()
	if err := exec.Command("docker", "info").Run(); err != nil {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("%s=1 but the Docker Engine does not answer: %v", RequireEnv, err)
		}
		t.Skipf("no Docker Engine: %v", err)
	}
	imagesOnce.Do(func() {
		for _, tg := range []string{"v1", "v2", "unhealthy"} {
			if exec.Command("docker", "image", "inspect", "shoal/hello:"+tg).Run() != nil {
				if out, err := exec.Command("../../scripts/images.sh").CombinedOutput(); err != nil {
					imagesErr = errors.New(err.Error() + ": " + string(out))
				}
				return
			}
		}
	})
	if imagesErr != nil {
		t.Fatalf("build the sample images: %v", imagesErr)
	}
	p := filepath.Join(t.TempDir(), "hello-"+tag+".tar")
	if out, err := exec.Command("docker", "save", "-o", p, "shoal/hello:"+tag).CombinedOutput(); err != nil {
		t.Fatalf("docker save: %v: %s", err, out)
	}
	return p
}

// TestLoadDockerSave: the Engine's own `docker save` of shoal/hello:v1
// loads, by its short and full names and its ID, with its config; a
// second load reuses the layers; a task's root holds /hello.
func TestLoadDockerSave(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	p := savedHello(t, "v1")
	imgs, err := s.Load(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 || !slices.Equal(imgs[0].Refs, []string{"index.docker.io/shoal/hello:v1"}) {
		t.Fatalf("loaded %+v", imgs)
	}
	img := imgs[0]
	engineID, err := exec.Command("docker", "image", "inspect", "-f", "{{.ID}}", "shoal/hello:v1").Output()
	if err != nil {
		t.Fatal(err)
	}
	if img.ID != strings.TrimSpace(string(engineID)) {
		t.Errorf("ID %s, the Engine's %s", img.ID, engineID)
	}
	c := img.Config
	if !slices.Equal(c.Entrypoint, []string{"/hello"}) || c.Healthcheck == nil || len(c.Healthcheck.Test) == 0 || c.ExposedPorts["80/tcp"] != struct{}{} ||
		c.Labels["org.opencontainers.image.version"] != "v1" {
		t.Errorf("config: %+v", c)
	}
	for _, ref := range []string{"shoal/hello:v1", "docker.io/shoal/hello:v1", "index.docker.io/shoal/hello:v1", img.ID, img.ShortID(), img.ID[:10]} {
		got, err := s.Resolve(ref)
		if err != nil || got.ID != img.ID {
			t.Errorf("resolve %s: %s, %v", ref, got.ID, err)
		}
	}
	for _, ref := range []string{"shoal/hello:v9", "other", "sha256:00"} {
		if _, err := s.Resolve(ref); !errors.Is(err, ErrImageNotFound) {
			t.Errorf("resolve %s: %v, want ErrImageNotFound", ref, err)
		}
	}
	layers := names(t, filepath.Join(s.Root(), "layers"))
	if _, err := s.Load(ctx, p); err != nil {
		t.Fatal(err)
	}
	if got := names(t, filepath.Join(s.Root(), "layers")); !slices.Equal(got, layers) {
		t.Errorf("a second load changed the layers: %v, then %v", layers, got)
	}
	root, err := s.MountRootFS(ctx, "hello", img, true)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(root, "hello"))
	if err != nil || fi.Mode()&0o111 == 0 {
		t.Fatalf("/hello in the task: %v, %v", fi, err)
	}
}

// TestLoadOCILayout: an OCI image layout loads, as a directory, a tar and
// a gzipped tar, named by its annotations.
func TestLoadOCILayout(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	img := imageOf(t, "/oci", layerOf(t, file("oci", "layout")))
	dir := t.TempDir()
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{
		annotationRefName: "example.com/test/oci:v1",
	})); err != nil {
		t.Fatal(err)
	}
	id, _ := img.ConfigName()
	mdigest, _ := img.Digest()
	tarPath := tarDir(t, dir, false)
	gzPath := tarDir(t, dir, true)
	for _, p := range []string{dir, tarPath, gzPath} {
		imgs, err := s.Load(ctx, p)
		if err != nil {
			t.Fatalf("load %s: %v", p, err)
		}
		if len(imgs) != 1 || imgs[0].ID != id.String() || !slices.Equal(imgs[0].Refs, []string{"example.com/test/oci:v1"}) {
			t.Fatalf("loaded from %s: %+v", p, imgs)
		}
	}
	if got, err := s.Resolve("example.com/test/oci:v1@" + mdigest.String()); err != nil || got.ID != id.String() {
		t.Errorf("resolve by digest: %v, %v", got.ID, err)
	}
	if got := names(t, filepath.Join(s.Root(), "tmp")); len(got) != 0 {
		t.Errorf("tmp/ holds %v after loads", got)
	}
}

// TestLoadRefusesNonImages: what is not an image is refused, saying what
// is wanted, and the store stays empty.
func TestLoadRefusesNonImages(t *testing.T) {
	s := openStore(t)
	dir := t.TempDir()
	text := filepath.Join(dir, "notes.txt")
	must(t, os.WriteFile(text, []byte("hello\n"), 0o644))
	plainTar := filepath.Join(dir, "files.tar")
	must(t, os.WriteFile(plainTar, tarOf(t, file("a", "b")), 0o644))
	for _, c := range []struct{ path, want string }{
		{text, "is not an image"},
		{plainTar, "is not an image"},
		{t.TempDir(), "is not an image"},
		{filepath.Join(dir, "missing.tar"), "no such file"},
	} {
		_, err := s.Load(t.Context(), c.path)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("load %s: %v, want %q", c.path, err, c.want)
		}
	}
	if imgs, _ := s.List(); len(imgs) != 0 {
		t.Errorf("images after failed loads: %v", imgs)
	}
}

// TestPull: an image pulls from a real registry (plain HTTP, and TLS
// with users, its CA trusted as the Engine's is), found afterwards by
// its tag and its digest; layers the store has are not fetched again;
// without credentials the registry refuses.
func TestPull(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	plain := registrytest.StartT(t, registrytest.Options{})
	private := registrytest.StartT(t, registrytest.Options{TLS: true, Users: map[string]string{"alice": "right"}})
	certs := t.TempDir()
	old := registry.CertsDir
	registry.CertsDir = certs
	t.Cleanup(func() { registry.CertsDir = old })
	if err := private.Trust(certs); err != nil {
		t.Fatal(err)
	}
	base := layerOf(t, file("base", strings.Repeat("b", 5000)))
	img := imageOf(t, "/pulled", base, layerOf(t, file("top", "t")))
	ref, digest, err := plain.PushImage(ctx, img, "test/pull:v1", "", "")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		msgs []string
	)
	pctx := WithProgress(ctx, func(m string) {
		mu.Lock()
		msgs = append(msgs, m)
		mu.Unlock()
	})
	got, err := s.Pull(pctx, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(msgs) < 3 || msgs[0] != "pulling "+ref || msgs[len(msgs)-1] != "pulling 2/2 layers" {
		t.Errorf("progress %q, want \"pulling %s\" first and \"pulling 2/2 layers\" last", msgs, ref)
	}
	mu.Unlock()
	id, _ := img.ConfigName()
	if got.ID != id.String() || !slices.Equal(got.Config.Cmd, []string{"/pulled"}) || len(got.Layers) != 2 {
		t.Fatalf("pulled %+v", got)
	}
	for _, r := range []string{ref, ref + "@" + digest, plain.Host + "/test/pull@" + digest} {
		if res, err := s.Resolve(r); err != nil || res.ID != got.ID {
			t.Errorf("resolve %s: %s, %v", r, res.ID, err)
		}
	}

	// Through TLS with a user: refused without credentials, pulled with.
	img2 := imageOf(t, "/private", base, layerOf(t, file("top", "private")))
	pref, _, err := private.PushImage(ctx, img2, "test/private:v1", "alice", "right")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pull(ctx, pref, nil); !errors.Is(err, registry.ErrUnauthorized) || !strings.Contains(err.Error(), "--with-registry-auth") {
		t.Fatalf("pull without credentials: %v", err)
	}
	if _, err := s.Pull(ctx, pref, &authn.Basic{Username: "alice", Password: "wrong"}); !errors.Is(err, registry.ErrUnauthorized) || strings.Contains(err.Error(), "--with-registry-auth") {
		t.Fatalf("pull with a wrong password: %v", err)
	}
	if _, err := s.Pull(ctx, pref, &authn.Basic{Username: "alice", Password: "right"}); err != nil {
		t.Fatal(err)
	}
	// The base came with the first pull: three layers for four.
	if got := names(t, filepath.Join(s.Root(), "layers")); len(got) != 3 {
		t.Errorf("layers %v, want 3", got)
	}
	for _, c := range []struct {
		ref  string
		is   error
		want string
	}{
		{plain.Host + "/test/none:v1", registry.ErrNotFound, "MANIFEST_UNKNOWN"},
		{plain.Host + "/test/pull:v9", registry.ErrNotFound, "MANIFEST_UNKNOWN"},
		{"127.0.0.1:1/test/pull:v1", nil, "registry 127.0.0.1:1 cannot be reached"},
		{"Bad//Ref", nil, "not a valid image reference"},
	} {
		_, err := s.Pull(ctx, c.ref, nil)
		if err == nil || c.is != nil && !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("pull %s: %v, want %v and %q", c.ref, err, c.is, c.want)
		}
	}
	if imgs, _ := s.List(); len(imgs) != 2 {
		t.Errorf("%d images after failed pulls, want the 2 pulled", len(imgs))
	}

	// A multi-platform index: this machine's platform is chosen, and the
	// index's digest (what a service is pinned to) finds it.
	mine := imageOf(t, "/mine", layerOf(t, file("platform", "mine")))
	other := imageOf(t, "/other", layerOf(t, file("platform", "other")))
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: other, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "s390x"}}},
		mutate.IndexAddendum{Add: mine, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: Platform().Architecture}}})
	mref := plain.Host + "/test/multi:v1"
	tag, err := name.NewTag(mref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(tag, idx, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	idxDigest, _ := idx.Digest()
	got, err = s.Pull(ctx, mref+"@"+idxDigest.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if mineID, _ := mine.ConfigName(); got.ID != mineID.String() {
		t.Fatalf("pulled %s from a multi-platform index, want this platform's %s", got.ID, mineID)
	}
	for _, r := range []string{mref, mref + "@" + idxDigest.String()} {
		if res, err := s.Resolve(r); err != nil || res.ID != got.ID {
			t.Errorf("resolve %s: %s, %v", r, res.ID, err)
		}
	}
}

// tarDir tars dir (gzipped when gz) and returns the file.
func tarDir(t *testing.T, dir string, gz bool) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "layout.tar")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var w io.Writer = f
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(f)
		w = zw
	}
	tw := tar.NewWriter(w)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		h, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		h.Name = rel
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			_, err = tw.Write(data)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	must(t, tw.Close())
	if zw != nil {
		must(t, zw.Close())
	}
	return out
}
