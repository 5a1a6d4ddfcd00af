package journal

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/quiremq/quire/shard"
	"github.com/quiremq/quire/shard/shardtest"
)

func randomRecords(rng *rand.Rand, n int) []shard.Record {
	recs := make([]shard.Record, n)
	for i := range recs {
		r := &recs[i]
		r.Timestamp = rng.Int64N(1<<50) - 1<<40
		if rng.IntN(4) > 0 {
			r.Key = make([]byte, rng.IntN(40))
		}
		r.Value = make([]byte, rng.IntN(300))
		for j := range r.Value {
			r.Value[j] = byte(rng.Uint32())
		}
		for range rng.IntN(3) {
			r.Headers = append(r.Headers, shard.Header{Key: "h", Value: []byte{byte(i)}})
		}
	}
	return recs
}

// Entries decode to what was encoded, with offsets first, first+1, ...
func TestEntryRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		recs := randomRecords(rng, 1+rng.IntN(20))
		first, maxTS := rng.Uint64N(1<<40), rng.Int64()
		h, got, err := decodeEntry(encodeEntry(first, maxTS, recs))
		if err != nil {
			t.Fatal(err)
		}
		if h.first != first || h.maxTS != maxTS || int(h.count) != len(recs) {
			t.Fatalf("header %+v, want first %d count %d max ts %d", h, first, len(recs), maxTS)
		}
		for i := range recs {
			recs[i].Offset = first + uint64(i)
			if !shardtest.Equal(got[i], recs[i]) {
				t.Fatalf("record %d: %+v, want %+v", i, got[i], recs[i])
			}
		}
	}
}

// encodeEntryViews leaves in recs exactly what decodeEntry returns for the
// entry, sharing none of the input's buffers.
func TestEntryViews(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for range 200 {
		in := randomRecords(rng, 1+rng.IntN(20))
		recs := append([]shard.Record(nil), in...)
		first, maxTS := rng.Uint64N(1<<40), rng.Int64()
		b := encodeEntryViews(first, maxTS, recs)
		if !bytes.Equal(b, encodeEntry(first, maxTS, in)) {
			t.Fatal("encodeEntryViews and encodeEntry encode differently")
		}
		_, want, err := decodeEntry(b)
		if err != nil {
			t.Fatal(err)
		}
		for i := range in { // the appender reuses its buffers
			clear(in[i].Key)
			clear(in[i].Value)
			for _, h := range in[i].Headers {
				clear(h.Value)
			}
		}
		for i := range want {
			if !shardtest.Equal(recs[i], want[i]) || (recs[i].Headers == nil) != (want[i].Headers == nil) {
				t.Fatalf("record %d: %+v, decoded %+v", i, recs[i], want[i])
			}
		}
	}
}

// Any damage to an entry is an error, never a panic or a wrong record.
func TestEntryDamage(t *testing.T) {
	e := encodeEntry(7, 99, randomRecords(rand.New(rand.NewPCG(3, 4)), 5))
	for i := range e {
		d := bytes.Clone(e)
		d[i] ^= 0x40
		if _, _, err := decodeEntry(d); err == nil {
			t.Fatalf("flipping a bit of byte %d went unnoticed", i)
		}
	}
	for n := range len(e) {
		if _, _, err := decodeEntry(e[:n]); err == nil {
			t.Fatalf("entry cut to %d of %d bytes decoded", n, len(e))
		}
	}
	if _, err := decodeHeader(encodeEntry(math.MaxUint64, 0, make([]shard.Record, 2))); err == nil {
		t.Fatal("an entry whose offsets overflow decoded")
	}
}

// FuzzDecodeEntry: no input panics; whatever decodes re-encodes to bytes
// that decode to the same records (varints need not be minimal, so the
// bytes may differ). The input's CRC is
// set right first, so that the fuzzer explores the record decoder rather
// than the checksum (TestEntryDamage covers that).
func FuzzDecodeEntry(f *testing.F) {
	rng := rand.New(rand.NewPCG(5, 6))
	for range 8 {
		f.Add(encodeEntry(rng.Uint64N(1000), rng.Int64N(1000), randomRecords(rng, 1+rng.IntN(4))))
	}
	f.Add([]byte{formatVersion})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) >= headerSize {
			binary.BigEndian.PutUint32(b[21:], checksum(b))
		}
		h, recs, err := decodeEntry(b)
		if err != nil {
			return
		}
		if len(recs) != int(h.count) {
			t.Fatalf("%d records, header says %d", len(recs), h.count)
		}
		h2, again, err := decodeEntry(encodeEntry(h.first, h.maxTS, recs))
		if err != nil || h2 != h {
			t.Fatalf("re-encoded entry: %+v, %v; want %+v", h2, err, h)
		}
		for i := range recs {
			if !shardtest.Equal(again[i], recs[i]) {
				t.Fatalf("record %d re-encoded as %+v, was %+v", i, again[i], recs[i])
			}
		}
	})
}
