package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/quiremq/quire/internal/vfs"
)

// DirOptions configure a directory store.
type DirOptions struct {
	// FS is the file system; default vfs.Default.
	FS vfs.FS
	// Dir is the root directory (required); created if missing.
	Dir string
	// Logger receives cleanup events; default slog.Default().
	Logger *slog.Logger
}

// Dir is a Store in a local directory. Puts are atomic and durable: the
// object is written to a temporary file, fsynced, renamed into place and its
// directory fsynced.
type Dir struct {
	fs   vfs.FS
	root string
	tmp  string
	seq  atomic.Uint64
	// dirMu orders directory creation and renames into a directory (Put)
	// against the removal of emptied directories (Delete).
	dirMu sync.Mutex
}

var (
	_ Store          = (*Dir)(nil)
	_ ChecksumPutter = (*Dir)(nil)
)

const tmpDirName = ".tmp"

// OpenDir opens (creating if needed) a directory store and removes the
// temporary files of puts that a crash interrupted.
func OpenDir(opts DirOptions) (*Dir, error) {
	if opts.Dir == "" {
		return nil, errors.New("objstore: DirOptions.Dir is required")
	}
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	fs := opts.FS
	d := &Dir{fs: fs, root: opts.Dir, tmp: fs.PathJoin(opts.Dir, tmpDirName)}
	if err := fs.MkdirAll(d.tmp, 0o755); err != nil {
		return nil, fmt.Errorf("objstore: create %s: %w", d.tmp, err)
	}
	names, err := fs.List(d.tmp)
	if err != nil {
		return nil, fmt.Errorf("objstore: list %s: %w", d.tmp, err)
	}
	for _, n := range names {
		opts.Logger.Info("objstore: removing temporary file of an interrupted put", "file", fs.PathJoin(d.tmp, n))
		if err := fs.Remove(fs.PathJoin(d.tmp, n)); err != nil {
			return nil, fmt.Errorf("objstore: remove %s: %w", n, err)
		}
	}
	if err := vfs.SyncDir(fs, fs.PathDir(opts.Dir)); err != nil {
		return nil, fmt.Errorf("objstore: sync parent of %s: %w", opts.Dir, err)
	}
	return d, vfs.SyncDir(fs, opts.Dir)
}

// path returns the directories (outermost first) and the file of key.
func (d *Dir) path(key string) (dirs []string, file string, err error) {
	parts, err := KeyPath(key)
	if err != nil {
		return nil, "", err
	}
	cur := d.root
	for i, p := range parts {
		cur = d.fs.PathJoin(cur, p)
		if i < len(parts)-1 {
			dirs = append(dirs, cur)
		}
	}
	return dirs, cur, nil
}

// Put writes the object through a temporary file renamed into place.
func (d *Dir) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return d.put(ctx, key, r, size, nil)
}

// PutCRC32C is Put that checks the CRC-32C of the bytes written to the
// temporary file before renaming it into place.
func (d *Dir) PutCRC32C(ctx context.Context, key string, r io.Reader, size int64, crc uint32) (bool, error) {
	cr := newCRCReader(r)
	err := d.put(ctx, key, cr, size, func() error {
		if got := cr.h.Sum32(); got != crc {
			return ChecksumError(key, got, crc)
		}
		return nil
	})
	return err == nil, err
}

// put writes the object; check, when set, runs after the temporary file is
// written and keeps it out of place when it fails.
func (d *Dir) put(ctx context.Context, key string, r io.Reader, size int64, check func() error) error {
	_, file, err := d.path(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	tmp := d.fs.PathJoin(d.tmp, fmt.Sprintf("%d", d.seq.Add(1)))
	if err := d.writeTemp(tmp, r, size); err != nil {
		_ = d.fs.Remove(tmp)
		return fmt.Errorf("objstore: put %q: %w", key, err)
	}
	if check != nil {
		if err := check(); err != nil {
			_ = d.fs.Remove(tmp)
			return err
		}
	}
	d.dirMu.Lock()
	err = vfs.MkdirAll(d.fs, d.fs.PathDir(file)) // new directories durably, before the rename
	if err == nil {
		err = d.fs.Rename(tmp, file)
	}
	d.dirMu.Unlock()
	if err != nil {
		_ = d.fs.Remove(tmp)
		return fmt.Errorf("objstore: put %q: %w", key, err)
	}
	parent := d.fs.PathDir(file)
	if err := vfs.SyncDir(d.fs, parent); err != nil {
		return fmt.Errorf("objstore: put %q: sync %s: %w", key, parent, err)
	}
	return nil
}

func (d *Dir) writeTemp(tmp string, r io.Reader, size int64) error {
	f, err := d.fs.Create(tmp, vfs.CategoryShard)
	if err != nil {
		return err
	}
	buf := make([]byte, min(size, 1<<20))
	left := size
	for left > 0 {
		n, rerr := io.ReadFull(r, buf[:min(left, int64(len(buf)))])
		if n > 0 {
			if _, err := f.Write(buf[:n]); err != nil {
				f.Close()
				return err
			}
			left -= int64(n)
		}
		if rerr != nil && left > 0 {
			f.Close()
			return fmt.Errorf("object body ended %d bytes short of %d: %w", left, size, rerr)
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Get reads a byte range of the object.
func (d *Dir) Get(ctx context.Context, key string, off, n int64) ([]byte, error) {
	_, file, err := d.path(key)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := d.fs.Open(file)
	if vfs.IsNotExist(err) {
		return nil, &NotFoundError{Key: key}
	} else if err != nil {
		return nil, fmt.Errorf("objstore: get %q: %w", key, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("objstore: get %q: %w", key, err)
	}
	end, err := CheckRange(key, off, n, st.Size())
	if err != nil {
		return nil, err
	}
	b := make([]byte, end-off)
	if _, err := f.ReadAt(b, off); err != nil && !(errors.Is(err, io.EOF) && len(b) == 0) {
		return nil, fmt.Errorf("objstore: get %q: %w", key, err)
	}
	return b, nil
}

// List walks the directories that can hold keys under prefix.
func (d *Dir) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	out, err := ListTree(ctx, prefix, d.root, d.fs.PathJoin, func(dir string) ([]TreeEntry, error) {
		names, err := d.fs.List(dir)
		if vfs.IsNotExist(err) {
			return nil, nil
		} else if err != nil {
			return nil, err
		}
		entries := make([]TreeEntry, 0, len(names))
		for _, n := range names {
			e := TreeEntry{Name: n}
			if strings.HasSuffix(n, objSuffix) {
				st, err := d.fs.Stat(d.fs.PathJoin(dir, n))
				if vfs.IsNotExist(err) {
					continue // deleted while listing
				} else if err != nil {
					return nil, err
				}
				e.Size, e.ModTime = st.Size(), st.ModTime()
			}
			entries = append(entries, e)
		}
		return entries, nil
	})
	if err != nil {
		return nil, fmt.Errorf("objstore: list %q: %w", prefix, err)
	}
	return out, nil
}

// Delete removes the object and the directories it leaves empty.
func (d *Dir) Delete(ctx context.Context, key string) error {
	dirs, file, err := d.path(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	d.dirMu.Lock()
	defer d.dirMu.Unlock()
	if err := d.fs.Remove(file); err != nil && !vfs.IsNotExist(err) {
		return fmt.Errorf("objstore: delete %q: %w", key, err)
	}
	parent := d.root
	if len(dirs) > 0 {
		parent = dirs[len(dirs)-1]
	}
	if err := vfs.SyncDir(d.fs, parent); err != nil && !vfs.IsNotExist(err) {
		return fmt.Errorf("objstore: delete %q: sync %s: %w", key, parent, err)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		names, err := d.fs.List(dirs[i])
		if err != nil || len(names) > 0 {
			break
		}
		if err := d.fs.Remove(dirs[i]); err != nil {
			break
		}
	}
	return nil
}

// Stat describes the object.
func (d *Dir) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	_, file, err := d.path(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return ObjectInfo{}, err
	}
	st, err := d.fs.Stat(file)
	if vfs.IsNotExist(err) {
		return ObjectInfo{}, &NotFoundError{Key: key}
	} else if err != nil {
		return ObjectInfo{}, fmt.Errorf("objstore: stat %q: %w", key, err)
	}
	return ObjectInfo{Key: key, Size: st.Size(), ModTime: st.ModTime()}, nil
}
