package imagestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// overlayMagic is OverlayFS's statfs f_type.
const overlayMagic = 0x794c7630

// TaskMount is a task's root filesystem as the store records it.
type TaskMount struct {
	TaskID   string    `json:"taskID"`
	ImageID  string    `json:"imageID"`
	Layers   []string  `json:"layers"` // base first
	ReadOnly bool      `json:"readOnly"`
	Created  time.Time `json:"created"`
	// RootFS is the overlay mount point.
	RootFS string `json:"-"`
	// Mounted reports whether the overlay is mounted now (after a reboot
	// the record stays and the mount does not).
	Mounted bool `json:"-"`
}

var taskIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

func (s *Store) taskDir(taskID string) string { return filepath.Join(s.tasksDir(), taskID) }

// TaskRootFS is where a task's root filesystem is mounted.
func (s *Store) TaskRootFS(taskID string) string { return filepath.Join(s.taskDir(taskID), "rootfs") }

func (s *Store) readTask(taskID string) (TaskMount, error) {
	var t TaskMount
	data, err := os.ReadFile(filepath.Join(s.taskDir(taskID), "task.json"))
	if err != nil {
		return t, err
	}
	if err := json.Unmarshal(data, &t); err != nil {
		return t, fmt.Errorf("task %s: damaged task.json: %w", taskID, err)
	}
	t.RootFS = s.TaskRootFS(taskID)
	t.Mounted = isOverlay(t.RootFS)
	return t, nil
}

func isOverlay(p string) bool {
	var st unix.Statfs_t
	return unix.Statfs(p, &st) == nil && st.Type == overlayMagic
}

// Tasks lists the task root filesystems the store holds, mounted or not
// (for finding strays after an agent restart).
func (s *Store) Tasks() ([]TaskMount, error) {
	entries, err := os.ReadDir(s.tasksDir())
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	var out []TaskMount
	for _, e := range entries {
		t, err := s.readTask(e.Name())
		if errors.Is(err, os.ErrNotExist) {
			continue // being set up or torn down
		}
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TaskID < out[j].TaskID })
	return out, nil
}

// MountRootFS mounts a task's root filesystem: an overlay of img's layers
// (read-only lower directories, top first) under the task's own upper and
// work directories (tasks/<taskID>/), read-only when readOnly. It returns
// the mount point. Mounting a task mounted already returns its root
// filesystem; a task whose mount went (a reboot) is mounted again over
// the writes it had.
//
// A read-only overlay takes no new directory: runc cannot then create the
// mount points an image lacks (/proc, /dev, /sys, a secret's target). For
// a container's read-only root, mount it writable and set the OCI spec's
// root.readonly, as Docker does: runc makes the root read-only once its
// mounts are in place.
func (s *Store) MountRootFS(ctx context.Context, taskID string, img Image, readOnly bool) (string, error) {
	if !taskIDPattern.MatchString(taskID) {
		return "", fmt.Errorf("mount a root filesystem: task ID %q is not one a directory can be named by (letters, digits, '_', '.', '-')", taskID)
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if err := s.lockStore(); err != nil {
		return "", err
	}
	defer s.unlockStore()
	si, err := s.readImage(img.ID)
	if err != nil {
		return "", fmt.Errorf("mount task %s: %w", taskID, err)
	}
	for _, d := range si.Layers {
		if _, err := s.readLayer(d); err != nil {
			return "", fmt.Errorf("mount task %s: image %s lacks its layer %s (load or pull the image again): %w", taskID, shortID(si.ID), shortID(d), err)
		}
	}
	dir := s.taskDir(taskID)
	rootfs := s.TaskRootFS(taskID)
	if t, err := s.readTask(taskID); err == nil {
		if t.ImageID != si.ID {
			return "", fmt.Errorf("mount task %s: it has a root filesystem of image %s already, not %s", taskID, shortID(t.ImageID), shortID(si.ID))
		}
		if t.Mounted {
			return rootfs, nil
		}
		// A volatile overlay that was not unmounted cleanly leaves a mark
		// in its work directory that refuses a new mount: start afresh.
		work := filepath.Join(dir, "work")
		if err := os.RemoveAll(work); err != nil {
			return "", fmt.Errorf("mount task %s again: %w", taskID, err)
		}
		if err := os.Mkdir(work, 0o755); err != nil {
			return "", fmt.Errorf("mount task %s again: %w", taskID, err)
		}
		if err := mountOverlay(s.lowerDirs(t.Layers), filepath.Join(dir, "upper"), filepath.Join(dir, "work"), rootfs, t.ReadOnly); err != nil {
			return "", fmt.Errorf("mount task %s again: %w", taskID, err)
		}
		s.log.Info("task root filesystem mounted again", "task", taskID, "image", si.ID)
		return rootfs, nil
	}
	// A directory without its record is a setup a crash cut short.
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("mount task %s: %w", taskID, err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(dir)
		}
	}()
	for _, d := range []string{dir, filepath.Join(dir, "upper"), filepath.Join(dir, "work"), rootfs} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", fmt.Errorf("mount task %s: %w", taskID, err)
		}
	}
	t := TaskMount{TaskID: taskID, ImageID: si.ID, Layers: si.Layers, ReadOnly: readOnly, Created: time.Now().UTC()}
	// Not synced: after a power loss the mount is gone, and so is the
	// task; a record lost with it leaves a directory Open removes.
	if err := writeJSONNoSync(filepath.Join(dir, "task.json"), t); err != nil {
		return "", err
	}
	if err := mountOverlay(s.lowerDirs(si.Layers), filepath.Join(dir, "upper"), filepath.Join(dir, "work"), rootfs, readOnly); err != nil {
		return "", fmt.Errorf("mount task %s: %w", taskID, err)
	}
	ok = true
	s.log.Info("task root filesystem mounted", "task", taskID, "image", si.ID, "layers", len(si.Layers), "readOnly", readOnly)
	return rootfs, nil
}

// lowerDirs are the layers' directories as OverlayFS wants them: the top
// layer first. An image without layers gets an empty lower directory.
func (s *Store) lowerDirs(layers []string) []string {
	if len(layers) == 0 {
		empty := filepath.Join(s.root, "empty")
		_ = os.MkdirAll(empty, 0o755)
		return []string{empty}
	}
	out := make([]string, 0, len(layers))
	for _, d := range layers {
		out = append(out, s.LayerDir(d))
	}
	slices.Reverse(out)
	return out
}

// mountOverlay mounts an overlay at target. Options longer than a page
// (many layers) go through the new mount API, one lower directory at a
// time.
//
// The mount is volatile (Linux 5.10+; without it, as before): the task's
// writes are not synced to disk, which saves a sync of the whole upper
// file system at every unmount. A task's writes do not outlive a crash
// of the machine anyway (its task is gone with it); mounting it again
// after one starts from a fresh work directory.
func mountOverlay(lowers []string, upper, work, target string, readOnly bool) error {
	for _, p := range append(slices.Clone(lowers), upper, work) {
		if strings.ContainsAny(p, ":,") {
			return fmt.Errorf("overlay directory %s holds ':' or ',': move the image store", p)
		}
	}
	data := "lowerdir=" + strings.Join(lowers, ":") + ",upperdir=" + upper + ",workdir=" + work + ",index=off"
	var flags uintptr
	if readOnly {
		flags |= unix.MS_RDONLY
	}
	if len(data)+len(",volatile") >= os.Getpagesize()-1 {
		return mountOverlayFsconfig(lowers, upper, work, target, readOnly)
	}
	err := unix.Mount("overlay", target, "overlay", flags, data+",volatile")
	if errors.Is(err, unix.EINVAL) {
		err = unix.Mount("overlay", target, "overlay", flags, data) // a kernel without volatile
	}
	if err != nil {
		return fmt.Errorf("mount overlay on %s: %w", target, err)
	}
	return nil
}

// mountOverlayFsconfig mounts an overlay through fsopen/fsconfig (Linux
// 6.8+ for "lowerdir+"), without mount(2)'s page-size limit on options.
func mountOverlayFsconfig(lowers []string, upper, work, target string, readOnly bool) error {
	fd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("mount overlay on %s (%d layers, beyond mount(2)'s limit): fsopen: %w", target, len(lowers), err)
	}
	defer unix.Close(fd)
	for _, l := range lowers {
		if err := unix.FsconfigSetString(fd, "lowerdir+", l); err != nil {
			return fmt.Errorf("mount overlay on %s (%d layers): this kernel cannot take them one by one (lowerdir+, Linux 6.8): %w", target, len(lowers), err)
		}
	}
	for k, v := range map[string]string{"upperdir": upper, "workdir": work, "index": "off"} {
		if err := unix.FsconfigSetString(fd, k, v); err != nil {
			return fmt.Errorf("mount overlay on %s: %s: %w", target, k, err)
		}
	}
	if err := unix.FsconfigSetFlag(fd, "volatile"); err != nil {
		return fmt.Errorf("mount overlay on %s: volatile: %w", target, err)
	}
	if err := unix.FsconfigCreate(fd); err != nil {
		return fmt.Errorf("mount overlay on %s: %w", target, err)
	}
	var attr int
	if readOnly {
		attr |= unix.MOUNT_ATTR_RDONLY
	}
	mfd, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, attr)
	if err != nil {
		return fmt.Errorf("mount overlay on %s: fsmount: %w", target, err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("mount overlay on %s: move_mount: %w", target, err)
	}
	return nil
}

// UnmountRootFS unmounts a task's root filesystem and deletes its upper
// and work directories: the task's writes. An unknown task is no error.
func (s *Store) UnmountRootFS(ctx context.Context, taskID string) error {
	if !taskIDPattern.MatchString(taskID) {
		return nil // no task could have that ID
	}
	if err := s.lockStore(); err != nil {
		return err
	}
	dir := s.taskDir(taskID)
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		s.unlockStore()
		return nil
	}
	if err := unmount(ctx, s.TaskRootFS(taskID)); err != nil {
		s.unlockStore()
		return fmt.Errorf("unmount task %s: %w", taskID, err)
	}
	// Out of tasks/ at once (a rename); the deletion, which may be long,
	// outside the lock. A crash meanwhile leaves it in tmp/ for Open.
	gone := filepath.Join(s.tmpDir(), tmpName("task", taskID))
	err := os.Rename(dir, gone)
	s.unlockStore()
	if err != nil {
		return fmt.Errorf("remove task %s's root filesystem: %w", taskID, err)
	}
	if err := os.RemoveAll(gone); err != nil {
		return fmt.Errorf("remove task %s's root filesystem: %w", taskID, err)
	}
	s.log.Info("task root filesystem removed", "task", taskID)
	return nil
}

// unmount unmounts target (every mount stacked there), waiting a little
// while it is busy, then detaching it lazily.
func unmount(ctx context.Context, target string) error {
	for try := 0; isOverlay(target) || try == 0; try++ {
		err := unix.Unmount(target, unix.UMOUNT_NOFOLLOW)
		switch {
		case err == nil:
			continue
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil // not a mount point (any more)
		case errors.Is(err, unix.EBUSY) && try < 10:
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		case errors.Is(err, unix.EBUSY):
			if err := unix.Unmount(target, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
				return fmt.Errorf("detach %s: %w", target, err)
			}
			return nil
		default:
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
	return nil
}
