package packet

import (
	"bytes"
	"fmt"
	"io"
	"testing"
)

func benchPublishes() []struct {
	name string
	v    Version
	p    *Publish
} {
	var out []struct {
		name string
		v    Version
		p    *Publish
	}
	for _, v := range []Version{V311, V5} {
		for _, qos := range []QoS{QoS0, QoS1} {
			for _, size := range []int{64, 1024} {
				p := &Publish{QoS: qos, Topic: "devices/sensor-0042/telemetry", Payload: bytes.Repeat([]byte{'x'}, size)}
				if qos > 0 {
					p.PacketID = 4242
				}
				if v == V5 {
					// A few properties, as a v5 client typically sends.
					p.Properties = Properties{PayloadFormatIndicator: 1, MessageExpiryInterval: 3600,
						ContentType: "application/json", UserProperties: []UserProperty{{"trace", "abc123"}}}
					p.Properties.Set(PropPayloadFormatIndicator)
					p.Properties.Set(PropMessageExpiryInterval)
					p.Properties.Set(PropContentType)
				}
				out = append(out, struct {
					name string
					v    Version
					p    *Publish
				}{fmt.Sprintf("v%v/qos%d/%dB", v, qos, size), v, p})
			}
		}
	}
	return out
}

// BenchmarkPublishDecode decodes PUBLISH with a reusing Decoder: the hot
// path of a broker's read loop. Expected: 0 allocs/op.
func BenchmarkPublishDecode(b *testing.B) {
	for _, c := range benchPublishes() {
		buf, err := c.p.Append(nil, c.v)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(c.name, func(b *testing.B) {
			d := Decoder{Version: c.v}
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := d.Decode(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPublishEncode appends PUBLISH to a reused buffer. Expected: 0
// allocs/op.
func BenchmarkPublishEncode(b *testing.B) {
	for _, c := range benchPublishes() {
		b.Run(c.name, func(b *testing.B) {
			buf := make([]byte, 0, 2048)
			n, _ := c.p.Append(nil, c.v)
			b.SetBytes(int64(len(n)))
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if buf, err = c.p.Append(buf[:0], c.v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// loopReader replays one buffer forever.
type loopReader struct {
	b   []byte
	off int
}

func (l *loopReader) Read(p []byte) (int, error) {
	n := copy(p, l.b[l.off:])
	l.off = (l.off + n) % len(l.b)
	return n, nil
}

// BenchmarkReaderPublish reads PUBLISH packets from a stream through the
// Reader's buffer (64 packets per refill of the source buffer).
func BenchmarkReaderPublish(b *testing.B) {
	for _, c := range benchPublishes() {
		var buf []byte
		for range 64 {
			buf, _ = c.p.Append(buf, c.v)
		}
		b.Run(c.name, func(b *testing.B) {
			r := NewReader(&loopReader{b: buf}, 0)
			r.SetVersion(c.v)
			b.SetBytes(int64(len(buf) / 64))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.ReadPacket(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestPublishDecodeAllocs pins the zero-allocation PUBLISH decode path
// (with a reused Decoder) so a regression fails the test suite, not only a
// benchmark report.
func TestPublishDecodeAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip()
	}
	for _, c := range benchPublishes() {
		buf, _ := c.p.Append(nil, c.v)
		d := Decoder{Version: c.v}
		if a := testing.AllocsPerRun(100, func() { _, _, _ = d.Decode(buf) }); a != 0 {
			t.Errorf("%s: %v allocs per decode", c.name, a)
		}
		r := NewReader(&loopReader{b: buf}, 0)
		r.SetVersion(c.v)
		if a := testing.AllocsPerRun(100, func() { _, _ = r.ReadPacket() }); a != 0 {
			t.Errorf("%s: %v allocs per ReadPacket", c.name, a)
		}
	}
}

var _ io.Reader = (*loopReader)(nil)

// TestTopicCache: repeated strings are interned, a two-way set keeps two
// strings that share a set, and a miss returns the right string.
func TestTopicCache(t *testing.T) {
	var c topicCache
	words := []string{"devices/sensor-0042/telemetry", "devices/sensor-0043/telemetry", "application/json", "trace", "abc123", "a", ""}
	for range 3 {
		for _, w := range words {
			if got := c.intern([]byte(w)); got != w {
				t.Fatalf("intern(%q) = %q", w, got)
			}
		}
	}
	if a := testing.AllocsPerRun(100, func() {
		for _, w := range words[:5] {
			c.intern([]byte(w))
		}
	}); a != 0 {
		t.Errorf("%v allocs for cached strings", a)
	}
	// Many distinct strings: always correct, never stale.
	for i := range 1000 {
		w := fmt.Sprintf("t/%d", i%97)
		if got := c.intern([]byte(w)); got != w {
			t.Fatalf("intern(%q) = %q", w, got)
		}
	}
}
