package journal

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/quiremq/quire/journal/client"
	"github.com/quiremq/quire/journal/ledger"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
	"github.com/quiremq/quire/shard"
)

// Shard is one journal shard. Safe for concurrent use.
//
// Lock order: Shard.mu, then ledgerInfo.mu, then the entry cache's.
type Shard struct {
	e    *Engine
	name string
	log  string // the log's name in meta
	q    Quorum

	mu      sync.Mutex
	recVer  uint64 // version of the shard record
	low     uint64
	high    uint64 // every record below is acknowledged
	next    uint64 // offset of the next record handed to the writer
	runMax  int64  // max timestamp up to next (entry header "max ts")
	sealed  bool
	closed  bool
	w       *client.LogWriter // nil: the next Append takes the log over
	ledgers []*ledgerInfo     // the log, in order; the last is w's while w != nil
	notify  chan struct{}     // closed and replaced when high grows, or on seal/close

	cache *entryCache

	remote  []remoteLedger       // offloaded ledgers, by first offset (offload.go)
	pending map[uint64]time.Time // closed ledgers of the log waiting for offload: when first seen

	rmu    sync.Mutex // offloaded reads: the last chunk read, decoded, and the indexes read
	rchunk remoteChunk
	ridx   map[string]remoteIndex
}

var (
	_ shard.Shard  = (*Shard)(nil)
	_ shard.Tailer = (*Shard)(nil)
)

// ledgerInfo is what a shard knows of one ledger of its log.
type ledgerInfo struct {
	id    uint64
	first uint64 // offset of its first record (of the next one, when empty)

	mu      sync.Mutex
	md      ledger.Metadata
	entries int64    // entries it holds (closed) or that were handed to its writer
	firsts  []uint64 // the ledger this shard writes: first offset of each entry
	hdrs    map[int64]entryHeader
	hint    int64 // the last entry located (sequential reads)
}

func newShard(e *Engine, rec shardRecord, version uint64) *Shard {
	return &Shard{e: e, name: rec.Name, log: e.logName(rec.Name), q: rec.quorum(), recVer: version, low: rec.Low, high: rec.Low, next: rec.Low,
		runMax: math.MinInt64, sealed: rec.Sealed, notify: make(chan struct{}), cache: newEntryCache(e.o.CacheBytes),
		ridx: map[string]remoteIndex{}, pending: map[uint64]time.Time{}}
}

// Name implements shard.Shard.
func (s *Shard) Name() string { return s.name }

// Quorum returns the shard's replication.
func (s *Shard) Quorum() Quorum { return s.q }

// open loads the log; a log ending in ledgers that are not closed is taken
// over (or, when sealed, only recovered).
func (s *Shard) open(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	remote, err := s.e.loadRemote(ctx, s.name)
	if err != nil {
		return err
	}
	s.remote = remote
	ids, err := s.logLedgers(ctx)
	if err != nil {
		return err
	}
	for i := max(0, len(ids)-2); i < len(ids); i++ {
		md, err := s.e.c.Metadata(ctx, ids[i])
		if err != nil {
			return err
		}
		if md.State == ledger.StateClosed {
			continue
		}
		if !s.sealed {
			return s.takeover(ctx)
		}
		if _, err := s.e.c.Recover(ctx, ids[i]); err != nil {
			return err
		}
	}
	return s.load(ctx, 0)
}

func (s *Shard) logLedgers(ctx context.Context) ([]uint64, error) {
	rec, err := schema.Store{KV: s.e.kv}.Log(ctx, s.log)
	if errors.Is(err, meta.ErrNotFound) {
		return nil, nil
	}
	return rec.Value.Ledgers, err
}

// takeover makes this shard the log's writer (client.OpenLogWriter: fence
// and recover the last ledgers, CAS-append a new one) and reloads the
// watermarks from the recovered log. s.mu is held.
func (s *Shard) takeover(ctx context.Context) error {
	o := s.e.o
	w, err := s.e.c.OpenLogWriter(ctx, s.log, client.LogOptions{Ensemble: s.q.Ensemble, WriteQuorum: s.q.WriteQuorum,
		AckQuorum: s.q.AckQuorum, RollEntries: o.RollEntries, RollBytes: o.RollBytes, RollAge: o.RollAge})
	if err != nil {
		return fmt.Errorf("journal engine: shard %q: taking the log over: %w", s.name, err)
	}
	if err := s.load(ctx, w.Ledger()); err != nil {
		w.Abandon()
		return err
	}
	s.w = w
	s.e.m.takeovers.Inc()
	s.e.log.Debug("journal shard taken over", "shard", s.name, "ledger", w.Ledger(), "high", s.high, "quorum", s.q.String())
	return nil
}

// load rebuilds the ledger table and the watermarks from the log: every
// ledger but writing (the one this shard just created, 0: none) must be
// closed. s.mu is held.
func (s *Shard) load(ctx context.Context, writing uint64) error {
	ids, err := s.logLedgers(ctx)
	if err != nil {
		return err
	}
	s.cache.clear()
	var infos []*ledgerInfo
	end, runMax := s.low, int64(math.MinInt64)
	for _, r := range s.remote { // the log may start after offloaded ledgers
		if r.End > end {
			end, runMax = r.End, r.MaxTS
		}
	}
	for _, id := range ids {
		md, err := s.e.c.Metadata(ctx, id)
		if err != nil {
			return err
		}
		li := &ledgerInfo{id: id, md: md, hint: -1, hdrs: map[int64]entryHeader{}}
		switch {
		case id == writing:
			li.firsts = []uint64{}
		case md.State != ledger.StateClosed:
			return fmt.Errorf("journal engine: shard %q: ledger %d is %s", s.name, id, md.State)
		default:
			li.entries = md.LastEntry + 1
		}
		if li.entries > 0 {
			h, err := s.header(ctx, li, 0)
			if err != nil {
				return err
			}
			last, err := s.header(ctx, li, li.entries-1)
			if err != nil {
				return err
			}
			li.first = h.first
			end, runMax = max(end, last.end()), last.maxTS
		} else {
			li.first = end
		}
		infos = append(infos, li)
	}
	s.ledgers, s.high, s.next, s.runMax = infos, end, end, runMax
	return nil
}

// Append implements shard.Shard: the batch is one ledger entry, pipelined
// behind the appends in flight; it returns once the ack quorum has it and
// every earlier entry. A failed append is ambiguous (as a fenced ledger
// write is): its records are not acknowledged, but the next writer's
// recovery may keep them. The next Append takes the log over again.
func (s *Shard) Append(ctx context.Context, recs []shard.Record) (uint64, error) {
	start := time.Now()
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return 0, shard.ErrClosed
	case s.sealed:
		s.mu.Unlock()
		return 0, shard.ErrSealed
	case len(recs) == 0:
		h := s.high
		s.mu.Unlock()
		return h, nil
	}
	if s.w == nil {
		if err := s.takeover(ctx); err != nil {
			s.mu.Unlock()
			return 0, err
		}
	}
	w, first := s.w, s.next
	now := time.Now().UnixMilli()
	recs = append([]shard.Record(nil), recs...)
	size, runMax := 0, s.runMax
	for i := range recs {
		if recs[i].Timestamp == 0 {
			recs[i].Timestamp = now
		}
		runMax = max(runMax, recs[i].Timestamp)
		size += recs[i].Size()
	}
	data := encodeEntryViews(first, runMax, recs) // recs now read from data, for the cache
	f, err := w.AppendAsync(ctx, data)
	if err != nil {
		if ctx.Err() == nil {
			s.failWriter(w, err)
		}
		s.mu.Unlock()
		return 0, err
	}
	li := s.ledgers[len(s.ledgers)-1]
	if f.Ledger() != li.id { // the writer rolled over: li is closed
		li.mu.Lock()
		li.firsts, li.md.State, li.md.LastEntry = nil, ledger.StateClosed, li.entries-1
		li.mu.Unlock()
		md, err := s.e.c.Metadata(ctx, f.Ledger())
		if err != nil {
			md = ledger.Metadata{ID: f.Ledger()} // refreshed on the first read
		}
		li = &ledgerInfo{id: f.Ledger(), first: first, md: md, firsts: []uint64{}, hint: -1, hdrs: map[int64]entryHeader{}}
		s.ledgers = append(s.ledgers, li)
		s.e.m.rolled.Inc()
	}
	li.mu.Lock()
	entry := li.entries
	li.firsts = append(li.firsts, first)
	li.entries++
	li.mu.Unlock()
	s.next += uint64(len(recs))
	s.runMax = runMax
	s.cache.put(li.id, entry, entryHeader{first: first, count: uint32(len(recs)), maxTS: runMax}, recs, len(data))
	s.mu.Unlock()

	if _, err := f.Entry(); err != nil {
		s.mu.Lock()
		s.failWriter(w, err)
		s.mu.Unlock()
		return 0, err
	}
	s.mu.Lock()
	if end := first + uint64(len(recs)); end > s.high { // acks come in entry order: all below are acknowledged
		s.high = end
		s.wake()
	}
	s.mu.Unlock()
	m := s.e.m
	m.appends.Inc()
	m.records.Add(float64(len(recs)))
	m.bytes.Add(float64(size))
	m.appendSeconds.Observe(time.Since(start).Seconds())
	return first, nil
}

// failWriter drops a writer that failed; the next Append takes over. s.mu
// is held.
func (s *Shard) failWriter(w *client.LogWriter, err error) {
	if s.w != w {
		return
	}
	s.e.log.Warn("journal shard writer failed; the next append takes the log over", "shard", s.name, "err", err)
	s.e.m.failed.Inc()
	w.Abandon()
	s.w = nil
}

func (s *Shard) wake() {
	close(s.notify)
	s.notify = make(chan struct{})
}

// Wait implements shard.Tailer.
func (s *Shard) Wait(offset uint64) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.sealed || s.high > offset {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return s.notify
}

// Watermarks implements shard.Shard.
func (s *Shard) Watermarks() (low, high uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.low, s.high
}

// Sealed implements shard.Shard.
func (s *Shard) Sealed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sealed
}

// view is what a reader needs of the shard, taken under s.mu.
type view struct {
	low, high uint64
	ledgers   []*ledgerInfo
	remote    []remoteLedger
}

func (s *Shard) view() (view, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return view{}, shard.ErrClosed
	}
	return view{s.low, s.high, s.ledgers, s.remote}, nil
}

// ledgerOf returns the index of the ledger holding offset off (< high).
func (v *view) ledgerOf(off uint64) int {
	i := sort.Search(len(v.ledgers), func(i int) bool { return v.ledgers[i].first > off }) - 1
	// Empty ledgers share their first with the next one: skip them.
	for i > 0 && v.ledgers[i].count() == 0 {
		i--
	}
	return max(i, 0)
}

// closed reports whether l is closed (not the ledger this shard writes).
func (li *ledgerInfo) closed() bool {
	li.mu.Lock()
	defer li.mu.Unlock()
	return li.firsts == nil && li.md.State == ledger.StateClosed
}

func (li *ledgerInfo) count() int64 {
	li.mu.Lock()
	defer li.mu.Unlock()
	return li.entries
}

// Read implements shard.Shard.
func (s *Shard) Read(ctx context.Context, from uint64, lim shard.Limits) ([]shard.Record, error) {
	v, err := s.view()
	if err != nil {
		return nil, err
	}
	if from < v.low || from > v.high {
		return nil, &shard.OutOfRangeError{Offset: from, Low: v.low, High: v.high}
	}
	var out []shard.Record
	bytes := 0
	full := func(out []shard.Record, r shard.Record) bool {
		return r.Offset >= v.high || (lim.MaxRecords > 0 && len(out) >= lim.MaxRecords) ||
			(lim.MaxBytes > 0 && len(out) > 0 && bytes+r.Size() > lim.MaxBytes)
	}
	if from < v.localFirst() {
		var stopped bool
		out, from, stopped, err = s.readRemote(ctx, &v, from, out, func(out []shard.Record, r shard.Record) bool {
			if full(out, r) {
				return true
			}
			bytes += r.Size()
			return false
		})
		if err != nil || stopped {
			return out, err
		}
	}
	li := v.ledgerOf(from)
	for from < v.high && li < len(v.ledgers) {
		l := v.ledgers[li]
		e, err := s.locate(ctx, l, from)
		if err != nil {
			return nil, err
		}
		for ; e < l.count() && from < v.high; e++ {
			h, recs, err := s.entry(ctx, l, e)
			if err != nil {
				return nil, err
			}
			if from < h.first || from >= h.end() {
				return nil, &shard.CorruptError{Shard: s.name, File: fmt.Sprintf("ledger %d entry %d", l.id, e),
					Reason: fmt.Sprintf("holds offsets [%d, %d), expected %d", h.first, h.end(), from)}
			}
			for _, r := range recs[from-h.first:] {
				if full(out, r) {
					return out, nil
				}
				out = append(out, r)
				bytes += r.Size()
				from = r.Offset + 1
			}
		}
		li++
	}
	return out, nil
}

// locate returns the entry of l holding offset off.
func (s *Shard) locate(ctx context.Context, l *ledgerInfo, off uint64) (int64, error) {
	l.mu.Lock()
	if l.firsts != nil {
		e := int64(sort.Search(len(l.firsts), func(i int) bool { return l.firsts[i] > off }) - 1)
		l.mu.Unlock()
		return max(e, 0), nil
	}
	n := l.entries
	if hint := l.hint; hint >= 0 {
		if h, ok := l.hdrs[hint]; ok {
			switch {
			case off >= h.first && off < h.end():
				l.mu.Unlock()
				return hint, nil
			case off == h.end() && hint+1 < n:
				l.mu.Unlock()
				return hint + 1, nil
			}
		}
	}
	l.mu.Unlock()
	lo, hi := int64(0), n-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		h, err := s.header(ctx, l, mid)
		if err != nil {
			return 0, err
		}
		if h.first <= off {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo, nil
}

// header returns the header of entry e of l.
func (s *Shard) header(ctx context.Context, l *ledgerInfo, e int64) (entryHeader, error) {
	l.mu.Lock()
	h, ok := l.hdrs[e]
	l.mu.Unlock()
	if ok {
		return h, nil
	}
	h, _, err := s.entry(ctx, l, e)
	return h, err
}

// entry returns entry e of l, decoded, from the cache or a bookie.
func (s *Shard) entry(ctx context.Context, l *ledgerInfo, e int64) (entryHeader, []shard.Record, error) {
	if h, recs, ok := s.cache.get(l.id, e); ok {
		l.remember(e, h)
		return h, recs, nil
	}
	data, err := s.rawEntry(ctx, l, e)
	if err != nil {
		return entryHeader{}, nil, err
	}
	s.e.m.entryReads.Inc()
	h, recs, err := decodeEntry(data)
	if err != nil {
		return h, nil, &shard.CorruptError{Shard: s.name, File: fmt.Sprintf("ledger %d entry %d", l.id, e), Reason: err.Error()}
	}
	l.remember(e, h)
	s.cache.put(l.id, e, h, recs, len(data))
	return h, recs, nil
}

// rawEntry reads entry e of l from a bookie (re-reading the ledger's
// metadata once after a failure: an ensemble change may have moved it).
func (s *Shard) rawEntry(ctx context.Context, l *ledgerInfo, e int64) ([]byte, error) {
	l.mu.Lock()
	md := l.md
	l.mu.Unlock()
	data, err := s.e.c.ReadLedgerEntry(ctx, &md, e)
	if err == nil {
		return data, nil
	}
	md, merr := s.e.c.Metadata(ctx, l.id)
	if merr != nil {
		return nil, errors.Join(err, merr)
	}
	l.mu.Lock()
	l.md = md
	l.mu.Unlock()
	return s.e.c.ReadLedgerEntry(ctx, &md, e)
}

// remember caches the header of entry e (bounded: headers are small, but a
// huge ledger read at random should not grow without end).
func (l *ledgerInfo) remember(e int64, h entryHeader) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.hdrs) >= 1<<16 {
		clear(l.hdrs)
	}
	l.hdrs[e] = h
	l.hint = e
}

// OffsetForTime implements shard.Shard. Each entry carries the running
// maximum timestamp of the shard, which never decreases: the first record
// with a timestamp >= ts is in the first entry whose maximum is >= ts
// (binary search over the ledgers' last entries, then over the entries of
// one ledger). When that record lies below the low watermark, the records
// from low on are scanned.
func (s *Shard) OffsetForTime(ctx context.Context, ts int64) (uint64, error) {
	v, err := s.view()
	if err != nil {
		return 0, err
	}
	if v.low == v.high {
		return v.high, nil
	}
	found, ok, err := s.firstAtOrAfter(ctx, &v, ts)
	if err != nil || !ok {
		return v.high, err
	}
	if found >= v.low {
		return found, nil
	}
	for from := v.low; from < v.high; {
		recs, err := s.Read(ctx, from, shard.Limits{MaxRecords: 1024})
		if err != nil {
			return 0, err
		}
		for _, r := range recs {
			if r.Offset >= v.high {
				break
			}
			if r.Timestamp >= ts {
				return r.Offset, nil
			}
			from = r.Offset + 1
		}
		if len(recs) == 0 {
			break
		}
	}
	return v.high, nil
}

// firstAtOrAfter finds the first record (below high) with timestamp >= ts.
func (s *Shard) firstAtOrAfter(ctx context.Context, v *view, ts int64) (uint64, bool, error) {
	if off, ok, err := s.remoteAtOrAfter(ctx, v, ts); err != nil || ok {
		return off, ok, err
	}
	for _, l := range v.ledgers {
		last := l.lastBelow(v.high)
		if last < 0 {
			continue
		}
		h, err := s.header(ctx, l, last)
		if err != nil {
			return 0, false, err
		}
		if h.maxTS < ts {
			continue
		}
		lo, hi := int64(0), last
		for lo < hi {
			mid := (lo + hi) / 2
			h, err := s.header(ctx, l, mid)
			if err != nil {
				return 0, false, err
			}
			if h.maxTS >= ts {
				hi = mid
			} else {
				lo = mid + 1
			}
		}
		_, recs, err := s.entry(ctx, l, lo)
		if err != nil {
			return 0, false, err
		}
		for _, r := range recs {
			if r.Timestamp >= ts && r.Offset < v.high {
				return r.Offset, true, nil
			}
		}
		return 0, false, nil
	}
	return 0, false, nil
}

// lastBelow returns the last entry of l whose records are all below high
// (-1: none).
func (l *ledgerInfo) lastBelow(high uint64) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.firsts == nil {
		return l.entries - 1
	}
	return int64(sort.Search(len(l.firsts), func(i int) bool { return l.firsts[i] >= high }) - 1)
}

// Trim implements shard.Shard: the trim point is stored in the shard
// record, then the ledgers wholly below it are dropped from the log and
// deleted (retention in whole ledgers), then, without the shard's lock,
// the offloaded ledgers wholly below it (records, then objects).
func (s *Shard) Trim(ctx context.Context, before uint64) error {
	gone, err := s.trimLog(ctx, before)
	if err != nil || len(gone) == 0 {
		return err
	}
	if rest, err := s.e.deleteRemote(ctx, s.name, gone); err != nil {
		s.e.log.Warn("journal shard: deleting trimmed offloaded ledgers", "shard", s.name, "ledgers", len(gone), "err", err)
		s.mu.Lock()
		for _, r := range rest { // still recorded: the next Trim deletes them
			s.addRemote(r)
		}
		s.mu.Unlock()
	}
	return nil
}

// trimLog is Trim under the shard's lock: it moves the trim point, drops
// the ledgers below it from the log and takes the offloaded ones below it
// out of s.remote, returning those for deletion.
func (s *Shard) trimLog(ctx context.Context, before uint64) ([]remoteLedger, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return nil, shard.ErrClosed
	case before > s.high:
		return nil, &shard.OutOfRangeError{Offset: before, Low: s.low, High: s.high}
	case before <= s.low:
		return nil, nil
	}
	if err := s.updateRecord(ctx, func(r *shardRecord) { r.Low = before }); err != nil {
		return nil, err
	}
	s.low = before
	// Ledger i holds only records below before when ledger i+1 starts at
	// or below it; the ledger being written always stays.
	n := 0
	for n+1 < len(s.ledgers) && s.ledgers[n+1].first <= before {
		n++
	}
	if n > 0 {
		if err := s.dropFront(ctx, n); err != nil {
			// The trim point holds; the ledgers go at a later Trim.
			s.e.log.Warn("journal shard: dropping trimmed ledgers", "shard", s.name, "ledgers", n, "err", err)
		}
	}
	k := 0
	for k < len(s.remote) && s.remote[k].End <= before {
		k++
	}
	gone := s.remote[:k:k]
	s.remote = append([]remoteLedger(nil), s.remote[k:]...)
	return gone, nil
}

// retain trims the shard up to the first ledger holding a record at or
// after cutoff (ms since the epoch): the ledgers before it go whole. A
// ledger's newest timestamp is bounded by its last entry's running
// maximum, so no record at or after cutoff is trimmed. The ledger being
// written always stays.
func (s *Shard) retain(ctx context.Context, cutoff int64) error {
	v, err := s.view()
	if err != nil {
		return err
	}
	before := v.low
	for _, r := range v.remote {
		if r.First >= v.localFirst() || r.First == r.End {
			continue
		}
		if r.MaxTS >= cutoff {
			return s.trimTo(ctx, before, v.low)
		}
		before = max(before, r.End)
	}
	for i := 0; i+1 < len(v.ledgers); i++ {
		l := v.ledgers[i]
		if last := l.lastBelow(v.high); last >= 0 {
			h, err := s.header(ctx, l, last)
			if err != nil {
				return err
			}
			if h.maxTS >= cutoff {
				break
			}
		}
		before = max(before, v.ledgers[i+1].first)
	}
	return s.trimTo(ctx, before, v.low)
}

func (s *Shard) trimTo(ctx context.Context, before, low uint64) error {
	if before <= low {
		return nil
	}
	return s.Trim(ctx, before)
}

// updateRecord changes the shard record (CAS on its version). s.mu is held.
func (s *Shard) updateRecord(ctx context.Context, fn func(*shardRecord)) error {
	rec, err := schema.Update(ctx, s.e.kv, s.e.key(s.name), false, func(r *shardRecord) error { fn(r); return nil })
	if errors.Is(err, meta.ErrNotFound) {
		return fmt.Errorf("%w: shard %q was deleted", shard.ErrClosed, s.name)
	}
	if err != nil {
		return err
	}
	s.recVer = rec.Version
	return nil
}

// Seal implements shard.Shard: the writer closes its ledger, then the seal
// is stored in the shard record.
func (s *Shard) Seal(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return shard.ErrClosed
	case s.sealed:
		return nil
	}
	if s.w != nil {
		if err := s.w.Close(ctx); err != nil {
			s.failWriter(s.w, err)
			return err
		}
		s.w = nil
	}
	if err := s.updateRecord(ctx, func(r *shardRecord) { r.Sealed = true }); err != nil {
		return err
	}
	s.sealed = true
	s.wake()
	return nil
}

// Close implements shard.Shard: the writer closes its ledger (a clean
// close: the next Open needs no recovery).
func (s *Shard) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.e.o.OpTimeout)
	defer cancel()
	err := s.shutdown(ctx)
	s.e.forget(s)
	return err
}

// shutdown closes the shard's writer and fails later calls.
func (s *Shard) shutdown(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.wake()
	s.cache.clear()
	if s.w == nil {
		return nil
	}
	w := s.w
	s.w = nil
	if err := w.Close(ctx); err != nil && !errors.Is(err, client.ErrClosed) {
		return fmt.Errorf("journal engine: shard %q: closing its ledger: %w", s.name, err)
	}
	return nil
}
