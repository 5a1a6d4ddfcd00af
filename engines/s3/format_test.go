package s3

import (
	"bytes"
	"testing"

	"github.com/quiremq/quire/shard"
)

func sampleRecords() []shard.Record {
	return []shard.Record{
		{Timestamp: 5, Key: []byte("k"), Value: []byte("v")},
		{Timestamp: -3, Value: bytes.Repeat([]byte{7}, 300), Headers: []shard.Header{{Key: "h", Value: []byte("x")}, {Key: "e"}}},
		{Timestamp: 1 << 60},
	}
}

func TestFormatRoundTrip(t *testing.T) {
	recs := sampleRecords()
	obj, maxTS := encodeObject(42, recs)
	if maxTS != 1<<60 {
		t.Fatalf("maxTS = %d", maxTS)
	}
	got, err := decodeObject(obj, 42, len(recs))
	if err != nil {
		t.Fatal(err)
	}
	for i := range recs {
		want := recs[i]
		want.Offset = 42 + uint64(i)
		g := got[i]
		if g.Offset != want.Offset || g.Timestamp != want.Timestamp || !bytes.Equal(g.Key, want.Key) ||
			!bytes.Equal(g.Value, want.Value) || len(g.Headers) != len(want.Headers) {
			t.Fatalf("record %d: got %+v, want %+v", i, g, want)
		}
		for j := range want.Headers {
			if g.Headers[j].Key != want.Headers[j].Key || !bytes.Equal(g.Headers[j].Value, want.Headers[j].Value) {
				t.Fatalf("record %d header %d differs", i, j)
			}
		}
	}
	// Every single-byte change and every truncation is detected.
	for i := range obj {
		bad := bytes.Clone(obj)
		bad[i] ^= 0x40
		if _, err := decodeObject(bad, 42, len(recs)); err == nil {
			t.Fatalf("flipped byte %d not detected", i)
		}
	}
	for n := range len(obj) {
		if _, err := decodeObject(obj[:n], 42, len(recs)); err == nil {
			t.Fatalf("truncation to %d bytes not detected", n)
		}
	}
	if _, err := decodeObject(obj, 43, len(recs)); err == nil {
		t.Fatal("wrong first offset not detected")
	}
	if _, err := decodeObject(obj, 42, len(recs)+1); err == nil {
		t.Fatal("wrong count not detected")
	}
}

// FuzzDecodeObject: no input panics, and whatever decodes re-encodes to the
// same bytes.
func FuzzDecodeObject(f *testing.F) {
	obj, _ := encodeObject(7, sampleRecords())
	f.Add(obj, uint64(7), 3)
	f.Add(obj[:40], uint64(7), 3)
	f.Fuzz(func(t *testing.T, b []byte, first uint64, count int) {
		if count < 0 || count > 1<<16 {
			return
		}
		recs, err := decodeObject(b, first, count)
		if err != nil || count == 0 {
			return
		}
		again, _ := encodeObject(first, recs)
		if !bytes.Equal(again, b) {
			t.Fatalf("decoded object re-encodes differently")
		}
	})
}
