package memory

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

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

// entry is one stored record; its offset is implicit (low + index).
type entry struct {
	ts, maxTS int64 // maxTS: the largest timestamp at or before this entry (since the last reindex)
	key       []byte
	value     []byte
	headers   []shard.Header
	size      int64
}

// Shard is one in-memory record log.
type Shard struct {
	name   string
	budget int64
	m      *engineMetrics
	now    func() time.Time

	mu       sync.RWMutex
	low      uint64 // offset of the first retained record
	entries  ring   // records low..high-1
	bytes    int64  // budget bytes retained
	chunk    []byte // free tail of the current arena chunk
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

func (s *Shard) copyBytes(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	if len(b) > chunkSize/4 {
		return slices.Clone(b)
	}
	if len(s.chunk) < len(b) {
		s.chunk = make([]byte, chunkSize)
	}
	out := s.chunk[:len(b):len(b)]
	copy(out, b)
	s.chunk = s.chunk[len(b):]
	return out
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
		e := entry{ts: ts, maxTS: prevMax, key: s.copyBytes(r.Key), value: s.copyBytes(r.Value), size: int64(r.Size()) + RecordOverhead}
		if len(r.Headers) > 0 {
			e.headers = make([]shard.Header, len(r.Headers))
			for j, h := range r.Headers {
				e.headers[j] = shard.Header{Key: h.Key, Value: s.copyBytes(h.Value)}
			}
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

// dropFront removes the first n entries.
func (s *Shard) dropFront(n int) {
	s.entries.dropFront(n)
	s.low += uint64(n)
	s.maxDirty = true
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
	out := make([]shard.Record, 0, n)
	var bytes int
	for i := idx; i < idx+n; i++ {
		e := s.entries.at(i)
		size := int(e.size - RecordOverhead)
		if lim.MaxBytes > 0 && len(out) > 0 && bytes+size > lim.MaxBytes {
			break
		}
		bytes += size
		out = append(out, shard.Record{Offset: s.low + uint64(i), Timestamp: e.ts, Key: e.key, Value: e.value, Headers: e.headers})
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
	s.chunk = nil
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
		r.blocks = append(r.blocks, make([]entry, blockLen))
	}
	r.blocks[i/blockLen][i%blockLen] = e
	r.n++
}

func (r *ring) dropFront(n int) {
	for range n {
		*r.at(0) = entry{} // let the GC free the arena chunks
		r.head++
		r.n--
		if r.head == blockLen {
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
