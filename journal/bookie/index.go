package bookie

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// The index maps (ledger, entry) to a location with range records: one
// Pebble key per run of a ledger's entries in one entry log, instead of
// one key per entry (whose memtable inserts, flushes and compactions were
// much of the bookie's CPU per add). Part of the on-disk format:
//
//	'r' ledger(8 BE) first entry(8 BE) → log id(8) n(4) n×(entry(8) offset(8) length(4))
//
// The n entries strictly increase (first is the first; a ledger striped
// over several bookies leaves gaps: an entry between two of a record's
// that it does not list is not held), all lie in entry log "log id", and
// the records of a ledger never overlap: each entry the bookie holds is
// listed by exactly one record, the one with the greatest first entry not
// above it. The applier keeps that so: a run of adds whose first entry is
// above every entry the index holds for its ledger is written as new
// records; a run that overlaps (a rewritten entry: replay after a crash,
// a recovery add) is merged with the records it overlaps, which are
// rewritten (see mergeRun). Little-endian values, as the other keys.
const (
	prefixRange = 'r'
	// rangeMaxEntries bounds the entries of one record (its value is
	// 12+20n bytes).
	rangeMaxEntries = 256
	rangeHeaderSize = 12
	rangeElemSize   = 20
)

// rangeElem is one entry of a range record.
type rangeElem struct {
	entry  uint64
	offset int64
	length uint32
}

// logElem is a rangeElem with its entry log, while runs are merged.
type logElem struct {
	rangeElem
	log uint64
}

func rangeKey(ledger, first uint64) []byte { return rangeKeyInto(make([]byte, 0, 17), ledger, first) }

// rangeKeyInto writes the index key of the record of ledger starting at
// first into k (17 bytes).
func rangeKeyInto(k []byte, ledger, first uint64) []byte {
	k = append(k[:0], prefixRange)
	k = binary.BigEndian.AppendUint64(k, ledger)
	return binary.BigEndian.AppendUint64(k, first)
}

// ledgerIndexBounds returns [lo, hi) covering every index key of ledger.
func ledgerIndexBounds(ledger uint64) (lo, hi []byte) {
	return rangeKey(ledger, 0), append(rangeKey(ledger, ^uint64(0)), 0)
}

// appendRange appends the value of a range record to dst.
func appendRange(dst []byte, log uint64, elems []rangeElem) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, log)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(elems)))
	for _, e := range elems {
		dst = binary.LittleEndian.AppendUint64(dst, e.entry)
		dst = binary.LittleEndian.AppendUint64(dst, uint64(e.offset))
		dst = binary.LittleEndian.AppendUint32(dst, e.length)
	}
	return dst
}

// rangeVal is the value of a range record, checked by decodeRange.
type rangeVal []byte

func decodeRange(v []byte) (rangeVal, error) {
	if len(v) < rangeHeaderSize+rangeElemSize {
		return nil, fmt.Errorf("%w: range record of %d bytes", ErrCorrupt, len(v))
	}
	if n := binary.LittleEndian.Uint32(v[8:]); uint64(len(v)) != rangeHeaderSize+uint64(n)*rangeElemSize {
		return nil, fmt.Errorf("%w: range record of %d bytes for %d entries", ErrCorrupt, len(v), n)
	}
	return rangeVal(v), nil
}

func (r rangeVal) log() uint64 { return binary.LittleEndian.Uint64(r) }
func (r rangeVal) len() int    { return int(binary.LittleEndian.Uint32(r[8:])) }

func (r rangeVal) elem(i int) rangeElem {
	b := r[rangeHeaderSize+i*rangeElemSize:]
	return rangeElem{entry: binary.LittleEndian.Uint64(b), offset: int64(binary.LittleEndian.Uint64(b[8:])),
		length: binary.LittleEndian.Uint32(b[16:])}
}

func (r rangeVal) last() uint64 { return r.elem(r.len() - 1).entry }

// find returns the location of entry if the record lists it.
func (r rangeVal) find(entry uint64) (location, bool) {
	n := r.len()
	lo, hi := 0, n
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if r.elem(m).entry < entry {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == n {
		return location{}, false
	}
	e := r.elem(lo)
	if e.entry != entry {
		return location{}, false
	}
	return location{log: r.log(), offset: e.offset, length: e.length}, true
}

// rangeCursor finds entries through an iterator over index keys,
// keeping the last record it read.
type rangeCursor struct {
	it     *pebble.Iterator
	key    []byte
	val    []byte // a copy of the current record's value
	cur    rangeVal
	ledger uint64 // of cur
	first  uint64
}

// newRangeCursor makes a cursor over the records of ledger, or with
// all=true over every record.
func newRangeCursor(db *pebble.DB, ledger uint64, all bool) (*rangeCursor, error) {
	lo, hi := ledgerIndexBounds(ledger)
	if all {
		lo, hi = []byte{prefixRange}, []byte{prefixRange + 1}
	}
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	return &rangeCursor{it: it}, nil
}

func (c *rangeCursor) close() error { return c.it.Close() }

// find returns the location of entry of ledger, ok=false if the index
// does not hold it.
func (c *rangeCursor) find(ledger, entry uint64) (loc location, ok bool, err error) {
	if c.cur == nil || c.ledger != ledger || entry < c.first || entry > c.cur.last() {
		// The record with the greatest first entry not above entry.
		c.key = append(rangeKeyInto(c.key, ledger, entry), 0)
		c.cur = nil
		if !c.it.SeekLT(c.key) {
			return location{}, false, c.it.Error()
		}
		k := c.it.Key()
		if len(k) != 17 || binary.BigEndian.Uint64(k[1:]) != ledger {
			return location{}, false, nil // another ledger's (all=true)
		}
		c.val = append(c.val[:0], c.it.Value()...)
		if c.cur, err = decodeRange(c.val); err != nil {
			return location{}, false, err
		}
		c.ledger, c.first = ledger, binary.BigEndian.Uint64(k[9:])
	}
	loc, ok = c.cur.find(entry)
	return loc, ok, nil
}

// lookup returns the index location of an entry.
func (b *Bookie) lookup(ledger, entry uint64) (location, bool, error) {
	c, err := newRangeCursor(b.db, ledger, false)
	if err != nil {
		return location{}, false, err
	}
	defer c.close()
	return c.find(ledger, entry)
}

// indexRun is a run of adds of one ledger being gathered by apply: its
// entries strictly increase and lie in one entry log.
type indexRun struct {
	log   uint64
	elems []rangeElem
}

// runWriter gathers the runs of one apply and writes them to its index
// batch as range records.
type runWriter struct {
	b     *Bookie
	runs  map[uint64]*indexRun // open runs by ledger
	free  []*indexRun
	key   []byte
	val   []byte
	order []uint64 // ledgers with an open run
}

// add records that entry of ledger is now at loc (in the active log).
// A run is written when it is full, or when entry does not follow it.
func (w *runWriter) add(batch **pebble.Batch, ledger uint64, loc location, entry uint64) error {
	r := w.runs[ledger]
	if r != nil && len(r.elems) > 0 && (r.log != loc.log || len(r.elems) >= rangeMaxEntries || r.elems[len(r.elems)-1].entry >= entry) {
		if err := w.write(batch, ledger, r); err != nil {
			return err
		}
		r.elems = r.elems[:0]
	}
	if r != nil && len(r.elems) == 0 {
		r.log = loc.log
	}
	if r == nil {
		if n := len(w.free); n > 0 {
			r, w.free = w.free[n-1], w.free[:n-1]
		} else {
			r = &indexRun{}
		}
		r.log, r.elems = loc.log, r.elems[:0]
		w.runs[ledger] = r
		w.order = append(w.order, ledger)
	}
	r.elems = append(r.elems, rangeElem{entry: entry, offset: loc.offset, length: loc.length})
	return nil
}

// drop forgets the open run of ledger (deleted: the adds before the
// delete are deleted with it).
func (w *runWriter) drop(ledger uint64) {
	if r := w.runs[ledger]; r != nil {
		r.elems = r.elems[:0]
	}
}

// flush writes every open run (before the active log rolls, and at the
// end of an apply).
func (w *runWriter) flush(batch **pebble.Batch) error {
	for _, l := range w.order {
		r := w.runs[l]
		if len(r.elems) > 0 {
			if err := w.write(batch, l, r); err != nil {
				return err
			}
		}
		delete(w.runs, l)
		r.elems = r.elems[:0]
		w.free = append(w.free, r)
	}
	w.order = w.order[:0]
	return nil
}

// write writes run r of ledger: as a new record when it starts above
// every entry the index holds for the ledger (the index's last entry of
// each ledger is kept in applyState.lastEntry), merged with the records
// it overlaps otherwise.
func (w *runWriter) write(batch **pebble.Batch, ledger uint64, r *indexRun) error {
	ap := &w.b.ap
	last, known := ap.lastEntry[ledger]
	if !known {
		var err error
		if last, err = w.b.indexLastEntry(ledger); err != nil {
			return err
		}
	}
	first, end := r.elems[0].entry, r.elems[len(r.elems)-1].entry
	if !last.any || first > last.entry {
		w.key = rangeKeyInto(w.key, ledger, first)
		w.val = appendRange(w.val[:0], r.log, r.elems)
		if err := (*batch).Set(w.key, w.val, nil); err != nil {
			return err
		}
	} else if err := w.b.mergeRun(batch, ledger, r); err != nil {
		return err
	}
	if !last.any || end > last.entry {
		last = lastEntry{entry: end, any: true}
	}
	ap.lastEntry[ledger] = last
	return nil
}

// lastEntry is the greatest entry the index holds for a ledger, if any.
type lastEntry struct {
	entry uint64
	any   bool
}

// indexLastEntry returns the greatest entry the index holds for ledger.
func (b *Bookie) indexLastEntry(ledger uint64) (lastEntry, error) {
	lo, hi := ledgerIndexBounds(ledger)
	it, err := b.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return lastEntry{}, err
	}
	defer it.Close()
	if !it.Last() {
		return lastEntry{}, it.Error()
	}
	r, err := decodeRange(it.Value())
	if err != nil {
		return lastEntry{}, err
	}
	return lastEntry{entry: r.last(), any: true}, nil
}

// mergeRun writes run r of ledger where it overlaps records of the
// index: it commits the batch so far (after the entry-log bytes it
// points at: see apply's writeBuf), reads the records r overlaps, deletes
// them and writes their entries and r's (r's replacing theirs) as new
// records, split where the entry log changes. Rare: replay after a crash,
// recovery adds, a writer's resent adds.
func (b *Bookie) mergeRun(batch **pebble.Batch, ledger uint64, r *indexRun) error {
	if err := b.applyWriteBuf(); err != nil {
		return err
	}
	if err := (*batch).Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("bookie: index write: %w", err)
	}
	(*batch).Close()
	*batch = b.db.NewBatch()
	first, end := r.elems[0].entry, r.elems[len(r.elems)-1].entry
	var elems []logElem
	for _, e := range r.elems {
		elems = append(elems, logElem{rangeElem: e, log: r.log})
	}
	lo, hi := ledgerIndexBounds(ledger)
	it, err := b.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	defer it.Close()
	take := func() error {
		v, err := decodeRange(it.Value())
		if err != nil {
			return err
		}
		for i := range v.len() {
			elems = append(elems, logElem{rangeElem: v.elem(i), log: v.log()})
		}
		return (*batch).Delete(it.Key(), nil)
	}
	// The record before first may reach into the run.
	if it.SeekLT(rangeKey(ledger, first)) {
		if v, err := decodeRange(it.Value()); err != nil {
			return err
		} else if v.last() >= first {
			if err := take(); err != nil {
				return err
			}
		}
	}
	for ok := it.SeekGE(rangeKey(ledger, first)); ok && binary.BigEndian.Uint64(it.Key()[9:]) <= end; ok = it.Next() {
		if err := take(); err != nil {
			return err
		}
	}
	if err := it.Error(); err != nil {
		return err
	}
	// r's entries come first: the stable sort keeps them ahead of the
	// older ones of the same entry, which are then skipped.
	slices.SortStableFunc(elems, func(a, b logElem) int { return cmp.Compare(a.entry, b.entry) })
	var out []rangeElem
	var outLog uint64
	writeOut := func() error {
		if len(out) == 0 {
			return nil
		}
		err := (*batch).Set(rangeKey(ledger, out[0].entry), appendRange(nil, outLog, out), nil)
		out = out[:0]
		return err
	}
	for i, e := range elems {
		if i > 0 && e.entry == elems[i-1].entry {
			continue
		}
		if len(out) > 0 && (e.log != outLog || len(out) >= rangeMaxEntries) {
			if err := writeOut(); err != nil {
				return err
			}
		}
		outLog = e.log
		out = append(out, e.rangeElem)
	}
	return writeOut()
}

// prefixEntry keyed one location per entry before range records:
//
//	'e' ledger(8 BE) entry(8 BE) → log id(8) offset(8) length(4)
//
// Open converts such keys into range records.
const prefixEntry = 'e'

// migrateEntryKeys rewrites the per-entry keys of an index written before
// range records as range records (in key order: each ledger's entries
// ascending), deletes them and syncs, before anything reads the index.
func (b *Bookie) migrateEntryKeys() error {
	it, err := b.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixEntry}, UpperBound: []byte{prefixEntry + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	if !it.First() {
		return it.Error()
	}
	batch := b.db.NewBatch()
	defer batch.Close()
	var ledger uint64
	var run indexRun
	put := func() error {
		if len(run.elems) == 0 {
			return nil
		}
		err := batch.Set(rangeKey(ledger, run.elems[0].entry), appendRange(nil, run.log, run.elems), nil)
		run.elems = run.elems[:0]
		return err
	}
	for ; it.Valid(); it.Next() {
		k, v := it.Key(), it.Value()
		if len(k) != 17 || len(v) != 20 {
			return fmt.Errorf("%w: entry key of %d bytes, value of %d", ErrCorrupt, len(k), len(v))
		}
		l := binary.BigEndian.Uint64(k[1:])
		log := binary.LittleEndian.Uint64(v)
		if len(run.elems) > 0 && (l != ledger || log != run.log || len(run.elems) >= rangeMaxEntries) {
			if err := put(); err != nil {
				return err
			}
		}
		ledger, run.log = l, log
		run.elems = append(run.elems, rangeElem{entry: binary.BigEndian.Uint64(k[9:]),
			offset: int64(binary.LittleEndian.Uint64(v[8:])), length: binary.LittleEndian.Uint32(v[16:])})
	}
	if err := it.Error(); err != nil {
		return err
	}
	if err := put(); err != nil {
		return err
	}
	if err := batch.DeleteRange([]byte{prefixEntry}, []byte{prefixEntry + 1}, nil); err != nil {
		return err
	}
	return batch.Commit(pebble.Sync)
}
