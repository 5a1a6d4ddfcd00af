package packet

import "fmt"

// ParseFixedHeader parses the fixed header at the start of b for protocol
// version v (0 before CONNECT) and returns it with its length in bytes. It
// returns ErrIncomplete when b ends inside the header. It checks what the
// header alone can tell (MQTT 5.0 §2.1, MQTT 3.1.1 §2.2):
//
//   - the type is not 0 (reserved) nor AUTH before v5 → ErrMalformed;
//   - before CONNECT only CONNECT may come → ErrProtocol [MQTT-3.1.0-1];
//   - the flags are those Table 2-2 requires → ErrMalformed [MQTT-2.1.3-1];
//     MQTT 3.1 also lets PUBREL, SUBSCRIBE and UNSUBSCRIBE carry DUP;
//   - PUBLISH QoS is not 3 [MQTT-3.3.1-4], and in v5 DUP is not set on
//     QoS 0 [MQTT-3.3.1-2] → ErrMalformed;
//   - the remaining length is at most four bytes, minimally encoded
//     [MQTT-1.5.5-1] → ErrMalformed.
func ParseFixedHeader(b []byte, v Version) (FixedHeader, int, error) {
	if len(b) == 0 {
		return FixedHeader{}, 0, ErrIncomplete
	}
	h := FixedHeader{Type: Type(b[0] >> 4), Flags: b[0] & 0x0F}
	if err := checkHeader(h, v); err != nil {
		return h, 0, err
	}
	rl, n, ok := readVarint(b[1:])
	if !ok {
		return h, 0, newError(ErrMalformed, h.Type, v, "bad remaining length")
	}
	if n == 0 {
		return h, 0, ErrIncomplete
	}
	h.RemainingLength = int(rl)
	return h, 1 + n, nil
}

func checkHeader(h FixedHeader, v Version) error {
	t := h.Type
	if t == 0 || (t == AUTH && v != V5 && v != 0) {
		return newError(ErrMalformed, 0, v, fmt.Sprintf("reserved packet type %d", t))
	}
	if v == 0 && t != CONNECT {
		return newError(ErrProtocol, t, v, "first packet is not CONNECT")
	}
	if t == PUBLISH {
		qos := h.Flags >> 1 & 3
		if qos == 3 {
			return newError(ErrMalformed, t, v, "QoS 3")
		}
		if v == V5 && qos == 0 && h.Flags&0x08 != 0 {
			return newError(ErrMalformed, t, v, "DUP set on QoS 0")
		}
		return nil
	}
	f := h.Flags
	if v == V31 {
		f &^= 0x08 // MQTT 3.1 §2.1: DUP on PUBREL, SUBSCRIBE, UNSUBSCRIBE retries
	}
	if f != requiredFlags[t] {
		return newError(ErrMalformed, t, v, fmt.Sprintf("fixed header flags %04b", h.Flags))
	}
	return nil
}

func newPacket(t Type) Packet {
	switch t {
	case CONNECT:
		return new(Connect)
	case CONNACK:
		return new(Connack)
	case PUBLISH:
		return new(Publish)
	case PUBACK:
		return new(Puback)
	case PUBREC:
		return new(Pubrec)
	case PUBREL:
		return new(Pubrel)
	case PUBCOMP:
		return new(Pubcomp)
	case SUBSCRIBE:
		return new(Subscribe)
	case SUBACK:
		return new(Suback)
	case UNSUBSCRIBE:
		return new(Unsubscribe)
	case UNSUBACK:
		return new(Unsuback)
	case PINGREQ:
		return new(Pingreq)
	case PINGRESP:
		return new(Pingresp)
	case DISCONNECT:
		return new(Disconnect)
	case AUTH:
		return new(Auth)
	}
	return nil
}

// Decode decodes the first packet in b for protocol version v and returns
// it with the number of bytes it took. A CONNECT is decoded whatever v is
// (it carries its own version); any other packet needs a valid v. Decode
// returns ErrIncomplete when b holds only a prefix of a packet, and an
// *Error for bad input. The packet is newly allocated; its []byte fields
// alias b.
func Decode(b []byte, v Version) (Packet, int, error) {
	var d Decoder
	d.Version = v
	d.fresh = true
	return d.decode(b, v == 0 || peekType(b) == CONNECT)
}

func peekType(b []byte) Type {
	if len(b) == 0 {
		return 0
	}
	return Type(b[0] >> 4)
}

// Decoder decodes packets from byte slices for one connection. It reuses
// one packet struct per type and interns topic names, so that decoding a
// PUBLISH does not allocate. The zero Decoder is ready for a server: it
// expects CONNECT first and then speaks that CONNECT's version.
type Decoder struct {
	// Version is the protocol version in force: 0 until a CONNECT is
	// decoded (which sets it); a client sets it to the version it sent.
	Version Version
	// MaxPacketSize limits the size of a packet, fixed header included;
	// 0 means MaxPacketSize (the protocol's own limit).
	MaxPacketSize int

	fresh  bool // allocate a new packet each time (package-level Decode)
	d      decoder
	topics *topicCache // allocated on the first PUBLISH: idle connections have none
	pkts   [16]Packet
}

// Decode decodes the first packet in b and returns it with the number of
// bytes it took, as the package-level Decode does, with these differences:
// the returned packet is reused by the next Decode of the same type, a
// CONNECT after the version is known is ErrProtocol [MQTT-3.1.0-2], and a
// packet larger than MaxPacketSize is ErrPacketTooLarge as soon as its
// fixed header is complete.
func (dc *Decoder) Decode(b []byte) (Packet, int, error) {
	return dc.decode(b, false)
}

func (dc *Decoder) decode(b []byte, connectAnyVersion bool) (Packet, int, error) {
	v := dc.Version
	hv := v
	if connectAnyVersion {
		hv = 0
	}
	h, hn, err := ParseFixedHeader(b, hv)
	if err != nil {
		return nil, 0, err
	}
	if v != 0 && h.Type == CONNECT && !connectAnyVersion {
		return nil, 0, newError(ErrProtocol, CONNECT, v, "second CONNECT")
	}
	max := dc.MaxPacketSize
	if max <= 0 {
		max = MaxPacketSize
	}
	if size := hn + h.RemainingLength; size > max {
		return nil, 0, newError(ErrPacketTooLarge, h.Type, v, fmt.Sprintf("%d bytes, maximum %d", size, max))
	}
	end := hn + h.RemainingLength
	if len(b) < end {
		return nil, 0, ErrIncomplete
	}
	p, err := dc.decodeBody(h, b[hn:end:end])
	if err != nil {
		return nil, 0, err
	}
	return p, end, nil
}

// decodeBody decodes the body of a packet whose fixed header h has passed
// checkHeader.
func (dc *Decoder) decodeBody(h FixedHeader, body []byte) (Packet, error) {
	var p Packet
	if dc.fresh || h.Type == CONNECT {
		// A connection has one CONNECT: keeping it for reuse would only
		// hold its memory.
		p = newPacket(h.Type)
	} else {
		if dc.pkts[h.Type] == nil {
			dc.pkts[h.Type] = newPacket(h.Type)
		}
		p = dc.pkts[h.Type]
		if dc.topics == nil && h.Type == PUBLISH {
			dc.topics = new(topicCache)
		}
		dc.d.topics = dc.topics
	}
	d := &dc.d
	d.reset(body, h.Type, dc.Version)
	p.decode(d, h.Flags)
	if d.err != nil {
		err := d.err
		d.err = nil
		return nil, err
	}
	if c, ok := p.(*Connect); ok {
		dc.Version = c.Version
	}
	return p, nil
}
