package imagestore

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// OCI whiteouts (image-spec layer.md): ".wh.NAME" deletes NAME from the
// layers below; ".wh..wh..opq" in a directory hides everything below it.
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
	// opaqueXattr marks an OverlayFS directory opaque.
	opaqueXattr = "trusted.overlay.opaque"
)

// uncompressedLayer is what unpacking needs of a layer (v1.Layer has it).
type uncompressedLayer interface {
	DiffID() (v1.Hash, error)
	Uncompressed() (io.ReadCloser, error)
}

// layerMeta is layers/<hex>/layer.json.
type layerMeta struct {
	DiffID string `json:"diffID"`
	// Size is the bytes of the layer's regular files.
	Size int64 `json:"size"`
}

func (s *Store) readLayer(diffID string) (layerMeta, error) {
	var m layerMeta
	data, err := os.ReadFile(filepath.Join(s.layerDir(diffID), "layer.json"))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("layer %s: damaged layer.json: %w", shortID(diffID), err)
	}
	return m, nil
}

// tmpName is a name in tmp/ that says which process owns it:
// KIND-PID-WHAT-RANDOM. Open removes entries whose process is gone.
func tmpName(kind, what string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return kind + "-" + strconv.Itoa(os.Getpid()) + "-" + what + "-" + hex.EncodeToString(b)
}

// tmpOwner is the PID in a tmpName, or 0.
func tmpOwner(n string) int {
	parts := strings.SplitN(n, "-", 3)
	if len(parts) < 3 {
		return 0
	}
	pid, err := strconv.Atoi(parts[1])
	if err != nil {
		return 0
	}
	return pid
}

// processAlive reports whether process pid exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// ensureLayer makes sure the layer is unpacked in layers/, unpacking it
// when missing: into tmp/ first, renamed into place once complete and
// synced, so that a layer directory, once visible, is whole.
func (s *Store) ensureLayer(ctx context.Context, l uncompressedLayer) (layerMeta, error) {
	h, err := l.DiffID()
	if err != nil {
		return layerMeta{}, fmt.Errorf("layer diffID: %w", err)
	}
	diffID := h.String()
	if m, err := s.readLayer(diffID); err == nil {
		return m, nil
	}
	mu, _ := s.unpacking.LoadOrStore(diffID, &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	if m, err := s.readLayer(diffID); err == nil {
		return m, nil // another goroutine unpacked it meanwhile
	}
	start := time.Now()
	tmp := filepath.Join(s.tmpDir(), tmpName("layer", shortID(diffID)))
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return layerMeta{}, fmt.Errorf("unpack layer %s: %w", shortID(diffID), err)
	}
	done := false
	defer func() {
		if !done {
			_ = os.RemoveAll(tmp)
		}
	}()
	diff := filepath.Join(tmp, "diff")
	if err := os.Mkdir(diff, 0o755); err != nil {
		return layerMeta{}, fmt.Errorf("unpack layer %s: %w", shortID(diffID), err)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		return layerMeta{}, fmt.Errorf("unpack layer %s: open: %w", shortID(diffID), err)
	}
	size, err := unpackVerified(ctx, rc, diff, h)
	rc.Close()
	if err != nil {
		return layerMeta{}, fmt.Errorf("unpack layer %s: %w", shortID(diffID), err)
	}
	m := layerMeta{DiffID: diffID, Size: size}
	if err := writeJSON(filepath.Join(tmp, "layer.json"), m); err != nil {
		return layerMeta{}, err
	}
	// The layer's files reach the disk before its name does.
	if err := syncFS(tmp); err != nil {
		return layerMeta{}, err
	}
	if err := os.Rename(tmp, s.layerDir(diffID)); err != nil {
		if errors.Is(err, fs.ErrExist) || errors.Is(err, syscall.ENOTEMPTY) {
			// Another process unpacked it first: the same content.
			return s.readLayer(diffID)
		}
		return layerMeta{}, fmt.Errorf("unpack layer %s: %w", shortID(diffID), err)
	}
	done = true
	if err := syncDir(s.layersDir()); err != nil {
		return layerMeta{}, err
	}
	s.log.Info("layer unpacked", "layer", diffID, "bytes", size, "took", time.Since(start).Round(time.Millisecond))
	return m, nil
}

func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// unpackVerified unpacks the tar stream r into dir and checks that its
// digest is want (the layer's diffID).
func unpackVerified(ctx context.Context, r io.Reader, dir string, want v1.Hash) (int64, error) {
	hasher := sha256.New()
	tee := io.TeeReader(r, hasher)
	size, err := unpack(ctx, tee, dir)
	if err != nil {
		return 0, err
	}
	// The tar reader may stop before the stream's padding: hash all of it.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return 0, fmt.Errorf("read the layer: %w", err)
	}
	if want.Algorithm == "sha256" {
		if got := hex.EncodeToString(hasher.Sum(nil)); got != want.Hex {
			return 0, fmt.Errorf("content has digest sha256:%s, not the diffID %s its image declares", got, want)
		}
	}
	return size, nil
}

// unpack writes the tar stream r under dir (a new, empty directory) as an
// OverlayFS layer: whiteouts become 0/0 character devices, opaque
// markers become the trusted.overlay.opaque xattr. Paths are confined to
// dir: ".." is cleaned away and no entry is written through a symbolic
// link. It returns the bytes of the regular files.
func unpack(ctx context.Context, r io.Reader, dir string) (int64, error) {
	tr := tar.NewReader(r)
	var size int64
	type dirTimes struct {
		path, rel    string
		atime, mtime time.Time
	}
	var dirs []dirTimes
	for n := 0; ; n++ {
		if n%64 == 0 {
			if err := ctx.Err(); err != nil {
				return 0, err
			}
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("read the layer's tar: %w", err)
		}
		rel := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		if rel == "" {
			continue // the layer's root itself
		}
		parent, base := path.Split(rel)
		if err := mkdirParents(dir, parent); err != nil {
			return 0, fmt.Errorf("entry %s: %w", hdr.Name, err)
		}
		target := filepath.Join(dir, filepath.FromSlash(rel))
		parentDir := filepath.Join(dir, filepath.FromSlash(parent))

		if strings.HasPrefix(base, whiteoutPrefix) {
			switch {
			case base == whiteoutOpaque:
				if err := unix.Lsetxattr(parentDir, opaqueXattr, []byte("y"), 0); err != nil {
					return 0, fmt.Errorf("entry %s: mark %s opaque: %w", hdr.Name, parent, err)
				}
			case strings.HasPrefix(base, whiteoutMeta):
				// AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): nothing for OverlayFS.
			default:
				name := strings.TrimPrefix(base, whiteoutPrefix)
				if name == "" || name == "." || name == ".." {
					// ".wh.." and ".wh..." would whiteout the directory
					// itself or its parent, outside the layer at the top.
					return 0, fmt.Errorf("entry %s: a whiteout must name a file, not %q: the layer is malformed", hdr.Name, name)
				}
				hidden := filepath.Join(parentDir, name)
				if err := removeExisting(hidden); err != nil {
					return 0, fmt.Errorf("entry %s: %w", hdr.Name, err)
				}
				if err := unix.Mknod(hidden, unix.S_IFCHR, 0); err != nil {
					return 0, fmt.Errorf("entry %s: whiteout: %w", hdr.Name, err)
				}
			}
			continue
		}

		mode := uint32(hdr.Mode & 0o7777)
		switch hdr.Typeflag {
		case tar.TypeDir:
			fi, err := os.Lstat(target)
			if err == nil && !fi.IsDir() {
				if err := os.Remove(target); err != nil {
					return 0, fmt.Errorf("entry %s: %w", hdr.Name, err)
				}
				err = os.ErrNotExist
			}
			if err != nil {
				if err := os.Mkdir(target, 0o700); err != nil {
					return 0, fmt.Errorf("entry %s: %w", hdr.Name, err)
				}
			}
			dirs = append(dirs, dirTimes{target, rel, hdr.AccessTime, hdr.ModTime})
		case tar.TypeReg:
			if err := removeExisting(target); err != nil {
				return 0, fmt.Errorf("entry %s: %w", hdr.Name, err)
			}
			f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_NOFOLLOW, 0o600)
			if err != nil {
				return 0, fmt.Errorf("entry %s: %w", hdr.Name, err)
			}
			n, err := io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return 0, fmt.Errorf("entry %s: %w", hdr.Name, err)
			}
			size += n
		case tar.TypeSymlink:
			if err := removeExisting(target); err != nil {
				return 0, fmt.Errorf("entry %s: %w", hdr.Name, err)
			}
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return 0, fmt.Errorf("entry %s: %w", hdr.Name, err)
			}
		case tar.TypeLink:
			src := strings.TrimPrefix(path.Clean("/"+hdr.Linkname), "/")
			if src == "" {
				return 0, fmt.Errorf("entry %s: a hard link to the layer's root", hdr.Name)
			}
			srcPath := filepath.Join(dir, filepath.FromSlash(src))
			if err := mkdirParents(dir, path.Dir(src)); err != nil {
				return 0, fmt.Errorf("entry %s: link target: %w", hdr.Name, err)
			}
			if fi, err := os.Lstat(srcPath); err != nil || fi.IsDir() {
				return 0, fmt.Errorf("entry %s: hard link to %s, which this layer does not hold as a file", hdr.Name, hdr.Linkname)
			}
			if err := removeExisting(target); err != nil {
				return 0, fmt.Errorf("entry %s: %w", hdr.Name, err)
			}
			if err := os.Link(srcPath, target); err != nil {
				return 0, fmt.Errorf("entry %s: %w", hdr.Name, err)
			}
			continue // the link shares its target's owner, mode and times
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			if err := removeExisting(target); err != nil {
				return 0, fmt.Errorf("entry %s: %w", hdr.Name, err)
			}
			kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
			dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
			if err := unix.Mknod(target, kind|mode, int(dev)); err != nil {
				return 0, fmt.Errorf("entry %s: %w", hdr.Name, err)
			}
		case tar.TypeXGlobalHeader:
			continue
		default:
			return 0, fmt.Errorf("entry %s: unsupported tar entry type %q", hdr.Name, hdr.Typeflag)
		}
		if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
			return 0, fmt.Errorf("entry %s: %w", hdr.Name, err)
		}
		for k, v := range hdr.PAXRecords {
			attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
			if !ok || strings.HasPrefix(attr, "trusted.") {
				continue // a layer does not set OverlayFS's own attributes
			}
			if err := unix.Lsetxattr(target, attr, []byte(v), 0); err != nil && !errors.Is(err, unix.ENOTSUP) {
				return 0, fmt.Errorf("entry %s: xattr %s: %w", hdr.Name, attr, err)
			}
		}
		if hdr.Typeflag != tar.TypeSymlink {
			// After chown, which clears set-user-ID bits.
			if err := unix.Fchmodat(unix.AT_FDCWD, target, mode, 0); err != nil {
				return 0, fmt.Errorf("entry %s: %w", hdr.Name, err)
			}
		}
		if hdr.Typeflag != tar.TypeDir {
			if err := setTimes(target, hdr.AccessTime, hdr.ModTime); err != nil {
				return 0, fmt.Errorf("entry %s: %w", hdr.Name, err)
			}
		}
	}
	// Directories' times last: writing into them changed them.
	// A later entry may have replaced a parent by a symbolic link: such
	// a directory is not the layer's any more.
	for i := len(dirs) - 1; i >= 0; i-- {
		if !realParents(dir, path.Dir(dirs[i].rel)) {
			continue
		}
		if err := setTimes(dirs[i].path, dirs[i].atime, dirs[i].mtime); err != nil {
			return 0, err
		}
	}
	return size, nil
}

// mkdirParents makes sure every directory of rel (slash-separated,
// clean, relative) under root exists as a real directory, refusing to go
// through a symbolic link or a file.
func mkdirParents(root, rel string) error {
	rel = strings.Trim(rel, "/")
	if rel == "" || rel == "." {
		return nil
	}
	cur := root
	for _, part := range strings.Split(rel, "/") {
		cur = filepath.Join(cur, part)
		fi, err := os.Lstat(cur)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if err := os.Mkdir(cur, 0o755); err != nil {
				return err
			}
		case err != nil:
			return err
		case !fi.IsDir():
			return fmt.Errorf("path goes through %s, which is not a directory in this layer", strings.TrimPrefix(cur, root+"/"))
		}
	}
	return nil
}

// realParents reports whether every directory of rel under root is a
// real directory (no symbolic link).
func realParents(root, rel string) bool {
	rel = strings.Trim(rel, "/")
	if rel == "" || rel == "." {
		return true
	}
	cur := root
	for _, part := range strings.Split(rel, "/") {
		cur = filepath.Join(cur, part)
		fi, err := os.Lstat(cur)
		if err != nil || !fi.IsDir() {
			return false
		}
	}
	return true
}

// removeExisting removes what a path holds, if anything (a later tar
// entry replaces an earlier one).
func removeExisting(p string) error {
	fi, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return os.RemoveAll(p)
	}
	return os.Remove(p)
}

// setTimes sets a path's access and modification times without following
// a symbolic link.
func setTimes(p string, atime, mtime time.Time) error {
	if mtime.IsZero() {
		return nil
	}
	if atime.IsZero() {
		atime = mtime
	}
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set the times of %s: %w", p, err)
	}
	return nil
}
