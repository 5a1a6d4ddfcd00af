// Package vfs is Quire's file-system seam. No storage code in Quire calls the
// os package for its data files; it takes an FS from here instead, so that the
// same code runs on the real disk, on an in-memory file system, on a crashable
// in-memory file system (unsynced data dropped at a simulated crash) and on an
// error-injecting wrapper (fail the Nth fsync, fill the disk).
//
// The package is a deliberately thin layer over github.com/cockroachdb/pebble/v2/vfs:
// Pebble's FS is the interface every Pebble instance (the bookie index, the meta
// log) already speaks, so one crashable FS holds both our segment files and
// Pebble's files, and one crash test covers both.
//
// Usage:
//
//	fs := vfs.Default                  // the real disk
//	fs := vfs.NewMem()                 // tests
//	mem := vfs.NewCrashableMem()       // crash tests
//	... write, sync ...
//	after := mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rng})
//	// reopen on `after` and check that everything acknowledged is there.
package vfs

import (
	"errors"
	"io"

	pvfs "github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// FS is a file system. See pebble's vfs.FS.
type FS = pvfs.FS

// File is an open file. See pebble's vfs.File.
type File = pvfs.File

// MemFS is an in-memory file system, optionally crashable.
type MemFS = pvfs.MemFS

// CrashCloneCfg says how much unsynced data survives a simulated crash.
type CrashCloneCfg = pvfs.CrashCloneCfg

// Default is the real file system of the host.
var Default FS = pvfs.Default

// NewMem returns an empty in-memory file system.
func NewMem() *MemFS { return pvfs.NewMem() }

// NewCrashableMem returns an empty in-memory file system that supports
// CrashClone: a copy holding every synced byte and a random share of the
// unsynced ones (in 4 KiB blocks; lost blocks read as zeros).
func NewCrashableMem() *MemFS { return pvfs.NewCrashableMem() }

// Write categories for the files Quire creates (used by Pebble's disk-health
// accounting; they carry no semantics).
const (
	CategoryShard   pvfs.DiskWriteCategory = "quire-shard"
	CategoryJournal pvfs.DiskWriteCategory = "quire-journal"
	CategoryMeta    pvfs.DiskWriteCategory = "quire-meta"
)

// Injector decides whether an operation fails; see InjectFS.
type Injector = errorfs.Injector

// Op describes one file-system operation seen by an Injector.
type Op = errorfs.Op

// Operation kinds an Injector can match on.
const (
	OpFileSync     = errorfs.OpFileSync
	OpFileSyncData = errorfs.OpFileSyncData
	OpFileWrite    = errorfs.OpFileWrite
	OpCreate       = errorfs.OpCreate
)

// InjectorFunc adapts a function to an Injector.
type InjectorFunc = errorfs.InjectorFunc

// ErrInjected is the error returned by InjectFS for operations an Injector fails.
var ErrInjected = errorfs.ErrInjected

// InjectFS wraps fs so that inj may fail any operation (a failed fsync, a full
// disk). Tests use it to check that every failure reaches the caller.
func InjectFS(fs FS, inj Injector) FS { return errorfs.Wrap(fs, inj) }

// WriteFileAtomic replaces name with data durably: it writes a temporary file,
// syncs it, renames it over name and syncs the directory. After a crash name
// holds either the old or the new contents, never a mix.
func WriteFileAtomic(fs FS, name string, data []byte) error {
	tmp := name + ".tmp"
	f, err := fs.Create(tmp, CategoryShard)
	if err != nil {
		return err
	}
	// vfs.File.Write may modify the slice it is given (see pebble's vfs):
	// write a copy so the caller's data stays intact.
	if _, err := f.Write(append([]byte(nil), data...)); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := fs.Rename(tmp, name); err != nil {
		return err
	}
	return SyncDir(fs, fs.PathDir(name))
}

// ReadFile returns the whole contents of name.
func ReadFile(fs FS, name string) ([]byte, error) {
	f, err := fs.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// SyncDir makes the directory entries of dir (creations, renames, removals)
// durable.
func SyncDir(fs FS, dir string) error {
	d, err := fs.OpenDir(dir)
	if err != nil {
		return err
	}
	serr := d.Sync()
	return errors.Join(serr, d.Close())
}

// MkdirAll creates dir and any missing parents, durably: it syncs the
// parent of every directory it created, so that a crash cannot lose a
// directory whose files were synced. An existing dir is left alone.
func MkdirAll(fs FS, dir string) error {
	var created []string
	for d := dir; ; {
		if _, err := fs.Stat(d); err == nil {
			break
		} else if !IsNotExist(err) {
			return err
		}
		created = append(created, d)
		parent := fs.PathDir(d)
		if parent == d || parent == "" || parent == "." {
			break
		}
		d = parent
	}
	if len(created) == 0 {
		return nil
	}
	if err := fs.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, d := range created { // deepest first
		if parent := fs.PathDir(d); parent != d && parent != "" {
			if err := SyncDir(fs, parent); err != nil {
				return err
			}
		}
	}
	return nil
}

// IsNotExist reports whether err says a file does not exist.
func IsNotExist(err error) bool { return isNotExist(err) }
