package container

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/worker/process/supervise"
)

// The test binary doubles as the task supervisor (SHOAL_SUPERVISE=1, the
// way cmd/shoal runs "shoal __supervise").
var testCgroupParent string

func TestMain(m *testing.M) {
	if os.Getenv("SHOAL_SUPERVISE") == "1" {
		os.Exit(supervise.Supervise(os.Args[1:]))
	}
	testCgroupParent = "shoal-container-test-" + strconv.Itoa(os.Getpid())
	code := m.Run()
	for _, d := range []string{filepath.Join(cgroupRoot, testCgroupParent)} {
		_ = syscall.Rmdir(d)
	}
	if ents, err := os.ReadDir(cgroupRoot); err == nil {
		for _, e := range ents {
			_ = syscall.Rmdir(filepath.Join(cgroupRoot, e.Name(), testCgroupParent))
		}
	}
	os.Exit(code)
}

// requireEnv makes tests fail, rather than skip, without runc (as the
// docker runtime's tests do without an Engine).
const requireEnv = "SHOAL_REQUIRE_DOCKER"

// requireRunc skips the test when this node cannot run containers with
// runc (fails it when SHOAL_REQUIRE_DOCKER=1).
func requireRunc(t *testing.T) {
	t.Helper()
	if _, err := Check(""); err != nil {
		if os.Getenv(requireEnv) == "1" {
			t.Fatalf("%s=1 but this node cannot run containers: %v", requireEnv, err)
		}
		t.Skipf("cannot run containers here: %v", err)
	}
}

// dirImages is a test image store: images are directories used as the one
// lower layer of each task's OverlayFS root.
type dirImages struct {
	root string // mounts and writable layers below
	mu   sync.Mutex
	imgs map[string]dirImage
}

type dirImage struct {
	dir string
	cfg v1.Config
}

func newDirImages(t *testing.T) *dirImages {
	return &dirImages{root: t.TempDir(), imgs: map[string]dirImage{}}
}

func (d *dirImages) add(ref, dir string, cfg v1.Config) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.imgs[ref] = dirImage{dir: dir, cfg: cfg}
}

func (d *dirImages) Image(_ context.Context, ref string, _ *pb.RegistryAuth) (Image, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	img, ok := d.imgs[ref]
	if !ok {
		return Image{}, permanent("no image %s", ref)
	}
	return Image{ID: ref, Config: img.cfg}, nil
}

func (d *dirImages) MountRootFS(_ context.Context, taskID string, img Image, readOnly bool) (string, error) {
	d.mu.Lock()
	lower := d.imgs[img.ID].dir
	d.mu.Unlock()
	base := filepath.Join(d.root, taskID)
	mnt := filepath.Join(base, "rootfs")
	if isMountPoint(mnt) {
		return mnt, nil
	}
	for _, s := range []string{"upper", "work", "rootfs"} {
		if err := os.MkdirAll(filepath.Join(base, s), 0o755); err != nil {
			return "", err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, filepath.Join(base, "upper"), filepath.Join(base, "work"))
	if readOnly {
		opts = "lowerdir=" + lower
	}
	if err := syscall.Mount("overlay", mnt, "overlay", 0, opts); err != nil {
		return "", fmt.Errorf("mount overlay: %w", err)
	}
	return mnt, nil
}

func (d *dirImages) UnmountRootFS(_ context.Context, taskID string) error {
	base := filepath.Join(d.root, taskID)
	mnt := filepath.Join(base, "rootfs")
	if isMountPoint(mnt) {
		if err := syscall.Unmount(mnt, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			return err
		}
	}
	return os.RemoveAll(base)
}

func isMountPoint(p string) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == p {
			return true
		}
	}
	return false
}

var (
	taskImageOnce sync.Once
	taskImageDir  string
	taskImageErr  error
)

// taskImage is a directory with the conformance task program, static, as
// /conformance-task, the isolation tests' /probe, and a passwd with a user "app" (uid 1000): an image
// FROM scratch, as it were. Built once per test binary.
func taskImage(t *testing.T) string {
	t.Helper()
	taskImageOnce.Do(func() {
		dir, err := os.MkdirTemp("", "shoal-container-image-")
		if err != nil {
			taskImageErr = err
			return
		}
		taskImageDir = dir
		build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, "conformance-task"),
			"github.com/shoal-cluster/shoal/worker/runtimetest/cmd/conformance-task")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			taskImageErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		probe := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, "probe"), "./testdata/probe")
		probe.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := probe.CombinedOutput(); err != nil {
			taskImageErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		if err := os.MkdirAll(filepath.Join(dir, "etc"), 0o755); err != nil {
			taskImageErr = err
			return
		}
		files := map[string]string{
			"etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
			"etc/group":  "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
		}
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				taskImageErr = err
				return
			}
		}
	})
	if taskImageErr != nil {
		t.Fatalf("the task image: %v", taskImageErr)
	}
	return taskImageDir
}

// testImages is an image store holding the task image as "task:1".
func testImages(t *testing.T) *dirImages {
	imgs := newDirImages(t)
	imgs.add("task:1", taskImage(t), v1.Config{Entrypoint: []string{"/conformance-task"}})
	return imgs
}

func testConfig(t testing.TB, dir string, imgs Images) Config {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Dir:               dir,
		Images:            imgs,
		AdvertiseIP:       "127.0.0.1",
		SupervisorCommand: []string{exe},
		SupervisorEnv:     []string{"SHOAL_SUPERVISE=1", "GORACE=atexit_sleep_ms=0"},
		CgroupParent:      testCgroupParent,
		Logger:            slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// newStateDir is a fresh state directory whose tasks are all removed when
// the test ends.
func newStateDir(t *testing.T, imgs Images, opts ...func(*Config)) string {
	dir := filepath.Join(t.TempDir(), "container")
	t.Cleanup(func() {
		cfg := testConfig(t, dir, imgs)
		for _, o := range opts {
			o(&cfg)
		}
		r, err := New(cfg)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		list, err := r.List(ctx)
		if err != nil {
			t.Errorf("cleanup: %v", err)
		}
		for _, info := range list {
			if err := r.Remove(ctx, info.TaskID); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	return dir
}

func newRuntime(t *testing.T, dir string, imgs Images, opts ...func(*Config)) *Runtime {
	t.Helper()
	cfg := testConfig(t, dir, imgs)
	for _, o := range opts {
		o(&cfg)
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r
}

// testWriter sends logs to the test's log, until the test ends.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	defer func() { _ = recover() }() // a log line after the test ended
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// withNetwork puts the runtime's tasks on a task network.
func withNetwork(n Network) func(*Config) {
	return func(c *Config) { c.Network = n }
}
