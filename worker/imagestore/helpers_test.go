package imagestore

import (
	"archive/tar"
	"bytes"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// RequireEnv makes tests fail, rather than skip, without root, OverlayFS
// or the Docker Engine.
const RequireEnv = "SHOAL_REQUIRE_DOCKER"

// needOverlay skips t unless it runs as root with OverlayFS (fails it
// when SHOAL_REQUIRE_DOCKER=1).
func needOverlay(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "not root: overlay mounts and file owners need root"
	} else if data, err := os.ReadFile("/proc/filesystems"); err != nil || !strings.Contains(string(data), "\toverlay\n") {
		why = "the kernel has no OverlayFS"
	}
	if why == "" {
		return
	}
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s=1 but %s", RequireEnv, why)
	}
	t.Skip(why)
}

// openStore opens a store in a fresh directory, unmounting whatever its
// tasks left mounted when the test ends.
func openStore(t *testing.T) *Store {
	t.Helper()
	needOverlay(t)
	s, err := Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		tasks, _ := s.Tasks()
		for _, tm := range tasks {
			_ = s.UnmountRootFS(t.Context(), tm.TaskID)
		}
		s.Close()
	})
	return s
}

// entry is one tar entry of a test layer.
type entry struct {
	name     string
	body     string // a regular file's content
	typ      byte   // default tar.TypeReg (tar.TypeDir for names ending in "/")
	linkname string
	mode     int64
}

func file(name, body string) entry { return entry{name: name, body: body} }
func dir(name string) entry        { return entry{name: name, typ: tar.TypeDir} }

// tarOf is a layer's tar stream.
func tarOf(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.linkname, Mode: e.mode, ModTime: time.Unix(1700000000, 0)}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// layerOf is a layer holding entries.
func layerOf(t testing.TB, entries ...entry) v1.Layer {
	t.Helper()
	data := tarOf(t, entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// imageOf is an image of layers (base first) running cmd.
func imageOf(t testing.TB, cmd string, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", Platform().Architecture
	cf.Created = v1.Time{Time: time.Unix(1700000000, 0).UTC()}
	cf.Config.Cmd = []string{cmd}
	cf.Config.Env = []string{"PATH=/bin"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// saveTar writes img as `docker save` does, tagged tag, and returns the
// file.
func saveTar(t testing.TB, img v1.Image, tag string) string {
	t.Helper()
	ref, err := name.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(t.TempDir(), "image-*.tar")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := tarball.WriteToFile(f.Name(), ref, img); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}
