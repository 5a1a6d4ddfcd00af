package memory

import (
	"context"
	"encoding/binary"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/internal/metrics"
	"github.com/quiremq/quire/shard"
)

// Options configure an Engine.
type Options struct {
	// ShardBudgetBytes bounds the bytes one shard retains (payload plus
	// RecordOverhead per record). Default 64 MiB.
	ShardBudgetBytes int64
	// Registerer receives the engine's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Now returns the current time; default time.Now. Tests inject a clock.
	Now func() time.Time
}

// RecordOverhead is the bytes charged per record on top of its payload for
// the budget, approximating the in-memory bookkeeping.
const RecordOverhead = 64

const chunkSize = 1 << 20

// EnsureDefaults fills zero fields with defaults.
func (o *Options) EnsureDefaults() {
	if o.ShardBudgetBytes == 0 {
		o.ShardBudgetBytes = 64 << 20
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Validate checks the options.
func (o *Options) Validate() error {
	if o.ShardBudgetBytes < 0 {
		return fmt.Errorf("memory: shard_budget_bytes must be positive, got %d", o.ShardBudgetBytes)
	}
	return nil
}

type engineMetrics struct {
	appends, records, bytes, dropped, droppedBytes prometheus.Counter
	shards                                         prometheus.Gauge
}

func newMetrics(r prometheus.Registerer) *engineMetrics {
	m := &engineMetrics{
		appends:      prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "memory", Name: "appends_total", Help: "Append calls that succeeded."}),
		records:      prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "memory", Name: "appended_records_total", Help: "Records appended."}),
		bytes:        prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "memory", Name: "appended_bytes_total", Help: "Payload bytes appended."}),
		dropped:      prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "memory", Name: "dropped_records_total", Help: "Records dropped because a shard exceeded its byte budget."}),
		droppedBytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "memory", Name: "dropped_bytes_total", Help: "Payload bytes dropped because a shard exceeded its byte budget."}),
		shards:       prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metrics.Namespace, Subsystem: "memory", Name: "shards", Help: "Shards held by the memory engine."}),
	}
	m.appends = metrics.Reuse(r, m.appends)
	m.records = metrics.Reuse(r, m.records)
	m.bytes = metrics.Reuse(r, m.bytes)
	m.dropped = metrics.Reuse(r, m.dropped)
	m.droppedBytes = metrics.Reuse(r, m.droppedBytes)
	m.shards = metrics.Reuse(r, m.shards)
	return m
}

// Engine is the memory engine.
type Engine struct {
	opts Options
	m    *engineMetrics

	mu     sync.Mutex
	shards map[string]*Shard
	closed bool
}

var _ shard.Engine = (*Engine)(nil)

// New returns an empty memory engine. It panics if opts are invalid; use
// Options.Validate first for user-supplied values.
func New(opts Options) *Engine {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		panic(err)
	}
	return &Engine{opts: opts, m: newMetrics(opts.Registerer), shards: map[string]*Shard{}}
}

// Name returns "memory".
func (e *Engine) Name() string { return "memory" }

// Create makes an empty shard.
func (e *Engine) Create(_ context.Context, name string) (shard.Shard, error) {
	if err := shard.ValidateName(name); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, shard.ErrClosed
	}
	if _, ok := e.shards[name]; ok {
		return nil, fmt.Errorf("memory: %q: %w", name, shard.ErrExists)
	}
	s := &Shard{name: name, budget: e.opts.ShardBudgetBytes, m: e.m, now: e.opts.Now, notify: make(chan struct{})}
	e.shards[name] = s
	e.m.shards.Inc()
	return s, nil
}

// Open returns the shard called name.
func (e *Engine) Open(_ context.Context, name string) (shard.Shard, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, shard.ErrClosed
	}
	s, ok := e.shards[name]
	if !ok {
		return nil, fmt.Errorf("memory: %q: %w", name, shard.ErrNotFound)
	}
	return s, nil
}

// Delete drops a shard and its records.
func (e *Engine) Delete(_ context.Context, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return shard.ErrClosed
	}
	s, ok := e.shards[name]
	if !ok {
		return fmt.Errorf("memory: %q: %w", name, shard.ErrNotFound)
	}
	delete(e.shards, name)
	e.m.shards.Dec()
	s.Close()
	return nil
}

// List returns the shard names, sorted.
func (e *Engine) List(context.Context) ([]string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, shard.ErrClosed
	}
	names := make([]string, 0, len(e.shards))
	for n := range e.shards {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

// Close closes every shard and drops all data.
func (e *Engine) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	for _, s := range e.shards {
		s.Close()
	}
	e.m.shards.Sub(float64(len(e.shards)))
	e.shards = nil
	return nil
}

// entry is one stored record; its offset is implicit (low + index). It
// holds no pointers, so the garbage collector never scans the entries (a
// full 64 MiB shard of small records is hundreds of thousands), only the
// few chunk headers: the record's bytes are in chunk number arena of the
// shard's arena (or, for a large record, in Shard.large), laid out as
//
//	key | value | headers: per header uvarint(len key), key, uvarint(len value), value
type entry struct {
	ts, maxTS int64 // maxTS: the largest timestamp at or before this entry (since the last reindex)
	size      int64
	// arena is the sequence number of the chunk holding the bytes (of the
	// current chunk when the record was appended, for a large or empty
	// one): non-decreasing along the entries, so the chunks below the
	// first entry's are free.
	arena          uint64
	off            uint32 // where the bytes start in the chunk
	keyLen, valLen uint32
	hdrLen         uint32 // encoded headers' bytes
	nHdr           uint32
	large          bool // the bytes are Shard.large[offset]
}

// Shard is one in-memory record log.
type Shard struct {
	name   string
	budget int64
	m      *engineMetrics
	now    func() time.Time

	mu       sync.RWMutex
	low      uint64            // offset of the first retained record
	entries  ring              // records low..high-1
	bytes    int64             // budget bytes retained
	chunks   [][]byte          // the arena: chunk number chunk0+i is chunks[i]; the last is being filled
	chunk0   uint64            // number of chunks[0]
	used     int               // bytes used of the last chunk
	large    map[uint64][]byte // by offset: the bytes of a record above chunkSize/4
	sealed   bool
	closed   bool
	maxDirty bool          // maxTS must be recomputed (records were dropped)
	notify   chan struct{} // closed and replaced on an append when waited on
	waited   atomic.Bool   // someone holds notify
}

var (
	_ shard.Shard  = (*Shard)(nil)
	_ shard.Tailer = (*Shard)(nil)
)

// Name returns the shard's name.
func (s *Shard) Name() string { return s.name }

// current is the number of the chunk being filled (of the next one while
// there is none).
func (s *Shard) current() uint64 {
	return s.chunk0 + uint64(max(len(s.chunks), 1)) - 1
}

// place reserves n bytes for the record at offset and returns them and
// where they are.
func (s *Shard) place(offset uint64, n int) (buf []byte, arena uint64, off uint32, large bool) {
	if n == 0 {
		return nil, s.current(), 0, false
	}
	if n > chunkSize/4 {
		buf = make([]byte, n)
		if s.large == nil {
			s.large = map[uint64][]byte{}
		}
		s.large[offset] = buf
		return buf, s.current(), 0, true
	}
	if len(s.chunks) == 0 || chunkSize-s.used < n {
		s.chunks = append(s.chunks, make([]byte, chunkSize))
		s.used = 0
	}
	off = uint32(s.used)
	s.used += n
	return s.chunks[len(s.chunks)-1][off:s.used], s.current(), off, false
}

// bytesOf returns the bytes of e, the entry at offset.
func (s *Shard) bytesOf(offset uint64, e *entry) []byte {
	if e.large {
		return s.large[offset]
	}
	n := e.keyLen + e.valLen + e.hdrLen
	if n == 0 {
		return nil
	}
	return s.chunks[e.arena-s.chunk0][e.off : e.off+n]
}

// encodedHeaders is the size of hs in the arena.
func encodedHeaders(hs []shard.Header) int {
	n := 0
	for _, h := range hs {
		n += uvarintLen(len(h.Key)) + len(h.Key) + uvarintLen(len(h.Value)) + len(h.Value)
	}
	return n
}

func uvarintLen(n int) int {
	l := 1
	for ; n >= 0x80; n >>= 7 {
		l++
	}
	return l
}

// bytesPart returns b[:n] capped, or nil when n is 0 (an empty key, value or
// header value reads back as nil), and the rest of b.
func bytesPart(b []byte, n int) (part, rest []byte) {
	if n == 0 {
		return nil, b
	}
	return b[:n:n], b[n:]
}

// record rebuilds the record at offset from its entry; its headers are
// appended to hdrs (the caller's slab), whose grown slice is returned.
// Header keys are strings over the arena's bytes, which are never written
// again once appended.
func (s *Shard) record(offset uint64, e *entry, hdrs []shard.Header) (shard.Record, []shard.Header) {
	b := s.bytesOf(offset, e)
	r := shard.Record{Offset: offset, Timestamp: e.ts}
	r.Key, b = bytesPart(b, int(e.keyLen))
	r.Value, b = bytesPart(b, int(e.valLen))
	if e.nHdr == 0 {
		return r, hdrs
	}
	start := len(hdrs)
	for range e.nHdr {
		n, k := binary.Uvarint(b)
		b = b[k:]
		var key string
		if n > 0 {
			key = unsafe.String(&b[0], int(n))
		}
		b = b[n:]
		n, k = binary.Uvarint(b)
		b = b[k:]
		var v []byte
		v, b = bytesPart(b, int(n))
		hdrs = append(hdrs, shard.Header{Key: key, Value: v})
	}
	r.Headers = hdrs[start:len(hdrs):len(hdrs)]
	return r, hdrs
}

// Append stores copies of recs.
func (s *Shard) Append(_ context.Context, recs []shard.Record) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, shard.ErrClosed
	}
	if s.sealed {
		return 0, fmt.Errorf("memory: %q: %w", s.name, shard.ErrSealed)
	}
	first := s.low + uint64(s.entries.len())
	if len(recs) == 0 {
		return first, nil
	}
	now := int64(0)
	prevMax := int64(-1 << 63)
	if n := s.entries.len(); n > 0 {
		prevMax = s.entries.at(n - 1).maxTS
	}
	var added int64
	for i := range recs {
		r := &recs[i]
		ts := r.Timestamp
		if ts == 0 {
			if now == 0 {
				now = s.now().UnixMilli()
			}
			ts = now
		}
		prevMax = max(prevMax, ts)
		e := entry{ts: ts, maxTS: prevMax, size: int64(r.Size()) + RecordOverhead,
			keyLen: uint32(len(r.Key)), valLen: uint32(len(r.Value)),
			hdrLen: uint32(encodedHeaders(r.Headers)), nHdr: uint32(len(r.Headers))}
		var buf []byte
		buf, e.arena, e.off, e.large = s.place(first+uint64(i), int(e.keyLen+e.valLen+e.hdrLen))
		b := buf[copy(buf, r.Key):]
		b = b[copy(b, r.Value):]
		for _, h := range r.Headers {
			b = b[binary.PutUvarint(b, uint64(len(h.Key))):]
			b = b[copy(b, h.Key):]
			b = b[binary.PutUvarint(b, uint64(len(h.Value))):]
			b = b[copy(b, h.Value):]
		}
		added += e.size
		s.entries.push(e)
	}
	s.bytes += added
	s.m.appends.Inc()
	s.m.records.Add(float64(len(recs)))
	s.m.bytes.Add(float64(added - RecordOverhead*int64(len(recs))))
	s.enforceBudget(len(recs))
	if s.waited.Load() {
		s.waited.Store(false)
		close(s.notify)
		s.notify = make(chan struct{})
	}
	return first, nil
}

// enforceBudget drops the oldest records while over budget, but never any of
// the newest `keep` records (the batch just appended).
func (s *Shard) enforceBudget(keep int) {
	if s.bytes <= s.budget {
		return
	}
	var n int
	var dropped int64
	for n < s.entries.len()-keep && s.bytes > s.budget {
		sz := s.entries.at(n).size
		s.bytes -= sz
		dropped += sz
		n++
	}
	if n == 0 {
		return
	}
	s.m.dropped.Add(float64(n))
	s.m.droppedBytes.Add(float64(dropped - RecordOverhead*int64(n)))
	s.dropFront(n)
}

// dropFront removes the first n entries and frees the arena chunks no
// entry left uses.
func (s *Shard) dropFront(n int) {
	if len(s.large) > 0 {
		for i := range n {
			if s.entries.at(i).large {
				delete(s.large, s.low+uint64(i))
			}
		}
	}
	s.entries.dropFront(n)
	s.low += uint64(n)
	s.maxDirty = true
	keep := s.current() // the chunk being filled stays for the next append
	if s.entries.len() > 0 {
		keep = s.entries.at(0).arena
	}
	for s.chunk0 < keep {
		s.chunks[0] = nil
		s.chunks = s.chunks[1:]
		s.chunk0++
	}
}

// Read returns up to lim of the records from offset from.
func (s *Shard) Read(_ context.Context, from uint64, lim shard.Limits) ([]shard.Record, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, shard.ErrClosed
	}
	high := s.low + uint64(s.entries.len())
	if from < s.low || from > high {
		return nil, &shard.OutOfRangeError{Offset: from, Low: s.low, High: high}
	}
	idx := int(from - s.low)
	n := s.entries.len() - idx
	if lim.MaxRecords > 0 {
		n = min(n, lim.MaxRecords)
	}
	// First the records that fit and their headers, for one slab of them.
	var bytes, nHdr int
	for i := idx; i < idx+n; i++ {
		e := s.entries.at(i)
		size := int(e.size - RecordOverhead)
		if lim.MaxBytes > 0 && i > idx && bytes+size > lim.MaxBytes {
			n = i - idx
			break
		}
		bytes += size
		nHdr += int(e.nHdr)
	}
	out := make([]shard.Record, n)
	var hdrs []shard.Header
	if nHdr > 0 {
		hdrs = make([]shard.Header, 0, nHdr)
	}
	for k := range out {
		out[k], hdrs = s.record(s.low+uint64(idx+k), s.entries.at(idx+k), hdrs)
	}
	return out, nil
}

// Watermarks returns the low and high watermarks.
func (s *Shard) Watermarks() (low, high uint64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.low, s.low + uint64(s.entries.len())
}

// OffsetForTime returns the first offset with a timestamp >= ts.
func (s *Shard) OffsetForTime(_ context.Context, ts int64) (uint64, error) {
	s.mu.Lock() // may reindex
	defer s.mu.Unlock()
	if s.closed {
		return 0, shard.ErrClosed
	}
	if s.maxDirty {
		m := int64(-1 << 63)
		for i := range s.entries.len() {
			e := s.entries.at(i)
			m = max(m, e.ts)
			e.maxTS = m
		}
		s.maxDirty = false
	}
	// maxTS is non-decreasing, and the first entry whose running maximum
	// reaches ts is the first entry whose own timestamp does.
	i := sort.Search(s.entries.len(), func(i int) bool { return s.entries.at(i).maxTS >= ts })
	return s.low + uint64(i), nil
}

// Trim drops every record below before.
func (s *Shard) Trim(_ context.Context, before uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return shard.ErrClosed
	}
	high := s.low + uint64(s.entries.len())
	if before > high {
		return &shard.OutOfRangeError{Offset: before, Low: s.low, High: high}
	}
	if before <= s.low {
		return nil
	}
	n := int(before - s.low)
	for i := range n {
		s.bytes -= s.entries.at(i).size
	}
	s.dropFront(n)
	return nil
}

// Seal makes the shard read-only.
func (s *Shard) Seal(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return shard.ErrClosed
	}
	if !s.sealed {
		s.sealed = true
		close(s.notify)
		s.notify = make(chan struct{})
	}
	return nil
}

// Sealed reports whether the shard is sealed.
func (s *Shard) Sealed() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.sealed
}

// Wait returns a channel closed once the high watermark exceeds offset or the
// shard is closed or sealed.
func (s *Shard) Wait(offset uint64) <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed || s.sealed || s.low+uint64(s.entries.len()) > offset {
		return closedChan
	}
	s.waited.Store(true)
	return s.notify
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Close releases the shard's records. The engine closes its shards; a shard
// closed directly stays closed for every holder of it.
func (s *Shard) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.entries = ring{}
	s.chunks, s.large = nil, nil
	close(s.notify)
	return nil
}

// ring holds entries in fixed-size blocks, so appending never copies old
// entries (a growing slice would move every entry on each doubling) and
// dropping from the front frees whole blocks.
type ring struct {
	blocks [][]entry
	head   int // index of the first entry within blocks[0]
	n      int
	spare  []entry // the last block dropped, for the next push that needs one
}

const blockLen = 4096

func (r *ring) len() int { return r.n }

func (r *ring) at(i int) *entry {
	i += r.head
	return &r.blocks[i/blockLen][i%blockLen]
}

func (r *ring) push(e entry) {
	i := r.head + r.n
	if i/blockLen == len(r.blocks) {
		b := r.spare
		if b == nil {
			b = make([]entry, blockLen)
		}
		r.spare = nil
		r.blocks = append(r.blocks, b)
	}
	r.blocks[i/blockLen][i%blockLen] = e
	r.n++
}

func (r *ring) dropFront(n int) {
	for range n {
		r.head++
		r.n--
		if r.head == blockLen {
			r.spare = r.blocks[0] // entries hold no pointers: no need to clear it
			r.blocks[0] = nil
			r.blocks = r.blocks[1:]
			r.head = 0
		}
	}
	if r.n == 0 && len(r.blocks) > 0 {
		// Keep the current block for the next append.
		r.blocks = r.blocks[:1]
	}
}
