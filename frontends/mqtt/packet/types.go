package packet

import "fmt"

// Version is the protocol level byte of CONNECT (MQTT 3.1.1 §3.1.2.2,
// MQTT 5.0 §3.1.2.2). The zero Version means "not negotiated yet": only
// CONNECT can be decoded then, since it carries the version.
type Version byte

// Protocol levels. These numbers are part of the wire format.
const (
	V31  Version = 3 // MQTT 3.1, protocol name "MQIsdp"
	V311 Version = 4 // MQTT 3.1.1, protocol name "MQTT"
	V5   Version = 5 // MQTT 5.0, protocol name "MQTT"
)

// Valid reports whether v is one of V31, V311, V5.
func (v Version) Valid() bool { return v == V31 || v == V311 || v == V5 }

func (v Version) String() string {
	switch v {
	case V31:
		return "3.1"
	case V311:
		return "3.1.1"
	case V5:
		return "5.0"
	case 0:
		return "unknown"
	}
	return fmt.Sprintf("level(%d)", byte(v))
}

// protocolName is the CONNECT protocol name for v (§3.1.2.1).
func (v Version) protocolName() string {
	if v == V31 {
		return "MQIsdp"
	}
	return "MQTT"
}

// Type is the MQTT control packet type, the high nibble of the first fixed
// header byte (MQTT 5.0 §2.1.2, MQTT 3.1.1 §2.2.1).
type Type byte

// Control packet types. These numbers are part of the wire format.
const (
	CONNECT     Type = 1
	CONNACK     Type = 2
	PUBLISH     Type = 3
	PUBACK      Type = 4
	PUBREC      Type = 5
	PUBREL      Type = 6
	PUBCOMP     Type = 7
	SUBSCRIBE   Type = 8
	SUBACK      Type = 9
	UNSUBSCRIBE Type = 10
	UNSUBACK    Type = 11
	PINGREQ     Type = 12
	PINGRESP    Type = 13
	DISCONNECT  Type = 14
	AUTH        Type = 15 // MQTT 5.0 only
)

var typeNames = [16]string{"RESERVED", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC",
	"PUBREL", "PUBCOMP", "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ",
	"PINGRESP", "DISCONNECT", "AUTH"}

func (t Type) String() string {
	if t < 16 {
		return typeNames[t]
	}
	return fmt.Sprintf("Type(%d)", byte(t))
}

// QoS is a quality-of-service level (§4.3). QoS 3 is never valid.
type QoS byte

// QoS levels.
const (
	QoS0 QoS = 0 // at most once
	QoS1 QoS = 1 // at least once
	QoS2 QoS = 2 // exactly once
)

// FixedHeader is the first two to five bytes of every packet
// (MQTT 5.0 §2.1.1): the type, the four flag bits and the remaining length.
type FixedHeader struct {
	Type            Type
	Flags           byte // low nibble of byte 1
	RemainingLength int  // bytes after the fixed header
}

// Size is the length of the whole packet: fixed header plus remaining length.
// It is the "packet size" that Maximum Packet Size limits (MQTT 5.0 §3.1.2.11.4).
func (h FixedHeader) Size() int { return 1 + varintLen(uint32(h.RemainingLength)) + h.RemainingLength }

// MaxRemainingLength is the largest remaining length a four-byte variable
// byte integer can carry, 268,435,455 (MQTT 5.0 §1.5.5, §2.1.4).
const MaxRemainingLength = 268435455

// MaxPacketSize is the largest possible packet: one type byte, four
// remaining-length bytes and MaxRemainingLength.
const MaxPacketSize = 1 + 4 + MaxRemainingLength

// Packet is one decoded control packet. The concrete types are *Connect,
// *Connack, *Publish, *Puback, *Pubrec, *Pubrel, *Pubcomp, *Subscribe,
// *Suback, *Unsubscribe, *Unsuback, *Pingreq, *Pingresp, *Disconnect and
// *Auth.
type Packet interface {
	// Type is the control packet type.
	Type() Type
	// Append appends the packet encoded for protocol version v to dst and
	// returns the extended slice. It allocates only to grow dst. It fails
	// with an error wrapping ErrInvalidPacket when the packet cannot be
	// expressed in v (a v5-only field or packet in v3, QoS 3, a zero packet
	// identifier where one is required, a property not allowed in this
	// packet, a string longer than 65,535 bytes).
	Append(dst []byte, v Version) ([]byte, error)

	// decode parses the body (variable header and payload) into the
	// receiver, overwriting every field.
	decode(d *decoder, flags byte)
}

// requiredFlags are the fixed-header flag bits each packet type must carry
// (MQTT 5.0 §2.1.3 Table 2-2, MQTT 3.1.1 §2.2.2 Table 2.2). PUBLISH is
// checked separately.
var requiredFlags = [16]byte{PUBREL: 0x2, SUBSCRIBE: 0x2, UNSUBSCRIBE: 0x2}
