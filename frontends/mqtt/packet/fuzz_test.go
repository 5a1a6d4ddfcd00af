package packet

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
)

// fuzzVersions maps a fuzz byte to the version in force (0: before CONNECT).
var fuzzVersions = [4]Version{0, V31, V311, V5}

func addDecodeSeeds(f *testing.F) {
	for vi, v := range fuzzVersions {
		if v == 0 {
			continue
		}
		g := newGen(uint64(v))
		for _, typ := range typesFor(v) {
			for range 3 {
				b, err := g.packet(typ, v).Append(nil, v)
				if err != nil {
					f.Fatal(err)
				}
				f.Add(b, byte(vi))
			}
		}
	}
	// Hand-built edge cases: the malformed table's shapes.
	f.Add(hexBytes(0xC0, 0xFF, 0xFF, 0xFF, 0xFF, 0x01), byte(2))
	f.Add(pkt(0x30, 0, 0, withProps(0x23, 0, 1)), byte(3))
	f.Add(pkt(0x30, 0, 1, "t", withProps(0x0B, 1, 0x0B, 2, 0x26, 0, 1, "k", 0, 1, "v")), byte(3))
	f.Add(pkt(0x10, connect5(withProps(0x16, 0, 1, 7))...), byte(0))
	f.Add(pkt(0x82, 0, 1, 0, 0, 11, "$share/g/a/", 0x04), byte(3))
}

// FuzzDecode decodes arbitrary bytes as each version. Invariants (STYLE.md
// 8): no panic; an accepted packet consumed at least its header and at most
// the input; it re-encodes, and decoding that encoding gives the same
// packet and re-encodes to the same bytes; a reusing Decoder that has
// decoded other packets before agrees with a fresh decode (no stale
// fields); every error is ErrIncomplete or an *Error whose reason code a
// server may send (MQTT 5.0 §4.13).
func FuzzDecode(f *testing.F) {
	addDecodeSeeds(f)
	// A Decoder per version, primed with one packet of every type so that
	// reused structs hold old values.
	var reused [4]*Decoder
	for vi, v := range fuzzVersions {
		d := &Decoder{}
		if v != 0 {
			g := newGen(99)
			for _, typ := range typesFor(v) {
				d.Version = v
				b, _ := g.packet(typ, v).Append(nil, v)
				if typ == CONNECT {
					d.Version = 0
				}
				if _, _, err := d.Decode(b); err != nil {
					f.Fatal(err)
				}
			}
		}
		reused[vi] = d
	}
	f.Fuzz(func(t *testing.T, data []byte, vb byte) {
		vi := int(vb % 4)
		v := fuzzVersions[vi]
		p, n, err := Decode(data, v)
		if err != nil {
			checkDecodeError(t, err)
			return
		}
		if n < 2 || n > len(data) {
			t.Fatalf("consumed %d of %d", n, len(data))
		}
		ev := versionOf(p, v)
		b, err := p.Append(nil, ev)
		if err != nil {
			t.Fatalf("decoded %+v does not re-encode: %v", p, err)
		}
		q, n2, err := Decode(b, v)
		if err != nil || n2 != len(b) {
			t.Fatalf("re-decode of % x: %v", b, err)
		}
		if !equal(p, q) {
			t.Fatalf("re-decode differs:\n%+v\n%+v", p, q)
		}
		b2, err := q.Append(nil, ev)
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("encoding not stable:\n% x\n% x", b, b2)
		}
		d := reused[vi]
		d.Version = v
		if p.Type() == CONNECT {
			d.Version = 0
		}
		r, n3, err := d.Decode(data)
		if err != nil || n3 != n || !equal(p, r) {
			t.Fatalf("reused Decoder: %v, %d\n%+v\n%+v", err, n3, p, r)
		}
	})
}

func checkDecodeError(t *testing.T, err error) {
	t.Helper()
	if err == ErrIncomplete {
		return
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error of type %T: %v", err, err)
	}
	if !e.Code.ValidIn(DISCONNECT) && !e.Code.ValidIn(CONNACK) {
		t.Fatalf("reason code %v cannot be sent: %v", e.Code, err)
	}
	switch e.Class {
	case ErrMalformed, ErrProtocol, ErrTopicNameInvalid, ErrUnsupportedVersion, ErrPacketTooLarge:
	default:
		t.Fatalf("unknown class: %v", err)
	}
}

// FuzzReader checks split delivery: the same bytes read whole and in chunks
// whose sizes come from seed give the same sequence of packets and the
// same final error.
func FuzzReader(f *testing.F) {
	for _, v := range fuzzVersions[1:] {
		g := newGen(uint64(v) + 7)
		_, b := stream(g, v, 6)
		f.Add(b, uint64(v))
	}
	f.Add([]byte{0x10, 0x80}, uint64(1))
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		whole := readTrace(bytes.NewReader(data))
		rnd := rand.New(rand.NewPCG(seed, seed>>7))
		split := readTrace(&chunkReader{bytes.NewReader(data), rnd, 1 + int(seed%17)})
		if len(whole) != len(split) {
			t.Fatalf("whole read %d items, split %d:\n%q\n%q", len(whole), len(split), whole, split)
		}
		for i := range whole {
			if whole[i] != split[i] {
				t.Fatalf("item %d: whole %q, split %q", i, whole[i], split[i])
			}
		}
	})
}

// readTrace reads packets until an error and records each one's encoding
// (or the error), since the Reader reuses packets.
func readTrace(r io.Reader) []string {
	rd := NewReader(r, 1<<16)
	var out []string
	for {
		p, err := rd.ReadPacket()
		if err != nil {
			return append(out, "error: "+err.Error())
		}
		b, err := p.Append(nil, versionOf(p, rd.Version()))
		out = append(out, fmt.Sprintf("%v % x %v", p.Type(), b, err))
	}
}
