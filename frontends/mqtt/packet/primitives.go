package packet

import (
	"encoding/binary"
	"unicode/utf8"
)

// decoder is a cursor over one packet body with a sticky error: after the
// first failure every read returns zero values and the first error stands.
type decoder struct {
	b   []byte
	off int
	err *Error
	v   Version
	t   Type

	topics *topicCache // may be nil: then topic strings are allocated
}

func (d *decoder) reset(b []byte, t Type, v Version) {
	d.b, d.off, d.err, d.t, d.v = b, 0, nil, t, v
}

func (d *decoder) fail(class error, detail string) {
	if d.err == nil {
		d.err = newError(class, d.t, d.v, detail)
	}
}

func (d *decoder) malformed(detail string) { d.fail(ErrMalformed, detail) }
func (d *decoder) protocol(detail string)  { d.fail(ErrProtocol, detail) }

func (d *decoder) remaining() int {
	if d.err != nil {
		return 0
	}
	return len(d.b) - d.off
}

func (d *decoder) take(n int, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.b)-d.off {
		d.malformed(what + " runs past the end of the packet")
		return nil
	}
	s := d.b[d.off : d.off+n : d.off+n]
	d.off += n
	return s
}

func (d *decoder) u8(what string) byte {
	s := d.take(1, what)
	if s == nil {
		return 0
	}
	return s[0]
}

func (d *decoder) u16(what string) uint16 {
	s := d.take(2, what)
	if s == nil {
		return 0
	}
	return binary.BigEndian.Uint16(s)
}

func (d *decoder) u32(what string) uint32 {
	s := d.take(4, what)
	if s == nil {
		return 0
	}
	return binary.BigEndian.Uint32(s)
}

// varint reads a Variable Byte Integer (MQTT 5.0 §1.5.5): at most four
// bytes, in the minimum number of bytes [MQTT-1.5.5-1].
func (d *decoder) varint(what string) uint32 {
	if d.err != nil {
		return 0
	}
	v, n, ok := readVarint(d.b[d.off:])
	switch {
	case n == 0:
		d.malformed(what + " runs past the end of the packet")
		return 0
	case !ok:
		d.malformed(what + " is not a valid variable byte integer")
		return 0
	}
	d.off += n
	return v
}

// binaryData reads Binary Data (MQTT 5.0 §1.5.6): a two-byte length and
// that many bytes. The result aliases the packet buffer.
func (d *decoder) binaryData(what string) []byte {
	n := d.u16(what)
	return d.take(int(n), what)
}

// strBytes reads a UTF-8 Encoded String (MQTT 5.0 §1.5.4) and checks it:
// ill-formed UTF-8 [MQTT-1.5.4-1] and U+0000 [MQTT-1.5.4-2] make the
// packet malformed. The result aliases the packet buffer.
func (d *decoder) strBytes(what string) []byte {
	s := d.binaryData(what)
	if s != nil && !validUTF8(s) {
		d.malformed(what + " is not well-formed UTF-8 without U+0000")
		return nil
	}
	return s
}

func (d *decoder) str(what string) string {
	s := d.strBytes(what)
	if len(s) == 0 {
		return ""
	}
	return string(s)
}

// validUTF8 reports whether s is well-formed UTF-8 (no overlongs, no
// surrogates, nothing above U+10FFFF) and free of U+0000.
func validUTF8(s []byte) bool {
	// Eight ASCII bytes at a time: no high bit set and no zero byte.
	for len(s) >= 8 {
		x := binary.LittleEndian.Uint64(s)
		if x&0x8080808080808080 != 0 || (x-0x0101010101010101)&^x&0x8080808080808080 != 0 {
			break
		}
		s = s[8:]
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == 0 {
			return false
		}
		if c >= utf8.RuneSelf {
			rest := s[i:]
			if !utf8.Valid(rest) {
				return false
			}
			for _, c := range rest {
				if c == 0 {
					return false
				}
			}
			return true
		}
	}
	return true
}

// readVarint decodes a Variable Byte Integer from b. n is 0 when b ends
// before the last byte; ok is false for a fifth continuation byte or a
// non-minimal encoding.
func readVarint(b []byte) (v uint32, n int, ok bool) {
	var shift uint
	for i := 0; i < 4; i++ {
		if i >= len(b) {
			return 0, 0, true
		}
		c := b[i]
		v |= uint32(c&0x7F) << shift
		if c&0x80 == 0 {
			if c == 0 && i > 0 {
				return 0, i + 1, false // non-minimal: trailing zero group
			}
			return v, i + 1, true
		}
		shift += 7
	}
	return 0, 4, false
}

func varintLen(v uint32) int {
	switch {
	case v < 1<<7:
		return 1
	case v < 1<<14:
		return 2
	case v < 1<<21:
		return 3
	}
	return 4
}

func appendVarint(b []byte, v uint32) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func appendU16(b []byte, v uint16) []byte { return append(b, byte(v>>8), byte(v)) }

func appendU32(b []byte, v uint32) []byte {
	return append(b, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

func appendString(b []byte, s string) []byte {
	b = appendU16(b, uint16(len(s)))
	return append(b, s...)
}

func appendBinary(b []byte, s []byte) []byte {
	b = appendU16(b, uint16(len(s)))
	return append(b, s...)
}

// appendHeader appends the fixed header: type and flags, then the
// remaining length (MQTT 5.0 §2.1.1).
func appendHeader(b []byte, t Type, flags byte, remaining int) []byte {
	b = append(b, byte(t)<<4|flags)
	return appendVarint(b, uint32(remaining))
}

// topicCache interns PUBLISH topic names and property strings so that a
// connection publishing to the same few topics decodes them without
// allocating. It is two-way set-associative with LRU replacement in each
// set, and its hash is fixed: a peer that makes its own cache miss only
// costs itself allocations.
type topicCache struct {
	slot [64]string
}

func (c *topicCache) intern(b []byte) string {
	i := cacheHash(b) & uint64(len(c.slot)-1) &^ 1
	if c.slot[i] == string(b) { // the compiler does not allocate for these comparisons
		return c.slot[i]
	}
	if c.slot[i+1] == string(b) {
		s := c.slot[i+1]
		c.slot[i+1], c.slot[i] = c.slot[i], s
		return s
	}
	s := string(b)
	c.slot[i+1], c.slot[i] = c.slot[i], s
	return s
}

// cacheHash mixes b eight bytes at a time.
func cacheHash(b []byte) uint64 {
	const m = 0x9E3779B97F4A7C15
	h := uint64(len(b)) * m
	for len(b) >= 8 {
		h = (h ^ binary.LittleEndian.Uint64(b)) * m
		h ^= h >> 29
		b = b[8:]
	}
	for _, c := range b {
		h = (h ^ uint64(c)) * m
	}
	return h ^ h>>32
}

// maxString is the longest UTF-8 Encoded String or Binary Data field.
const maxString = 65535
