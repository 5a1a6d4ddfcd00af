package main

import (
	"syscall"
	"time"

	"github.com/quiremq/quire/internal/vfs"
)

// rawCeiling measures the write+fdatasync ceiling of dir: one writer
// writes perSync bytes at a time sequentially into a pre-zeroed file
// (as the bookies' journals are), fdatasyncing after each, for about d or
// until it has written the file twice over. It returns bytes per second.
func rawCeiling(dir string, perSync int, d time.Duration) (float64, error) {
	fs := vfs.Default
	const size = 128 << 20
	name := fs.PathJoin(dir, "raw-disk")
	f, err := fs.Create(name, vfs.CategoryJournal)
	if err != nil {
		return 0, err
	}
	defer fs.Remove(name)
	defer f.Close()
	if err := f.Preallocate(0, size); err != nil {
		return 0, err
	}
	zeros := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(zeros)) {
		if _, err := f.WriteAt(zeros, off); err != nil {
			return 0, err
		}
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	chunk := make([]byte, max(perSync, 512))
	for i := range chunk {
		chunk[i] = byte(i)
	}
	var off, written int64
	start := time.Now()
	for time.Since(start) < d && written < 2*size {
		if off+int64(len(chunk)) > size {
			off = 0
		}
		if _, err := f.WriteAt(chunk, off); err != nil {
			return 0, err
		}
		if err := f.SyncData(); err != nil {
			return 0, err
		}
		off += int64(len(chunk))
		written += int64(len(chunk))
	}
	return float64(written) / time.Since(start).Seconds(), nil
}

// settle writes back every file system's dirty data (sync(2)) and returns
// when it is on disk, so that a measurement that follows does not share
// the disk with writeback it did not cause.
func settle() { syscall.Sync() }
