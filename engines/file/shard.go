package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sort"
	"sync"

	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
)

// defaultMaxReadBytes bounds a Read with no MaxBytes limit.
const defaultMaxReadBytes = 4 << 20

// Shard is one shard of the file engine: a directory of segments, one
// committer goroutine that owns the active segment's file, and readers that
// read published records through the engine's reader cache.
//
// Lock order: Shard.ctlMu, then Shard.mu, then Shard.qmu, then
// segment.rmu, then readerCache.mu.
type Shard struct {
	e    *Engine
	name string
	dir  string
	log  *slog.Logger

	// mu guards the published state.
	mu      sync.RWMutex
	segs    []*segment // ascending bases; the last one is active. Replaced, never mutated in place.
	low     uint64
	high    uint64
	sealed  bool
	closed  bool
	failErr error // set once a write or sync failed; wraps shard.ErrFailed
	waiters map[uint64]chan struct{}

	// ctlMu serialises trims and retention (TRIM file and segment deletion).
	ctlMu   sync.Mutex
	trimLow uint64                   // persisted in TRIM
	locs    map[uint64]RemoteSegment // offloaded segments, as in the manifest

	orphansSwept bool // owned by the offloader's passes

	// qmu guards the queue of appends and seals waiting for the committer.
	qmu   sync.Mutex
	queue []*request
	qerr  error // when set, new requests fail with it (sealed, failed, closed)
	wake  chan struct{}
	stop  chan struct{}
	done  chan struct{}

	closeOnce sync.Once

	c committer // owned by the committer goroutine
}

var (
	_ shard.Shard  = (*Shard)(nil)
	_ shard.Tailer = (*Shard)(nil)
)

// request is one Append (or Seal) waiting for the committer.
type request struct {
	recs  []shard.Record
	now   int64 // timestamp for records with Timestamp 0
	seal  bool
	first uint64
	err   error
	done  chan struct{}
}

var requestPool = sync.Pool{New: func() any { return &request{done: make(chan struct{}, 1)} }}

func getRequest() *request { return requestPool.Get().(*request) }

func putRequest(r *request) {
	r.recs, r.err, r.first, r.seal = nil, nil, 0, false
	requestPool.Put(r)
}

// Name returns the shard's name.
func (s *Shard) Name() string { return s.name }

// Append writes recs and returns the offset of the first one once they are as
// durable as the sync policy promises.
func (s *Shard) Append(ctx context.Context, recs []shard.Record) (uint64, error) {
	if len(recs) == 0 {
		s.mu.RLock()
		defer s.mu.RUnlock()
		if s.closed {
			return 0, shard.ErrClosed
		}
		return s.high, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	for i := range recs {
		if n := encodedSize(&recs[i]); n > MaxRecordSize {
			return 0, fmt.Errorf("file: %q: record %d is %d bytes encoded, more than MaxRecordSize (%d)", s.name, i, n, MaxRecordSize)
		}
	}
	req := getRequest()
	req.recs = recs
	req.now = s.e.opts.Now().UnixMilli()
	if err := s.enqueue(req); err != nil {
		putRequest(req)
		return 0, err
	}
	if err := s.wait(ctx, req); err != nil {
		return 0, err // req was withdrawn before the committer saw it
	}
	first, err := req.first, req.err
	putRequest(req)
	if err != nil {
		return 0, err
	}
	return first, nil
}

func (s *Shard) enqueue(req *request) error {
	s.qmu.Lock()
	if s.qerr != nil {
		err := s.qerr
		s.qmu.Unlock()
		return err
	}
	s.queue = append(s.queue, req)
	s.qmu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// wait waits for the committer to answer req. If ctx ends first and the
// committer has not taken req yet, req is withdrawn and ctx's error returned;
// once taken, the request runs to completion.
func (s *Shard) wait(ctx context.Context, req *request) error {
	if ctx.Done() == nil {
		<-req.done
		return nil
	}
	select {
	case <-req.done:
		return nil
	case <-ctx.Done():
	}
	s.qmu.Lock()
	for i, r := range s.queue {
		if r == req {
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			s.qmu.Unlock()
			putRequest(req)
			return ctx.Err()
		}
	}
	s.qmu.Unlock()
	<-req.done
	return nil
}

// view is a consistent snapshot of the published state for one read.
type view struct {
	segs       []*segment
	low, high  uint64
	activeSize int64
	activeIdx  []indexEntry
}

func (s *Shard) snapshot() (view, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return view{}, shard.ErrClosed
	}
	a := s.segs[len(s.segs)-1]
	return view{segs: s.segs, low: s.low, high: s.high, activeSize: a.size, activeIdx: a.index[:len(a.index):len(a.index)]}, nil
}

// find returns the index in v.segs of the segment holding offset off.
func (v *view) find(off uint64) int {
	return sort.Search(len(v.segs), func(i int) bool { return v.segs[i].base > off }) - 1
}

// bounds returns the readable end and the index of segment i.
func (v *view) bounds(i int, r *segReader) (int64, []indexEntry) {
	if i == len(v.segs)-1 {
		return v.activeSize, v.activeIdx
	}
	return v.segs[i].size, r.idx
}

func (s *Shard) outOfRange(off uint64) error {
	low, high := s.Watermarks()
	return &shard.OutOfRangeError{Offset: off, Low: low, High: high}
}

// acquire opens (or reuses) a reader of seg: its local file, or its object
// once offloaded and deleted locally.
func (s *Shard) acquire(seg *segment) (*segReader, error) {
	return s.e.cache.acquire(seg, func() (segFile, error) { return s.openSegFile(seg) },
		func(f segFile) ([]indexEntry, error) { return s.loadIndex(seg, f) })
}

func (s *Shard) openSegFile(seg *segment) (segFile, error) {
	if rs := seg.remote.Load(); rs != nil {
		return s.e.remoteFile(rs), nil
	}
	f, err := s.e.fs.Open(seg.path)
	if err != nil && vfs.IsNotExist(err) {
		if rs := seg.remote.Load(); rs != nil { // deleted locally meanwhile
			return s.e.remoteFile(rs), nil
		}
	}
	return f, err
}

// Read returns records from offset from.
func (s *Shard) Read(ctx context.Context, from uint64, lim shard.Limits) ([]shard.Record, error) {
	v, err := s.snapshot()
	if err != nil {
		return nil, err
	}
	if from < v.low || from > v.high {
		return nil, &shard.OutOfRangeError{Offset: from, Low: v.low, High: v.high}
	}
	if from == v.high {
		return nil, nil
	}
	maxBytes := lim.MaxBytes
	if maxBytes <= 0 {
		maxBytes = defaultMaxReadBytes
	}
	chunk := min(maxBytes+maxBytes/8+s.e.opts.IndexIntervalBytes+recHeaderSize, 8<<20)
	if lim.MaxRecords > 0 {
		chunk = min(chunk, lim.MaxRecords*1200+s.e.opts.IndexIntervalBytes)
	}
	chunk = max(chunk, 16<<10)
	var out []shard.Record
	bytes := 0
	next := from
	for next < v.high {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		i := v.find(next)
		seg := v.segs[i]
		r, err := s.acquire(seg)
		if errors.Is(err, errSegmentGone) {
			if len(out) > 0 {
				return out, nil
			}
			return nil, s.outOfRange(from)
		}
		if err != nil {
			return nil, err
		}
		limit, idx := v.bounds(i, r)
		it := recordIter{r: r.f, pos: lookup(idx, next), limit: limit, chunk: chunk, fresh: true}
		full := false
		for next < v.high {
			b, pos, info, st, err := it.next()
			if err == io.EOF {
				break
			}
			if err == nil && st == recOK && info.offset > next {
				st, err = recBadShape, nil
			}
			if err != nil {
				s.e.cache.release(r)
				return nil, fmt.Errorf("file: %q: read %s at byte %d: %w", s.name, seg.path, pos, err)
			}
			if st != recOK {
				s.e.cache.release(r)
				return nil, s.corruptAt(seg.path, pos, fmt.Sprintf("%v reading offset %d", st, next))
			}
			if info.offset < next {
				continue
			}
			rec := decodeRecord(b)
			size := rec.Size()
			if len(out) > 0 && bytes+size > maxBytes {
				full = true
				break
			}
			if out == nil {
				out = make([]shard.Record, 0, min(int(v.high-next), max(lim.MaxRecords, 0)+16, 1024))
			}
			out = append(out, rec)
			bytes += size
			next++
			if lim.MaxRecords > 0 && len(out) >= lim.MaxRecords {
				full = true
				break
			}
		}
		s.e.cache.release(r)
		if full {
			break
		}
		if i+1 < len(v.segs) && next < v.segs[i+1].base {
			return nil, s.corruptAt(seg.path, limit, fmt.Sprintf("segment ends at offset %d, next segment starts at %d", next, v.segs[i+1].base))
		}
		if i+1 >= len(v.segs) {
			break
		}
	}
	if len(out) == 0 && next < v.high {
		return nil, s.corruptAt(v.segs[v.find(next)].path, 0, fmt.Sprintf("offset %d not found", next))
	}
	return out, nil
}

// corruptAt reports corruption met while serving a shard.
func (s *Shard) corruptAt(file string, pos int64, reason string) error {
	err := &shard.CorruptError{Shard: s.name, File: file, Offset: pos, Reason: reason}
	s.log.Error("file: corrupt data", "shard", s.name, "file", file, "byte", pos, "reason", reason)
	return err
}

// Watermarks returns the low and high watermarks.
func (s *Shard) Watermarks() (low, high uint64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.low, s.high
}

// OffsetForTime returns the first offset at or above the low watermark whose
// record has a timestamp >= ts, or the high watermark.
func (s *Shard) OffsetForTime(ctx context.Context, ts int64) (uint64, error) {
	v, err := s.snapshot()
	if err != nil {
		return 0, err
	}
	if v.low == v.high {
		return v.high, nil
	}
	for i := v.find(v.low); i < len(v.segs); i++ {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		s.mu.RLock()
		maxTs := v.segs[i].maxTs
		s.mu.RUnlock()
		if maxTs < ts {
			continue
		}
		off, found, err := s.scanTime(v, i, ts)
		if err != nil {
			return 0, err
		}
		if found {
			return off, nil
		}
	}
	return v.high, nil
}

// scanTime looks for the first record of segment i at or above v.low with a
// timestamp >= ts.
func (s *Shard) scanTime(v view, i int, ts int64) (uint64, bool, error) {
	seg := v.segs[i]
	r, err := s.acquire(seg)
	if errors.Is(err, errSegmentGone) {
		return 0, false, nil // trimmed meanwhile; later segments answer
	}
	if err != nil {
		return 0, false, err
	}
	defer s.e.cache.release(r)
	limit, idx := v.bounds(i, r)
	start := lookupTime(idx, ts)
	if v.low > seg.base {
		start = max(start, lookup(idx, v.low))
	}
	it := recordIter{r: r.f, pos: start, limit: limit, chunk: 64 << 10}
	for {
		_, pos, info, st, err := it.next()
		if err == io.EOF {
			return 0, false, nil
		}
		if err != nil {
			return 0, false, err
		}
		if st != recOK {
			return 0, false, s.corruptAt(seg.path, pos, st.String())
		}
		if info.offset >= v.high {
			return 0, false, nil
		}
		if info.offset >= v.low && info.ts >= ts {
			return info.offset, true, nil
		}
	}
}

// Trim discards every record below before.
func (s *Shard) Trim(ctx context.Context, before uint64) error {
	s.mu.RLock()
	closed, low, high := s.closed, s.low, s.high
	s.mu.RUnlock()
	if closed {
		return shard.ErrClosed
	}
	if before > high {
		return &shard.OutOfRangeError{Offset: before, Low: low, High: high}
	}
	if before <= low {
		return nil
	}
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()
	return s.advanceLow(before, "trim")
}

// advanceLow raises the low watermark to low (persisting it in TRIM first)
// and deletes the sealed segments wholly below it. ctlMu must be held.
func (s *Shard) advanceLow(low uint64, reason string) error {
	if low > s.trimLow {
		if err := vfs.WriteFileAtomic(s.e.fs, s.e.fs.PathJoin(s.dir, trimFile), encodeTrim(low)); err != nil {
			return fmt.Errorf("file: %q: persist trim point: %w", s.name, err)
		}
		s.trimLow = low
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return shard.ErrClosed
	}
	s.low = max(s.low, low)
	var victims []*segment
	n := 0
	for n < len(s.segs)-1 && s.segs[n+1].base <= s.low {
		n++
	}
	if n > 0 {
		victims = s.segs[:n:n]
		s.segs = s.segs[n:]
	}
	s.mu.Unlock()
	if len(victims) == 0 {
		return nil
	}
	if s.e.off != nil {
		// The offloader deletes the objects of offloaded victims (their
		// locations are now below the first segment): not here, where the
		// committer (retention) or a Trim would wait for the store.
		s.e.off.poke()
	}
	for _, seg := range victims {
		s.e.cache.remove(seg)
		if err := s.e.fs.Remove(seg.path); err != nil && !vfs.IsNotExist(err) {
			s.log.Warn("file: delete segment", "shard", s.name, "file", seg.path, "err", err)
		}
		if err := s.e.fs.Remove(seg.idxPath); err != nil && !vfs.IsNotExist(err) {
			s.log.Warn("file: delete index", "shard", s.name, "file", seg.idxPath, "err", err)
		}
	}
	if err := vfs.SyncDir(s.e.fs, s.dir); err != nil {
		s.log.Warn("file: sync shard directory after delete", "shard", s.name, "err", err)
	}
	s.e.m.deleted.WithLabelValues(reason).Add(float64(len(victims)))
	if reason == "retention" {
		s.log.Info("file: retention deleted segments", "shard", s.name, "segments", len(victims), "low", low)
	}
	return nil
}

// enforceRetention deletes the oldest sealed segments beyond RetentionBytes
// or older than RetentionAge.
func (s *Shard) enforceRetention() error {
	o := &s.e.opts
	if o.RetentionBytes == 0 && o.RetentionAge == 0 {
		return nil
	}
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()
	s.mu.RLock()
	segs := s.segs
	var total int64
	for _, seg := range segs[:len(segs)-1] {
		total += seg.size
	}
	total += segs[len(segs)-1].size
	s.mu.RUnlock()
	cutoff := int64(math.MinInt64)
	if o.RetentionAge > 0 {
		cutoff = o.Now().Add(-o.RetentionAge).UnixMilli()
	}
	n := 0
	for ; n < len(segs)-1; n++ {
		seg := segs[n]
		byBytes := o.RetentionBytes > 0 && total-seg.size >= o.RetentionBytes
		byAge := o.RetentionAge > 0 && seg.maxTs < cutoff
		if !byBytes && !byAge {
			break
		}
		total -= seg.size
	}
	if n == 0 {
		return nil
	}
	return s.advanceLow(segs[n].base, "retention")
}

// Seal makes the shard read-only, after the appends queued before it.
func (s *Shard) Seal(ctx context.Context) error {
	s.mu.RLock()
	closed, sealed := s.closed, s.sealed
	s.mu.RUnlock()
	if closed {
		return shard.ErrClosed
	}
	if sealed {
		return nil
	}
	req := getRequest()
	req.seal = true
	if err := s.enqueue(req); err != nil {
		putRequest(req)
		if errors.Is(err, shard.ErrSealed) {
			return nil
		}
		return err
	}
	if err := s.wait(ctx, req); err != nil {
		return err
	}
	err := req.err
	putRequest(req)
	return err
}

// Sealed reports whether the shard is sealed.
func (s *Shard) Sealed() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.sealed
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Wait returns a channel closed once the high watermark exceeds offset or
// the shard is sealed, closed or deleted.
func (s *Shard) Wait(offset uint64) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.sealed || s.high > offset {
		return closedChan
	}
	ch, ok := s.waiters[offset]
	if !ok {
		ch = make(chan struct{})
		s.waiters[offset] = ch
	}
	return ch
}

// wakeWaiters closes the channels of waiters below the high watermark (all
// of them if all is set). mu must be held.
func (s *Shard) wakeWaiters(all bool) {
	for off, ch := range s.waiters {
		if all || s.high > off {
			close(ch)
			delete(s.waiters, off)
		}
	}
}

// Close flushes queued appends, syncs, and releases the shard's files.
// Later calls on the shard fail with shard.ErrClosed.
func (s *Shard) Close() error {
	err := s.close()
	s.e.forget(s)
	return err
}

// close stops the committer after it has written what was queued, and
// releases files. It is idempotent.
func (s *Shard) close() error {
	var err error
	s.closeOnce.Do(func() {
		s.qmu.Lock()
		s.qerr = shard.ErrClosed
		s.qmu.Unlock()
		close(s.stop)
		<-s.done
		err = s.c.closeErr
		s.mu.Lock()
		s.closed = true
		s.wakeWaiters(true)
		segs := s.segs
		s.mu.Unlock()
		for _, seg := range segs {
			s.e.cache.remove(seg)
		}
		s.c.releaseActive()
		s.e.m.openShards.Dec()
	})
	return err
}

// failed reports the error that stopped the shard's writes, if any.
func (s *Shard) failed() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.failErr
}
