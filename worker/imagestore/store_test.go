package imagestore

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// TestSharedBaseStoredOnce: two images on one base store the base once:
// three layer directories for four layers, and the bytes of each once;
// the disk report tells the shared base from each image's own layer.
func TestSharedBaseStoredOnce(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	baseBody := strings.Repeat("b", 1<<20)
	base := layerOf(t, dir("bin/"), file("bin/base", baseBody))
	a := imageOf(t, "/bin/a", base, layerOf(t, file("bin/a", strings.Repeat("a", 1000))))
	b := imageOf(t, "/bin/b", base, layerOf(t, file("bin/b", strings.Repeat("x", 3000))))
	if _, err := s.Load(ctx, saveTar(t, a, "test/a:v1")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, saveTar(t, b, "test/b:v1")); err != nil {
		t.Fatal(err)
	}
	dirs, err := os.ReadDir(filepath.Join(s.Root(), "layers"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) != 3 {
		t.Fatalf("%d layer directories, want 3 (the base once)", len(dirs))
	}
	stored, err := dirBytes(filepath.Join(s.Root(), "layers"))
	if err != nil {
		t.Fatal(err)
	}
	// The layers' files, plus each layer's small layer.json.
	want := int64(len(baseBody) + 1000 + 3000)
	if stored < want || stored > want+3*512 {
		t.Fatalf("layers hold %d bytes, want %d (+ metadata): the base once", stored, want)
	}
	du, err := s.DiskUsage()
	if err != nil {
		t.Fatal(err)
	}
	if du.Layers != 3 || du.LayersSize != want {
		t.Errorf("disk usage: %d layers, %d bytes; want 3, %d", du.Layers, du.LayersSize, want)
	}
	got := map[string][2]int64{}
	for _, iu := range du.Images {
		got[FamiliarRef(iu.Refs[0])] = [2]int64{iu.SharedSize, iu.UniqueSize}
	}
	if got["test/a:v1"] != [2]int64{1 << 20, 1000} || got["test/b:v1"] != [2]int64{1 << 20, 3000} {
		t.Errorf("shared/unique: %v, want a [1MiB 1000] and b [1MiB 3000]", got)
	}
	img, err := s.Resolve("test/a:v1")
	if err != nil {
		t.Fatal(err)
	}
	if img.Size != 1<<20+1000 || len(img.Layers) != 2 || !slices.Equal(img.Config.Cmd, []string{"/bin/a"}) {
		t.Errorf("image a: %+v", img)
	}
}

// TestTaskRootFS: a task's root filesystem shows its image's files; its
// writes, changes and deletions go to its own upper directory and never
// to a layer, nor to another task on the same image; a read-only root
// refuses writes; unmounting deletes the task's writes.
func TestTaskRootFS(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	imgs, err := s.Load(ctx, saveTar(t, imageOf(t, "/app", layerOf(t, dir("etc/"), file("etc/conf", "original\n"), file("app", "#!"))), "test/app:v1"))
	if err != nil {
		t.Fatal(err)
	}
	img := imgs[0]
	layer := s.LayerDir(img.Layers[0])
	before := snapshot(t, layer)

	r1, err := s.MountRootFS(ctx, "task1", img, false)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.MountRootFS(ctx, "task2", img, false)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := s.MountRootFS(ctx, "task1", img, false); err != nil || again != r1 {
		t.Fatalf("mount task1 again: %q, %v; want %q", again, err, r1)
	}
	// The mount gone (a reboot), the record stays: mounted again over the
	// writes it had.
	must(t, os.WriteFile(filepath.Join(r2, "kept"), []byte("kept\n"), 0o644))
	must(t, unix.Unmount(r2, 0))
	if tasks, _ := s.Tasks(); len(tasks) != 2 || tasks[1].TaskID != "task2" || tasks[1].Mounted {
		t.Fatalf("tasks after task2's mount went: %+v", tasks)
	}
	if again, err := s.MountRootFS(ctx, "task2", img, false); err != nil || again != r2 {
		t.Fatalf("mount task2 again after its mount went: %q, %v", again, err)
	}
	if got := readFile(t, filepath.Join(r2, "kept")); got != "kept\n" {
		t.Fatalf("task2's write after its mount came back: %q", got)
	}
	must(t, os.Remove(filepath.Join(r2, "kept")))
	if got := readFile(t, filepath.Join(r1, "etc/conf")); got != "original\n" {
		t.Fatalf("etc/conf in the task: %q", got)
	}
	must(t, os.WriteFile(filepath.Join(r1, "etc/conf"), []byte("changed\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(r1, "new"), []byte("new\n"), 0o644))
	must(t, os.Remove(filepath.Join(r1, "app")))
	if got := snapshot(t, layer); !maps(before, got) {
		t.Fatalf("the layer changed under a task's writes:\nbefore %v\nafter  %v", before, got)
	}
	if got := readFile(t, filepath.Join(r2, "etc/conf")); got != "original\n" {
		t.Fatalf("task2 sees task1's write: %q", got)
	}
	if _, err := os.Stat(filepath.Join(r2, "app")); err != nil {
		t.Fatalf("task2 lost app, which task1 deleted: %v", err)
	}
	upper := filepath.Join(s.Root(), "tasks", "task1", "upper")
	if got := readFile(t, filepath.Join(upper, "etc/conf")); got != "changed\n" {
		t.Fatalf("task1's upper etc/conf: %q", got)
	}

	ro, err := s.MountRootFS(ctx, "task-ro", img, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ro, "x"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Fatalf("write to a read-only root: %v, want EROFS", err)
	}

	du, err := s.DiskUsage()
	if err != nil {
		t.Fatal(err)
	}
	if len(du.Tasks) != 3 || du.Tasks[0].TaskID != "task-ro" || du.Tasks[1].Size != int64(len("changed\n")+len("new\n")) {
		t.Errorf("task usage: %+v", du.Tasks)
	}

	for _, id := range []string{"task1", "task2", "task-ro", "never-mounted"} {
		if err := s.UnmountRootFS(ctx, id); err != nil {
			t.Fatalf("unmount %s: %v", id, err)
		}
	}
	if _, err := os.Stat(filepath.Join(s.Root(), "tasks", "task1")); !os.IsNotExist(err) {
		t.Fatalf("task1's directory stays after unmount: %v", err)
	}
	if isOverlay(r1) {
		t.Fatal("task1's root is still mounted")
	}
	if got := snapshot(t, layer); !maps(before, got) {
		t.Fatal("the layer changed")
	}
	if _, err := s.MountRootFS(ctx, "../x", img, false); err == nil {
		t.Fatal("mounted a task named ../x")
	}
}

// TestWhiteouts: a file deleted in an upper layer is absent in the task,
// and an opaque directory hides what the layers below hold in it; in the
// layer they are OverlayFS's 0/0 character device and opaque xattr.
func TestWhiteouts(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	base := layerOf(t, dir("etc/"), file("etc/gone", "x"), file("etc/kept", "k"),
		dir("data/"), file("data/old1", "1"), dir("data/sub/"), file("data/sub/old2", "2"))
	top := layerOf(t, dir("etc/"), file("etc/.wh.gone", ""), dir("data/"), file("data/.wh..wh..opq", ""), file("data/new", "n"),
		file(".wh.nothing-below", ""))
	imgs, err := s.Load(ctx, saveTar(t, imageOf(t, "/x", base, top), "test/wh:v1"))
	if err != nil {
		t.Fatal(err)
	}
	img := imgs[0]
	topDir := s.LayerDir(img.Layers[1])
	var st unix.Stat_t
	must(t, unix.Lstat(filepath.Join(topDir, "etc/gone"), &st))
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Fatalf("etc/gone in the top layer: mode %o rdev %d, want a 0/0 character device", st.Mode, st.Rdev)
	}
	if _, err := os.Lstat(filepath.Join(topDir, "etc/.wh.gone")); !os.IsNotExist(err) {
		t.Fatalf("the .wh. file stays in the layer: %v", err)
	}
	buf := make([]byte, 8)
	n, err := unix.Lgetxattr(filepath.Join(topDir, "data"), opaqueXattr, buf)
	if err != nil || string(buf[:n]) != "y" {
		t.Fatalf("data's opaque xattr: %q, %v", buf[:n], err)
	}
	root, err := s.MountRootFS(ctx, "t", img, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(root, "etc/gone")); !os.IsNotExist(err) {
		t.Errorf("etc/gone, deleted in the top layer, is in the task: %v", err)
	}
	if got := readFile(t, filepath.Join(root, "etc/kept")); got != "k" {
		t.Errorf("etc/kept: %q", got)
	}
	if got := names(t, filepath.Join(root, "data")); !slices.Equal(got, []string{"new"}) {
		t.Errorf("data in the task holds %v, want only [new]: opaque", got)
	}
	if got := names(t, root); !slices.Equal(got, []string{"data", "etc"}) {
		t.Errorf("the task's root holds %v", got)
	}
}

// failingLayer is a layer whose stream fails after n bytes: a crash, or a
// connection lost, mid-unpack.
type failingLayer struct {
	v1.Layer
	n int64
}

func (f failingLayer) Uncompressed() (io.ReadCloser, error) {
	rc, err := f.Layer.Uncompressed()
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(io.LimitReader(rc, f.n), errReader{}), rc}, nil
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection lost") }

// TestUnpackNeverHalf: an unpack that fails midway leaves no layer
// directory (and nothing in tmp/); content that does not match its diffID
// is refused; what a crash left in tmp/ goes at Open; the layer unpacks
// whole afterwards.
func TestUnpackNeverHalf(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	l := layerOf(t, dir("a/"), file("a/1", strings.Repeat("1", 40000)), file("a/2", strings.Repeat("2", 40000)))
	_, err := s.ensureLayer(ctx, failingLayer{l, 50000})
	if err == nil || !strings.Contains(err.Error(), "connection lost") {
		t.Fatalf("unpack of a failing stream: %v", err)
	}
	if got := names(t, filepath.Join(s.Root(), "layers")); len(got) != 0 {
		t.Fatalf("layers/ holds %v after a failed unpack", got)
	}
	if got := names(t, filepath.Join(s.Root(), "tmp")); len(got) != 0 {
		t.Fatalf("tmp/ holds %v after a failed unpack", got)
	}

	// Content that is not what the diffID says.
	other := layerOf(t, file("evil", "x"))
	if _, err := s.ensureLayer(ctx, swappedLayer{l, other}); err == nil || !strings.Contains(err.Error(), "not the diffID") {
		t.Fatalf("unpack of content not matching its diffID: %v", err)
	}
	if got := names(t, filepath.Join(s.Root(), "layers")); len(got) != 0 {
		t.Fatalf("layers/ holds %v after a mismatched unpack", got)
	}

	// A crash mid-unpack (a process gone) leaves its temp dir: Open
	// removes it. A live process's unpack stays.
	dead := filepath.Join(s.Root(), "tmp", "layer-999999999-abc-0000")
	must(t, os.MkdirAll(filepath.Join(dead, "diff", "half"), 0o700))
	live := filepath.Join(s.Root(), "tmp", "layer-1-abc-0000") // PID 1 lives
	must(t, os.MkdirAll(live, 0o700))
	halfTask := filepath.Join(s.Root(), "tasks", "half", "upper")
	must(t, os.MkdirAll(halfTask, 0o700))
	s2, err := Open(s.Root(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Fatalf("a crashed unpack's leftover stays after Open: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(halfTask)); !os.IsNotExist(err) {
		t.Fatalf("a task directory without its record stays after Open: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Fatalf("Open removed a live process's unpack: %v", err)
	}
	os.RemoveAll(live)

	m, err := s2.ensureLayer(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	if m.Size != 80000 || len(readFile(t, filepath.Join(s2.LayerDir(m.DiffID), "a/2"))) != 40000 {
		t.Fatalf("layer after a retry: %+v", m)
	}
}

// swappedLayer claims one layer's diffID and streams another's content.
type swappedLayer struct {
	v1.Layer
	content v1.Layer
}

func (s swappedLayer) Uncompressed() (io.ReadCloser, error) { return s.content.Uncompressed() }

// TestUnpackConfined: no entry lands outside the layer, through ".." or
// through a symbolic link the layer holds.
func TestUnpackConfined(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	outside := t.TempDir()
	for _, c := range []struct {
		name    string
		entries []entry
		wantErr string
	}{
		{"dot-dot", []entry{file("../../../../escaped", "x")}, ""},
		{"through a symlink", []entry{{name: "link", typ: tar.TypeSymlink, linkname: outside}, file("link/escaped", "x")}, "not a directory"},
		{"hard link out", []entry{{name: "h", typ: tar.TypeLink, linkname: "../../etc/passwd"}}, "does not hold"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := s.ensureLayer(ctx, layerOf(t, c.entries...))
			if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
				t.Fatalf("unpack: %v, want %q", err, c.wantErr)
			}
			if got := names(t, outside); len(got) != 0 {
				t.Fatalf("an entry escaped the layer: %v", got)
			}
		})
	}
}

// TestConcurrentMounts: tasks mount and unmount at once, some on a layer
// being unpacked by several loads at once.
func TestConcurrentMounts(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	path := saveTar(t, imageOf(t, "/x", layerOf(t, file("f", strings.Repeat("f", 100000)))), "test/c:v1")
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			imgs, err := s.Load(ctx, path)
			if err != nil {
				errs <- err
				return
			}
			id := "task" + string(rune('a'+i))
			root, err := s.MountRootFS(ctx, id, imgs[0], false)
			if err != nil {
				errs <- err
				return
			}
			if err := os.WriteFile(filepath.Join(root, "mine"), []byte(id), 0o644); err != nil {
				errs <- err
			}
			if got, _ := os.ReadFile(filepath.Join(root, "mine")); string(got) != id {
				errs <- errors.New(id + " reads another task's file")
			}
			errs <- s.UnmountRootFS(ctx, id)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := names(t, filepath.Join(s.Root(), "layers")); len(got) != 1 {
		t.Errorf("layers: %v, want one", got)
	}
	if got := names(t, filepath.Join(s.Root(), "tasks")); len(got) != 0 {
		t.Errorf("tasks left: %v", got)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// snapshot maps each path under dir to its content (files) or kind.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if fi.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[rel] = string(data)
		} else {
			out[rel] = fi.Mode().String()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestManyLayers: an image with more layers than mount(2)'s one-page
// options hold mounts (through fsconfig, one lower directory at a time),
// with the upper layers' files over the lower ones'.
func TestManyLayers(t *testing.T) {
	s := openStore(t)
	ctx := t.Context()
	var layers []v1.Layer
	const n = 60
	for i := range n {
		layers = append(layers, layerOf(t, file("f"+strings.Repeat("x", i%5)+string(rune('a'+i%26))+string(rune('a'+i/26)), "x"), file("top", string(rune('a'+i%26))+string(rune('a'+i/26)))))
	}
	imgs, err := s.Load(ctx, saveTar(t, imageOf(t, "/x", layers...), "test/many:v1"))
	if err != nil {
		t.Fatal(err)
	}
	if data := len(strings.Join(s.lowerDirs(imgs[0].Layers), ":")); data < 4096 {
		t.Fatalf("lowerdir is %d bytes: not beyond a page, the test proves nothing", data)
	}
	root, err := s.MountRootFS(ctx, "many", imgs[0], false)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(names(t, root)); got != n+1 {
		t.Errorf("the root holds %d names, want %d", got, n+1)
	}
	if got := readFile(t, filepath.Join(root, "top")); got != "hc" { // layer 59: 'a'+59%26, 'a'+59/26
		t.Errorf("top reads %q, want the top layer's \"hc\"", got)
	}
}

// TestStoreLockAcrossOpens: two opens of one store (the agent and the
// CLI) take turns: a change through one waits while the other holds the
// store's file lock, then sees its result.
func TestStoreLockAcrossOpens(t *testing.T) {
	s1 := openStore(t)
	s2, err := Open(s1.Root(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	ctx := t.Context()
	if _, err := s1.Load(ctx, saveTar(t, imageOf(t, "/x", layerOf(t, file("x", "x"))), "test/lock:v1")); err != nil {
		t.Fatal(err)
	}
	must(t, s1.lockStore())
	done := make(chan error, 1)
	go func() { done <- s2.Remove("test/lock:v1", false) }()
	select {
	case err := <-done:
		s1.unlockStore()
		t.Fatalf("remove went ahead while the other open held the lock: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	s1.unlockStore()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := s1.Resolve("test/lock:v1"); !errors.Is(err, ErrImageNotFound) {
		t.Fatalf("the other open does not see the removal: %v", err)
	}
}

// BenchmarkMountRootFS: mount and unmount a task's root filesystem (the
// container runtime does both per task).
func BenchmarkMountRootFS(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	s, err := Open(b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := b.Context()
	imgs, err := s.Load(ctx, saveTar(b, imageOf(b, "/x", layerOf(b, file("f", "x")), layerOf(b, file("g", "y"))), "test/bench:v1"))
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		id := "bench" + strconv.Itoa(i)
		if _, err := s.MountRootFS(ctx, id, imgs[0], false); err != nil {
			b.Fatal(err)
		}
		if err := s.UnmountRootFS(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
}
