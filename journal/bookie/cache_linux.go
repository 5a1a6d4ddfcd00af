//go:build linux && (amd64 || arm64 || riscv64 || loong64)

package bookie

import (
	"syscall"

	pvfs "github.com/cockroachdb/pebble/v2/vfs"

	"github.com/quiremq/quire/internal/vfs"
)

// posixFadvDontNeed is POSIX_FADV_DONTNEED on Linux.
const posixFadvDontNeed = 4

// dropCache asks the kernel to drop the cached pages of f in [off,
// off+length), which must be synced (clean pages are simply freed). Files
// without a descriptor (in-memory and wrapped test filesystems) are left
// alone; errors are ignored (it is advice).
func dropCache(f vfs.File, off, length int64) {
	fd := f.Fd()
	if fd == pvfs.InvalidFd || length <= 0 {
		return
	}
	_, _, _ = syscall.Syscall6(syscall.SYS_FADVISE64, fd, uintptr(off), uintptr(length), posixFadvDontNeed, 0, 0)
}
