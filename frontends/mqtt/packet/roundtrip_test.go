package packet

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"
)

// TestRoundTrip encodes random packets of every type in every version and
// decodes them back, with the package-level Decode and with a reusing
// Decoder (MQTT 5.0 §3.1-§3.15, MQTT 3.1.1 §3.1-§3.14).
func TestRoundTrip(t *testing.T) {
	for _, v := range versions {
		for _, typ := range typesFor(v) {
			t.Run(v.String()+"/"+typ.String(), func(t *testing.T) {
				g := newGen(uint64(v)<<8 | uint64(typ))
				dec := Decoder{Version: v}
				for i := range 300 {
					p := g.packet(typ, v)
					b, err := p.Append(nil, v)
					if err != nil {
						t.Fatalf("#%d Append(%+v): %v", i, p, err)
					}
					q, n, err := Decode(b, v)
					if err != nil {
						t.Fatalf("#%d Decode(% x) of %+v: %v", i, b, p, err)
					}
					if n != len(b) {
						t.Fatalf("#%d consumed %d of %d", i, n, len(b))
					}
					if !equal(p, q) {
						t.Fatalf("#%d round trip\n got %+v\nwant %+v\nbytes % x", i, q, p, b)
					}
					if typ == CONNECT {
						dec.Version = 0
					}
					r, n, err := dec.Decode(b)
					if err != nil || n != len(b) || !equal(p, r) {
						t.Fatalf("#%d Decoder: %v, %d, %+v", i, err, n, r)
					}
					// Re-encoding the decoded packet gives the same bytes:
					// the encoding is canonical.
					b2, err := q.Append(nil, v)
					if err != nil || !bytes.Equal(b, b2) {
						t.Fatalf("#%d re-encode: %v\n% x\n% x", i, err, b, b2)
					}
				}
			})
		}
	}
}

// TestAppendAllocs checks that Append allocates only to grow dst.
func TestAppendAllocs(t *testing.T) {
	g := newGen(7)
	for _, v := range versions {
		for _, typ := range typesFor(v) {
			p := g.packet(typ, v)
			buf := make([]byte, 0, 4096)
			if a := testing.AllocsPerRun(50, func() { _, _ = p.Append(buf[:0], v) }); a != 0 {
				t.Errorf("%v %v: %v allocs per Append", v, typ, a)
			}
		}
	}
}

// stream returns n random packets of version v (CONNECT first) and their
// encoding, concatenated.
func stream(g *gen, v Version, n int) ([]Packet, []byte) {
	ps := []Packet{g.packet(CONNECT, v)}
	ts := typesFor(v)[1:]
	for range n {
		ps = append(ps, g.packet(ts[g.r.IntN(len(ts))], v))
	}
	var b []byte
	for _, p := range ps {
		var err error
		if b, err = p.Append(b, v); err != nil {
			panic(err)
		}
	}
	return ps, b
}

// chunkReader returns at most a random number of bytes per Read.
type chunkReader struct {
	r   io.Reader
	rnd *rand.Rand
	max int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if n := 1 + c.rnd.IntN(c.max); len(p) > n {
		p = p[:n]
	}
	return c.r.Read(p)
}

// readAll reads packets with a Reader and compares each, as soon as it is
// read (the Reader reuses packets), with want.
func readAll(t *testing.T, r io.Reader, want []Packet) {
	t.Helper()
	readAllSize(t, NewReader(r, 0), want)
}

func readAllSize(t *testing.T, rd *Reader, want []Packet) {
	t.Helper()
	for i, w := range want {
		p, err := rd.ReadPacket()
		if err != nil {
			t.Fatalf("packet %d (%v): %v", i, w.Type(), err)
		}
		if !equal(p, w) {
			t.Fatalf("packet %d:\n got %+v\nwant %+v", i, p, w)
		}
	}
	if p, err := rd.ReadPacket(); err != io.EOF {
		t.Fatalf("after the last packet: %v, %v; want io.EOF", p, err)
	}
}

// TestReaderSplitDelivery feeds the same stream whole, one byte at a time
// and in random chunks: the Reader returns the same packets (a stream
// parser must not depend on how TCP segments arrive).
func TestReaderSplitDelivery(t *testing.T) {
	for _, v := range versions {
		t.Run(v.String(), func(t *testing.T) {
			g := newGen(uint64(v) + 100)
			want, b := stream(g, v, 300)
			t.Run("whole", func(t *testing.T) { readAll(t, bytes.NewReader(b), want) })
			t.Run("one-byte", func(t *testing.T) { readAll(t, iotest.OneByteReader(bytes.NewReader(b)), want) })
			t.Run("data-err", func(t *testing.T) { readAll(t, iotest.DataErrReader(bytes.NewReader(b)), want) })
			t.Run("tiny-buffer", func(t *testing.T) {
				rnd := rand.New(rand.NewPCG(3, 4))
				readAllSize(t, NewReaderSize(&chunkReader{bytes.NewReader(b), rnd, 40}, 0, 16), want)
			})
			for _, max := range []int{2, 7, 100, 5000} {
				rnd := rand.New(rand.NewPCG(uint64(max), 1))
				readAll(t, &chunkReader{bytes.NewReader(b), rnd, max}, want)
			}
		})
	}
}

// TestReaderLargePacket reads a packet bigger than the initial buffer, then
// small ones, and checks the Reader gives the grown buffer back.
func TestReaderLargePacket(t *testing.T) {
	big := &Publish{Topic: "t", Payload: bytes.Repeat([]byte("x"), 100_000)}
	small := &Publish{Topic: "t", Payload: []byte("y")}
	var b []byte
	b, _ = (&Connect{Version: V311, ClientID: "c"}).Append(b, V311)
	b, _ = big.Append(b, V311)
	b, _ = small.Append(b, V311)
	readAll(t, &chunkReader{bytes.NewReader(b), rand.New(rand.NewPCG(1, 2)), 3000},
		[]Packet{&Connect{Version: V311, ClientID: "c"}, big, small})

	rd := NewReader(bytes.NewReader(b), 0)
	for range 3 {
		if _, err := rd.ReadPacket(); err != nil {
			t.Fatal(err)
		}
	}
	rd.ReadPacket() // io.EOF; compacts
	if cap(rd.buf) > 4*DefaultBufferSize {
		t.Errorf("buffer of %d bytes kept after a large packet", cap(rd.buf))
	}
}

// TestReaderEOF: a stream cut inside a packet is io.ErrUnexpectedEOF, and
// errors are sticky.
func TestReaderEOF(t *testing.T) {
	b, _ := (&Connect{Version: V5, ClientID: "abc"}).Append(nil, V5)
	for cut := 1; cut < len(b); cut++ {
		rd := NewReader(bytes.NewReader(b[:cut]), 0)
		if _, err := rd.ReadPacket(); err != io.ErrUnexpectedEOF {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		if _, err := rd.ReadPacket(); err != io.ErrUnexpectedEOF {
			t.Fatalf("cut at %d: second read %v", cut, err)
		}
	}
	rd := NewReader(bytes.NewReader(nil), 0)
	if _, err := rd.ReadPacket(); err != io.EOF {
		t.Fatalf("empty stream: %v", err)
	}
}

// TestReaderSetsVersion: a server's Reader learns the version from CONNECT
// (MQTT 5.0 §3.1.2.2) and rejects a second CONNECT [MQTT-3.1.0-2].
func TestReaderSetsVersion(t *testing.T) {
	var b []byte
	b, _ = (&Connect{Version: V5, ClientID: "c"}).Append(b, V5)
	b, _ = (&Auth{ReasonCode: ContinueAuthentication}).Append(b, V5)
	b, _ = (&Connect{Version: V5, ClientID: "c"}).Append(b, V5)
	rd := NewReader(bytes.NewReader(b), 0)
	if rd.Version() != 0 {
		t.Fatal("version known before CONNECT")
	}
	if _, err := rd.ReadPacket(); err != nil || rd.Version() != V5 {
		t.Fatalf("CONNECT: %v, version %v", err, rd.Version())
	}
	if p, err := rd.ReadPacket(); err != nil || p.(*Auth).ReasonCode != ContinueAuthentication {
		t.Fatalf("AUTH after v5 CONNECT: %v", err)
	}
	_, err := rd.ReadPacket()
	if !errors.Is(err, ErrProtocol) || ReasonCodeOf(err) != ProtocolError {
		t.Fatalf("second CONNECT: %v", err)
	}
}

// TestReaderTooLarge: a packet over the maximum is refused from its fixed
// header, before its body arrives (MQTT 5.0 §3.1.2.11.4, reason 0x95).
func TestReaderTooLarge(t *testing.T) {
	var b []byte
	b, _ = (&Connect{Version: V5, ClientID: "c"}).Append(b, V5)
	p := &Publish{Topic: "t", Payload: make([]byte, 100)}
	b, _ = p.Append(b, V5)
	size := len(b)
	b = b[:len(b)-50] // the body never fully arrives
	rd := NewReader(bytes.NewReader(b), 100)
	if _, err := rd.ReadPacket(); err != nil {
		t.Fatal(err)
	}
	_, err := rd.ReadPacket()
	var e *Error
	if !errors.As(err, &e) || e.Class != ErrPacketTooLarge || e.Code != PacketTooLarge || e.Type != PUBLISH {
		t.Fatalf("got %v (packet of %d bytes)", err, size)
	}
	// Exactly at the limit is accepted.
	one, _ := (&Publish{Topic: "t", Payload: make([]byte, 100)}).Append(nil, V311)
	rd = NewReader(bytes.NewReader(one), len(one))
	rd.SetVersion(V311)
	if _, err := rd.ReadPacket(); err != nil {
		t.Fatalf("packet of exactly the maximum size: %v", err)
	}
}

// TestWriter: packets are buffered until Flush, and one larger than the
// peer's Maximum Packet Size is refused without writing anything
// [MQTT-3.1.2-25].
func TestWriter(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out, V5)
	if err := w.WritePacket(&Pingresp{}); err != nil {
		t.Fatal(err)
	}
	if out.Len() != 0 || w.Buffered() != 2 {
		t.Fatal("written before Flush")
	}
	w.SetMaxPacketSize(10)
	if err := w.WritePacket(&Publish{Topic: "topic", Payload: []byte("0123456789")}); err != ErrPeerPacketTooLarge {
		t.Fatalf("got %v", err)
	}
	if w.Buffered() != 2 {
		t.Fatal("refused packet left in the buffer")
	}
	if err := w.Flush(); err != nil || !bytes.Equal(out.Bytes(), []byte{0xD0, 0x00}) {
		t.Fatalf("Flush: %v % x", err, out.Bytes())
	}
	if err := w.WritePacket(&Auth{}); err != nil {
		t.Fatal(err)
	}
	w.SetVersion(V311)
	if err := w.WritePacket(&Auth{}); !errors.Is(err, ErrInvalidPacket) {
		t.Fatalf("AUTH in v3.1.1: %v", err)
	}
}

// TestClone: a cloned PUBLISH survives the Reader reusing its buffer.
func TestClone(t *testing.T) {
	var b []byte
	b, _ = (&Connect{Version: V5, ClientID: "c"}).Append(b, V5)
	p1 := &Publish{Topic: "a", Payload: []byte("first"), Properties: Properties{CorrelationData: []byte("x"),
		UserProperties: []UserProperty{{"k", "v"}}}}
	p1.Properties.Set(PropCorrelationData)
	b, _ = p1.Append(b, V5)
	b, _ = (&Publish{Topic: "b", Payload: []byte("2nd!!"), Properties: Properties{CorrelationData: []byte("y"),
		UserProperties: []UserProperty{{"k2", "v2"}}}}).Append(b, V5)
	rd := NewReader(iotest.OneByteReader(bytes.NewReader(b)), 0)
	rd.ReadPacket()
	p, _ := rd.ReadPacket()
	c := p.(*Publish).Clone()
	if _, err := rd.ReadPacket(); err != nil {
		t.Fatal(err)
	}
	if !equal(c, p1) {
		t.Fatalf("clone changed: %+v", c)
	}
}
