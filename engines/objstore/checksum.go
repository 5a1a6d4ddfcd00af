package objstore

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
)

// Castagnoli is the CRC-32C table of every checksum in this package.
var Castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrChecksum is returned by PutCRC32C (and PutVerified) when the bytes the
// store received do not have the caller's CRC-32C; nothing was stored.
var ErrChecksum = errors.New("objstore: checksum mismatch")

// ChecksumPutter is a Store that checks a Put against a CRC-32C the caller
// computed, in the same request (S3's x-amz-checksum-crc32c): the bytes on
// the wire are checked where they are stored, so no read-back is needed.
type ChecksumPutter interface {
	// PutCRC32C is Put of size bytes whose CRC-32C (Castagnoli) is crc. A
	// mismatch fails with an error matching ErrChecksum and stores nothing.
	// verified reports that the store confirmed it holds bytes with that
	// checksum; false (with a nil error) means it took the object without
	// checking (a server without checksum support): the caller must read it
	// back to be sure (Verify).
	PutCRC32C(ctx context.Context, key string, r io.Reader, size int64, crc uint32) (verified bool, err error)
}

// PutVerified writes the object and makes sure the store holds exactly size
// bytes with CRC-32C crc: with one checked Put where the store is a
// ChecksumPutter that confirms it, else with Put and a read-back (Verify).
// readBack reports which.
func PutVerified(ctx context.Context, st Store, key string, r io.Reader, size int64, crc uint32) (readBack bool, err error) {
	if cp, ok := st.(ChecksumPutter); ok {
		verified, err := cp.PutCRC32C(ctx, key, r, size, crc)
		if err != nil || verified {
			return false, err
		}
	} else if err := st.Put(ctx, key, r, size); err != nil {
		return false, err
	}
	return true, Verify(ctx, st, key, size, crc)
}

// verifyChunk is the size of the ranged GETs of Verify.
const verifyChunk = 8 << 20

// Verify reads an object back and checks its size and CRC-32C.
func Verify(ctx context.Context, st Store, key string, size int64, want uint32) error {
	info, err := st.Stat(ctx, key)
	if err != nil {
		return fmt.Errorf("verify %s: %w", key, err)
	}
	if info.Size != size {
		return fmt.Errorf("verify %s: %w: object has %d bytes, want %d", key, ErrChecksum, info.Size, size)
	}
	var c uint32
	for off := int64(0); off < size; off += verifyChunk {
		b, err := st.Get(ctx, key, off, min(verifyChunk, size-off))
		if err != nil {
			return fmt.Errorf("verify %s: %w", key, err)
		}
		c = crc32.Update(c, Castagnoli, b)
	}
	if c != want {
		return fmt.Errorf("verify %s: %w: object CRC-32C %08x, want %08x", key, ErrChecksum, c, want)
	}
	return nil
}

// ChecksumError is the ErrChecksum of a store that computed the CRC of what
// it received.
func ChecksumError(key string, got, want uint32) error {
	return fmt.Errorf("%w: put %q: received bytes have CRC-32C %08x, want %08x", ErrChecksum, key, got, want)
}

// crcReader hashes what is read through it.
type crcReader struct {
	r io.Reader
	h hash.Hash32
}

func newCRCReader(r io.Reader) *crcReader {
	return &crcReader{r: r, h: crc32.New(Castagnoli)}
}

func (c *crcReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.h.Write(p[:n])
	return n, err
}
