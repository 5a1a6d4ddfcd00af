package journal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/url"
	"slices"
	"sort"
	"time"

	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
	"github.com/quiremq/quire/shard"
)

// PrefixOffload is where the engine records offloaded ledgers in meta:
// /engines/journal/offload/<path-escaped prefix+shard>/<ledger, 20 digits>
// holding a remoteLedger as JSON. Part of the stored format.
const PrefixOffload = "/engines/journal/offload/"

// Offload defaults.
const (
	DefaultOffloadInterval    = 10 * time.Second
	DefaultOffloadPrefix      = "journal"
	DefaultOffloadMinRate     = 1 << 20
	DefaultOffloadBufferBytes = 8 << 20
)

// OffloadOptions move the closed ledgers of a shard's log to an object
// store (tiered storage). See the package documentation ("Offload").
type OffloadOptions struct {
	// Store receives the ledgers (required).
	Store objstore.Store
	// Prefix is the first part of every object key:
	// <Prefix>/<path-escaped shard log>/<ledger, 20 digits>.entries;
	// default "journal".
	Prefix string
	// DeleteLag is how long a ledger stays on the bookies after its
	// offload was recorded; 0 drops it at once.
	DeleteLag time.Duration
	// Policy says whether a shard offloads and with which delete lag; nil
	// offloads every shard with DeleteLag. Consulted at every pass.
	Policy func(shard string) (offload bool, deleteLag time.Duration)
	// Interval is the period of the offload passes over the open shards;
	// default 10s.
	Interval time.Duration
	// MinRate is the slowest upload, in bytes per second, that a ledger's
	// offload waits for: each ledger gets Options.OpTimeout plus its size
	// over MinRate to be uploaded, verified and recorded (and each entry
	// read OpTimeout); default 1 MiB/s.
	MinRate int64
	// BufferBytes bounds the memory of one ledger's offload: the first
	// BufferBytes of its entries, read once to size and checksum the
	// object, are kept for the upload; the rest are read from the bookies
	// again as the upload streams them. Default 8 MiB.
	BufferBytes int64
}

func (o *OffloadOptions) ensureDefaults() {
	if o.Prefix == "" {
		o.Prefix = DefaultOffloadPrefix
	}
	if o.Interval <= 0 {
		o.Interval = DefaultOffloadInterval
	}
	if o.MinRate <= 0 {
		o.MinRate = DefaultOffloadMinRate
	}
	if o.BufferBytes == 0 {
		o.BufferBytes = DefaultOffloadBufferBytes
	}
}

func (o *OffloadOptions) validate() error {
	if o.Store == nil {
		return errors.New("journal engine: Offload.Store is required")
	}
	if err := objstore.ValidateKey(o.Prefix); err != nil {
		return fmt.Errorf("journal engine: Offload.Prefix: %w", err)
	}
	if o.DeleteLag < 0 {
		return fmt.Errorf("journal engine: Offload.DeleteLag must not be negative, got %v", o.DeleteLag)
	}
	if o.BufferBytes < 0 {
		return fmt.Errorf("journal engine: Offload.BufferBytes must not be negative, got %d", o.BufferBytes)
	}
	return nil
}

// uploadTimeout is the time a ledger's object of size bytes gets to be
// uploaded, verified and recorded: base (Options.OpTimeout) plus its
// transfer at MinRate.
func (o *OffloadOptions) uploadTimeout(base time.Duration, size int64) time.Duration {
	return base + time.Duration(float64(size)/float64(o.MinRate)*float64(time.Second))
}

func (o *OffloadOptions) policy(name string) (bool, time.Duration) {
	if o.Policy == nil {
		return true, o.DeleteLag
	}
	return o.Policy(name)
}

// remoteLedger is the manifest record of one offloaded ledger: its records
// [First, End) are in object Key (Size bytes, CRC-32C CRC): the ledger's
// entries in the engine's entry format, each preceded by its length
// (uvarint), then from IndexOff the index: per entry its first offset and
// its position in the object (two big-endian uint64), CRC-32C IndexCRC.
type remoteLedger struct {
	Ledger   uint64    `json:"ledger"`
	First    uint64    `json:"first"`
	End      uint64    `json:"end"`
	MaxTS    int64     `json:"max_ts"` // running maximum timestamp at its last entry
	Key      string    `json:"key"`
	Size     int64     `json:"size"`
	CRC      uint32    `json:"crc32c"`
	IndexOff int64     `json:"index_off"`
	IndexCRC uint32    `json:"index_crc32c"`
	At       time.Time `json:"offloaded_at"`
}

// defaultChunkBytes is the most a read of an offloaded ledger fetches at
// once beyond its first entry.
const defaultChunkBytes = 1 << 20

// remoteIndex is the index of an offloaded ledger: firsts[i] is the first
// offset of entry i, at byte pos[i] of the object; pos has one more
// element, the end of the entries.
type remoteIndex struct {
	firsts []uint64
	pos    []int64
}

// remoteChunk is a run of entries of an offloaded ledger, decoded:
// records [first, end) of object key.
type remoteChunk struct {
	key        string
	first, end uint64
	recs       []shard.Record
}

// Steps of one ledger's offload, for the crash tests' hook.
const (
	stepUploaded = "uploaded" // object written and verified, not recorded
	stepRecorded = "recorded" // manifest record written, ledger still in the log
	stepDropped  = "dropped"  // ledger dropped from the log and deleted
)

func (e *Engine) manifestPrefix(name string) string {
	return PrefixOffload + url.PathEscape(e.logName(name)) + "/"
}

func (e *Engine) manifestKey(name string, ledger uint64) string {
	return fmt.Sprintf("%s%020d", e.manifestPrefix(name), ledger)
}

func (e *Engine) objectKey(name string, ledger uint64) string {
	return fmt.Sprintf("%s/%s/%020d.entries", e.o.Offload.Prefix, url.PathEscape(e.logName(name)), ledger)
}

// loadRemote lists the offloaded ledgers of shard name, by first offset.
func (e *Engine) loadRemote(ctx context.Context, name string) ([]remoteLedger, error) {
	out, err := schema.ListValues[remoteLedger](ctx, e.kv, e.manifestPrefix(name))
	if err != nil {
		return nil, fmt.Errorf("journal engine: shard %q: loading the offload manifest: %w", name, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].First < out[j].First })
	if len(out) > 0 && e.o.Offload == nil {
		return nil, fmt.Errorf("journal engine: shard %q has %d offloaded ledgers but the engine has no Offload.Store", name, len(out))
	}
	return out, nil
}

// deleteRemote removes manifest records (first) and then their objects;
// an object left by a failure is garbage, not data. On failure it returns
// the records still in the manifest.
func (e *Engine) deleteRemote(ctx context.Context, name string, rs []remoteLedger) ([]remoteLedger, error) {
	for i, r := range rs {
		if _, err := e.kv.Delete(ctx, e.manifestKey(name, r.Ledger)); err != nil && !errors.Is(err, meta.ErrNotFound) {
			return rs[i:], err
		}
		if e.o.Offload == nil {
			continue
		}
		if err := e.o.Offload.Store.Delete(ctx, r.Key); err != nil {
			e.log.Warn("journal engine: deleting an offloaded ledger's object", "shard", name, "key", r.Key, "err", err)
		}
	}
	return nil, nil
}

// offloadPass offloads the closed ledgers of every open shard that this
// node writes and whose policy says so, and drops those whose delete lag
// has passed; the shards it only reads pick the writer's offloads up from
// the manifest (syncRemote). Every ledger has its own deadlines
// (OffloadOptions.MinRate); Close cancels the pass.
func (e *Engine) offloadPass(now time.Time) {
	var oldest time.Time
	for _, s := range e.openShards() {
		on, lag := e.o.Offload.policy(s.name)
		if !on {
			continue
		}
		first, err := s.offload(e.offloadCtx, lag, now)
		if err != nil && !errors.Is(err, shard.ErrClosed) && e.offloadCtx.Err() == nil {
			e.m.offloadFailures.Inc()
			e.log.Warn("journal shard offload", "shard", s.name, "err", err)
		}
		if !first.IsZero() && (oldest.IsZero() || first.Before(oldest)) {
			oldest = first
		}
	}
	if oldest.IsZero() {
		e.m.offloadLag.Set(0)
	} else {
		e.m.offloadLag.Set(now.Sub(oldest).Seconds())
	}
}

// offload copies the closed ledgers of the log that are not offloaded yet
// to the object store and records them, then drops from the log front the
// offloaded ledgers recorded at least lag before now. Only the shard's
// writer does (or, on a sealed shard, which has none, any node): a node
// that only reads the shard syncs with the manifest instead, so the
// ledgers are read and uploaded once. It returns when the oldest ledger
// still waiting for offload was first seen closed (zero: none waits).
func (s *Shard) offload(ctx context.Context, lag time.Duration, now time.Time) (time.Time, error) {
	v, err := s.view()
	if err != nil {
		return time.Time{}, err
	}
	s.mu.Lock()
	writes := s.w != nil || s.sealed
	for id := range s.pending { // forget what left the log since (Trim, another writer)
		if !writes || !slices.ContainsFunc(v.ledgers, func(l *ledgerInfo) bool { return l.id == id }) {
			delete(s.pending, id)
		}
	}
	s.mu.Unlock()
	if !writes {
		return time.Time{}, s.syncRemote(ctx)
	}
	done := map[uint64]bool{}
	for _, r := range v.remote {
		done[r.Ledger] = true
	}
	for i := 0; i+1 < len(v.ledgers); i++ {
		l := v.ledgers[i]
		if !l.closed() || v.ledgers[i+1].first > v.high {
			break // still written, or rolled with appends not yet acknowledged
		}
		if done[l.id] {
			continue
		}
		seen := s.seenClosed(l.id, now)
		r, err := s.offloadLedger(ctx, l, v.ledgers[i+1].first)
		if err != nil {
			return seen, err
		}
		s.mu.Lock()
		delete(s.pending, l.id)
		s.addRemote(r)
		s.mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(ctx, s.e.o.OpTimeout)
	defer cancel()
	return time.Time{}, s.dropOffloaded(ctx, lag, now)
}

// seenClosed returns when the offloader first saw ledger id closed and
// waiting (the offload lag metric).
func (s *Shard) seenClosed(id uint64, now time.Time) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.pending[id]
	if !ok {
		s.pending[id] = now
		t = now
	}
	return t
}

// syncRemote brings a shard this node does not write up to date with the
// writer's offloads: the manifest's records replace s.remote, and the
// ledgers at the log front that the writer recorded and dropped are
// forgotten (read from their objects from then on).
func (s *Shard) syncRemote(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.e.o.OpTimeout)
	defer cancel()
	remote, err := s.e.loadRemote(ctx, s.name)
	if err != nil {
		return err
	}
	ids, err := s.logLedgers(ctx)
	if err != nil {
		return err
	}
	recorded := make(map[uint64]bool, len(remote))
	for _, r := range remote {
		recorded[r.Ledger] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return shard.ErrClosed
	case s.w != nil || s.sealed:
		return nil // took the log over meanwhile: its own view is current
	}
	s.remote = remote
	n := 0
	for n < len(s.ledgers) && recorded[s.ledgers[n].id] && !slices.Contains(ids, s.ledgers[n].id) {
		s.cache.dropLedger(s.ledgers[n].id)
		n++
	}
	if n > 0 {
		s.ledgers = append([]*ledgerInfo(nil), s.ledgers[n:]...)
	}
	return nil
}

// offloadLedger writes closed ledger l (whose records end at end) as one
// object, verifies it, and records it in the manifest. The object is
// streamed (ledgerObject): the memory it takes is bounded by
// OffloadOptions.BufferBytes, however large the ledger.
func (s *Shard) offloadLedger(ctx context.Context, l *ledgerInfo, end uint64) (remoteLedger, error) {
	obj, err := s.scanLedger(ctx, l)
	if err != nil {
		return remoteLedger{}, err
	}
	o := s.e.o
	r := remoteLedger{Ledger: l.id, First: l.first, End: end, MaxTS: obj.maxTS, Key: s.e.objectKey(s.name, l.id),
		Size: obj.size, CRC: obj.crc, IndexOff: obj.indexOff, IndexCRC: obj.indexCRC, At: time.Now().UTC()}
	if obj.n == 0 {
		r.End = r.First
	}
	ctx, cancel := context.WithTimeout(ctx, o.Offload.uploadTimeout(o.OpTimeout, r.Size))
	defer cancel()
	if _, err := objstore.PutVerified(ctx, o.Offload.Store, r.Key, obj.reader(ctx), r.Size, r.CRC); err != nil {
		return remoteLedger{}, fmt.Errorf("journal engine: shard %q: offloading ledger %d: %w", s.name, l.id, err)
	}
	if err := s.e.hook(stepUploaded); err != nil {
		return remoteLedger{}, err
	}
	if _, err := schema.Create(ctx, s.e.kv, s.e.manifestKey(s.name, l.id), r); errors.Is(err, schema.ErrExists) {
		// Recorded by an earlier pass whose shard state was lost: keep that record.
		cur, gerr := schema.Get[remoteLedger](ctx, s.e.kv, s.e.manifestKey(s.name, l.id))
		if gerr != nil {
			return remoteLedger{}, gerr
		}
		r = cur.Value
	} else if err != nil {
		return remoteLedger{}, fmt.Errorf("journal engine: shard %q: recording offloaded ledger %d: %w", s.name, l.id, err)
	} else {
		s.e.m.offloadBytes.Add(float64(r.Size))
		s.e.m.offloadLedgers.Inc()
	}
	if err := s.e.hook(stepRecorded); err != nil {
		return remoteLedger{}, err
	}
	return r, nil
}

// ledgerObject is the object of one closed ledger, as a scan of its
// entries found it: size, CRC-32C and index, and the first entries (up to
// OffloadOptions.BufferBytes) kept for the upload.
type ledgerObject struct {
	s        *Shard
	l        *ledgerInfo
	n        int64    // entries
	kept     [][]byte // entries 0..len(kept)-1
	idx      []byte   // the index: per entry its first offset and position
	size     int64
	indexOff int64
	crc      uint32 // of the whole object
	indexCRC uint32
	maxTS    int64
}

// scanLedger reads every entry of closed ledger l once (each read within
// Options.OpTimeout) to size, index and checksum its object.
func (s *Shard) scanLedger(ctx context.Context, l *ledgerInfo) (*ledgerObject, error) {
	o := &ledgerObject{s: s, l: l, n: l.count()}
	var kept int64
	var lenBuf [binary.MaxVarintLen64]byte
	for e := range o.n {
		data, err := o.entry(ctx, e, true)
		if err != nil {
			return nil, err
		}
		h, err := decodeHeader(data)
		if err != nil {
			return nil, &shard.CorruptError{Shard: s.name, File: fmt.Sprintf("ledger %d entry %d", l.id, e), Reason: err.Error()}
		}
		o.maxTS = h.maxTS
		o.idx = binary.BigEndian.AppendUint64(o.idx, h.first)
		o.idx = binary.BigEndian.AppendUint64(o.idx, uint64(o.indexOff))
		k := binary.PutUvarint(lenBuf[:], uint64(len(data)))
		o.crc = crc32.Update(crc32.Update(o.crc, objstore.Castagnoli, lenBuf[:k]), objstore.Castagnoli, data)
		o.indexOff += int64(k + len(data))
		if len(o.kept) == int(e) && kept+int64(len(data)) <= s.e.o.Offload.BufferBytes {
			o.kept = append(o.kept, data)
			kept += int64(len(data))
		}
	}
	o.indexCRC = crc32.Checksum(o.idx, objstore.Castagnoli)
	o.crc = crc32.Update(o.crc, objstore.Castagnoli, o.idx)
	o.size = o.indexOff + int64(len(o.idx))
	return o, nil
}

// entry returns entry e: kept, or read from a bookie (scan: within
// Options.OpTimeout).
func (o *ledgerObject) entry(ctx context.Context, e int64, scan bool) ([]byte, error) {
	if e < int64(len(o.kept)) {
		return o.kept[e], nil
	}
	if scan {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.s.e.o.OpTimeout)
		defer cancel()
	}
	data, err := o.s.rawEntry(ctx, o.l, e)
	if err != nil {
		return nil, err
	}
	o.s.e.m.offloadEntries.Inc()
	return data, nil
}

// reader streams the object: each entry's length and bytes (kept, or read
// again), then the index. Bytes that differ from the scan's (a bookie
// answering otherwise the second time) fail the upload's CRC-32C check.
func (o *ledgerObject) reader(ctx context.Context) io.Reader {
	return &ledgerReader{ctx: ctx, o: o}
}

type ledgerReader struct {
	ctx   context.Context
	o     *ledgerObject
	next  int64    // the next entry to queue; o.n: the index
	parts [][]byte // queued bytes
	len   [binary.MaxVarintLen64]byte
}

func (r *ledgerReader) Read(p []byte) (int, error) {
	for len(r.parts) == 0 {
		switch {
		case r.next < r.o.n:
			data, err := r.o.entry(r.ctx, r.next, false)
			if err != nil {
				return 0, err
			}
			k := binary.PutUvarint(r.len[:], uint64(len(data)))
			r.parts = append(r.parts, r.len[:k], data)
		case r.next == r.o.n:
			r.parts = append(r.parts, r.o.idx)
		default:
			return 0, io.EOF
		}
		r.next++
		r.parts = slices.DeleteFunc(r.parts, func(b []byte) bool { return len(b) == 0 })
	}
	n := copy(p, r.parts[0])
	if r.parts[0] = r.parts[0][n:]; len(r.parts[0]) == 0 {
		r.parts = r.parts[1:]
	}
	return n, nil
}

// addRemote inserts r into s.remote by first offset. s.mu is held.
func (s *Shard) addRemote(r remoteLedger) {
	for _, x := range s.remote {
		if x.Ledger == r.Ledger {
			return
		}
	}
	i := sort.Search(len(s.remote), func(i int) bool { return s.remote[i].First > r.First })
	s.remote = append(s.remote, remoteLedger{})
	copy(s.remote[i+1:], s.remote[i:])
	s.remote[i] = r
}

// dropOffloaded drops from the log front the ledgers offloaded at least
// lag before now, the way Trim drops them; the ledger being written (the
// last) always stays. Only the shard's writer (or anyone, once the shard
// is sealed) changes the log: a node that only reads the shard would
// invalidate the writer's view of its log.
func (s *Shard) dropOffloaded(ctx context.Context, lag time.Duration, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return shard.ErrClosed
	}
	if s.w == nil && !s.sealed {
		return nil
	}
	at := map[uint64]time.Time{}
	for _, r := range s.remote {
		at[r.Ledger] = r.At
	}
	n := 0
	for n+1 < len(s.ledgers) {
		t, ok := at[s.ledgers[n].id]
		if !ok || (lag > 0 && now.Sub(t) < lag) { // lag 0: at once, whatever the clocks say
			break
		}
		n++
	}
	if n == 0 {
		return nil
	}
	if err := s.dropFront(ctx, n); err != nil {
		return err
	}
	return s.e.hook(stepDropped)
}

// dropFront drops the first n ledgers from the log and deletes them
// (client DropFirst / DropLogLedgers), then forgets them. s.mu is held.
func (s *Shard) dropFront(ctx context.Context, n int) error {
	var err error
	if s.w != nil {
		err = s.w.DropFirst(ctx, n)
	} else {
		ids := make([]uint64, n)
		for i, l := range s.ledgers[:n] {
			ids[i] = l.id
		}
		err = s.e.c.DropLogLedgers(ctx, s.log, ids)
	}
	if err != nil {
		return err
	}
	for _, l := range s.ledgers[:n] {
		s.cache.dropLedger(l.id)
		delete(s.pending, l.id) // trimmed before its offload: it waits no more
	}
	s.ledgers = append([]*ledgerInfo(nil), s.ledgers[n:]...)
	s.e.m.deleted.Add(float64(n))
	return nil
}

// localFirst is the first offset held by the log's ledgers (high when
// there are none): the offsets below it are read from offloaded ledgers.
func (v *view) localFirst() uint64 {
	if len(v.ledgers) == 0 {
		return v.high
	}
	return v.ledgers[0].first
}

// remoteOf returns the index of the offloaded ledger holding off (-1: none).
func (v *view) remoteOf(off uint64) int {
	i := sort.Search(len(v.remote), func(i int) bool { return v.remote[i].First > off }) - 1
	for ; i >= 0; i-- {
		if r := v.remote[i]; r.First < r.End { // empty ones share their first with the next
			if off < r.End {
				return i
			}
			return -1
		}
	}
	return -1
}

// remoteIndex returns the index of offloaded ledger r (kept: it is small).
func (s *Shard) remoteIndex(ctx context.Context, r remoteLedger) (remoteIndex, error) {
	s.rmu.Lock()
	ix, ok := s.ridx[r.Key]
	s.rmu.Unlock()
	if ok {
		return ix, nil
	}
	b, err := s.e.o.Offload.Store.Get(ctx, r.Key, r.IndexOff, r.Size-r.IndexOff)
	if err != nil {
		return ix, fmt.Errorf("journal engine: shard %q: reading the index of offloaded ledger %d: %w", s.name, r.Ledger, err)
	}
	if int64(len(b)) != r.Size-r.IndexOff || len(b)%16 != 0 || crc32.Checksum(b, objstore.Castagnoli) != r.IndexCRC {
		return ix, &shard.CorruptError{Shard: s.name, File: "object " + r.Key, Reason: fmt.Sprintf("index of %d bytes does not match its record", len(b))}
	}
	for ; len(b) > 0; b = b[16:] {
		ix.firsts = append(ix.firsts, binary.BigEndian.Uint64(b))
		ix.pos = append(ix.pos, int64(binary.BigEndian.Uint64(b[8:])))
	}
	ix.pos = append(ix.pos, r.IndexOff)
	s.rmu.Lock()
	if len(s.ridx) >= 256 {
		clear(s.ridx)
	}
	s.ridx[r.Key] = ix
	s.rmu.Unlock()
	return ix, nil
}

// remoteRecords returns decoded records of offloaded ledger r, from the
// entry holding offset from on: a ranged read of up to 1 MiB
// past that entry (the last chunk read is kept: sequential readers read
// each byte once).
func (s *Shard) remoteRecords(ctx context.Context, r remoteLedger, from uint64) ([]shard.Record, error) {
	s.rmu.Lock()
	if c := s.rchunk; c.key == r.Key && from >= c.first && from < c.end {
		s.rmu.Unlock()
		return c.recs, nil
	}
	s.rmu.Unlock()
	ix, err := s.remoteIndex(ctx, r)
	if err != nil {
		return nil, err
	}
	corrupt := func(reason string) error {
		return &shard.CorruptError{Shard: s.name, File: "object " + r.Key, Reason: reason}
	}
	n := len(ix.firsts)
	i := sort.Search(n, func(i int) bool { return ix.firsts[i] > from }) - 1
	if i < 0 {
		return nil, corrupt(fmt.Sprintf("no entry holds offset %d", from))
	}
	j := i + 1
	for j < n && ix.pos[j+1]-ix.pos[i] <= s.e.o.offloadChunkBytes {
		j++
	}
	if ix.pos[i] < 0 || ix.pos[j] > r.IndexOff || ix.pos[i] >= ix.pos[j] {
		return nil, corrupt(fmt.Sprintf("index entry %d at bytes [%d, %d)", i, ix.pos[i], ix.pos[j]))
	}
	b, err := s.e.o.Offload.Store.Get(ctx, r.Key, ix.pos[i], ix.pos[j]-ix.pos[i])
	if err != nil {
		return nil, fmt.Errorf("journal engine: shard %q: reading offloaded ledger %d: %w", s.name, r.Ledger, err)
	}
	var recs []shard.Record
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return nil, corrupt("truncated entry")
		}
		_, rs, err := decodeEntry(b[k : k+int(n)])
		if err != nil {
			return nil, corrupt(err.Error())
		}
		recs = append(recs, rs...)
		b = b[k+int(n):]
	}
	if len(recs) == 0 || recs[0].Offset != ix.firsts[i] || recs[0].Offset > from || recs[len(recs)-1].Offset < from {
		return nil, corrupt(fmt.Sprintf("entries %d..%d do not hold offset %d", i, j-1, from))
	}
	s.e.m.offloadReads.Inc()
	s.rmu.Lock()
	s.rchunk = remoteChunk{key: r.Key, first: recs[0].Offset, end: recs[len(recs)-1].Offset + 1, recs: recs}
	s.rmu.Unlock()
	return recs, nil
}

// readRemote appends to out the records from offset from that lie below
// the log's first ledger, from the offloaded ledgers, until full says
// stop. It returns the next offset to read and whether full stopped it.
func (s *Shard) readRemote(ctx context.Context, v *view, from uint64, out []shard.Record, full func([]shard.Record, shard.Record) bool) ([]shard.Record, uint64, bool, error) {
	stop := min(v.localFirst(), v.high)
	for from < stop {
		i := v.remoteOf(from)
		if i < 0 {
			return out, from, false, &shard.CorruptError{Shard: s.name, File: "offload manifest",
				Reason: fmt.Sprintf("no offloaded ledger holds offset %d (the log starts at %d)", from, stop)}
		}
		recs, err := s.remoteRecords(ctx, v.remote[i], from)
		if err != nil {
			return out, from, false, err
		}
		for _, r := range recs[from-recs[0].Offset:] {
			if r.Offset >= stop {
				return out, from, false, nil
			}
			if full(out, r) {
				return out, from, true, nil
			}
			out = append(out, r)
			from = r.Offset + 1
		}
	}
	return out, from, false, nil
}

// remoteAtOrAfter finds the first offloaded record below the log's first
// ledger with timestamp >= ts.
func (s *Shard) remoteAtOrAfter(ctx context.Context, v *view, ts int64) (uint64, bool, error) {
	stop := v.localFirst()
	for _, r := range v.remote {
		if r.First >= stop || r.First == r.End || r.MaxTS < ts || r.End <= v.low {
			continue
		}
		for from := max(r.First, v.low); from < min(r.End, stop); {
			recs, err := s.remoteRecords(ctx, r, from)
			if err != nil {
				return 0, false, err
			}
			for _, rec := range recs[from-recs[0].Offset:] {
				if rec.Offset >= stop {
					break
				}
				if rec.Timestamp >= ts {
					return rec.Offset, true, nil
				}
			}
			from = recs[len(recs)-1].Offset + 1
		}
	}
	return 0, false, nil
}

func (e *Engine) hook(step string) error {
	if e.o.offloadHook == nil {
		return nil
	}
	return e.o.offloadHook(step)
}
