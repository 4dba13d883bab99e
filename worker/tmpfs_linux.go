package worker

import "syscall"

// tmpfsMagic is the filesystem type statfs reports for tmpfs.
const tmpfsMagic = 0x01021994

// isTmpfs reports whether dir is on an in-memory filesystem.
func isTmpfs(dir string) bool {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return false
	}
	return int64(st.Type) == tmpfsMagic
}
