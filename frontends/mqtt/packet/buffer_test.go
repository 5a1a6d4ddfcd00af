package packet

import (
	"bytes"
	"io"
	"testing"
)

// countingWriter counts Write calls.
type countingWriter struct {
	bytes.Buffer
	writes int
}

func (c *countingWriter) Write(b []byte) (int, error) {
	c.writes++
	return c.Buffer.Write(b)
}

// TestWriterBatch: packets are written in one Write per Flush until the
// buffer holds FlushSize bytes, and an idle Writer holds no buffer.
func TestWriterBatch(t *testing.T) {
	var out countingWriter
	w := NewWriter(&out, V311)
	payload := make([]byte, 1024)
	n := 0
	for w.Buffered() < FlushSize-2048 {
		if err := w.WritePacket(&Publish{Topic: "t", QoS: QoS1, PacketID: 1, Payload: payload}); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if out.writes != 0 {
		t.Fatalf("%d writes before Flush", out.writes)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if out.writes != 1 || w.buf != nil {
		t.Fatalf("%d packets: %d writes, buffer kept: %v", n, out.writes, w.buf != nil)
	}
	for range 2 * n {
		if err := w.WritePacket(&Publish{Topic: "t", Payload: payload}); err != nil {
			t.Fatal(err)
		}
	}
	if out.writes != 2 {
		t.Fatalf("buffer past FlushSize: %d writes, want 2", out.writes)
	}
	w.Flush()
	rd := NewReader(&out.Buffer, 0)
	rd.SetVersion(V311)
	for i := range 3 * n {
		p, err := rd.ReadPacket()
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		if pp, ok := p.(*Publish); !ok || len(pp.Payload) != len(payload) {
			t.Fatalf("packet %d: %+v", i, p)
		}
	}
}

// TestReaderReady: Ready reports whether a whole packet is buffered.
func TestReaderReady(t *testing.T) {
	var b []byte
	b, _ = (&Pingreq{}).Append(b, V311)
	b, _ = (&Publish{Topic: "a", Payload: []byte("hello")}).Append(b, V311)
	var in bytes.Buffer
	rd := NewReader(&in, 0)
	rd.SetVersion(V311)
	if rd.Ready() {
		t.Fatal("ready with nothing read")
	}
	in.Write(b[:len(b)-1]) // the PUBLISH lacks its last byte
	if _, err := rd.ReadPacket(); err != nil {
		t.Fatal(err)
	}
	if rd.Ready() {
		t.Fatal("ready with half a PUBLISH")
	}
	in.Write(b[len(b)-1:])
	if _, err := rd.ReadPacket(); err != nil {
		t.Fatal(err)
	}
	if rd.Ready() {
		t.Fatal("ready after the last packet")
	}
	in.Write([]byte{0x00, 0x00}) // reserved type 0: bad input is "ready"
	rd2 := NewReader(&in, 0)
	rd2.SetVersion(V311)
	if rd2.Ready() {
		t.Fatal("ready before reading")
	}
}

// TestReaderBurst: a burst of packets larger than the small buffer, of
// packets small or not, is read into a pooled buffer, which is given back
// once consumed, leaving the small one.
func TestReaderBurst(t *testing.T) {
	for _, size := range []int{1000, 60} {
		var in bytes.Buffer
		payload := make([]byte, size)
		const n = 40
		for i := range n {
			payload[0] = byte(i)
			b, _ := (&Publish{Topic: "t", Payload: payload}).Append(nil, V311)
			in.Write(b)
		}
		rd := NewReaderSize(&in, 0, 512)
		rd.SetVersion(V311)
		sawPooled := false
		for i := range n {
			p, err := rd.ReadPacket()
			if err != nil {
				t.Fatalf("%d B, packet %d: %v", size, i, err)
			}
			if pp := p.(*Publish); len(pp.Payload) != len(payload) || pp.Payload[0] != byte(i) {
				t.Fatalf("%d B, packet %d: payload %d bytes, first %d", size, i, len(pp.Payload), pp.Payload[0])
			}
			sawPooled = sawPooled || rd.pooled
		}
		if !sawPooled {
			t.Fatalf("%d B: the burst was not read into a pooled buffer", size)
		}
		if _, err := rd.ReadPacket(); err != io.EOF {
			t.Fatalf("end: %v", err)
		}
		if rd.pooled || cap(rd.buf) > 512 || cap(rd.small) != 512 {
			t.Fatalf("%d B after the burst: pooled %v, buffer %d", size, rd.pooled, cap(rd.buf))
		}
	}
}
