//go:build linux

package bookie

import (
	pvfs "github.com/cockroachdb/pebble/v2/vfs"
	"golang.org/x/sys/unix"

	"github.com/quiremq/quire/internal/vfs"
)

// dropCache asks the kernel to drop the cached pages of f in [off,
// off+length), which must be synced (clean pages are simply freed). Files
// without a descriptor (in-memory and wrapped test filesystems) are left
// alone; errors are ignored (it is advice).
func dropCache(f vfs.File, off, length int64) {
	fd := f.Fd()
	if fd == pvfs.InvalidFd || length <= 0 {
		return
	}
	_ = unix.Fadvise(int(fd), off, length, unix.FADV_DONTNEED)
}
