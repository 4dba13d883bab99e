package spreaddir

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// fsTopdirFL is FS_TOPDIR_FL from linux/fs.h ("top of directory
// hierarchies", chattr +T).
const fsTopdirFL = 0x00020000

func mark(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("spread %s: %w", dir, err)
	}
	defer unix.Close(fd)
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		if unsupported(err) {
			return nil
		}
		return fmt.Errorf("spread %s: read its attributes: %w", dir, err)
	}
	if flags&fsTopdirFL != 0 {
		return nil
	}
	if err := unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags|fsTopdirFL)); err != nil {
		if unsupported(err) {
			return nil
		}
		return fmt.Errorf("spread %s: set its top-directory attribute: %w", dir, err)
	}
	return nil
}

// unsupported is how file systems without inode attributes (tmpfs, overlay
// on some kernels) or without this one answer.
func unsupported(err error) bool {
	return errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS)
}
