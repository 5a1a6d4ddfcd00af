package file

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"

	"github.com/quiremq/quire/shard"
)

// On-disk format constants. Changing any of them changes the format; bump
// formatVersion and keep a reader for the old one.
const (
	formatVersion = 1

	segMagic   = "QUIRESEG"
	idxMagic   = "QUIREIDX"
	trimMagic  = "QUIRETRM"
	sealMagic  = "QUIRESLD"
	nameMagic  = "QUIRENAM"
	segExt     = ".log"
	idxExt     = ".idx"
	nameFile   = "NAME"
	trimFile   = "TRIM"
	sealFile   = "SEALED"
	lockFile   = "LOCK"
	tmpSuffix  = ".tmp"
	baseDigits = 20 // segment and index files are named by their zero-padded base offset

	// segHeaderSize is the segment file header:
	// magic[8] base u64 created i64 version u16 reserved u16 crc u32.
	segHeaderSize = 32

	// recHeaderSize is the fixed part of a record:
	// len u32, crc u32, offset u64, timestamp i64, keylen u32, vallen u32,
	// nheaders u32.
	recHeaderSize = 36
	// recPrefix is the part of a record that len does not count (len, crc).
	recPrefix = 8
	// recMinBody is the smallest legal value of len.
	recMinBody = recHeaderSize - recPrefix
	// hdrFixed is the fixed part of one record header: klen u32, vlen u32.
	hdrFixed = 8

	// MaxRecordSize is the largest encoded record (recHeaderSize + key +
	// value + headers). Append rejects larger records, and recovery treats a
	// length field above it as unusable.
	MaxRecordSize = 64 << 20

	// idxHeaderSize is the index file header; idxEntrySize one entry.
	idxHeaderSize = 64
	idxEntrySize  = 24

	// pageSize is the granularity of lost writes that recovery recognises.
	pageSize = 4096
)

var (
	le         = binary.LittleEndian
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

func crc(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// encodedSize is the number of bytes r takes in a segment.
func encodedSize(r *shard.Record) int {
	n := recHeaderSize + len(r.Key) + len(r.Value)
	for i := range r.Headers {
		n += hdrFixed + len(r.Headers[i].Key) + len(r.Headers[i].Value)
	}
	return n
}

// appendRecord appends the encoding of r, with offset off and timestamp ts,
// to buf. The caller checked encodedSize(r) <= MaxRecordSize.
func appendRecord(buf []byte, r *shard.Record, off uint64, ts int64) []byte {
	n := encodedSize(r)
	start := len(buf)
	if cap(buf)-start < n {
		nb := make([]byte, start, max(2*cap(buf), start+n))
		copy(nb, buf)
		buf = nb
	}
	buf = buf[:start+n]
	b := buf[start:]
	le.PutUint32(b[0:], uint32(n-recPrefix))
	le.PutUint64(b[8:], off)
	le.PutUint64(b[16:], uint64(ts))
	le.PutUint32(b[24:], uint32(len(r.Key)))
	le.PutUint32(b[28:], uint32(len(r.Value)))
	le.PutUint32(b[32:], uint32(len(r.Headers)))
	p := recHeaderSize
	p += copy(b[p:], r.Key)
	p += copy(b[p:], r.Value)
	for i := range r.Headers {
		h := &r.Headers[i]
		le.PutUint32(b[p:], uint32(len(h.Key)))
		le.PutUint32(b[p+4:], uint32(len(h.Value)))
		p += hdrFixed
		p += copy(b[p:], h.Key)
		p += copy(b[p:], h.Value)
	}
	le.PutUint32(b[4:], recordCRC(b))
	return buf
}

// recordCRC is the CRC-32C of the len field followed by everything after
// the crc field.
func recordCRC(b []byte) uint32 {
	c := crc32.Update(0, castagnoli, b[0:4])
	return crc32.Update(c, castagnoli, b[recPrefix:])
}

// recStatus classifies the bytes at a record position.
type recStatus int

const (
	recOK       recStatus = iota
	recShort              // fewer bytes remain than the record needs (or than a length field)
	recBadLen             // the length field is impossible
	recBadCRC             // the checksum does not match
	recBadShape           // the checksum matches but the fields are inconsistent
)

func (s recStatus) String() string {
	switch s {
	case recOK:
		return "ok"
	case recShort:
		return "truncated record"
	case recBadLen:
		return "bad record length"
	case recBadCRC:
		return "checksum mismatch"
	case recBadShape:
		return "inconsistent record fields"
	}
	return "unknown"
}

// recordLen returns the total length of the record starting at b[0] from its
// length field, or recShort/recBadLen.
func recordLen(b []byte) (int, recStatus) {
	if len(b) < recPrefix {
		return 0, recShort
	}
	body := le.Uint32(b)
	if body < recMinBody || body > MaxRecordSize-recPrefix {
		return 0, recBadLen
	}
	return int(body) + recPrefix, recOK
}

// recInfo is what scans need from a record.
type recInfo struct {
	size   int
	offset uint64
	ts     int64
}

// checkRecord validates the record at the start of b, which may extend
// beyond it.
func checkRecord(b []byte) (recInfo, recStatus) {
	n, st := recordLen(b)
	if st != recOK {
		return recInfo{}, st
	}
	if len(b) < n {
		return recInfo{size: n}, recShort
	}
	b = b[:n]
	if le.Uint32(b[4:]) != recordCRC(b) {
		return recInfo{size: n}, recBadCRC
	}
	info := recInfo{size: n, offset: le.Uint64(b[8:]), ts: int64(le.Uint64(b[16:]))}
	if !shapeOK(b) {
		return info, recBadShape
	}
	return info, recOK
}

// shapeOK checks that the key, value and header lengths add up to len.
func shapeOK(b []byte) bool {
	n := uint64(len(b))
	kl, vl, nh := uint64(le.Uint32(b[24:])), uint64(le.Uint32(b[28:])), uint64(le.Uint32(b[32:]))
	p := recHeaderSize + kl + vl
	if p > n || nh > (n-p)/hdrFixed {
		return false
	}
	for range nh {
		if p+hdrFixed > n {
			return false
		}
		hk, hv := uint64(le.Uint32(b[p:])), uint64(le.Uint32(b[p+4:]))
		p += hdrFixed + hk + hv
		if p > n {
			return false
		}
	}
	return p == n
}

// decodeRecord decodes a record checkRecord accepted. Key, Value and header
// values alias b.
func decodeRecord(b []byte) shard.Record {
	kl, vl, nh := int(le.Uint32(b[24:])), int(le.Uint32(b[28:])), int(le.Uint32(b[32:]))
	r := shard.Record{Offset: le.Uint64(b[8:]), Timestamp: int64(le.Uint64(b[16:]))}
	p := recHeaderSize
	if kl > 0 {
		r.Key = b[p : p+kl : p+kl]
	}
	p += kl
	if vl > 0 {
		r.Value = b[p : p+vl : p+vl]
	}
	p += vl
	if nh > 0 {
		r.Headers = make([]shard.Header, nh)
		for i := range r.Headers {
			hk, hv := int(le.Uint32(b[p:])), int(le.Uint32(b[p+4:]))
			p += hdrFixed
			r.Headers[i].Key = string(b[p : p+hk])
			p += hk
			if hv > 0 {
				r.Headers[i].Value = b[p : p+hv : p+hv]
			}
			p += hv
		}
	}
	return r
}

// segHeader is the first segHeaderSize bytes of a segment file.
type segHeader struct {
	base    uint64
	created int64 // unix milliseconds
}

func (h segHeader) encode() []byte {
	b := make([]byte, segHeaderSize)
	copy(b, segMagic)
	le.PutUint64(b[8:], h.base)
	le.PutUint64(b[16:], uint64(h.created))
	le.PutUint16(b[24:], formatVersion)
	le.PutUint32(b[28:], crc(b[:28]))
	return b
}

func decodeSegHeader(b []byte) (segHeader, error) {
	if len(b) < segHeaderSize {
		return segHeader{}, fmt.Errorf("segment header is %d bytes, want %d", len(b), segHeaderSize)
	}
	if string(b[:8]) != segMagic {
		return segHeader{}, fmt.Errorf("bad segment magic %q", b[:8])
	}
	if le.Uint32(b[28:]) != crc(b[:28]) {
		return segHeader{}, fmt.Errorf("segment header checksum mismatch")
	}
	if v := le.Uint16(b[24:]); v != formatVersion {
		return segHeader{}, fmt.Errorf("unsupported segment format version %d", v)
	}
	return segHeader{base: le.Uint64(b[8:]), created: int64(le.Uint64(b[16:]))}, nil
}

// indexEntry is one sparse index point: the record with offset off starts
// at byte pos of the segment, and every record of the segment before it has
// a timestamp <= maxTsBefore (math.MinInt64 for the first record).
type indexEntry struct {
	off         uint64
	pos         int64
	maxTsBefore int64
}

// indexBuilder adds an index entry every interval bytes and tracks the
// running maximum timestamp; the committer and recovery use the same rule.
type indexBuilder struct {
	interval int64
	last     int64 // position of the last entry, -1 before the first
	maxTs    int64
}

func newIndexBuilder(interval int) indexBuilder {
	return indexBuilder{interval: int64(interval), last: -1, maxTs: math.MinInt64}
}

func (b *indexBuilder) add(entries []indexEntry, off uint64, pos, ts int64) []indexEntry {
	if b.last < 0 || pos-b.last >= b.interval {
		entries = append(entries, indexEntry{off: off, pos: pos, maxTsBefore: b.maxTs})
		b.last = pos
	}
	b.maxTs = max(b.maxTs, ts)
	return entries
}

// segSummary is what the index file header says about its sealed segment.
type segSummary struct {
	base  uint64
	end   uint64 // offset after the segment's last record
	size  int64  // segment file size in bytes
	maxTs int64  // largest record timestamp, math.MinInt64 if empty
}

// encodeIndex encodes an index file:
//
//	header (64 bytes): magic[8] version u32 count u32 base u64 end u64
//	                   size u64 maxTs i64 entriesCRC u32 reserved u32
//	                   reserved u32 headerCRC u32
//	entries: count × (offset u64, pos u64, maxTsBefore i64)
func encodeIndex(sum segSummary, entries []indexEntry) []byte {
	b := make([]byte, idxHeaderSize+idxEntrySize*len(entries))
	e := b[idxHeaderSize:]
	for i, x := range entries {
		le.PutUint64(e[i*idxEntrySize:], x.off)
		le.PutUint64(e[i*idxEntrySize+8:], uint64(x.pos))
		le.PutUint64(e[i*idxEntrySize+16:], uint64(x.maxTsBefore))
	}
	copy(b, idxMagic)
	le.PutUint32(b[8:], formatVersion)
	le.PutUint32(b[12:], uint32(len(entries)))
	le.PutUint64(b[16:], sum.base)
	le.PutUint64(b[24:], sum.end)
	le.PutUint64(b[32:], uint64(sum.size))
	le.PutUint64(b[40:], uint64(sum.maxTs))
	le.PutUint32(b[48:], crc(e))
	le.PutUint32(b[60:], crc(b[:60]))
	return b
}

// decodeIndexHeader checks an index file's header and returns its summary,
// entry count and entries checksum.
func decodeIndexHeader(b []byte) (segSummary, int, uint32, error) {
	if len(b) < idxHeaderSize {
		return segSummary{}, 0, 0, fmt.Errorf("index header is %d bytes", len(b))
	}
	if string(b[:8]) != idxMagic || le.Uint32(b[60:]) != crc(b[:60]) {
		return segSummary{}, 0, 0, fmt.Errorf("bad index header")
	}
	if v := le.Uint32(b[8:]); v != formatVersion {
		return segSummary{}, 0, 0, fmt.Errorf("unsupported index version %d", v)
	}
	sum := segSummary{base: le.Uint64(b[16:]), end: le.Uint64(b[24:]), size: int64(le.Uint64(b[32:])), maxTs: int64(le.Uint64(b[40:]))}
	return sum, int(le.Uint32(b[12:])), le.Uint32(b[48:]), nil
}

// decodeIndex decodes a whole index file.
func decodeIndex(b []byte) (segSummary, []indexEntry, error) {
	sum, n, ecrc, err := decodeIndexHeader(b)
	if err != nil {
		return sum, nil, err
	}
	e := b[idxHeaderSize:]
	if len(e) != n*idxEntrySize || crc(e) != ecrc {
		return sum, nil, fmt.Errorf("index entries damaged")
	}
	entries := make([]indexEntry, n)
	for i := range entries {
		entries[i] = indexEntry{
			off:         le.Uint64(e[i*idxEntrySize:]),
			pos:         int64(le.Uint64(e[i*idxEntrySize+8:])),
			maxTsBefore: int64(le.Uint64(e[i*idxEntrySize+16:])),
		}
	}
	return sum, entries, nil
}

// encodeTrim encodes the TRIM file: magic[8] low u64 crc u32.
func encodeTrim(low uint64) []byte {
	b := make([]byte, 20)
	copy(b, trimMagic)
	le.PutUint64(b[8:], low)
	le.PutUint32(b[16:], crc(b[:16]))
	return b
}

func decodeTrim(b []byte) (uint64, error) {
	if len(b) != 20 || string(b[:8]) != trimMagic || le.Uint32(b[16:]) != crc(b[:16]) {
		return 0, fmt.Errorf("bad trim file")
	}
	return le.Uint64(b[8:]), nil
}

// encodeSeal encodes the SEALED file: magic[8] crc u32 (of the magic).
func encodeSeal() []byte {
	b := make([]byte, 12)
	copy(b, sealMagic)
	le.PutUint32(b[8:], crc(b[:8]))
	return b
}

func decodeSeal(b []byte) error {
	if len(b) != 12 || string(b[:8]) != sealMagic || le.Uint32(b[8:]) != crc(b[:8]) {
		return fmt.Errorf("bad seal file")
	}
	return nil
}

// encodeName encodes the NAME file: magic[8] len u32 name crc u32.
func encodeNameFile(name string) []byte {
	b := make([]byte, 12+len(name)+4)
	copy(b, nameMagic)
	le.PutUint32(b[8:], uint32(len(name)))
	copy(b[12:], name)
	le.PutUint32(b[12+len(name):], crc(b[:12+len(name)]))
	return b
}

func decodeNameFile(b []byte) (string, error) {
	if len(b) < 16 || string(b[:8]) != nameMagic {
		return "", fmt.Errorf("bad name file")
	}
	n := int(le.Uint32(b[8:]))
	if len(b) != 16+n || le.Uint32(b[12+n:]) != crc(b[:12+n]) {
		return "", fmt.Errorf("bad name file")
	}
	return string(b[12 : 12+n]), nil
}

// segFileName returns the file name of the segment with the given base.
func segFileName(base uint64) string { return fmt.Sprintf("%020d%s", base, segExt) }
func idxFileName(base uint64) string { return fmt.Sprintf("%020d%s", base, idxExt) }

// parseBaseName parses "<20 digits><ext>".
func parseBaseName(name, ext string) (uint64, bool) {
	if len(name) != baseDigits+len(ext) || name[baseDigits:] != ext {
		return 0, false
	}
	var v uint64
	for i := 0; i < baseDigits; i++ {
		c := name[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (math.MaxUint64-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}

// minTs is the maximum timestamp of an empty segment.
const minTs = math.MinInt64
