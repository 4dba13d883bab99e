// Package spreaddir marks the directories that hold one subdirectory per
// task, so that the filesystem spreads those subdirectories over the disk
// instead of packing them next to the ones just removed.
//
// On ext4 a new directory goes, with its files, into its parent's block
// group, and a new inode is taken from that group after a scan that skips
// inodes freed in the last minutes. On a file system without a journal
// that scan reads every recently freed inode: where tasks come and go in
// one parent, each new task's files cost a scan past all of the previous
// tasks' (while 20 containers started after a few rounds of churn, about
// half of the worker's CPU went there). The top-directory attribute (chattr +T,
// FS_TOPDIR_FL) makes ext4 place each new subdirectory as it places
// top-level ones, in a group with free inodes and few directories.
package spreaddir

import "log/slog"

// Mark sets the top-directory attribute on dir where the file system has
// one (ext2/3/4); elsewhere it does nothing. It is idempotent and affects
// subdirectories made afterwards only. An error means the attribute could
// not be read or set on a file system that has it; callers may go on
// without it, as it changes where things go on disk, not what they hold.
func Mark(dir string) error { return mark(dir) }

// MarkAll marks each of dirs, logging to log (a warning: the node works
// on without the attribute) any that could not be marked.
func MarkAll(log *slog.Logger, dirs ...string) {
	for _, d := range dirs {
		if err := Mark(d); err != nil {
			log.Warn("task directories will not be spread over the disk", "err", err)
		}
	}
}
