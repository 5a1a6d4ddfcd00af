package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// An entry's payload: a header naming who wrote it, then a fixed filler.
//
//	0        4        8                16               24
//	+--------+--------+----------------+----------------+-------------+
//	| writer | ledger |      seq       | append time ns |   filler    |
//	+--------+--------+----------------+----------------+-------------+
//	  little-endian; seq counts a writer's appends from 0; the filler is
//	  fillByte(i) at offset i.
//
// A reader checks all of it: a writer's entries are read in seq order
// with no gap or repeat, and every byte is the one written.
const headerSize = 24

func fillByte(i int) byte { return byte(i*7 + 3) }

// filler is the payload bytes after the header, as long as the longest
// entry.
func filler(size int) []byte {
	f := make([]byte, size)
	for i := range f {
		f[i] = fillByte(i + headerSize)
	}
	return f
}

type header struct {
	writer, ledger uint32
	seq            uint64
	at             int64
}

func makePayload(h header, size int, fill []byte) []byte {
	p := make([]byte, size)
	binary.LittleEndian.PutUint32(p, h.writer)
	binary.LittleEndian.PutUint32(p[4:], h.ledger)
	binary.LittleEndian.PutUint64(p[8:], h.seq)
	binary.LittleEndian.PutUint64(p[16:], uint64(h.at))
	copy(p[headerSize:], fill)
	return p
}

// parsePayload checks p's length and filler and returns its header.
func parsePayload(p []byte, size int, fill []byte) (header, error) {
	if len(p) != size {
		return header{}, fmt.Errorf("payload of %d bytes, want %d", len(p), size)
	}
	h := header{
		writer: binary.LittleEndian.Uint32(p),
		ledger: binary.LittleEndian.Uint32(p[4:]),
		seq:    binary.LittleEndian.Uint64(p[8:]),
		at:     int64(binary.LittleEndian.Uint64(p[16:])),
	}
	if !bytes.Equal(p[headerSize:], fill[:size-headerSize]) {
		return h, fmt.Errorf("writer %d seq %d: payload bytes differ from what was written", h.writer, h.seq)
	}
	return h, nil
}
