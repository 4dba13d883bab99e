package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/shoal-cluster/shoal/internal/registrytest"
)

// TestImageCommands: `shoal image load|ls|df|rm|prune` on a node's image
// store, from a tarball holding two images that share a base layer, and
// the errors: no store yet, a file that is not an image, not root.
func TestImageCommands(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the image store needs root")
	}
	data := t.TempDir()
	tarPath := filepath.Join(t.TempDir(), "images.tar")
	base := testLayer(t, "base", strings.Repeat("b", 300000))
	refs := map[name.Reference]v1.Image{}
	for _, n := range []string{"a", "b"} {
		img, err := mutate.AppendLayers(empty.Image, base, testLayer(t, n, strings.Repeat(n, 1000)))
		if err != nil {
			t.Fatal(err)
		}
		tag, _ := name.NewTag("test/" + n + ":v1")
		refs[tag] = img
	}
	if err := tarball.MultiRefWriteToFile(tarPath, refs); err != nil {
		t.Fatal(err)
	}

	out, errOut, code := cli(t, "image", "ls", "--data-dir", data)
	if code != 1 || !strings.Contains(errOut, "no image store in data dir "+data) {
		t.Fatalf("ls without a store: %d %q %q", code, out, errOut)
	}
	_, errOut, code = cli(t, "image", "load", "--data-dir", data, "/etc/hostname")
	if code != 1 || !strings.Contains(errOut, "is not an image: want a `docker save` tarball") {
		t.Fatalf("load of a text file: %d %q", code, errOut)
	}
	out, errOut, code = cli(t, "image", "load", "--data-dir", data, tarPath)
	if code != 0 || !strings.Contains(out, "Loaded image: test/a:v1\n") || !strings.Contains(out, "Loaded image: test/b:v1\n") {
		t.Fatalf("load: %d %q %q", code, out, errOut)
	}
	layers, _ := os.ReadDir(filepath.Join(data, "worker", "images", "layers"))
	if len(layers) != 3 {
		t.Fatalf("%d layer directories, want 3", len(layers))
	}
	out, _, code = cli(t, "image", "ls", "--data-dir", data)
	if code != 0 || !strings.Contains(out, "REPOSITORY") || !strings.Contains(out, "test/a") || !strings.Contains(out, "test/b") {
		t.Fatalf("ls: %d %q", code, out)
	}
	out, _, code = cli(t, "image", "df", "--data-dir", data)
	// Each image: 293KiB of base shared, 1000B of its own.
	if code != 0 || !strings.Contains(out, "3 layers, 294.9KiB on disk") || strings.Count(out, "293.0KiB      1000B") != 2 {
		t.Fatalf("df: %d\n%s", code, out)
	}
	out, _, code = cli(t, "image", "rm", "--data-dir", data, "test/a:v1", "test/nothing")
	if code != 1 || !strings.Contains(out, "Untagged: test/a:v1\nDeleted: sha256:") {
		t.Fatalf("rm: %d %q", code, out)
	}
	out, _, code = cli(t, "image", "prune", "--data-dir", data)
	if code != 0 || !strings.Contains(out, "Total reclaimed space: 0B") {
		t.Fatalf("prune: %d %q", code, out)
	}

	// Not root.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	binDir, err := os.MkdirTemp("", "shoal-nobody")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(binDir)
	bin, err := os.ReadFile(shoalBin())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(binDir, "shoal"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "shoal"), "image", "ls", "--data-dir", data)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err == nil || !strings.Contains(stderr.String(), "needs root") {
		t.Fatalf("ls as nobody: %v %q", err, stderr.String())
	}
}

// testLayer is a layer holding one file.
func testLayer(t *testing.T, name, body string) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), ModTime: time.Unix(0, 0)}); err != nil {
		t.Fatal(err)
	}
	tw.Write([]byte(body))
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestImagePull: `shoal image pull` fills the node's store from a real
// registry, with the credentials of the Docker client config, and says
// why when the registry refuses.
func TestImagePull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the image store needs root")
	}
	reg := registrytest.StartT(t, registrytest.Options{Users: map[string]string{"alice": "right"}})
	img, err := mutate.AppendLayers(empty.Image, testLayer(t, "pulled", "p"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ref, digest, err := reg.PushImage(ctx, img, "test/pulled:v1", "alice", "right")
	if err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	run := func(dockerConfig string, args ...string) (string, string, int) {
		cmd := cliCommand(ctx, args...)
		cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+dockerConfig)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return out.String(), errb.String(), cmd.ProcessState.ExitCode()
	}
	_, errOut, code := run(t.TempDir(), "image", "pull", "--data-dir", data, ref)
	if code != 1 || !strings.Contains(errOut, "the registry refused access") || !strings.Contains(errOut, "--with-registry-auth") {
		t.Fatalf("pull without credentials: %d %q", code, errOut)
	}
	cfg, err := reg.DockerConfig(filepath.Join(t.TempDir(), "docker"), "alice", "right")
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, code := run(cfg, "image", "pull", "--data-dir", data, ref)
	if code != 0 || !strings.Contains(out, "Digest: "+reg.Host+"/test/pulled@"+digest) || !strings.Contains(errOut, "pulling 1/1 layers") {
		t.Fatalf("pull: %d %q %q", code, out, errOut)
	}
	out, _, code = cli(t, "image", "ls", "--data-dir", data)
	if code != 0 || !strings.Contains(out, reg.Host+"/test/pulled   v1") {
		t.Fatalf("ls after the pull: %d %q", code, out)
	}
}
