package packet

import (
	"errors"
	"fmt"
)

// Error classes. Every error this package returns for bad input is an *Error
// whose class is one of these; test with errors.Is, never by message.
var (
	// ErrMalformed is returned when a packet cannot be parsed as the spec
	// lays it out: bad remaining length, truncated field, ill-formed UTF-8
	// or U+0000 in a string, reserved bits set, wrong fixed-header flags,
	// QoS 3, an unknown property identifier, bytes left over.
	// Reason code 0x81 Malformed Packet (MQTT 5.0 §1.5.4, §2.1.3, §4.13).
	ErrMalformed = errors.New("mqtt: malformed packet")

	// ErrProtocol is returned when a packet parses but breaks a rule of the
	// spec: a duplicated single-valued property, a property not allowed in
	// this packet, an out-of-range property value, a zero packet identifier
	// where one is required, a reason code not allowed in this packet, an
	// empty SUBSCRIBE or UNSUBSCRIBE, a packet before CONNECT.
	// Reason code 0x82 Protocol Error (MQTT 5.0 §4.13).
	ErrProtocol = errors.New("mqtt: protocol error")

	// ErrPacketTooLarge is returned when a packet's size (fixed header
	// included) exceeds the reader's maximum, before its body is read.
	// Reason code 0x95 Packet too large (MQTT 5.0 §3.1.2.11.4).
	ErrPacketTooLarge = errors.New("mqtt: packet too large")

	// ErrUnsupportedVersion is returned for a CONNECT whose protocol name
	// or level is not one this package speaks. Reason code 0x84
	// Unsupported Protocol Version in v5; v3 return code 0x01
	// (MQTT 3.1.1 §3.1.2.2, MQTT 5.0 §3.1.2.2).
	ErrUnsupportedVersion = errors.New("mqtt: unsupported protocol version")

	// ErrTopicNameInvalid is returned for a PUBLISH (or will) topic name
	// with a wildcard character, or empty without a topic alias.
	// Reason code 0x90 Topic Name invalid (MQTT 5.0 §3.3.2.1, §4.7.3).
	ErrTopicNameInvalid = errors.New("mqtt: topic name invalid")

	// ErrInvalidPacket is returned by Append when the packet's fields
	// cannot be encoded for the requested version. It is a caller bug,
	// never a peer's fault, and has no reason code of its own.
	ErrInvalidPacket = errors.New("mqtt: packet cannot be encoded")

	// ErrIncomplete is returned by Decoder.Decode when the buffer holds
	// only a prefix of a packet: read more bytes and call again.
	ErrIncomplete = errors.New("mqtt: incomplete packet")
)

// Error describes bad input: which packet, which class, and the reason code
// a v5 server sends in CONNACK or DISCONNECT before closing the connection.
type Error struct {
	Class   error      // one of the Err* class sentinels
	Code    ReasonCode // the reason code to send (v5)
	Type    Type       // packet type being decoded, 0 if not yet known
	Version Version    // protocol version in force, 0 before CONNECT
	Detail  string     // what was wrong, for logs
}

func (e *Error) Error() string {
	s := e.Class.Error()
	if e.Type != 0 {
		s += " in " + e.Type.String()
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

// Unwrap returns the class, so errors.Is(err, ErrMalformed) works.
func (e *Error) Unwrap() error { return e.Class }

// ReturnCode is the v3 CONNACK return code for a failed CONNECT, and ok is
// false when v3 has no CONNACK for this error and the server just closes
// the connection (MQTT 3.1.1 §3.1.4, §4.8).
func (e *Error) ReturnCode() (code ConnectReturnCode, ok bool) {
	if e.Class == ErrUnsupportedVersion {
		return RefusedProtocolVersion, true
	}
	return 0, false
}

// ReasonCodeOf is the v5 reason code to send for err: the code of an *Error
// in its chain, 0x95 for ErrPacketTooLarge and so on, and 0x80 Unspecified
// error for anything else (I/O errors included).
func ReasonCodeOf(err error) ReasonCode {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return UnspecifiedError
}

func classCode(class error) ReasonCode {
	switch class {
	case ErrMalformed:
		return MalformedPacket
	case ErrProtocol:
		return ProtocolError
	case ErrPacketTooLarge:
		return PacketTooLarge
	case ErrUnsupportedVersion:
		return UnsupportedProtocolVersion
	case ErrTopicNameInvalid:
		return TopicNameInvalid
	}
	return UnspecifiedError
}

func newError(class error, t Type, v Version, detail string) *Error {
	return &Error{Class: class, Code: classCode(class), Type: t, Version: v, Detail: detail}
}

func invalidf(t Type, format string, args ...any) error {
	return &Error{Class: ErrInvalidPacket, Code: UnspecifiedError, Type: t, Detail: fmt.Sprintf(format, args...)}
}
