package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/internal/vfs"
)

// Offload defaults applied by OffloadOptions.ensureDefaults.
const (
	DefaultOffloadConcurrency = 4
	DefaultOffloadInterval    = 10 * time.Second
	DefaultOffloadRetryMin    = time.Second
	DefaultOffloadRetryMax    = 5 * time.Minute
	DefaultOffloadCacheBytes  = 64 << 20
	DefaultOffloadBlockBytes  = 1 << 20
	DefaultOffloadPrefix      = "file"
)

// OffloadOptions move sealed segments to an object store (tiered storage).
// See the package documentation ("Offload").
type OffloadOptions struct {
	// Store receives the segments (required).
	Store objstore.Store
	// Prefix is the first part of every object key:
	// <Prefix>/<shard directory name>/<base, 20 digits>.log (and .idx);
	// default "file". Engines sharing a bucket need distinct prefixes.
	Prefix string
	// Manifest records where offloaded segments are; default a
	// FileManifest in the engine's directory (each shard's OFFLOAD file).
	Manifest Manifest
	// DeleteLag is how long a segment's local copy is kept after its
	// offload was recorded; 0 deletes it at once. (The configuration's
	// offload_delete_lag defaults to 1h.)
	DeleteLag time.Duration
	// Policy says whether a shard offloads and with which delete lag; nil
	// offloads every shard with DeleteLag. Consulted when a pass runs.
	Policy func(shard string) (offload bool, deleteLag time.Duration)
	// Concurrency bounds the segments uploaded at once; default 4.
	Concurrency int
	// Interval is the period of the background passes (a roll also starts
	// one); default 10s.
	Interval time.Duration
	// RetryMin and RetryMax bound the exponential backoff after a failed
	// offload of a segment; default 1s and 5min.
	RetryMin, RetryMax time.Duration
	// CacheBytes bounds the engine's cache of recently read blocks of
	// offloaded segments (BlockBytes each); defaults 64 MiB and 1 MiB.
	CacheBytes, BlockBytes int64
}

func (o *OffloadOptions) ensureDefaults(fs vfs.FS, dir string) {
	if o.Prefix == "" {
		o.Prefix = DefaultOffloadPrefix
	}
	if o.Manifest == nil {
		o.Manifest = NewFileManifest(fs, dir)
	}
	if o.Concurrency == 0 {
		o.Concurrency = DefaultOffloadConcurrency
	}
	if o.Interval == 0 {
		o.Interval = DefaultOffloadInterval
	}
	if o.RetryMin == 0 {
		o.RetryMin = DefaultOffloadRetryMin
	}
	if o.RetryMax == 0 {
		o.RetryMax = DefaultOffloadRetryMax
	}
	if o.CacheBytes == 0 {
		o.CacheBytes = DefaultOffloadCacheBytes
	}
	if o.BlockBytes == 0 {
		o.BlockBytes = DefaultOffloadBlockBytes
	}
}

func (o *OffloadOptions) validate() error {
	var errs []error
	if o.Store == nil {
		errs = append(errs, errors.New("file: Offload.Store is required"))
	}
	if o.Prefix != "" {
		if err := objstore.ValidateKey(o.Prefix); err != nil {
			errs = append(errs, fmt.Errorf("file: Offload.Prefix: %w", err))
		}
	}
	if o.DeleteLag < 0 {
		errs = append(errs, fmt.Errorf("file: Offload.DeleteLag must not be negative, got %v", o.DeleteLag))
	}
	if o.Concurrency < 0 || o.Interval < 0 || o.RetryMin < 0 || o.RetryMax < o.RetryMin || o.CacheBytes < 0 || o.BlockBytes < 0 {
		errs = append(errs, fmt.Errorf("file: Offload: Concurrency, Interval, RetryMin, CacheBytes and BlockBytes must not be negative and RetryMax not below RetryMin"))
	}
	return errors.Join(errs...)
}

func (o *OffloadOptions) policy(name string) (bool, time.Duration) {
	if o.Policy == nil {
		return true, o.DeleteLag
	}
	return o.Policy(name)
}

// offloadStep names the steps of one segment's offload for the crash tests'
// hook (Options.offloadHook).
type offloadStep string

const (
	stepUploaded offloadStep = "uploaded" // segment and index objects written
	stepVerified offloadStep = "verified" // checksums confirmed by the store or read back
	stepRecorded offloadStep = "recorded" // location CAS'd into the manifest
	stepDeleted  offloadStep = "deleted"  // local copy removed
)

// offloader is an engine's background offload: one goroutine running
// passes, each uploading with bounded concurrency.
type offloader struct {
	e     *Engine
	o     *OffloadOptions
	cache *blockCache

	kick   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}

	passMu  sync.Mutex // one pass at a time
	mu      sync.Mutex
	retry   map[segKey]retryState
	pending map[segKey]time.Time // sealed segments not offloaded yet: first seen
}

type segKey struct {
	shard string
	base  uint64
}

type retryState struct {
	next    time.Time
	backoff time.Duration
}

func newOffloader(e *Engine, o *OffloadOptions) *offloader {
	return &offloader{
		e: e, o: o,
		cache:   newBlockCache(o.BlockBytes, o.CacheBytes),
		kick:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		retry:   map[segKey]retryState{},
		pending: map[segKey]time.Time{},
	}
}

func (f *offloader) start() {
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	go func() {
		defer close(f.done)
		t := time.NewTicker(f.o.Interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-f.kick:
			}
			f.pass(ctx)
		}
	}()
}

func (f *offloader) stop() {
	if f.cancel == nil {
		return // never started
	}
	f.cancel()
	<-f.done
}

// poke starts a pass soon (after a roll).
func (f *offloader) poke() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

type offloadTask struct {
	s   *Shard
	seg *segment
	lag time.Duration
}

// pass offloads every sealed segment of the open shards that has no
// location yet, deletes local copies whose lag has passed and deletes the
// objects of segments trimmed meanwhile.
func (f *offloader) pass(ctx context.Context) {
	f.passMu.Lock()
	defer f.passMu.Unlock()
	e := f.e
	e.mu.Lock()
	shards := make([]*Shard, 0, len(e.open))
	for _, s := range e.open {
		shards = append(shards, s)
	}
	e.mu.Unlock()
	now := e.opts.Now()
	var tasks []offloadTask
	type del struct {
		s   *Shard
		seg *segment
		rs  RemoteSegment
	}
	var dels []del
	pending := map[segKey]time.Time{}
	for _, s := range shards {
		s.collectGarbage(ctx)
		if !s.orphansSwept {
			s.orphansSwept = s.sweepOrphans(ctx) == nil
		}
	}
	f.mu.Lock()
	for _, s := range shards {
		on, lag := f.o.policy(s.name)
		if !on {
			continue
		}
		s.mu.RLock()
		segs, closed := s.segs, s.closed
		s.mu.RUnlock()
		if closed {
			continue
		}
		s.ctlMu.Lock()
		for _, seg := range segs[:len(segs)-1] {
			rs, ok := s.locs[seg.base]
			k := segKey{s.name, seg.base}
			switch {
			case !ok:
				first, seen := f.pending[k]
				if !seen {
					first = now
				}
				pending[k] = first
				if r, failing := f.retry[k]; !failing || !now.Before(r.next) {
					tasks = append(tasks, offloadTask{s, seg, lag})
				}
			case seg.remote.Load() == nil && !now.Before(time.UnixMilli(rs.OffloadedAt).Add(lag)):
				dels = append(dels, del{s, seg, rs})
			}
		}
		s.ctlMu.Unlock()
	}
	f.pending = pending
	f.mu.Unlock()

	sem := make(chan struct{}, f.o.Concurrency)
	var wg sync.WaitGroup
	for _, t := range tasks {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			f.finish(t, t.s.offloadSegment(ctx, f, t.seg, t.lag))
		}()
	}
	wg.Wait()
	for _, d := range dels {
		if err := d.s.deleteLocal(d.seg, d.rs); err != nil {
			e.log.Warn("file: delete offloaded segment's local copy", "shard", d.s.name, "base", d.seg.base, "err", err)
		}
	}
	f.updateLag()
}

// finish records the outcome of one segment's offload.
func (f *offloader) finish(t offloadTask, err error) {
	k := segKey{t.s.name, t.seg.base}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.retry, k)
		delete(f.pending, k)
		return
	}
	r := f.retry[k]
	r.backoff = min(max(2*r.backoff, f.o.RetryMin), f.o.RetryMax)
	r.next = f.e.opts.Now().Add(r.backoff)
	f.retry[k] = r
	f.e.m.offloadFailures.Inc()
	f.e.log.Warn("file: offload failed; will retry", "shard", t.s.name, "base", t.seg.base, "retry_in", r.backoff, "err", err)
}

func (f *offloader) updateLag() {
	f.mu.Lock()
	defer f.mu.Unlock()
	var oldest time.Time
	for _, t := range f.pending {
		if oldest.IsZero() || t.Before(oldest) {
			oldest = t
		}
	}
	lag := 0.0
	if !oldest.IsZero() {
		lag = f.e.opts.Now().Sub(oldest).Seconds()
	}
	f.e.m.offloadLag.Set(lag)
}

// shardPrefix is the prefix of every object of shard name.
func (e *Engine) shardPrefix(name string) string {
	return e.off.o.Prefix + "/" + dirName(name) + "/"
}

// objectKey is the key of a segment's (ext ".log") or index's (".idx")
// object.
func (e *Engine) objectKey(shard string, base uint64, ext string) string {
	return fmt.Sprintf("%s%020d%s", e.shardPrefix(shard), base, ext)
}

func (e *Engine) remoteFile(rs *RemoteSegment) *remoteFile {
	return &remoteFile{st: e.off.o.Store, key: rs.Key, size: rs.Size, next: nextObjectKey(rs), cache: e.off.cache}
}

// nextObjectKey is the key the object of the segment after rs has once
// offloaded (its base is rs.End, under the same prefix), or "" when rs.Key
// is not in the form objectKey gives.
func nextObjectKey(rs *RemoteSegment) string {
	name := segFileName(rs.Base)
	prefix, ok := strings.CutSuffix(rs.Key, name)
	if !ok || rs.End <= rs.Base {
		return ""
	}
	return prefix + segFileName(rs.End)
}

// hook runs the crash tests' hook after a step.
func (s *Shard) hook(step offloadStep, base uint64) {
	if h := s.e.opts.offloadHook; h != nil {
		h(step, s.name, base)
	}
}

// offloadSegment uploads sealed segment seg and its index with their
// checksums verified (by the store, or read back),
// records the location and (with a zero lag) deletes the local copy. Every
// step is idempotent, so a pass after a crash at any point redoes what was
// not recorded.
func (s *Shard) offloadSegment(ctx context.Context, f *offloader, seg *segment, lag time.Duration) error {
	st := f.o.Store
	r, err := s.acquire(seg)
	if errors.Is(err, errSegmentGone) {
		return nil // trimmed or closed meanwhile
	}
	if err != nil {
		return err
	}
	idx := encodeIndex(segSummary{base: seg.base, end: seg.end, size: seg.size, maxTs: seg.maxTs}, r.idx)
	rs := RemoteSegment{
		Base: seg.base, End: seg.end, Size: seg.size, MaxTs: seg.maxTs,
		Key: s.e.objectKey(s.name, seg.base, segExt), IndexKey: s.e.objectKey(s.name, seg.base, idxExt),
	}
	// The CRC comes from a local read first: a section reader (io.ReaderAt
	// and io.Seeker) lets the S3 client upload large segments in parallel
	// parts, which a hashing io.TeeReader would not. The store checks the
	// upload against it (S3: x-amz-checksum-crc32c) or, where it cannot,
	// the object is read back.
	// The index object goes up meanwhile.
	type putResult struct {
		readBack bool
		err      error
	}
	idxDone := make(chan putResult, 1)
	go func() {
		rb, err := objstore.PutVerified(ctx, st, rs.IndexKey, bytes.NewReader(idx), int64(len(idx)), crc(idx))
		idxDone <- putResult{rb, err}
	}()
	var readBack bool
	rs.CRC, err = readerCRC(r.f, seg.size)
	if err == nil {
		readBack, err = objstore.PutVerified(ctx, st, rs.Key, io.NewSectionReader(r.f, 0, seg.size), seg.size, rs.CRC)
	}
	s.e.cache.release(r)
	idxRes := <-idxDone
	idxErr := idxRes.err
	if readBack || idxRes.readBack {
		s.e.m.offloadReadBack.Inc()
	}
	if err != nil {
		return fmt.Errorf("upload %s: %w", rs.Key, err)
	}
	if idxErr != nil {
		return fmt.Errorf("upload %s: %w", rs.IndexKey, idxErr)
	}
	s.hook(stepUploaded, seg.base)
	s.hook(stepVerified, seg.base)
	rs.OffloadedAt = s.e.opts.Now().UnixMilli()
	s.ctlMu.Lock()
	if !s.holds(seg) {
		s.ctlMu.Unlock()
		s.deleteObjects(ctx, rs) // trimmed while uploading
		return nil
	}
	if err := f.o.Manifest.CAS(ctx, s.name, seg.base, nil, &rs); err != nil {
		s.ctlMu.Unlock()
		return fmt.Errorf("record location: %w", err)
	}
	s.locs[seg.base] = rs
	s.ctlMu.Unlock()
	s.e.m.offloadBytes.Add(float64(rs.Size))
	s.e.m.offloadSegments.Inc()
	s.hook(stepRecorded, seg.base)
	if lag == 0 {
		return s.deleteLocal(seg, rs)
	}
	return nil
}

// readerCRC returns the CRC-32C of the first size bytes of r.
func readerCRC(r io.ReaderAt, size int64) (uint32, error) {
	buf := make([]byte, min(size, 1<<20))
	var c uint32
	for off := int64(0); off < size; {
		b := buf[:min(int64(len(buf)), size-off)]
		if n, err := r.ReadAt(b, off); n < len(b) {
			return 0, fmt.Errorf("read local segment at byte %d: %w", off, err)
		}
		c = crc32.Update(c, castagnoli, b)
		off += int64(len(b))
	}
	return c, nil
}

// holds reports whether seg is still one of the shard's segments (not
// trimmed, shard not closed).
func (s *Shard) holds(seg *segment) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return !s.closed && slices.Contains(s.segs, seg)
}

// deleteLocal switches seg to its object and deletes the local files.
func (s *Shard) deleteLocal(seg *segment, rs RemoteSegment) error {
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()
	if !s.holds(seg) || seg.remote.Load() != nil {
		return nil
	}
	seg.remote.Store(&rs)
	s.e.cache.evict(seg, false) // open readers finish on the local file
	fs := s.e.fs
	for _, p := range []string{seg.path, seg.idxPath} {
		if err := fs.Remove(p); err != nil && !vfs.IsNotExist(err) {
			return err
		}
	}
	if err := vfs.SyncDir(fs, s.dir); err != nil {
		return err
	}
	s.hook(stepDeleted, seg.base)
	return nil
}

// deleteObjects deletes an offloaded segment's objects.
func (s *Shard) deleteObjects(ctx context.Context, rs RemoteSegment) error {
	st := s.e.off.o.Store
	var errs []error
	for _, k := range []string{rs.Key, rs.IndexKey} {
		if k == "" {
			continue
		}
		s.e.off.cache.drop(k)
		if err := st.Delete(ctx, k); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// collectGarbage deletes the objects and then the locations of offloaded
// segments below the shard's first segment: trimmed by a trim or retention
// (which leave this to the offloader), also before a crash. The store is
// called without ctlMu held; nothing else changes those locations (passes
// are serialised). A failure leaves the location for the next pass.
func (s *Shard) collectGarbage(ctx context.Context) {
	s.ctlMu.Lock()
	s.mu.RLock()
	first, closed := s.segs[0].base, s.closed
	s.mu.RUnlock()
	var garbage []RemoteSegment
	for base, rs := range s.locs {
		if base < first && !closed {
			garbage = append(garbage, rs)
		}
	}
	s.ctlMu.Unlock()
	for _, rs := range garbage {
		err := s.deleteObjects(ctx, rs)
		if err == nil {
			err = s.e.off.o.Manifest.CAS(ctx, s.name, rs.Base, &rs, nil)
		}
		if err != nil {
			s.log.Warn("file: delete trimmed offloaded segment", "shard", s.name, "base", rs.Base, "err", err)
			continue
		}
		s.ctlMu.Lock()
		delete(s.locs, rs.Base)
		s.ctlMu.Unlock()
	}
}

// sweepOrphans deletes the objects of the shard that no location records
// and that lie below its first segment: uploaded before a crash that came
// before their record, then trimmed. It runs in the first pass after the
// shard is opened (passes are serialised, so no upload is in flight).
func (s *Shard) sweepOrphans(ctx context.Context) error {
	objs, err := s.e.off.o.Store.List(ctx, s.e.shardPrefix(s.name))
	if err != nil {
		s.log.Warn("file: list offloaded objects", "shard", s.name, "err", err)
		return err
	}
	s.ctlMu.Lock()
	s.mu.RLock()
	first := s.segs[0].base
	s.mu.RUnlock()
	var orphans []string
	for _, o := range objs {
		name := o.Key[strings.LastIndexByte(o.Key, '/')+1:]
		base, ok := parseBaseName(name, segExt)
		if !ok {
			base, ok = parseBaseName(name, idxExt)
		}
		if _, recorded := s.locs[base]; ok && base < first && !recorded {
			orphans = append(orphans, o.Key)
		}
	}
	s.ctlMu.Unlock()
	for _, k := range orphans {
		s.e.off.cache.drop(k)
		if err := s.e.off.o.Store.Delete(ctx, k); err != nil {
			return err
		}
	}
	if len(orphans) > 0 {
		s.log.Info("file: deleted unrecorded offloaded objects of trimmed segments", "shard", s.name, "objects", len(orphans))
	}
	return nil
}

// purgeRemote deletes every offloaded segment of shard name (Delete and
// Create of a shard).
func (e *Engine) purgeRemote(ctx context.Context, name string) error {
	if e.off == nil {
		return nil
	}
	m := e.off.o.Manifest
	segs, err := m.Load(ctx, name)
	if err != nil {
		return err
	}
	s := &Shard{e: e, name: name}
	for i := range segs {
		if err := s.deleteObjects(ctx, segs[i]); err != nil {
			return err
		}
		if err := m.CAS(ctx, name, segs[i].Base, &segs[i], nil); err != nil {
			return err
		}
	}
	// Objects uploaded but never recorded (a crash between the two).
	objs, err := e.off.o.Store.List(ctx, e.shardPrefix(name))
	if err != nil {
		return err
	}
	for _, o := range objs {
		e.off.cache.drop(o.Key) // a prefetch of it must not serve a later object of the key
		if err := e.off.o.Store.Delete(ctx, o.Key); err != nil {
			return err
		}
	}
	return nil
}
