package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// Store is one bucket (or directory) of immutable objects. All methods are
// safe for concurrent use and honour ctx.
type Store interface {
	// Put writes the object key with size bytes read from r, replacing any
	// object of that name atomically. It fails if r yields fewer than size
	// bytes.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// Get returns n bytes of the object from byte off (n < 0: to its end),
	// fewer when the object ends first. off must lie inside the object
	// (off < size; off == 0 is allowed for an empty object with n < 0);
	// otherwise the error matches ErrInvalidRange.
	Get(ctx context.Context, key string, off, n int64) ([]byte, error)
	// List returns the objects whose key starts with prefix, in key order.
	List(ctx context.Context, prefix string) ([]ObjectInfo, error)
	// Delete removes the object; deleting a missing object succeeds.
	Delete(ctx context.Context, key string) error
	// Stat returns the object's size and modification time.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
}

// ObjectInfo describes one object.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// Errors returned by every Store. Test with errors.Is: implementations wrap
// them with detail.
var (
	// ErrNotFound is returned by Get and Stat when the object does not exist.
	ErrNotFound = errors.New("objstore: object not found")
	// ErrInvalidRange is returned by Get for a range outside the object.
	ErrInvalidRange = errors.New("objstore: invalid range")
	// ErrInvalidKey is returned for a key the seam does not accept.
	ErrInvalidKey = errors.New("objstore: invalid key")
)

// MaxKeyLen is the longest key, in bytes (S3's limit).
const MaxKeyLen = 1024

// ValidateKey checks a key: 1 to MaxKeyLen bytes of valid UTF-8 without NUL,
// whose "/"-separated parts are neither empty nor "." or ".." (MinIO stores
// keys as paths and refuses those).
func ValidateKey(key string) error {
	if key == "" || len(key) > MaxKeyLen {
		return fmt.Errorf("%w: %q must be 1 to %d bytes", ErrInvalidKey, key, MaxKeyLen)
	}
	if !utf8.ValidString(key) || strings.IndexByte(key, 0) >= 0 {
		return fmt.Errorf("%w: %q contains NUL or invalid UTF-8", ErrInvalidKey, key)
	}
	for p := range strings.SplitSeq(key, "/") {
		if p == "" || p == "." || p == ".." {
			return fmt.Errorf("%w: %q has an empty, \".\" or \"..\" part", ErrInvalidKey, key)
		}
	}
	return nil
}

// NotFoundError names the missing object. It matches ErrNotFound.
type NotFoundError struct{ Key string }

func (e *NotFoundError) Error() string { return fmt.Sprintf("objstore: object %q not found", e.Key) }

// Unwrap makes errors.Is(err, ErrNotFound) true.
func (e *NotFoundError) Unwrap() error { return ErrNotFound }

// CheckRange validates a Get range against an object of the given size and
// returns the end (exclusive) of the bytes to return, for implementations
// that read a range of a file.
func CheckRange(key string, off, n, size int64) (end int64, err error) {
	if off < 0 || off > size || (off == size && !(off == 0 && n < 0)) {
		if n == 0 && off >= 0 && off <= size {
			return off, nil
		}
		return 0, fmt.Errorf("%w: bytes %d+%d of %q (%d bytes)", ErrInvalidRange, off, n, key, size)
	}
	end = size
	if n >= 0 && off+n < size {
		end = off + n
	}
	return end, nil
}

// readFull reads exactly size bytes from r.
func readFull(r io.Reader, size int64) ([]byte, error) {
	if size < 0 {
		return nil, fmt.Errorf("objstore: negative size %d", size)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("objstore: read %d bytes of object body: %w", size, err)
	}
	return b, nil
}
