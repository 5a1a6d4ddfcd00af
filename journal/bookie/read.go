package bookie

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/quiremq/quire/internal/vfs"
)

// MissingEntryError is returned by ReadRange when it stops at an entry
// this bookie does not hold: an explicit negative, like ErrNoSuchEntry
// (which errors.Is matches), naming the entry.
type MissingEntryError struct {
	Ledger, Entry uint64
}

func (e *MissingEntryError) Error() string {
	return fmt.Sprintf("bookie: no such entry: ledger %d entry %d (the range read stopped there)", e.Ledger, e.Entry)
}

// Is makes errors.Is(err, ErrNoSuchEntry) true.
func (e *MissingEntryError) Is(target error) bool { return target == ErrNoSuchEntry }

// Range reads work in batches: the index is walked for up to
// rangeBatchEntries entries or rangeBatchBytes of payload, then the
// batch's records are read from the entry logs, coalescing records of one
// log at most rangeMaxGap apart into one read of at most rangeMaxSpan, so
// a ledger written sequentially is read with large sequential reads.
//
// The gap is small: an entry log interleaves the ledgers written at once,
// and a striped reader wants one of the Qw residue classes (mod E) this
// bookie holds of its ledger, so the records a read wants may be an
// eighth of the log's bytes (4 ledgers, Qw 2), and a pread costs about as
// much as copying 1 KiB from the page cache: past a gap of a record or
// two, a second read costs less than reading the gap.
const (
	rangeBatchEntries = 4096
	rangeBatchBytes   = 2 << 20
	rangeMaxGap       = 2 << 10
	rangeMaxSpan      = 4 << 20
	// rangeArenaMax bounds the arenas range reads keep for the next one
	// (a batch's records and the gaps between them: rangeLoad).
	rangeArenaMax = 2*rangeBatchBytes + rangeMaxSpan
)

// ReadRange reads the entries first, first+stride, first+2·stride, ... up
// to last of ledger, in entry order, calling fn with each; stride 0 means
// 1 (a reader of a ledger striped over E bookies asks each for every E-th
// entry). It reads without fencing, and sees what ReadEntry sees: durable
// (synced) entries only.
//
// It returns nil once every entry of the range was passed to fn; a
// *MissingEntryError (which matches ErrNoSuchEntry) when it stopped at the
// first entry of the range this bookie does not hold, every entry before
// it having been passed to fn; an error matching ErrNoSuchLedger (also a
// negative) before calling fn at all if it knows nothing of the ledger;
// fn's error if fn fails; or any other error (ErrClosed, ErrCorrupt, I/O)
// — which says nothing about the entries not passed to fn. A range with
// first > last is empty: nil, fn never called.
//
// Payloads passed to fn belong to the caller but may share memory with
// each other; fn must not modify them.
func (b *Bookie) ReadRange(ledger, first, last, stride uint64, fn func(entry uint64, payload []byte) error) error {
	return b.readRange(ledger, first, last, stride, true, func(e uint64, rec []byte) error {
		return fn(e, rec[logHeaderSize:])
	})
}

// ReadRangeRecords is ReadRange passing each entry as its entry-log
// record (see DecodeRecord) instead of its payload, for a server that
// forwards the records as stored. The records' checksums are NOT checked
// (their ledger, entry and length are): the receiver checks them, end to
// end. Records passed to fn may share memory with each other and with the
// next batch's: fn must copy what it keeps and must not modify them.
func (b *Bookie) ReadRangeRecords(ledger, first, last, stride uint64, fn func(entry uint64, record []byte) error) error {
	return b.readRange(ledger, first, last, stride, false, fn)
}

// RecordHeaderSize is the size of an entry-log record's header: a record
// is crc32c:4 | length:4 | ledger:8 | entry:8 | payload:length
// (little-endian), the CRC-32C (Castagnoli) covering the rest of it.
const RecordHeaderSize = logHeaderSize

// DecodeRecord decodes the entry-log record at the start of buf (as
// ReadRangeRecords passes them), checking its checksum. n is its size; ok
// is false when buf does not start with a whole record whose checksum
// holds.
func DecodeRecord(buf []byte) (ledger, entry uint64, payload []byte, n int, ok bool) {
	return decodeLogRecord(buf)
}

// readRange is ReadRange passing records, their checksums checked when
// check is set.
func (b *Bookie) readRange(ledger, first, last, stride uint64, check bool, fn func(entry uint64, record []byte) error) error {
	if stride == 0 {
		stride = 1
	}
	if first > last {
		return nil
	}
	b.mu.Lock()
	closed, known := b.closed, b.ledgers[ledger] != nil
	b.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if !known {
		return fmt.Errorf("%w: ledger %d", ErrNoSuchLedger, ledger)
	}
	// Unchecked reads reuse one buffer (fn copies what it keeps), kept
	// from one read to the next.
	scratch, _ := rangeScratch.Get().(*[]byte)
	if scratch == nil {
		scratch = new([]byte)
	}
	defer func() {
		if cap(*scratch) <= rangeArenaMax {
			rangeScratch.Put(scratch)
		}
	}()
	var got []rangeRecord
	for next := first; next <= last; {
		// A batch is read under the read gate, then handed to fn outside
		// it: fn may wait on a slow client, which must not hold up Close.
		if err := b.enterRead(); err != nil {
			return err
		}
		items, missing, err := b.rangeLocate(ledger, next, last, stride)
		var n int
		if err == nil {
			got = got[:0]
			n, err = b.rangeLoad(ledger, items, check, scratch, func(e uint64, rec []byte) error {
				got = append(got, rangeRecord{e, rec})
				return nil
			})
		}
		b.exitRead()
		if err != nil {
			return err
		}
		for _, r := range got {
			if err := fn(r.entry, r.rec); err != nil {
				return err
			}
		}
		switch {
		case n < len(items): // gone while the batch was read (deleted)
			return &MissingEntryError{Ledger: ledger, Entry: items[n].entry}
		case missing:
			return &MissingEntryError{Ledger: ledger, Entry: rangeNext(items, next, stride)}
		}
		e := items[len(items)-1].entry
		if last-e < stride {
			return nil
		}
		next = e + stride
	}
	return nil
}

// rangeRecord is one record of a batch, as rangeLoad passed it.
type rangeRecord struct {
	entry uint64
	rec   []byte
}

// rangeScratch holds the buffers of unchecked range reads.
var rangeScratch sync.Pool

func rangeNext(items []rangeItem, next, stride uint64) uint64 {
	if len(items) == 0 {
		return next
	}
	return items[len(items)-1].entry + stride
}

// rangeItem is one entry of a batch: where it is stored, or (pending, not
// yet applied) its record; rangeLoad sets rec.
type rangeItem struct {
	entry  uint64
	loc    location
	stored bool
	rec    []byte // its entry-log record
}

// rangeLocate finds a batch of entries from next on: their locations from
// the index, or their payloads from the entries synced but not yet
// applied. missing is true when the batch ends because the entry after
// its last is not held.
func (b *Bookie) rangeLocate(ledger, next, last, stride uint64) (items []rangeItem, missing bool, err error) {
	c, err := newRangeCursor(b.db, ledger, false)
	if err != nil {
		return nil, false, err
	}
	defer c.close()
	var size int
	for e := next; ; e += stride {
		item := rangeItem{entry: e}
		var found bool
		if item.loc, found, err = c.find(ledger, e); err != nil {
			return nil, false, err
		}
		item.stored = found
		if !found {
			// Not in the iterator's view of the index: still pending, or
			// applied (and dropped from pending) since the iterator was
			// made — the index is written before pending is cleared, so
			// a fresh lookup after the pending one finds it.
			var ok bool
			if item.rec, ok = b.pendingRecord(ledger, e); !ok {
				if item.loc, ok, err = b.lookup(ledger, e); err != nil {
					return nil, false, err
				}
				if !ok {
					return items, true, nil
				}
				item.stored = true
			}
		}
		items = append(items, item)
		size += int(item.loc.length) + len(item.rec)
		if last-e < stride || len(items) >= rangeBatchEntries || size >= rangeBatchBytes {
			return items, false, nil
		}
	}
}

// pendingRecord returns the entry-log record of a pending entry.
func (b *Bookie) pendingRecord(ledger, entry uint64) ([]byte, bool) {
	b.readMu.RLock()
	defer b.readMu.RUnlock()
	p, ok := b.pending.get(ledger, entry)
	if !ok {
		return nil, false
	}
	return appendLogRecord(nil, ledger, entry, p), true
}

// rangeLoad reads the records of the batch's items, coalescing nearby
// records of one entry log into one read, their checksums checked when
// check is set, and passes each to fn in order as soon as its read is
// done. Unchecked reads read into *scratch, which the next batch reuses. It
// returns how many items (from the first) it passed: fewer than all when
// an entry was deleted meanwhile.
func (b *Bookie) rangeLoad(ledger uint64, items []rangeItem, check bool, scratch *[]byte, fn func(entry uint64, rec []byte) error) (int, error) {
	// Unchecked runs are read into successive regions of one arena (kept
	// in *scratch for the next batch), so that every record of the batch
	// stays valid until the batch is done.
	arena := (*scratch)[:0]
	defer func() { *scratch = arena[:0] }()
	for i := 0; i < len(items); {
		if !items[i].stored {
			if err := fn(items[i].entry, items[i].rec); err != nil {
				return i, err
			}
			i++
			continue
		}
		// items[i:j] is one run of records read at once.
		start := items[i].loc.offset
		end := start + logHeaderSize + int64(items[i].loc.length)
		j := i + 1
		for ; j < len(items); j++ {
			l := items[j].loc
			if !items[j].stored || l.log != items[i].loc.log || l.offset < end || l.offset-end > rangeMaxGap ||
				l.offset+logHeaderSize+int64(l.length)-start > rangeMaxSpan {
				break
			}
			end = l.offset + logHeaderSize + int64(l.length)
		}
		buf := new([]byte)
		if !check {
			need := int(end - start)
			if cap(arena)-len(arena) < need {
				arena = make([]byte, 0, max(2*cap(arena), need, rangeBatchBytes))
			}
			region := arena[len(arena) : len(arena) : len(arena)+need]
			arena = arena[:len(arena)+need]
			buf = &region
		}
		err := b.readRun(ledger, items[i:j], start, end, check, buf)
		if err != nil && vfs.IsNotExist(err) {
			// Compaction moved these entries and removed their log: read
			// them one by one through the fresh index (ReadEntry retries).
			for k := i; k < j; k++ {
				p, err := b.readEntryAdmitted(ledger, items[k].entry)
				if errors.Is(err, ErrNoSuchEntry) {
					return k, nil
				}
				if err != nil {
					return k, err
				}
				if err := fn(items[k].entry, appendLogRecord(nil, ledger, items[k].entry, p)); err != nil {
					return k, err
				}
			}
			i = j
			continue
		}
		if err != nil {
			return i, err
		}
		for ; i < j; i++ {
			if err := fn(items[i].entry, items[i].rec); err != nil {
				return i, err
			}
		}
	}
	return len(items), nil
}

// readRun reads the records of run, which lie in [start, end) of one entry
// log, with one read into *buf (grown if need be), and checks each: its
// ledger, entry and length, and its checksum when check is set.
func (b *Bookie) readRun(ledger uint64, run []rangeItem, start, end int64, check bool, bufp *[]byte) error {
	id := run[0].loc.log
	lr, err := b.readers.acquire(id)
	if err != nil {
		return err
	}
	defer b.readers.release(lr)
	if int64(cap(*bufp)) < end-start {
		*bufp = make([]byte, end-start)
	}
	buf := (*bufp)[:end-start]
	if n, err := lr.f.ReadAt(buf, start); err != nil && !(errors.Is(err, io.EOF) && n == len(buf)) {
		return fmt.Errorf("bookie: reading entry log %d: %w", id, err)
	}
	for k := range run {
		it := &run[k]
		off := it.loc.offset - start
		rec := buf[off : off+logHeaderSize+int64(it.loc.length) : off+logHeaderSize+int64(it.loc.length)]
		ok := binary.LittleEndian.Uint32(rec[4:]) == it.loc.length &&
			binary.LittleEndian.Uint64(rec[8:]) == ledger && binary.LittleEndian.Uint64(rec[16:]) == it.entry
		if ok && check {
			_, _, _, _, ok = decodeLogRecord(rec)
		}
		if !ok {
			return fmt.Errorf("%w: ledger %d entry %d at entry log %d offset %d", ErrCorrupt, ledger, it.entry, id, it.loc.offset)
		}
		it.rec = rec
	}
	return nil
}
