// Package packet is the MQTT wire codec: every control packet of MQTT 3.1
// (protocol name "MQIsdp", level 3), 3.1.1 (level 4) and 5.0 (level 5) as
// a typed Go struct, encoded by appending to a []byte and decoded from a
// byte slice (Decode, Decoder) or a stream (Reader). It knows nothing of
// sessions, subscriptions or storage; frontends/mqtt builds the broker on it.
//
// # Use
//
// A server reads with a Reader, which expects CONNECT first and then
// speaks that CONNECT's version:
//
//	r := packet.NewReader(conn, maxPacketSize)
//	w := packet.NewWriter(conn, 0)
//	for {
//		p, err := r.ReadPacket()
//		if err != nil {
//			// v5: send DISCONNECT (or CONNACK) with packet.ReasonCodeOf(err), close.
//			return err
//		}
//		switch p := p.(type) {
//		case *packet.Connect:
//			w.SetVersion(p.Version)
//			w.WritePacket(&packet.Connack{})
//		case *packet.Publish:
//			// p.Payload is valid until the next ReadPacket; p.Clone() to keep it.
//		}
//		w.Flush()
//	}
//
// Encoding is Append(dst, version) on any packet: it appends the whole
// packet, fixed header included, and allocates only to grow dst.
//
// # Fixed header (MQTT 5.0 §2.1, MQTT 3.1.1 §2.2)
//
//	  bit    7   6   5   4   3   2   1   0
//	byte 1  |  packet type  |    flags      |
//	byte 2… | remaining length: 1 to 4 bytes, 7 bits each,  |
//	        | low group first, bit 7 = "more bytes follow"  |
//
//	flags: PUBLISH   DUP | QoS(2 bits) | RETAIN
//	       PUBREL, SUBSCRIBE, UNSUBSCRIBE   0010
//	       every other packet               0000
//
// The remaining length counts the variable header and payload; it is at
// most 268,435,455 (MaxRemainingLength). A packet's size, which Maximum
// Packet Size limits, is the whole packet, fixed header included
// (FixedHeader.Size). In v5 the variable header of most packets ends with
// a property length (a variable byte integer) and the properties, each an
// identifier (Table 2-4, PropertyID) followed by its value.
//
// The numbers that are part of the wire format are the Type, Version,
// ReasonCode, ConnectReturnCode and PropertyID constants, the flag bits of
// the fixed header, CONNECT (§3.1.2.3) and subscription options (§3.8.3.1).
//
// # Errors and reason codes
//
// Bad input gives an *Error; errors.Is tells its class, and its Code is
// the reason code a v5 server sends (in CONNACK while connecting, else in
// DISCONNECT) before it closes that one connection (MQTT 5.0 §4.13). A v3
// server just closes it, except for an unsupported protocol version, which
// gets CONNACK return code 0x01 (Error.ReturnCode).
//
//	class                  code  when
//	ErrMalformed           0x81  the bytes do not parse: remaining length
//	                             over 4 bytes or not minimal (§1.5.5), a
//	                             field past the end, bytes left over,
//	                             ill-formed UTF-8 or U+0000 in a string
//	                             (§1.5.4), reserved bits or wrong fixed-
//	                             header flags (§2.1.3), QoS 3, DUP on QoS 0
//	                             (v5, §3.3.1.1), an unknown property id
//	ErrProtocol            0x82  parses but breaks a rule: a single-valued
//	                             property twice, a property not allowed in
//	                             the packet, a value out of range (Receive
//	                             Maximum 0, Maximum QoS 2, …), packet id 0
//	                             (§2.2.1), a reason code not allowed in the
//	                             packet (Table 2-6), an empty SUBSCRIBE or
//	                             UNSUBSCRIBE, a packet before CONNECT or a
//	                             second CONNECT (§3.1)
//	  (Topic Alias 0)      0x94  ErrProtocol with code Topic Alias invalid
//	                             (§3.3.2.3.4)
//	ErrTopicNameInvalid    0x90  wildcard in a PUBLISH or will topic, or an
//	                             empty topic without a Topic Alias (§4.7)
//	ErrPacketTooLarge      0x95  over the Reader's or Decoder's maximum,
//	                             found from the fixed header alone, before
//	                             the body is read (§3.1.2.11.4)
//	ErrUnsupportedVersion  0x84  CONNECT protocol name/level not spoken
//	                             (§3.1.2.1-2; v3 return code 0x01)
//
// Decoding is strict where the spec says MUST, with three leniencies for
// real clients: MQTT 3.1 may set DUP on PUBREL, SUBSCRIBE and UNSUBSCRIBE
// (3.1 allowed it on retries); DUP on a QoS 0 PUBLISH is malformed only in
// v5 (in v3 it is dropped: Publish.Dup is false); and the payload of a v5 PUBLISH with Payload Format Indicator 1 is
// not checked for UTF-8 (a receiver MAY, §3.3.2.3.2; the broker can, and
// answer 0x99). Topic filters are not validated while decoding because a
// bad one earns its own SUBACK/UNSUBACK code 0x8F rather than a closed
// connection: use ValidTopicFilter. Session-level rules (topic alias
// ranges, receive maximum, client identifier rules) belong to the broker.
//
// Append refuses what the spec forbids a sender (ErrInvalidPacket) but does
// not re-check UTF-8 in strings or topic-name and filter syntax: a broker
// forwards strings it decoded, and a client checks with ValidTopicName and
// ValidTopicFilter before it builds a packet.
//
// # Ownership
//
// Decoding does not copy bytes: Publish.Payload, Connect.Password,
// Will.Payload, Correlation Data and Authentication Data alias the input
// slice (or the Reader's buffer). Strings are copied, except that a
// Decoder (and so a Reader) interns topic names and PUBLISH property
// strings in a small per-connection cache, so repeated topics cost no
// allocation. A Decoder and a Reader reuse one packet struct per type:
// what ReadPacket returns is valid until the next ReadPacket. The
// package-level Decode allocates a new packet each time. Publish.Clone
// makes a copy that owns its memory.
//
// # Properties
//
// Properties is one struct for every packet, with a field per property.
// A single-valued property is sent when its field is non-zero or Set marks
// it present; decoding marks what it saw, so Has tells absent from zero.
// User Properties keep their order and may repeat; Subscription
// Identifiers are variable byte integers, several in PUBLISH, one in
// SUBSCRIBE. Append refuses a property the packet may not carry.
//
// # Files
//
//	types.go      Version, Type, QoS, FixedHeader, Packet
//	reason.go     ReasonCode (Table 2-6) and v3 ConnectReturnCode
//	props.go      PropertyID (Table 2-4) and Properties
//	errors.go     error classes and *Error
//	primitives.go integers, strings, binary data, variable byte integers
//	connect.go    CONNECT, CONNACK
//	publish.go    PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP
//	subscribe.go  SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ,
//	              PINGRESP, DISCONNECT, AUTH
//	topic.go      topic name and filter rules (§4.7, §4.8.2)
//	decode.go     ParseFixedHeader, Decode, Decoder
//	reader.go     Reader and Writer
//
// Spec references are to OASIS MQTT Version 5.0 (2019) and MQTT Version
// 3.1.1 (2014); [MQTT-x.y.z-n] are their normative statement numbers.
package packet
