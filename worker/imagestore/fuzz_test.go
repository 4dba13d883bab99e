package imagestore

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fuzzTar builds a layer's tar from a script, one entry a line:
// "KIND NAME [TARGET]", KIND f (file, TARGET its content), d (directory),
// l (symlink to TARGET), h (hard link to TARGET), c (character device),
// p (fifo). The words OUT and ABS in NAME or TARGET stand for the path of
// a directory beside the layer's, relative and absolute.
func fuzzTar(script, outside string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, line := range strings.Split(script, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		sub := func(s string) string {
			s = strings.ReplaceAll(s, "ABS", outside)
			return strings.ReplaceAll(s, "OUT", "../"+filepath.Base(outside))
		}
		target := ""
		if len(f) > 2 {
			target = sub(f[2])
		}
		h := &tar.Header{Name: sub(f[1]), Mode: 0o755, ModTime: time.Unix(1, 0)}
		switch f[0] {
		case "f":
			h.Typeflag, h.Size = tar.TypeReg, int64(len(target))
		case "d":
			h.Typeflag = tar.TypeDir
		case "l":
			h.Typeflag, h.Linkname = tar.TypeSymlink, target
		case "h":
			h.Typeflag, h.Linkname = tar.TypeLink, target
		case "c":
			h.Typeflag = tar.TypeChar
		case "p":
			h.Typeflag = tar.TypeFifo
		default:
			continue
		}
		if tw.WriteHeader(h) != nil {
			continue
		}
		if h.Typeflag == tar.TypeReg {
			_, _ = tw.Write([]byte(target))
		}
	}
	_ = tw.Close()
	return buf.Bytes()
}

// FuzzUnpack: whatever a layer holds (names with "..", absolute names,
// symbolic and hard links out of the layer, entries through links,
// whiteouts, entries replacing others), unpacking writes nothing outside
// the layer's directory.
func FuzzUnpack(f *testing.F) {
	for _, seed := range []string{
		"f a hello\nd b\nf b/c x",
		"f ../../escape x\nf /abs x\nf ABS/abs x",
		"l link ABS\nf link/x x",
		"l link OUT\nd link/sub\nf link/sub/x x",
		"l link ..\nf link/x x",
		"h hard ABS/secret\nh hard2 ../../etc/passwd",
		"d etc\nf etc/.wh.passwd\nf .wh..wh..opq\nd x\nf x/.wh..wh..opq",
		"f a 1\nd a\nf a/b 2\nl a x\nf a 3\nc dev\np fifo",
		"l x /\nl y x\nf y/etc/z x",
		"d a\nd a/b\nl a OUT\nd c\nf c x",
		"c .wh...\nd a\nc a/.wh...\nc a/.wh..\nc .wh..", // whiteouts of "..", "." and ""
	} {
		f.Add(seed)
	}
	if os.Geteuid() != 0 {
		f.Skip("unpacking keeps owners and makes devices: needs root")
	}
	f.Fuzz(func(t *testing.T, script string) {
		box := t.TempDir()
		outside := filepath.Join(box, "outside")
		layer := filepath.Join(box, "layer")
		for _, d := range []string{outside, layer} {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		_, _ = unpack(context.Background(), bytes.NewReader(fuzzTar(script, outside)), layer)
		entries, err := os.ReadDir(outside)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) > 0 {
			t.Fatalf("the layer wrote %s outside its directory", entries[0].Name())
		}
		top, err := os.ReadDir(box)
		if err != nil {
			t.Fatal(err)
		}
		if len(top) != 2 {
			t.Fatalf("the box holds %d entries, want the layer and outside", len(top))
		}
	})
}
