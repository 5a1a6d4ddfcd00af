package s3

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/quiremq/quire/shard"
)

// Object format constants (part of the stored format; see doc.go).
const (
	objectMagic   = "QS3O"
	objectVersion = 1
	headerLen     = 32
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// encodeObject lays out recs (offsets first, first+1, ...) as one object and
// returns it with the largest timestamp in it.
func encodeObject(first uint64, recs []shard.Record) (obj []byte, maxTS int64) {
	size := headerLen
	for i := range recs {
		size += 40 + recs[i].Size() + 10*len(recs[i].Headers)
	}
	b := make([]byte, headerLen, size)
	maxTS = recs[0].Timestamp
	for i := range recs {
		r := &recs[i]
		maxTS = max(maxTS, r.Timestamp)
		b = binary.AppendVarint(b, r.Timestamp)
		b = appendBytes(b, r.Key)
		b = appendBytes(b, r.Value)
		b = binary.AppendUvarint(b, uint64(len(r.Headers)))
		for _, h := range r.Headers {
			b = appendBytes(b, []byte(h.Key))
			b = appendBytes(b, h.Value)
		}
	}
	copy(b, objectMagic)
	binary.LittleEndian.PutUint16(b[4:], objectVersion)
	binary.LittleEndian.PutUint64(b[8:], first)
	binary.LittleEndian.PutUint32(b[16:], uint32(len(recs)))
	binary.LittleEndian.PutUint32(b[20:], uint32(len(b)-headerLen))
	binary.LittleEndian.PutUint32(b[24:], crc32.Checksum(b[headerLen:], castagnoli))
	binary.LittleEndian.PutUint32(b[28:], crc32.Checksum(b[:28], castagnoli))
	return b, maxTS
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

var errTruncated = errors.New("record runs past the end of the object")

// decodeObject checks and decodes an object that the index says holds count
// records from offset first. Keys and values alias b.
func decodeObject(b []byte, first uint64, count int) ([]shard.Record, error) {
	if len(b) < headerLen {
		return nil, fmt.Errorf("object of %d bytes is shorter than its header", len(b))
	}
	if string(b[:4]) != objectMagic {
		return nil, fmt.Errorf("bad magic %q", b[:4])
	}
	if got, want := crc32.Checksum(b[:28], castagnoli), binary.LittleEndian.Uint32(b[28:]); got != want {
		return nil, fmt.Errorf("header checksum %08x, want %08x", got, want)
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != objectVersion {
		return nil, fmt.Errorf("unknown object version %d", v)
	}
	hFirst, hCount := binary.LittleEndian.Uint64(b[8:]), int(binary.LittleEndian.Uint32(b[16:]))
	if hFirst != first || hCount != count {
		return nil, fmt.Errorf("object holds offsets %d+%d, index says %d+%d", hFirst, hCount, first, count)
	}
	body := b[headerLen:]
	if n := int(binary.LittleEndian.Uint32(b[20:])); n != len(body) {
		return nil, fmt.Errorf("body of %d bytes, header says %d", len(body), n)
	}
	if got, want := crc32.Checksum(body, castagnoli), binary.LittleEndian.Uint32(b[24:]); got != want {
		return nil, fmt.Errorf("body checksum %08x, want %08x", got, want)
	}
	return parseRecords(body, first, count)
}

// parseRecords decodes the count records of an object's body without
// checking it: for a body checked already, or one this process has just
// encoded (an object just written goes to the cache this way).
func parseRecords(body []byte, first uint64, count int) ([]shard.Record, error) {
	recs := make([]shard.Record, count)
	p := body
	for i := range recs {
		r := &recs[i]
		r.Offset = first + uint64(i)
		ts, n := binary.Varint(p)
		if n <= 0 {
			return nil, errTruncated
		}
		r.Timestamp, p = ts, p[n:]
		var err error
		if r.Key, p, err = readBytes(p); err != nil {
			return nil, err
		}
		if r.Value, p, err = readBytes(p); err != nil {
			return nil, err
		}
		nh, n := binary.Uvarint(p)
		if n <= 0 || nh > uint64(len(p)) {
			return nil, errTruncated
		}
		p = p[n:]
		if nh > 0 {
			r.Headers = make([]shard.Header, nh)
			for j := range r.Headers {
				var k []byte
				if k, p, err = readBytes(p); err != nil {
					return nil, err
				}
				r.Headers[j].Key = string(k)
				if r.Headers[j].Value, p, err = readBytes(p); err != nil {
					return nil, err
				}
			}
		}
	}
	if len(p) != 0 {
		return nil, fmt.Errorf("%d bytes after the last record", len(p))
	}
	return recs, nil
}

func readBytes(p []byte) (v, rest []byte, err error) {
	n, k := binary.Uvarint(p)
	if k <= 0 || n > uint64(len(p)-k) {
		return nil, nil, errTruncated
	}
	p = p[k:]
	return p[:n:n], p[n:], nil
}
