package s3

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/shard"
)

// Shard is one shard of the s3 engine. Appends queue for the shard's flusher
// goroutine, which writes them as one object and commits its index entry.
type Shard struct {
	e    *Engine
	name string
	id   string

	// writeMu is held by a flush and by Seal: the flusher is the only
	// writer of high and of the end of objs.
	writeMu sync.Mutex
	// writer is this handle's token (in the shard record and its entries);
	// claimVersion is the version of its marker on the index key at high
	// until the first commit replaces it, then 0 (guarded by writeMu).
	writer       string
	claimVersion uint64
	// stateMu serialises updates of the shard's record (Trim, Seal,
	// retention).
	stateMu      sync.Mutex
	stateVersion uint64 // guarded by stateMu
	record       shardRecord

	mu        sync.Mutex
	low, high uint64
	objs      []objectRecord // contiguous, covering [objs[0].First, high)
	sealed    bool
	closing   bool  // no new appends; the flusher drains the queue
	closed    bool  // closed or deleted
	failed    error // set when an index commit's outcome is unknown
	notify    chan struct{}
	pending   []*appendReq
	pendBytes int
	kick      chan struct{} // cap 1: wakes the flusher
	done      chan struct{} // closed when the flusher exits
}

var (
	_ shard.Shard  = (*Shard)(nil)
	_ shard.Tailer = (*Shard)(nil)
)

type appendReq struct {
	recs  []shard.Record
	bytes int
	first uint64
	err   error
	done  chan struct{}
}

func (e *Engine) newShard(rec shardRecord, version uint64, objs []objectRecord, claimVersion uint64) *Shard {
	s := &Shard{
		e: e, name: rec.Name, id: rec.ID, stateVersion: version, record: rec,
		writer: rec.Writer, claimVersion: claimVersion,
		low: rec.Low, high: rec.Low, objs: objs, sealed: rec.Sealed,
		notify: make(chan struct{}), kick: make(chan struct{}, 1), done: make(chan struct{}),
	}
	if n := len(objs); n > 0 {
		s.high = max(s.low, objs[n-1].end())
	}
	go s.flusher()
	return s
}

// Name returns the shard's name.
func (s *Shard) Name() string { return s.name }

// Append queues recs for the next object and returns once that object is
// written and its index entry committed to meta.
func (s *Shard) Append(ctx context.Context, recs []shard.Record) (uint64, error) {
	s.mu.Lock()
	if err := s.writableLocked(); err != nil {
		s.mu.Unlock()
		return 0, err
	}
	if len(recs) == 0 {
		h := s.high
		s.mu.Unlock()
		return h, nil
	}
	now := s.e.opts.Now().UnixMilli()
	req := &appendReq{recs: make([]shard.Record, len(recs)), done: make(chan struct{})}
	copy(req.recs, recs)
	for i := range req.recs {
		if req.recs[i].Timestamp == 0 {
			req.recs[i].Timestamp = now
		}
		req.bytes += req.recs[i].Size()
	}
	s.pending = append(s.pending, req)
	s.pendBytes += req.bytes
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	select {
	case <-req.done:
	case <-ctx.Done():
		if s.withdraw(req) {
			return 0, ctx.Err()
		}
		<-req.done // already being written: its outcome stands
	}
	if req.err != nil {
		s.e.m.failedAppends.Inc()
		return 0, req.err
	}
	s.e.m.appends.Inc()
	s.e.m.records.Add(float64(len(recs)))
	s.e.m.bytes.Add(float64(req.bytes))
	return req.first, nil
}

func (s *Shard) writableLocked() error {
	switch {
	case s.closed || s.closing:
		return fmt.Errorf("s3: %q: %w", s.name, shard.ErrClosed)
	case s.failed != nil:
		return fmt.Errorf("s3: %q: %w: %w", s.name, shard.ErrFailed, s.failed)
	case s.sealed:
		return fmt.Errorf("s3: %q: %w", s.name, shard.ErrSealed)
	}
	return nil
}

// withdraw removes a request that the flusher has not taken yet.
func (s *Shard) withdraw(req *appendReq) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range s.pending {
		if r == req {
			s.pending = append(s.pending[:i], s.pending[i+1:]...)
			s.pendBytes -= req.bytes
			return true
		}
	}
	return false
}

// flusher writes queued appends as objects until the shard is closed.
func (s *Shard) flusher() {
	defer close(s.done)
	interval := s.e.opts.FlushInterval
	for {
		<-s.kick
		s.mu.Lock()
		n, closing := len(s.pending), s.closing || s.closed
		s.mu.Unlock()
		if n == 0 {
			if closing {
				return
			}
			continue
		}
		if interval > 0 && !closing {
			s.waitForMore(interval)
		}
		for s.flushOnce() {
		}
		s.mu.Lock()
		closing = s.closing || s.closed
		s.mu.Unlock()
		if closing {
			for s.flushOnce() {
			}
			return
		}
	}
}

// waitForMore waits up to d for FlushBytes to queue up (or the shard to
// close).
func (s *Shard) waitForMore(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		s.mu.Lock()
		full, closing := s.pendBytes >= s.e.opts.FlushBytes, s.closing || s.closed
		s.mu.Unlock()
		if full || closing {
			return
		}
		select {
		case <-t.C:
			return
		case <-s.kick:
		}
	}
}

// flushOnce writes up to FlushBytes of queued appends as one object and
// reports whether it wrote anything.
func (s *Shard) flushOnce() bool {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	if len(s.pending) == 0 {
		s.mu.Unlock()
		return false
	}
	n, size := 0, 0
	for n < len(s.pending) && (n == 0 || size+s.pending[n].bytes <= s.e.opts.FlushBytes) {
		size += s.pending[n].bytes
		n++
	}
	batch := s.pending[:n:n]
	s.pending = s.pending[n:]
	s.pendBytes -= size
	var err error
	switch {
	case s.closed:
		err = fmt.Errorf("s3: %q: %w", s.name, shard.ErrClosed)
	case s.failed != nil:
		err = fmt.Errorf("s3: %q: %w: %w", s.name, shard.ErrFailed, s.failed)
	case s.sealed:
		err = fmt.Errorf("s3: %q: %w", s.name, shard.ErrSealed)
	}
	first := s.high
	s.mu.Unlock()
	if err == nil {
		err = s.write(first, batch)
	}
	for _, r := range batch {
		r.err = err
		close(r.done)
	}
	return true
}

// write stores batch as the object at offset first and commits its index
// entry; only then do its records become visible.
func (s *Shard) write(first uint64, batch []*appendReq) error {
	e := s.e
	var recs []shard.Record
	var payload int64
	for _, r := range batch {
		r.first = first + uint64(len(recs))
		recs = append(recs, r.recs...)
		payload += int64(r.bytes)
	}
	obj, maxTS := encodeObject(first, recs)
	key := e.objectKey(s.id, first)
	ctx, cancel := e.opCtx(e.ctx)
	defer cancel()
	start := time.Now()
	if err := e.store.Put(ctx, key, bytes.NewReader(obj), int64(len(obj))); err != nil {
		return fmt.Errorf("s3: %q: write object: %w", s.name, err)
	}
	e.m.putSeconds.Observe(time.Since(start).Seconds())
	e.m.objects.Inc()
	e.m.objectBytes.Observe(float64(len(obj)))
	rec := objectRecord{Key: key, First: first, Count: len(recs), MaxTS: maxTS, Size: int64(len(obj)), Bytes: payload,
		Writer: s.writer, Claim: s.claimVersion != 0}
	val, _ := json.Marshal(rec)
	ikey := e.indexKey(s.id, first)
	start = time.Now()
	// The commit: a CAS on the index key at high, which this handle
	// claimed when it opened the shard (or which must not exist yet). A
	// writer that opened the shard since has claimed it, or a later key,
	// and the CAS fails.
	_, err := e.casPut(ctx, ikey, val, s.claimVersion)
	switch {
	case err == nil:
		s.claimVersion = 0
	case errors.Is(err, meta.ErrAmbiguous) && !errors.Is(err, errNotApplied):
		s.fail(fmt.Errorf("index commit of offset %d: %v", first, err))
		return fmt.Errorf("s3: %q: index commit outcome unknown: %w", s.name, err)
	case errors.Is(err, meta.ErrVersionMismatch):
		err = s.fenced(ctx, ikey, first)
		s.fail(err)
		// The other writer's orphan sweep may have run already.
		if derr := e.store.Delete(ctx, key); derr != nil {
			e.log.Warn("s3: delete object of a fenced append", "key", key, "err", derr)
		}
		return fmt.Errorf("s3: %q: %w: %w", s.name, shard.ErrFailed, err)
	default:
		if derr := e.store.Delete(ctx, key); derr != nil {
			e.log.Warn("s3: delete object of a failed append (removed at next open)", "key", key, "err", derr)
		}
		return fmt.Errorf("s3: %q: commit index entry: %w", s.name, err)
	}
	e.m.commitSeconds.Observe(time.Since(start).Seconds())
	// Encoded here a moment ago: no need to check its CRCs again.
	if dec, derr := parseRecords(obj[headerLen:], first, len(recs)); derr == nil {
		e.cache.put(key, dec, int64(len(obj)))
	}
	s.mu.Lock()
	s.objs = append(s.objs, rec)
	s.high = rec.end()
	s.wakeLocked()
	s.mu.Unlock()
	e.retainSoon(s)
	return nil
}

// fenced explains a failed commit CAS at ikey: another engine's claim or
// entry there (ErrFenced), or an entry of unknown origin.
func (s *Shard) fenced(ctx context.Context, ikey string, first uint64) error {
	cur, err := s.e.kv.Get(ctx, ikey)
	if err != nil {
		return fmt.Errorf("index key of offset %d changed under this writer (reading it: %v)", first, err)
	}
	var o objectRecord
	if jsonDecode(cur.Value, &o) == nil && o.Writer != s.writer {
		return fmt.Errorf("%w (writer %s holds the index at offset %d; this handle is %s)", ErrFenced, o.Writer, first, s.writer)
	}
	return fmt.Errorf("index entry for offset %d exists: another writer?", first)
}

func (s *Shard) fail(err error) {
	s.mu.Lock()
	if s.failed == nil {
		s.failed = err
		s.e.m.failedShards.Inc()
		s.e.log.Error("s3: shard stops accepting appends; reopen it", "shard", s.name, "err", err)
	}
	s.mu.Unlock()
}

func (s *Shard) wakeLocked() {
	close(s.notify)
	s.notify = make(chan struct{})
}

// maxReadBytes bounds the payload one Read returns when Limits set none.
const maxReadBytes = 4 << 20

// Read returns records from offset from, fetching whole objects (or taking
// them from the cache).
func (s *Shard) Read(ctx context.Context, from uint64, lim shard.Limits) ([]shard.Record, error) {
	var out []shard.Record
	bytesOut := 0
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, fmt.Errorf("s3: %q: %w", s.name, shard.ErrClosed)
		}
		low, high := s.low, s.high
		if from < low || from > high {
			s.mu.Unlock()
			if len(out) > 0 {
				return out, nil
			}
			return nil, fmt.Errorf("s3: %q: %w", s.name, &shard.OutOfRangeError{Offset: from, Low: low, High: high})
		}
		if from == high {
			s.mu.Unlock()
			return out, nil
		}
		i := sort.Search(len(s.objs), func(i int) bool { return s.objs[i].end() > from })
		o := s.objs[i]
		var next objectRecord
		if i+1 < len(s.objs) {
			next = s.objs[i+1]
		}
		s.mu.Unlock()
		if next.Key != "" {
			// Catch-up readers read on: fetch the next object meanwhile.
			s.prefetch(next)
		}
		recs, err := s.loadObject(ctx, o)
		if errors.Is(err, objstore.ErrNotFound) {
			// Trimmed while we read: the range check above decides.
			s.mu.Lock()
			trimmed := from < s.low
			s.mu.Unlock()
			if trimmed {
				continue
			}
		}
		if err != nil {
			if len(out) > 0 {
				return out, nil
			}
			return nil, err
		}
		for _, r := range recs[from-o.First:] {
			if len(out) > 0 && ((lim.MaxRecords > 0 && len(out) >= lim.MaxRecords) ||
				(lim.MaxBytes > 0 && bytesOut+r.Size() > lim.MaxBytes) ||
				(lim.MaxBytes == 0 && bytesOut >= maxReadBytes)) {
				return out, nil
			}
			out = append(out, r)
			bytesOut += r.Size()
			from++
		}
		if lim.MaxRecords > 0 && len(out) >= lim.MaxRecords {
			return out, nil
		}
	}
}

// loadObject returns an object's records from the cache or the store; one
// goroutine fetches an object while others wait for it.
func (s *Shard) loadObject(ctx context.Context, o objectRecord) ([]shard.Record, error) {
	e := s.e
	for {
		recs, ok, wait := e.cache.getOrClaim(o.Key)
		if ok {
			e.m.cacheHits.Inc()
			return recs, nil
		}
		if wait == nil {
			recs, err := s.fetch(ctx, o)
			e.cache.done(o.Key, recs, o.Size)
			return recs, err
		}
		select {
		case <-wait: // cached now, unless it failed or was too large: try again
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// prefetch fetches the object into the cache in the background unless it
// is there, being fetched, or too large to stay long enough to be read.
func (s *Shard) prefetch(o objectRecord) {
	e := s.e
	if o.Size*2 > e.opts.ReadCacheBytes {
		return
	}
	if _, ok, wait := e.cache.getOrClaim(o.Key); ok || wait != nil {
		return
	}
	go func() {
		recs, _ := s.fetch(e.ctx, o)
		e.cache.done(o.Key, recs, o.Size)
	}()
}

// fetch reads and checks one object from the store.
func (s *Shard) fetch(ctx context.Context, o objectRecord) ([]shard.Record, error) {
	e := s.e
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	b, err := e.store.Get(ctx, o.Key, 0, -1)
	if err != nil {
		return nil, fmt.Errorf("s3: %q: read object %s: %w", s.name, o.Key, err)
	}
	e.m.gets.Inc()
	e.m.getBytes.Add(float64(len(b)))
	recs, err := decodeObject(b, o.First, o.Count)
	if err == nil && int64(len(b)) != o.Size {
		err = fmt.Errorf("object is %d bytes, index says %d", len(b), o.Size)
	}
	if err != nil {
		e.m.corruptObjects.Inc()
		return nil, &shard.CorruptError{Shard: s.name, File: o.Key, Reason: err.Error()}
	}
	return recs, nil
}

// Watermarks returns the first readable and the next offset.
func (s *Shard) Watermarks() (low, high uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.low, s.high
}

// OffsetForTime finds the first object whose newest record is at or after
// ts (every earlier object holds only older records) and scans it.
func (s *Shard) OffsetForTime(ctx context.Context, ts int64) (uint64, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return 0, fmt.Errorf("s3: %q: %w", s.name, shard.ErrClosed)
	}
	low, high := s.low, s.high
	objs := append([]objectRecord(nil), s.objs...)
	s.mu.Unlock()
	for _, o := range objs {
		if o.MaxTS < ts || o.end() <= low {
			continue
		}
		recs, err := s.loadObject(ctx, o)
		if err != nil {
			return 0, err
		}
		for _, r := range recs[max(low, o.First)-o.First:] {
			if r.Timestamp >= ts {
				return r.Offset, nil
			}
		}
	}
	return high, nil
}

// Trim moves the low watermark (in meta, by CAS) and deletes the objects
// wholly below it: their index entries, then the objects.
func (s *Shard) Trim(ctx context.Context, before uint64) error {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	return s.trimLocked(ctx, before, "trim")
}

func (s *Shard) trimLocked(ctx context.Context, before uint64, reason string) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("s3: %q: %w", s.name, shard.ErrClosed)
	}
	low, high := s.low, s.high
	s.mu.Unlock()
	if before > high {
		return fmt.Errorf("s3: %q: trim: %w", s.name, &shard.OutOfRangeError{Offset: before, Low: low, High: high})
	}
	if before <= low {
		return nil
	}
	if err := s.updateRecord(ctx, "trim", func(r *shardRecord) { r.Low = before }); err != nil {
		return err
	}
	s.mu.Lock()
	s.low = before
	i := 0
	for i < len(s.objs) && s.objs[i].end() <= before {
		i++
	}
	gone := append([]objectRecord(nil), s.objs[:i]...)
	s.objs = s.objs[i:]
	s.mu.Unlock()
	for _, o := range gone {
		s.deleteObject(ctx, o, reason)
	}
	return nil
}

// deleteObject removes an object's index entry, then the object. Failures
// are logged: the next open deletes what is left.
func (s *Shard) deleteObject(ctx context.Context, o objectRecord, reason string) {
	e := s.e
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	e.cache.drop(o.Key)
	ikey := e.indexKey(s.id, o.First)
	if o.Claim {
		// A fenced writer's next key, maybe: leave a marker, not a hole
		// that its CAS (version 0) would fill.
		val, _ := json.Marshal(objectRecord{First: o.First, Writer: o.Writer})
		if _, err := e.kv.Put(ctx, ikey, val); err != nil {
			e.log.Warn("s3: replace index entry with a marker", "shard", s.name, "first", o.First, "err", err)
			return
		}
	} else if _, err := e.kv.Delete(ctx, ikey); err != nil && !errors.Is(err, meta.ErrNotFound) {
		e.log.Warn("s3: delete index entry", "shard", s.name, "first", o.First, "err", err)
		return
	}
	if err := e.store.Delete(ctx, o.Key); err != nil {
		e.log.Warn("s3: delete object", "shard", s.name, "key", o.Key, "err", err)
		return
	}
	e.m.deleted.WithLabelValues(reason).Inc()
}

// updateRecord writes the shard's record as change makes it, by CAS
// against the version this handle wrote last; the caller holds stateMu.
// A version mismatch means another engine opened the shard since (or
// deleted it): ErrFenced.
func (s *Shard) updateRecord(ctx context.Context, op string, change func(*shardRecord)) error {
	rec := s.record
	change(&rec)
	v, err := s.e.putState(ctx, rec, s.stateVersion)
	if errors.Is(err, meta.ErrVersionMismatch) {
		err = fmt.Errorf("%w: %w", ErrFenced, err)
	}
	if err != nil {
		return fmt.Errorf("s3: %q: %s: %w", s.name, op, err)
	}
	s.stateVersion, s.record = v, rec
	return nil
}

// applyRetention trims whole objects past RetentionBytes or RetentionAge,
// always keeping the newest object.
func (s *Shard) applyRetention(ctx context.Context) error {
	opts := s.e.opts
	if opts.RetentionBytes <= 0 && opts.RetentionAge <= 0 {
		return nil
	}
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	s.mu.Lock()
	objs := append([]objectRecord(nil), s.objs...)
	s.mu.Unlock()
	var total int64
	for _, o := range objs {
		total += o.Bytes
	}
	cutoff := opts.Now().Add(-opts.RetentionAge).UnixMilli()
	var before uint64
	for _, o := range objs[:max(len(objs)-1, 0)] {
		byBytes := opts.RetentionBytes > 0 && total-o.Bytes >= opts.RetentionBytes
		byAge := opts.RetentionAge > 0 && o.MaxTS < cutoff
		if !byBytes && !byAge {
			break
		}
		total -= o.Bytes
		before = o.end()
	}
	if before == 0 {
		return nil
	}
	return s.trimLocked(ctx, before, "retention")
}

// Seal makes the shard read-only: queued appends fail with ErrSealed.
func (s *Shard) Seal(ctx context.Context) error {
	s.writeMu.Lock() // no object in flight
	defer s.writeMu.Unlock()
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("s3: %q: %w", s.name, shard.ErrClosed)
	}
	if s.sealed {
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	if err := s.updateRecord(ctx, "seal", func(r *shardRecord) { r.Sealed = true }); err != nil {
		return err
	}
	s.mu.Lock()
	s.sealed = true
	s.wakeLocked()
	s.mu.Unlock()
	return nil
}

// Sealed reports whether the shard is sealed.
func (s *Shard) Sealed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sealed
}

// Wait returns a channel closed once high exceeds offset, or the shard is
// closed or sealed.
func (s *Shard) Wait(offset uint64) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.high > offset || s.closed || s.sealed {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return s.notify
}

// Close flushes queued appends and closes the shard (for every handle: the
// engine hands out one per name).
func (s *Shard) Close() error {
	s.e.mu.Lock()
	if s.e.open[s.name] == s {
		delete(s.e.open, s.name)
		s.e.m.openShards.Dec()
	}
	s.e.mu.Unlock()
	s.shutdown(true)
	return nil
}

// shutdown stops the shard; with flush, queued appends are written first,
// otherwise they fail with ErrClosed.
func (s *Shard) shutdown(flush bool) {
	s.mu.Lock()
	if s.closed || s.closing {
		s.mu.Unlock()
		<-s.done
		return
	}
	s.closing = true
	if !flush {
		s.closed = true
	}
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	<-s.done
	s.mu.Lock()
	s.closed = true
	s.wakeLocked()
	s.mu.Unlock()
}

func jsonDecode(b []byte, v any) error { return json.Unmarshal(b, v) }
