//go:build !unix

package listen

import "syscall"

// TryWrite writes nothing where non-blocking socket writes are not
// implemented: the caller's blocking path writes all of b.
func TryWrite(rc syscall.RawConn, b []byte) (n int, err error) { return 0, nil }
