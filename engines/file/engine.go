package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
)

// Engine is the file engine: shards stored as segmented logs in
// sub-directories of Options.Dir.
type Engine struct {
	opts  Options
	fs    vfs.FS
	log   *slog.Logger
	m     *engineMetrics
	cache *readerCache
	lock  io.Closer
	off   *offloader // nil without Options.Offload

	// syncs and syncedBytes count segment fdatasyncs and the bytes they
	// covered (benchmarks compute the group commit size from them).
	syncs, syncedBytes atomic.Int64

	mu      sync.Mutex
	closed  bool
	names   map[string]string        // shard name → directory name, for every shard on disk
	open    map[string]*Shard        // open shards
	busy    map[string]chan struct{} // names with a create, open or delete in progress
	corrupt map[string]bool          // shards whose last open found corruption
}

var _ shard.Engine = (*Engine)(nil)

// Open opens (creating if needed) the engine in opts.Dir. Shards are opened,
// and recovered, lazily by Engine.Open; a corrupt shard does not stop the
// engine from serving the others.
func Open(opts Options) (*Engine, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	fs := opts.FS
	if err := vfs.MkdirAll(fs, opts.Dir); err != nil {
		return nil, fmt.Errorf("file: create %s: %w", opts.Dir, err)
	}
	lock, err := fs.Lock(fs.PathJoin(opts.Dir, lockFile))
	if err != nil {
		return nil, fmt.Errorf("file: lock %s (is another engine using it?): %w", opts.Dir, err)
	}
	e := &Engine{
		opts:    opts,
		fs:      fs,
		log:     opts.Logger,
		m:       newMetrics(opts.Registerer),
		cache:   &readerCache{capacity: opts.MaxOpenSegments},
		lock:    lock,
		names:   map[string]string{},
		open:    map[string]*Shard{},
		busy:    map[string]chan struct{}{},
		corrupt: map[string]bool{},
	}
	if err := e.loadNames(); err != nil {
		lock.Close()
		return nil, err
	}
	if opts.Offload != nil {
		e.off = newOffloader(e, opts.Offload)
		if !opts.offloadManual {
			e.off.start()
		}
	}
	return e, nil
}

// loadNames finds the shards on disk. A directory without a NAME file is
// the remains of a create or delete that a crash interrupted; it is removed.
func (e *Engine) loadNames() error {
	fs := e.fs
	entries, err := fs.List(e.opts.Dir)
	if err != nil {
		return fmt.Errorf("file: list %s: %w", e.opts.Dir, err)
	}
	removed := false
	for _, d := range entries {
		name, hashed, ok := decodeDirName(d)
		if !ok {
			continue
		}
		dir := fs.PathJoin(e.opts.Dir, d)
		// A plain directory name is the shard's name: NAME only has to
		// exist. A hashed one is read back from NAME.
		var b []byte
		if hashed {
			b, err = vfs.ReadFile(fs, fs.PathJoin(dir, nameFile))
		} else {
			_, err = fs.Stat(fs.PathJoin(dir, nameFile))
		}
		if vfs.IsNotExist(err) {
			e.log.Info("file: removing incomplete shard directory", "dir", dir)
			if err := fs.RemoveAll(dir); err != nil {
				return fmt.Errorf("file: remove %s: %w", dir, err)
			}
			removed = true
			continue
		}
		if hashed {
			if err != nil {
				e.log.Error("file: cannot read shard name; shard skipped", "dir", dir, "err", err)
				continue
			}
			if name, err = decodeNameFile(b); err != nil || dirName(name) != d {
				e.log.Error("file: damaged shard name file; shard skipped", "dir", dir, "err", err)
				continue
			}
		}
		e.names[name] = d
	}
	if removed {
		return vfs.SyncDir(fs, e.opts.Dir)
	}
	return nil
}

// Name returns "file".
func (e *Engine) Name() string { return "file" }

// lockName serialises create, open and delete of one name.
func (e *Engine) lockName(name string) (func(), error) {
	e.mu.Lock()
	for {
		if e.closed {
			e.mu.Unlock()
			return nil, shard.ErrClosed
		}
		ch, ok := e.busy[name]
		if !ok {
			break
		}
		e.mu.Unlock()
		<-ch
		e.mu.Lock()
	}
	ch := make(chan struct{})
	e.busy[name] = ch
	e.mu.Unlock()
	return func() {
		e.mu.Lock()
		delete(e.busy, name)
		close(ch)
		e.mu.Unlock()
	}, nil
}

// Create makes a new, empty shard.
func (e *Engine) Create(_ context.Context, name string) (shard.Shard, error) {
	if err := shard.ValidateName(name); err != nil {
		return nil, err
	}
	unlock, err := e.lockName(name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	e.mu.Lock()
	_, exists := e.names[name]
	e.mu.Unlock()
	if exists {
		return nil, fmt.Errorf("file: %q: %w", name, shard.ErrExists)
	}
	d := dirName(name)
	// Offloaded segments of an earlier shard of this name whose delete a
	// crash interrupted.
	if err := e.purgeRemote(context.Background(), name); err != nil {
		return nil, fmt.Errorf("file: create %q: delete offloaded segments of an earlier shard: %w", name, err)
	}
	if err := e.createDir(name, d); err != nil {
		return nil, fmt.Errorf("file: create %q: %w", name, err)
	}
	e.mu.Lock()
	e.names[name] = d
	e.mu.Unlock()
	s, err := e.openShard(name, e.fs.PathJoin(e.opts.Dir, d))
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.open[name] = s
	e.mu.Unlock()
	return s, nil
}

// createDir lays out a new shard directory: the first segment, then the
// NAME file, which marks the shard as existing.
func (e *Engine) createDir(name, d string) error {
	fs := e.fs
	dir := fs.PathJoin(e.opts.Dir, d)
	if _, err := fs.Stat(fs.PathJoin(dir, nameFile)); err == nil {
		// Only a shard whose NAME file is damaged is on disk but unknown.
		return fmt.Errorf("%s holds a shard whose name file is damaged; not overwriting it", dir)
	}
	if err := fs.RemoveAll(dir); err != nil { // remains of an interrupted create or delete
		return err
	}
	if err := fs.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := vfs.SyncDir(fs, e.opts.Dir); err != nil {
		return err
	}
	f, err := fs.Create(fs.PathJoin(dir, segFileName(0)), vfs.CategoryShard)
	if err != nil {
		return err
	}
	_, werr := f.WriteAt(segHeader{base: 0, created: e.opts.Now().UnixMilli()}.encode(), 0)
	if werr == nil {
		werr = f.SyncData()
	}
	if err := errors.Join(werr, f.Close()); err != nil {
		return err
	}
	// WriteFileAtomic syncs dir, which makes the segment's entry durable
	// too; dir's own entry in e.opts.Dir was synced after MkdirAll.
	return vfs.WriteFileAtomic(fs, fs.PathJoin(dir, nameFile), encodeNameFile(name))
}

// Open returns the open shard called name, opening and recovering it if
// needed. A shard that failed after an I/O error is closed and reopened.
// A corrupt shard returns a *shard.CorruptError (each call retries).
func (e *Engine) Open(_ context.Context, name string) (shard.Shard, error) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, shard.ErrClosed
	}
	if s := e.open[name]; s != nil && s.failed() == nil {
		e.mu.Unlock()
		return s, nil
	}
	e.mu.Unlock()
	unlock, err := e.lockName(name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	e.mu.Lock()
	s := e.open[name]
	d, exists := e.names[name]
	e.mu.Unlock()
	if s != nil {
		if s.failed() == nil {
			return s, nil
		}
		e.log.Info("file: reopening failed shard", "shard", name)
		s.close()
		e.forget(s)
	}
	if !exists {
		return nil, fmt.Errorf("file: %q: %w", name, shard.ErrNotFound)
	}
	s, err = e.openShard(name, e.fs.PathJoin(e.opts.Dir, d))
	e.mu.Lock()
	defer e.mu.Unlock()
	var ce *shard.CorruptError
	if errors.As(err, &ce) {
		if !e.corrupt[name] {
			e.corrupt[name] = true
			e.m.corruptShards.Inc()
		}
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	if e.corrupt[name] {
		delete(e.corrupt, name)
		e.m.corruptShards.Dec()
	}
	e.open[name] = s
	return s, nil
}

// forget removes s from the open shards once it is closed.
func (e *Engine) forget(s *Shard) {
	e.mu.Lock()
	if e.open[s.name] == s {
		delete(e.open, s.name)
	}
	e.mu.Unlock()
}

// Delete removes a shard and its data; open handles fail with ErrClosed.
func (e *Engine) Delete(_ context.Context, name string) error {
	unlock, err := e.lockName(name)
	if err != nil {
		return err
	}
	defer unlock()
	e.mu.Lock()
	s := e.open[name]
	d, exists := e.names[name]
	e.mu.Unlock()
	if !exists {
		return fmt.Errorf("file: %q: %w", name, shard.ErrNotFound)
	}
	if s != nil {
		s.close()
		e.forget(s)
	}
	if err := e.purgeRemote(context.Background(), name); err != nil {
		return fmt.Errorf("file: delete %q: offloaded segments: %w", name, err)
	}
	fs := e.fs
	dir := fs.PathJoin(e.opts.Dir, d)
	// Removing NAME first makes the delete atomic: a directory without it
	// is garbage, removed by the next engine open or create.
	if err := fs.Remove(fs.PathJoin(dir, nameFile)); err != nil && !vfs.IsNotExist(err) {
		return fmt.Errorf("file: delete %q: %w", name, err)
	}
	if err := vfs.SyncDir(fs, dir); err != nil {
		return fmt.Errorf("file: delete %q: %w", name, err)
	}
	e.mu.Lock()
	delete(e.names, name)
	if e.corrupt[name] {
		delete(e.corrupt, name)
		e.m.corruptShards.Dec()
	}
	e.mu.Unlock()
	if err := fs.RemoveAll(dir); err != nil {
		e.log.Warn("file: remove deleted shard directory", "dir", dir, "err", err)
	} else if err := vfs.SyncDir(fs, e.opts.Dir); err != nil {
		e.log.Warn("file: sync engine directory", "dir", e.opts.Dir, "err", err)
	}
	return nil
}

// List returns the names of all shards, sorted, including shards that fail
// to open.
func (e *Engine) List(context.Context) ([]string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, shard.ErrClosed
	}
	names := make([]string, 0, len(e.names))
	for n := range e.names {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

// Close flushes and closes every shard and releases the directory lock.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	for len(e.busy) > 0 {
		var ch chan struct{}
		for _, c := range e.busy {
			ch = c
			break
		}
		e.mu.Unlock()
		<-ch
		e.mu.Lock()
	}
	e.mu.Unlock()
	if e.off != nil {
		e.off.stop()
	}
	e.mu.Lock()
	open := e.open
	e.open = map[string]*Shard{}
	e.mu.Unlock()
	var errs []error
	for _, s := range open {
		if err := s.close(); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, e.lock.Close())
	return errors.Join(errs...)
}
