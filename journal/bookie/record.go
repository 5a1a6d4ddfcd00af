package bookie

import (
	"encoding/binary"
	"hash/crc32"
)

// On-disk constants of the journal record format. Changing any of them
// changes the format (see the package doc).
const (
	// recHeaderSize is the size of a journal record header:
	// crc(4) length(4) file number(8) kind(1).
	recHeaderSize = 17
	// maxRecordBody bounds the body length a reader accepts; a length above
	// it marks the end of valid data.
	maxRecordBody = MaxEntrySizeLimit + addBodyFixed
	// addBodyFixed is the fixed part of an add body: ledger, entry, lac.
	addBodyFixed = 24
)

// Record kinds. Part of the on-disk format.
const (
	kindAdd    byte = 1 // ledger u64, entry u64, lac i64, payload
	kindFence  byte = 2 // ledger u64
	kindLAC    byte = 3 // ledger u64, lac i64
	kindDelete byte = 4 // ledger u64
)

// MaxEntrySizeLimit is the largest payload the journal and entry-log formats
// accept; Options.MaxEntrySize may only lower it.
const MaxEntrySizeLimit = 64 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// op is one journaled operation: a record to write plus, while in flight,
// the callback to run once it is durable.
type op struct {
	kind     byte
	recovery bool
	ledger   uint64
	entry    uint64
	lac      int64
	payload  []byte
	seq      uint64 // identifies a pending add in the read map
	queued   int64  // adds: when AddEntry/AddEntries took it, ns since Bookie.epoch (add latency metric)
	// While in flight, one of: done, or batchDone with the add's index in
	// its AddEntries batch (one callback shared by the batch, no closure
	// per add).
	done      func(error)
	batchDone func(i int, err error)
	idx       int
}

// finish calls the op's callback once; later calls do nothing.
func (o *op) finish(err error) {
	switch {
	case o.batchDone != nil:
		f := o.batchDone
		o.batchDone = nil
		f(o.idx, err)
	case o.done != nil:
		f := o.done
		o.done = nil
		f(err)
	}
}

// encodedSize is the size of op's journal record.
func (o *op) encodedSize() int { return recHeaderSize + o.bodySize() }

func (o *op) bodySize() int {
	switch o.kind {
	case kindAdd:
		return addBodyFixed + len(o.payload)
	case kindLAC:
		return 16
	default:
		return 8
	}
}

// appendRecord appends the journal record of o, for journal file fileNum, to
// dst.
func appendRecord(dst []byte, fileNum uint64, o *op) []byte {
	start := len(dst)
	body := o.bodySize()
	dst = append(dst, make([]byte, recHeaderSize)...)
	binary.LittleEndian.PutUint32(dst[start+4:], uint32(body))
	binary.LittleEndian.PutUint64(dst[start+8:], fileNum)
	dst[start+16] = o.kind
	dst = binary.LittleEndian.AppendUint64(dst, o.ledger)
	switch o.kind {
	case kindAdd:
		dst = binary.LittleEndian.AppendUint64(dst, o.entry)
		dst = binary.LittleEndian.AppendUint64(dst, uint64(o.lac))
		dst = append(dst, o.payload...)
	case kindLAC:
		dst = binary.LittleEndian.AppendUint64(dst, uint64(o.lac))
	}
	crc := crc32.Checksum(dst[start+4:], castagnoli)
	binary.LittleEndian.PutUint32(dst[start:], crc)
	return dst
}

// decodeRecord decodes the journal record at the start of buf, which is
// part of journal file fileNum. It returns the record and its encoded size,
// or ok=false when buf does not start with a valid record of this file: the
// end of valid data (zeros of a preallocated file, a torn write, or a
// leftover of the file's previous life when it was recycled). The payload
// of an add aliases buf.
func decodeRecord(buf []byte, fileNum uint64) (o op, n int, ok bool) {
	if len(buf) < recHeaderSize {
		return op{}, 0, false
	}
	body := binary.LittleEndian.Uint32(buf[4:])
	if body > maxRecordBody || uint64(len(buf)-recHeaderSize) < uint64(body) {
		return op{}, 0, false
	}
	if binary.LittleEndian.Uint64(buf[8:]) != fileNum {
		return op{}, 0, false
	}
	n = recHeaderSize + int(body)
	if crc32.Checksum(buf[4:n], castagnoli) != binary.LittleEndian.Uint32(buf) {
		return op{}, 0, false
	}
	o.kind = buf[16]
	b := buf[recHeaderSize:n]
	switch o.kind {
	case kindAdd:
		if len(b) < addBodyFixed {
			return op{}, 0, false
		}
		o.entry = binary.LittleEndian.Uint64(b[8:])
		o.lac = int64(binary.LittleEndian.Uint64(b[16:]))
		o.payload = b[addBodyFixed:]
	case kindLAC:
		if len(b) != 16 {
			return op{}, 0, false
		}
		o.lac = int64(binary.LittleEndian.Uint64(b[8:]))
	case kindFence, kindDelete:
		if len(b) != 8 {
			return op{}, 0, false
		}
	default:
		return op{}, 0, false
	}
	o.ledger = binary.LittleEndian.Uint64(b)
	return o, n, true
}

// decodeJournal calls fn for every valid record of journal file fileNum
// held in buf, starting at offset start, and returns the offset just past
// the last valid record.
func decodeJournal(buf []byte, fileNum uint64, start int64, fn func(o *op, end int64) error) (int64, error) {
	off := start
	for off >= 0 && off < int64(len(buf)) {
		o, n, ok := decodeRecord(buf[off:], fileNum)
		if !ok {
			break
		}
		off += int64(n)
		if err := fn(&o, off); err != nil {
			return off, err
		}
	}
	return off, nil
}

// Entry-log records. Part of the on-disk format.
const (
	// logHeaderSize is the size of an entry-log record header:
	// crc(4) length(4) ledger(8) entry(8).
	logHeaderSize = 24
)

// appendLogRecord appends an entry-log record to dst.
func appendLogRecord(dst []byte, ledger, entry uint64, payload []byte) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, 8)...)
	binary.LittleEndian.PutUint32(dst[start+4:], uint32(len(payload)))
	dst = binary.LittleEndian.AppendUint64(dst, ledger)
	dst = binary.LittleEndian.AppendUint64(dst, entry)
	dst = append(dst, payload...)
	binary.LittleEndian.PutUint32(dst[start:], crc32.Checksum(dst[start+4:], castagnoli))
	return dst
}

// decodeLogRecord decodes the entry-log record at the start of buf. ok is
// false when buf does not start with a complete record whose checksum holds.
func decodeLogRecord(buf []byte) (ledger, entry uint64, payload []byte, n int, ok bool) {
	if len(buf) < logHeaderSize {
		return 0, 0, nil, 0, false
	}
	size := binary.LittleEndian.Uint32(buf[4:])
	if size > MaxEntrySizeLimit || uint64(len(buf)-logHeaderSize) < uint64(size) {
		return 0, 0, nil, 0, false
	}
	n = logHeaderSize + int(size)
	if crc32.Checksum(buf[4:n], castagnoli) != binary.LittleEndian.Uint32(buf) {
		return 0, 0, nil, 0, false
	}
	return binary.LittleEndian.Uint64(buf[8:]), binary.LittleEndian.Uint64(buf[16:]), buf[logHeaderSize:n], n, true
}
