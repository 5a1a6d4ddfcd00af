//go:build unix

package listen

import (
	"errors"
	"syscall"
)

// TryWrite writes what of b the socket of rc takes without waiting (its
// send buffer has room for) and returns how much that was: n < len(b)
// with a nil error means the socket was full. The descriptors of the net
// package are non-blocking, so a write never parks the caller; a closed
// connection or a passed write deadline is an error.
func TryWrite(rc syscall.RawConn, b []byte) (n int, err error) {
	werr := rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, e := syscall.Write(int(fd), b[n:])
			if m > 0 {
				n += m
			}
			switch {
			case e == syscall.EINTR:
				continue
			case errors.Is(e, syscall.EAGAIN):
				return true // full: the rest is for a blocking write
			case e != nil:
				err = e
				return true
			case m <= 0:
				return true
			}
		}
		return true
	})
	if err == nil {
		err = werr
	}
	return n, err
}
