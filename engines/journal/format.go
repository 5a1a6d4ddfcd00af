package journal

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"

	"github.com/quiremq/quire/shard"
)

// Entry format (one Append batch = one ledger entry). Part of the stored
// format: changing it needs a new formatVersion.
//
//	+---------+--------------+-----------+-------------+-----------+
//	| version | first offset | count     | max ts      | crc32c    |
//	| 1 byte  | 8 bytes BE   | 4 bytes BE| 8 bytes BE  | 4 bytes BE|
//	+---------+--------------+-----------+-------------+-----------+
//	| count records:                                              |
//	|   varint timestamp | uvarint len, key | uvarint len, value   |
//	|   uvarint headers  | per header: uvarint len, key,           |
//	|                      uvarint len, value                      |
//	+--------------------------------------------------------------+
//
// first offset is the shard offset of the entry's first record (offsets
// are dense, so record i is at first+i); max ts is the largest record
// timestamp of the shard up to and including this entry (a running
// maximum, so it never decreases along the shard and OffsetForTime can
// binary-search it); crc32c (Castagnoli) covers the header fields before
// it and the records, so any damage is ErrCorrupt rather than a wrong
// record (the bookie stores and returns entries as opaque bytes).
const (
	formatVersion = 1
	headerSize    = 1 + 8 + 4 + 8 + 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// entryHeader is the decoded header of an entry.
type entryHeader struct {
	first uint64
	count uint32
	maxTS int64
}

// end is the offset after the entry's last record.
func (h entryHeader) end() uint64 { return h.first + uint64(h.count) }

// encodeEntry encodes recs (timestamps already set) as the entry whose
// first record gets offset first.
func encodeEntry(first uint64, maxTS int64, recs []shard.Record) []byte {
	return encode(first, maxTS, recs, false)
}

// encodeEntryViews is encodeEntry that also turns recs (the caller's own
// copy) into what decodeEntry returns for the entry: offsets set, keys,
// values and header values sharing the entry's bytes, so that the records
// stay the same when the appender reuses its buffers.
func encodeEntryViews(first uint64, maxTS int64, recs []shard.Record) []byte {
	return encode(first, maxTS, recs, true)
}

func encode(first uint64, maxTS int64, recs []shard.Record, views bool) []byte {
	n, nh := headerSize, 0
	for i := range recs {
		n += 3*binary.MaxVarintLen64 + recs[i].Size() + len(recs[i].Headers)*2*binary.MaxVarintLen64
		nh += len(recs[i].Headers)
	}
	b := make([]byte, headerSize, n)
	b[0] = formatVersion
	binary.BigEndian.PutUint64(b[1:], first)
	binary.BigEndian.PutUint32(b[9:], uint32(len(recs)))
	binary.BigEndian.PutUint64(b[13:], uint64(maxTS))
	var hdrs []shard.Header // views: every record's headers, in one allocation
	if views && nh > 0 {
		hdrs = make([]shard.Header, 0, nh)
	}
	for i := range recs {
		r := &recs[i]
		b = binary.AppendVarint(b, r.Timestamp)
		b = appendBytes(b, r.Key)
		key := tail(b, len(r.Key))
		b = appendBytes(b, r.Value)
		value := tail(b, len(r.Value))
		b = binary.AppendUvarint(b, uint64(len(r.Headers)))
		start := len(hdrs)
		for _, h := range r.Headers {
			b = appendBytes(b, []byte(h.Key))
			b = appendBytes(b, h.Value)
			if views {
				hdrs = append(hdrs, shard.Header{Key: h.Key, Value: tail(b, len(h.Value))})
			}
		}
		if views {
			// b never moves: its capacity bounds the entry. Even if it did,
			// the views would keep the old array, which nobody writes.
			r.Offset, r.Key, r.Value, r.Headers = first+uint64(i), key, value, nil
			if len(hdrs) > start {
				r.Headers = hdrs[start:len(hdrs):len(hdrs)]
			}
		}
	}
	binary.BigEndian.PutUint32(b[21:], checksum(b))
	return b
}

// tail is the last n bytes of b, nil when n is 0 (as decodeEntry returns
// an empty field).
func tail(b []byte, n int) []byte {
	if n == 0 {
		return nil
	}
	return b[len(b)-n : len(b) : len(b)]
}

// checksum is the CRC of an entry: its header up to the CRC, then its
// records.
func checksum(b []byte) uint32 {
	return crc32.Update(crc32.Checksum(b[:21], castagnoli), castagnoli, b[headerSize:])
}

func appendBytes(b, p []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(p)))
	return append(b, p...)
}

// decodeHeader checks and decodes an entry's header.
func decodeHeader(b []byte) (entryHeader, error) {
	if len(b) < headerSize {
		return entryHeader{}, fmt.Errorf("entry of %d bytes is shorter than its header", len(b))
	}
	if b[0] != formatVersion {
		return entryHeader{}, fmt.Errorf("entry format version %d, want %d", b[0], formatVersion)
	}
	h := entryHeader{first: binary.BigEndian.Uint64(b[1:]), count: binary.BigEndian.Uint32(b[9:]), maxTS: int64(binary.BigEndian.Uint64(b[13:]))}
	if h.count == 0 || h.first > math.MaxUint64-uint64(h.count) {
		return entryHeader{}, fmt.Errorf("entry header: %d records from offset %d", h.count, h.first)
	}
	return h, nil
}

// decodeEntry decodes an entry. The records share memory with b.
func decodeEntry(b []byte) (entryHeader, []shard.Record, error) {
	h, err := decodeHeader(b)
	if err != nil {
		return h, nil, err
	}
	if got, want := checksum(b), binary.BigEndian.Uint32(b[21:]); got != want {
		return h, nil, fmt.Errorf("entry checksum %08x, want %08x", got, want)
	}
	// Each record takes at least 4 bytes: no count can make us allocate
	// more than the entry could hold.
	if uint64(h.count) > uint64(len(b)-headerSize)/4 {
		return h, nil, fmt.Errorf("entry claims %d records in %d bytes", h.count, len(b)-headerSize)
	}
	d := decoder{b: b[headerSize:]}
	recs := make([]shard.Record, h.count)
	for i := range recs {
		r := &recs[i]
		r.Offset = h.first + uint64(i)
		r.Timestamp = d.varint()
		r.Key = d.bytes()
		r.Value = d.bytes()
		nh := d.uvarint()
		if nh > uint64(len(d.b))/2 {
			d.fail()
		}
		if nh > 0 && d.err == nil {
			r.Headers = make([]shard.Header, nh)
			for j := range r.Headers {
				r.Headers[j] = shard.Header{Key: string(d.bytes()), Value: d.bytes()}
			}
		}
		if d.err != nil {
			return h, nil, fmt.Errorf("entry record %d: %w", i, d.err)
		}
	}
	if len(d.b) != 0 {
		return h, nil, fmt.Errorf("entry has %d bytes after its %d records", len(d.b), h.count)
	}
	return h, recs, nil
}

type decoder struct {
	b   []byte
	err error
}

var errTruncated = fmt.Errorf("truncated or malformed")

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errTruncated
	}
	d.b = nil
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail()
		return nil
	}
	if n == 0 {
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}
