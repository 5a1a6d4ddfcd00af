package file

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
)

// fuzzRecords returns n deterministic records of varied shapes: empty and
// multi-page values, zero runs, headers.
func fuzzRecords(n int, seed uint64) []shard.Record {
	rng := rand.New(rand.NewPCG(seed, 99))
	recs := make([]shard.Record, n)
	for i := range recs {
		r := shard.Record{Offset: uint64(i), Timestamp: rng.Int64N(1 << 40)}
		if rng.IntN(3) > 0 {
			r.Key = fmt.Appendf(nil, "key-%d", i)
		}
		size := []int{0, 10, 300, 5000}[rng.IntN(4)]
		r.Value = make([]byte, size)
		for j := range r.Value {
			if rng.IntN(8) > 0 {
				r.Value[j] = byte(rng.Uint32())
			}
		}
		for range rng.IntN(3) {
			r.Headers = append(r.Headers, shard.Header{Key: fmt.Sprint("h", i), Value: []byte{byte(i), 1}})
		}
		recs[i] = r
	}
	return recs
}

// damage applies the operations encoded in ops to data: 0 truncate, 1 flip a
// bit, 2 append garbage, 3 append zeros, 4 zero a range. It returns the
// damaged data, the length of the intact prefix of the original bytes, and
// whether the damage was only truncation and appending.
func damage(data, ops []byte) ([]byte, int, bool) {
	intact, tailOnly := len(data), true
	u16 := func(b []byte) int {
		var x [2]byte
		copy(x[:], b)
		return int(binary.LittleEndian.Uint16(x[:]))
	}
	scale := func(v, n int) int { return int(uint64(v) * uint64(n) >> 16) } // [0, n)
	for len(ops) > 0 {
		op := ops[0] % 5
		args := ops[1:]
		switch op {
		case 0:
			pos := scale(u16(args), len(data)+1)
			data = data[:pos]
			intact = min(intact, pos)
			ops = args[min(2, len(args)):]
		case 1:
			if len(data) > 0 {
				pos := scale(u16(args), len(data))
				bit := 0
				if len(args) > 2 {
					bit = int(args[2] % 8)
				}
				data[pos] ^= 1 << bit
				tailOnly = false
			}
			ops = args[min(3, len(args)):]
		case 2:
			n := 0
			if len(args) > 0 {
				n = int(args[0])
				args = args[1:]
			}
			n = min(n, len(args))
			data = append(data, args[:n]...)
			ops = args[n:]
		case 3:
			data = append(data, make([]byte, u16(args)%9000)...)
			ops = args[min(2, len(args)):]
		case 4:
			if len(data) > 0 {
				pos := scale(u16(args), len(data))
				n := 0
				if len(args) > 2 {
					n = int(args[2]) * 32
				}
				clear(data[pos:min(pos+n, len(data))])
				tailOnly = tailOnly && n == 0
			}
			ops = args[min(3, len(args)):]
		}
	}
	return data, intact, tailOnly
}

// FuzzSegmentRecovery writes a segment from a known record list, damages it
// (truncation, bit flips, appended garbage or zeros, zeroed ranges) and opens
// the shard. Recovery must not panic; if the open succeeds, the records read
// back are exactly a prefix of the written ones; if the damage was only
// truncation or appending, the prefix is the longest one left intact.
// When sealed is set, the damaged segment is followed by an empty active
// segment (so it is checked as a sealed segment, whose index is missing).
//
//	go test -run XXX -fuzz FuzzSegmentRecovery -fuzztime 30s ./engines/file
func FuzzSegmentRecovery(f *testing.F) {
	f.Add(uint8(10), uint64(1), false, []byte{})
	f.Add(uint8(10), uint64(2), false, []byte{0, 0x00, 0xc0})                     // truncate at 3/4
	f.Add(uint8(20), uint64(3), false, []byte{1, 0x00, 0x80, 5})                  // flip a bit mid-segment
	f.Add(uint8(5), uint64(4), false, []byte{2, 6, 'g', 'a', 'r', 'b', 'a', 'g'}) // append garbage
	f.Add(uint8(30), uint64(5), false, []byte{3, 0x10, 0x27})                     // append zeros
	f.Add(uint8(30), uint64(6), false, []byte{4, 0x00, 0x40, 128})                // zero a page
	f.Add(uint8(12), uint64(7), false, []byte{0, 0x00, 0x01, 2, 3, 1, 2, 3})      // cut into the header, garbage
	f.Add(uint8(12), uint64(8), true, []byte{})
	f.Add(uint8(12), uint64(9), true, []byte{0, 0x00, 0xf0})
	f.Add(uint8(40), uint64(10), false, []byte{0, 0x00, 0xe0, 3, 0x00, 0x10, 2, 4, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, n uint8, seed uint64, sealed bool, ops []byte) {
		recs := fuzzRecords(int(n)%40, seed)
		data := segHeader{base: 0, created: 1}.encode()
		var ends []int
		for i := range recs {
			data = appendRecord(data, &recs[i], uint64(i), recs[i].Timestamp)
			ends = append(ends, len(data))
		}
		orig := append([]byte(nil), data...)
		data, _, tailOnly := damage(data, ops)
		// The longest prefix of records whose bytes survived (truncating and
		// re-appending zeros can restore a record's trailing zero bytes).
		keep := 0
		for keep < len(ends) && ends[keep] <= len(data) && bytes.Equal(data[:ends[keep]], orig[:ends[keep]]) {
			keep++
		}

		mem := vfs.NewMem()
		dir := "/d/" + dirName("x")
		if err := mem.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		write := func(name string, b []byte) {
			f, err := mem.Create(mem.PathJoin(dir, name), vfs.CategoryShard)
			if err != nil {
				t.Fatal(err)
			}
			f.Write(b)
			f.Close()
		}
		write(nameFile, encodeNameFile("x"))
		write(segFileName(0), data)
		if sealed {
			write(segFileName(uint64(len(recs))), segHeader{base: uint64(len(recs))}.encode())
		}
		e := openEngine(t, mem, "/d", Options{IndexIntervalBytes: 512})
		defer e.Close()
		sh, err := e.Open(bg, "x")
		if err != nil {
			if _, ok := isCorrupt(err); !ok {
				t.Fatalf("open failed with a non-corruption error: %v", err)
			}
			if tailOnly && !sealed {
				t.Fatalf("damage was only truncation/appending, yet open failed: %v", err)
			}
			return
		}
		s := sh.(*Shard)
		got := readAll(t, s)
		if len(got) > len(recs) {
			t.Fatalf("recovered %d records, only %d were written", len(got), len(recs))
		}
		checkSame(t, got, recs[:len(got)])
		if tailOnly && !sealed && len(got) != keep {
			t.Fatalf("recovered %d records, the longest intact prefix has %d", len(got), keep)
		}
		if _, high := s.Watermarks(); high != uint64(len(got)) {
			if !sealed {
				t.Fatalf("high %d after recovering %d records", high, len(got))
			}
		}
		// Appending continues at the recovered end, and recovery is stable.
		if !s.Sealed() {
			_, high := s.Watermarks()
			if off, err := s.Append(bg, []shard.Record{{Timestamp: 1, Value: []byte("after")}}); err != nil || off != high {
				t.Fatalf("append after recovery = %d, %v; want %d", off, err, high)
			}
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		e2 := openEngine(t, mem, "/d", Options{})
		defer e2.Close()
		sh2, err := e2.Open(bg, "x")
		if err != nil {
			t.Fatalf("second open after a successful recovery: %v", err)
		}
		again := readAll(t, sh2)
		if len(again) != len(got)+1 {
			t.Fatalf("second open: %d records, want %d", len(again), len(got)+1)
		}
		checkSame(t, again[:len(got)], got)
	})
}
