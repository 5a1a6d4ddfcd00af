package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/engines/objstore/s3store"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/shard"
)

// Engine is the s3 engine: shards stored as objects in an object store,
// indexed in meta.
type Engine struct {
	opts  Options
	store objstore.Store
	kv    meta.KV
	log   *slog.Logger
	m     *engineMetrics
	cache *objectCache

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // retention loop

	// retainMu guards retainDirty: shards that wrote an object since the
	// retention loop last looked (retainKick wakes it).
	retainMu    sync.Mutex
	retainDirty map[*Shard]bool
	retainKick  chan struct{}

	mu     sync.Mutex
	closed bool
	open   map[string]*Shard
	busy   map[string]chan struct{} // names with a create, open or delete in progress
}

var _ shard.Engine = (*Engine)(nil)

// Open starts the engine. With no Options.Store it connects to S3 and
// creates the bucket if it is missing.
func Open(ctx context.Context, opts Options) (*Engine, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	st := opts.Store
	if st == nil {
		var err error
		if st, err = s3store.Open(ctx, opts.storeOptions()); err != nil {
			return nil, err
		}
	}
	ectx, cancel := context.WithCancel(context.Background())
	e := &Engine{
		opts: opts, store: st, kv: opts.Meta, log: opts.Logger, m: newMetrics(opts.Registerer),
		cache: newObjectCache(opts.ReadCacheBytes), ctx: ectx, cancel: cancel,
		open: map[string]*Shard{}, busy: map[string]chan struct{}{},
		retainDirty: map[*Shard]bool{}, retainKick: make(chan struct{}, 1),
	}
	if opts.RetentionBytes > 0 || opts.RetentionAge > 0 {
		e.wg.Add(1)
		go e.retentionLoop()
	}
	return e, nil
}

// Name returns Options.Name ("s3" unless set).
func (e *Engine) Name() string { return e.opts.Name }

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

// Create makes a new, empty shard: its record in meta, created by CAS.
func (e *Engine) Create(ctx context.Context, name string) (shard.Shard, error) {
	if err := shard.ValidateName(name); err != nil {
		return nil, err
	}
	unlock, err := e.lockName(name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	rec := shardRecord{Name: name, ID: newID(), CreatedAt: e.opts.Now().UTC(), Writer: newID()}
	version, err := e.putState(ctx, rec, 0)
	if errors.Is(err, meta.ErrVersionMismatch) {
		return nil, fmt.Errorf("s3: %q: %w", name, shard.ErrExists)
	} else if err != nil {
		return nil, fmt.Errorf("s3: create %q: %w", name, err)
	}
	claimVersion, more, err := e.claim(ctx, name, rec.ID, 0, rec.Writer, 0)
	if err == nil && len(more) > 0 {
		err = fmt.Errorf("%w: entries appeared in the index of a new shard", ErrFenced)
	}
	if err != nil {
		return nil, fmt.Errorf("s3: create %q: %w", name, err)
	}
	s := e.newShard(rec, version, nil, claimVersion)
	e.mu.Lock()
	e.open[name] = s
	e.mu.Unlock()
	e.m.openShards.Inc()
	return s, nil
}

// Open opens an existing shard, loading its index from meta.
func (e *Engine) Open(ctx context.Context, name string) (shard.Shard, error) {
	if err := shard.ValidateName(name); err != nil {
		return nil, fmt.Errorf("s3: %q: %w", name, shard.ErrNotFound)
	}
	e.mu.Lock()
	if s, ok := e.open[name]; ok && !e.closed {
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
	s, ok := e.open[name]
	e.mu.Unlock()
	if ok {
		return s, nil
	}
	if s, err = e.load(ctx, name); err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.open[name] = s
	e.mu.Unlock()
	e.m.openShards.Inc()
	return s, nil
}

// load reads a shard's record and index and removes the leftovers of
// interrupted appends and trims.
func (e *Engine) load(ctx context.Context, name string) (*Shard, error) {
	octx, cancel := e.opCtx(ctx)
	defer cancel()
	kv, err := e.kv.Get(octx, e.shardKey(name))
	if errors.Is(err, meta.ErrNotFound) {
		return nil, fmt.Errorf("s3: %q: %w", name, shard.ErrNotFound)
	} else if err != nil {
		return nil, fmt.Errorf("s3: open %q: %w", name, err)
	}
	rec, err := decodeShard(kv)
	if err != nil {
		return nil, err
	}
	entries, err := listAll(octx, e.kv, e.indexPrefix(rec.ID))
	if err != nil {
		return nil, fmt.Errorf("s3: open %q: index: %w", name, err)
	}
	var objs, stale []objectRecord
	var last *meta.KeyValue // the last marker, if no entry follows it
	var lastMarker objectRecord
	for i, kv := range entries {
		var o objectRecord
		if err := jsonDecode(kv.Value, &o); err != nil {
			return nil, &shard.CorruptError{Shard: name, File: kv.Key, Reason: fmt.Sprintf("damaged index entry: %v", err)}
		}
		if o.marker() {
			last, lastMarker = &entries[i], o
			continue
		}
		last = nil
		if o.end() <= rec.Low {
			stale = append(stale, o) // a trim that stopped before deleting it
			continue
		}
		if n := len(objs); n > 0 && objs[n-1].end() != o.First {
			return nil, &shard.CorruptError{Shard: name, File: kv.Key,
				Reason: fmt.Sprintf("index gap: object at %d follows one ending at %d", o.First, objs[n-1].end())}
		}
		objs = append(objs, o)
	}
	// Fencing: a new writer token in the record (the previous writer's
	// trims and seals fail from now on), then this writer's claim on the
	// index key at high (its appends fail).
	rec.Writer = newID()
	version, err := e.putState(octx, rec, kv.Version)
	if err != nil {
		return nil, fmt.Errorf("s3: open %q: record the new writer: %w", name, err)
	}
	high := rec.Low
	if n := len(objs); n > 0 {
		high = max(high, objs[n-1].end())
	}
	var claimed uint64
	if last != nil && lastMarker.First == high {
		claimed = last.Version
	}
	claimVersion, more, err := e.claim(octx, name, rec.ID, high, rec.Writer, claimed)
	if err != nil {
		return nil, err
	}
	objs = append(objs, more...)
	s := e.newShard(rec, version, objs, claimVersion)
	// Cleanup runs in the background, holding the shard's write lock: no
	// object is being written meanwhile, so every object the index does
	// not name is garbage. Readers need not wait for it.
	// The lock is taken here so that the first append waits for it.
	s.writeMu.Lock()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer s.writeMu.Unlock()
		for _, o := range stale {
			s.deleteObject(e.ctx, o, "trim")
		}
		s.mu.Lock()
		known := append(slices.Clone(s.objs), stale...)
		s.mu.Unlock()
		e.removeOrphans(e.ctx, s, known)
	}()
	return s, nil
}

// removeOrphans deletes the shard's objects that no index entry names: the
// object of an append whose index commit failed, or was never made (a crash
// between the PUT and the commit). The caller holds s.writeMu.
func (e *Engine) removeOrphans(ctx context.Context, s *Shard, known []objectRecord) {
	octx, cancel := e.opCtx(ctx)
	defer cancel()
	infos, err := e.store.List(octx, e.objectPrefix(s.id))
	if err != nil {
		e.log.Warn("s3: cannot list objects to remove orphans", "shard", s.name, "err", err)
		return
	}
	names := make(map[string]bool, len(known))
	for _, o := range known {
		names[o.Key] = true
	}
	for _, info := range infos {
		if names[info.Key] {
			continue
		}
		e.log.Info("s3: deleting an object no index entry names (a failed append)", "shard", s.name, "key", info.Key)
		if err := e.store.Delete(octx, info.Key); err != nil {
			e.log.Warn("s3: delete orphan object", "key", info.Key, "err", err)
			continue
		}
		e.m.orphans.Inc()
	}
}

// Delete removes a shard: its record first (the shard is gone from then on),
// then its index entries and objects.
func (e *Engine) Delete(ctx context.Context, name string) error {
	if err := shard.ValidateName(name); err != nil {
		return fmt.Errorf("s3: %q: %w", name, shard.ErrNotFound)
	}
	unlock, err := e.lockName(name)
	if err != nil {
		return err
	}
	defer unlock()
	octx, cancel := e.opCtx(ctx)
	defer cancel()
	kv, err := e.kv.Get(octx, e.shardKey(name))
	if errors.Is(err, meta.ErrNotFound) {
		return fmt.Errorf("s3: %q: %w", name, shard.ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("s3: delete %q: %w", name, err)
	}
	rec, err := decodeShard(kv)
	if err != nil {
		return err
	}
	e.mu.Lock()
	s := e.open[name]
	delete(e.open, name)
	e.mu.Unlock()
	if s != nil {
		s.shutdown(false)
		e.m.openShards.Dec()
	}
	if _, err := e.kv.Delete(octx, kv.Key, meta.IfVersion(kv.Version)); err != nil && !errors.Is(err, meta.ErrNotFound) {
		return fmt.Errorf("s3: delete %q: %w", name, err)
	}
	e.purge(ctx, rec)
	return nil
}

// purge deletes a deleted shard's index entries and objects (best effort:
// leftovers are unreachable, since a new shard of that name gets a new ID).
func (e *Engine) purge(ctx context.Context, rec shardRecord) {
	octx, cancel := e.opCtx(ctx)
	defer cancel()
	entries, err := listAll(octx, e.kv, e.indexPrefix(rec.ID))
	if err != nil {
		e.log.Warn("s3: list index of deleted shard", "shard", rec.Name, "err", err)
	}
	for _, kv := range entries {
		if _, err := e.kv.Delete(octx, kv.Key); err != nil && !errors.Is(err, meta.ErrNotFound) {
			e.log.Warn("s3: delete index entry of deleted shard", "key", kv.Key, "err", err)
		}
	}
	infos, err := e.store.List(octx, e.objectPrefix(rec.ID))
	if err != nil {
		e.log.Warn("s3: list objects of deleted shard", "shard", rec.Name, "err", err)
	}
	for _, info := range infos {
		e.cache.drop(info.Key)
		if err := e.store.Delete(octx, info.Key); err != nil {
			e.log.Warn("s3: delete object of deleted shard", "key", info.Key, "err", err)
			continue
		}
		e.m.deleted.WithLabelValues("delete").Inc()
	}
}

// List returns the names of all shards, sorted.
func (e *Engine) List(ctx context.Context) ([]string, error) {
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		return nil, shard.ErrClosed
	}
	octx, cancel := e.opCtx(ctx)
	defer cancel()
	prefix := e.opts.MetaPrefix + "shards/"
	kvs, err := listAll(octx, e.kv, prefix)
	if err != nil {
		return nil, fmt.Errorf("s3: list shards: %w", err)
	}
	names := make([]string, 0, len(kvs))
	for _, kv := range kvs {
		names = append(names, strings.TrimPrefix(kv.Key, prefix))
	}
	sort.Strings(names)
	return names, nil
}

// Close flushes and closes every shard.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	shards := make([]*Shard, 0, len(e.open))
	for _, s := range e.open {
		shards = append(shards, s)
	}
	e.open = map[string]*Shard{}
	e.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range shards {
		wg.Go(func() { s.shutdown(true) })
	}
	wg.Wait()
	e.m.openShards.Sub(float64(len(shards)))
	e.cancel()
	e.wg.Wait()
	if c, ok := e.store.(io.Closer); ok && e.opts.CloseStore {
		return c.Close()
	}
	return nil
}

// retainSoon has the retention loop look at s (it wrote an object): the
// append path never waits for retention's meta and store calls.
func (e *Engine) retainSoon(s *Shard) {
	if e.opts.RetentionBytes <= 0 && e.opts.RetentionAge <= 0 {
		return
	}
	e.retainMu.Lock()
	e.retainDirty[s] = true
	e.retainMu.Unlock()
	select {
	case e.retainKick <- struct{}{}:
	default:
	}
}

// retentionLoop applies retention to the shards that wrote objects, soon
// after they did, and to every open shard once a minute (RetentionAge
// expires objects without writes).
func (e *Engine) retentionLoop() {
	defer e.wg.Done()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		var shards []*Shard
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
			e.mu.Lock()
			for _, s := range e.open {
				shards = append(shards, s)
			}
			e.mu.Unlock()
		case <-e.retainKick:
			e.retainMu.Lock()
			for s := range e.retainDirty {
				shards = append(shards, s)
			}
			clear(e.retainDirty)
			e.retainMu.Unlock()
		}
		for _, s := range shards {
			if err := s.applyRetention(e.ctx); err != nil && !errors.Is(err, shard.ErrClosed) {
				e.log.Warn("s3: retention", "shard", s.name, "err", err)
			}
		}
	}
}
