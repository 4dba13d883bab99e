package container

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/shoal-cluster/shoal/internal/poll"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker"
	"github.com/shoal-cluster/shoal/worker/imagestore"
)

// layer is a tar layer of files (name: content; content "" with a name
// ending in "/" is a directory).
func layer(t *testing.T, files map[string][]byte, modes map[string]int64) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, data := range files {
		hdr := &tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}
		if m, ok := modes[name]; ok {
			hdr.Mode = m
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// savedTaskImage is the test task image as a `docker save` tarball named
// ref: a base layer with the programs and /etc, a second one that deletes
// /etc/group and adds /data/file, and a health check.
func savedTaskImage(t *testing.T, ref string, health []string) string {
	t.Helper()
	dir := taskImage(t)
	read := func(p string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	base := layer(t, map[string][]byte{
		"probe": read("probe"), "conformance-task": read("conformance-task"),
		"etc/passwd": read("etc/passwd"), "etc/group": read("etc/group"),
	}, map[string]int64{"probe": 0o755, "conformance-task": 0o755})
	top := layer(t, map[string][]byte{"etc/.wh.group": nil, "data/file": []byte("from the top layer")}, nil)
	img, err := mutate.AppendLayers(empty.Image, base, top)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", imagestore.Platform().Architecture
	cf.Config.Entrypoint = []string{"/probe"}
	cf.Config.Env = []string{"PATH=/"}
	if health != nil {
		cf.Config.Healthcheck = &v1.HealthConfig{Test: health, Interval: 100 * time.Millisecond, Retries: 2}
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "image.tar")
	if err := tarball.WriteToFile(p, tag, img); err != nil {
		t.Fatal(err)
	}
	return p
}

// storeRuntime is a runtime on a real image store holding the images of
// the tarballs.
func storeRuntime(t *testing.T, tarballs ...string) (*Runtime, *imagestore.Store) {
	t.Helper()
	store, err := imagestore.Open(filepath.Join(t.TempDir(), "images"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	for _, p := range tarballs {
		if _, err := store.Load(context.Background(), p); err != nil {
			t.Fatalf("load %s: %v", p, err)
		}
	}
	imgs := StoreImages(store)
	return newRuntime(t, newStateDir(t, imgs), imgs), store
}

// TestImageStore runs tasks from images loaded into a node's store: the
// upper layer's files are there, the files it deletes are not, and the
// task's root filesystem goes with the task.
func TestImageStore(t *testing.T) {
	requireRunc(t)
	r, store := storeRuntime(t, savedTaskImage(t, "shoal/probe:v1", nil))
	for _, tc := range []struct {
		file, want string
	}{
		{"/data/file", "content: from the top layer\n"},
		{"/etc/group", "missing\n"},
		{"/etc/passwd", "content: " + "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n\n"},
	} {
		task := &pb.Task{Id: "store-" + randomSuffix(), Spec: &pb.TaskSpec{Runtime: Name,
			Container: &pb.ContainerSpec{Image: "shoal/probe:v1", Args: []string{"cat", tc.file}}}}
		ex, out := runToEnd(t, r, task, worker.TaskFiles{})
		if ex.Code != 0 || out != tc.want {
			t.Errorf("cat %s: exit %+v, output %q; want %q", tc.file, ex, out, tc.want)
		}
		if err := r.Remove(context.Background(), task.Id); err != nil {
			t.Fatal(err)
		}
		if mounts, err := store.Tasks(); err != nil || len(mounts) != 0 {
			t.Errorf("the store's task mounts after Remove: %+v, %v; want none", mounts, err)
		}
	}
	// A missing image is pulled; a reference that cannot be one is
	// refused for good.
	task := &pb.Task{Id: "store-bad-" + randomSuffix(), Spec: &pb.TaskSpec{Runtime: Name, Container: &pb.ContainerSpec{Image: "Not A Ref"}}}
	var perm *worker.PermanentError
	if err := r.Prepare(context.Background(), task, worker.TaskFiles{}); err == nil || !errors.As(err, &perm) {
		t.Errorf("Prepare of an invalid reference = %v; want a permanent error", err)
	}
}

// TestImageHealthCheck checks that the image's HEALTHCHECK is run inside
// the container and reported: healthy when it passes, unhealthy after its
// retries when it fails.
func TestImageHealthCheck(t *testing.T) {
	requireRunc(t)
	r, _ := storeRuntime(t,
		savedTaskImage(t, "shoal/probe:healthy", []string{"CMD", "/probe", "hostname"}),
		savedTaskImage(t, "shoal/probe:unhealthy", []string{"CMD", "/probe", "nonsense"}))
	for _, tc := range []struct {
		ref  string
		want pb.HealthState
	}{
		{"shoal/probe:healthy", pb.HealthState_HEALTH_STATE_HEALTHY},
		{"shoal/probe:unhealthy", pb.HealthState_HEALTH_STATE_UNHEALTHY},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		task := &pb.Task{Id: "health-" + randomSuffix(), Spec: &pb.TaskSpec{Runtime: Name,
			Container: &pb.ContainerSpec{Image: tc.ref, Command: []string{"/conformance-task", "sleep"}}}}
		if err := r.Prepare(ctx, task, worker.TaskFiles{}); err != nil {
			t.Fatal(err)
		}
		defer r.Remove(context.Background(), task.Id)
		if err := r.Start(ctx, task.Id); err != nil {
			t.Fatal(err)
		}
		var last pb.HealthState
		var out string
		poll.Until(t, 30*time.Second, tc.ref+" "+tc.want.String(), poll.Bool(func() bool {
			var err error
			last, out, err = r.Health(ctx, task.Id)
			return err == nil && last == tc.want
		}, func() string { return last.String() + ": " + out }))
	}
}
