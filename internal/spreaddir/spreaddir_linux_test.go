package spreaddir

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

const ext4Magic = 0xEF53 // ext2, ext3 and ext4 share it

func attributes(t *testing.T, dir string) (uint32, error) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	return unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
}

func TestMark(t *testing.T) {
	for _, tc := range []struct {
		name string
		dir  func(t *testing.T) string
	}{
		{"test temp dir", func(t *testing.T) string { return t.TempDir() }},
		{"tmpfs", func(t *testing.T) string {
			d, err := os.MkdirTemp("/dev/shm", "spreaddir-test-")
			if err != nil {
				t.Fatalf("this machine has no writable /dev/shm: %v", err)
			}
			t.Cleanup(func() { os.RemoveAll(d) })
			return d
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.dir(t)
			var st unix.Statfs_t
			if err := unix.Statfs(dir, &st); err != nil {
				t.Fatal(err)
			}
			for range 2 { // idempotent
				if err := Mark(dir); err != nil {
					t.Fatalf("Mark(%s): %v", dir, err)
				}
			}
			flags, err := attributes(t, dir)
			switch {
			case st.Type == ext4Magic:
				if err != nil || flags&fsTopdirFL == 0 {
					t.Fatalf("%s is on ext4 and Mark returned, but its attributes are %#x (%v): no FS_TOPDIR_FL", dir, flags, err)
				}
			case err == nil && flags&fsTopdirFL != 0:
				t.Logf("%s (file system %#x) took the attribute", dir, st.Type)
			default:
				t.Logf("%s (file system %#x) has no such attribute: Mark left it alone", dir, st.Type)
			}
			// A subdirectory made afterwards works as any other.
			if err := os.Mkdir(filepath.Join(dir, "task"), 0o700); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestMarkMissingDir(t *testing.T) {
	if err := Mark(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("Mark of a missing directory returned no error")
	}
}
