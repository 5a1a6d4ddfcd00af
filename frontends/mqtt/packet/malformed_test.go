package packet

import (
	"errors"
	"testing"
)

// pkt builds a packet from its first byte and body parts, computing the
// remaining length.
func pkt(first byte, body ...any) []byte {
	b := hexBytes(body...)
	return append(appendVarint([]byte{first}, uint32(len(b))), b...)
}

// withProps builds a v5 property block: length, then the parts.
func withProps(parts ...any) string {
	b := hexBytes(parts...)
	return string(append(appendVarint(nil, uint32(len(b))), b...))
}

// connect5 is the body of a v5 CONNECT with clean start, keep alive 60, the
// given properties and client id "a".
func connect5(props string) []any {
	return []any{0, 4, "MQTT", 5, 0x02, 0, 60, props, 0, 1, "a"}
}

func connect311(flags int, rest ...any) []any {
	return append([]any{0, 4, "MQTT", 4, flags, 0, 60, 0, 1, "a"}, rest...)
}

// TestMalformed feeds bad input and checks the error class and the reason
// code the server must send (MQTT 5.0 §4.13, Table 2-6), one case per rule.
func TestMalformed(t *testing.T) {
	tests := []struct {
		name  string
		spec  string
		v     Version
		b     []byte
		class error
		code  ReasonCode
	}{
		// Fixed header.
		{"remaining length of five bytes", "§1.5.5, §2.1.4", V311, hexBytes(0xC0, 0xFF, 0xFF, 0xFF, 0xFF, 0x01), ErrMalformed, MalformedPacket},
		{"remaining length not minimal", "[MQTT-1.5.5-1]", V311, hexBytes(0xC0, 0x80, 0x00), ErrMalformed, MalformedPacket},
		{"reserved packet type 0", "§2.1.2", V311, hexBytes(0x00, 0), ErrMalformed, MalformedPacket},
		{"AUTH in v3.1.1", "MQTT 3.1.1 §2.2.1 (type 15 reserved)", V311, hexBytes(0xF0, 0), ErrMalformed, MalformedPacket},
		{"PUBREL flags 0000", "[MQTT-3.6.1-1], [MQTT-2.1.3-1]", V5, pkt(0x60, 0, 1), ErrMalformed, MalformedPacket},
		{"SUBSCRIBE flags 0000", "[MQTT-3.8.1-1]", V5, pkt(0x80, 0, 1, 0, 0, 1, "a", 0), ErrMalformed, MalformedPacket},
		{"UNSUBSCRIBE flags 0000", "[MQTT-3.10.1-1]", V311, pkt(0xA0, 0, 1, 0, 1, "a"), ErrMalformed, MalformedPacket},
		{"PINGREQ flags 0001", "[MQTT-2.1.3-1]", V311, hexBytes(0xC1, 0), ErrMalformed, MalformedPacket},
		{"PUBLISH QoS 3", "[MQTT-3.3.1-4]", V311, pkt(0x36, 0, 1, "t", 0, 1), ErrMalformed, MalformedPacket},
		{"PUBLISH DUP on QoS 0 in v5", "[MQTT-3.3.1-2]", V5, pkt(0x38, 0, 1, "t", 0), ErrMalformed, MalformedPacket},
		{"packet before CONNECT", "[MQTT-3.1.0-1]", 0, hexBytes(0xC0, 0), ErrProtocol, ProtocolError},

		// CONNECT.
		{"protocol level 6", "§3.1.2.2", 0, pkt(0x10, 0, 4, "MQTT", 6, 2, 0, 60, 0, 1, "a"), ErrUnsupportedVersion, UnsupportedProtocolVersion},
		{"MQIsdp level 4", "MQTT 3.1.1 §3.1.2.1", 0, pkt(0x10, 0, 6, "MQIsdp", 4, 2, 0, 60, 0, 1, "a"), ErrUnsupportedVersion, UnsupportedProtocolVersion},
		{"protocol name MQTX", "[MQTT-3.1.2-1]", 0, pkt(0x10, 0, 4, "MQTX", 4, 2, 0, 60, 0, 1, "a"), ErrUnsupportedVersion, UnsupportedProtocolVersion},
		{"CONNECT reserved flag", "[MQTT-3.1.2-3]", 0, pkt(0x10, connect311(0x03)...), ErrMalformed, MalformedPacket},
		{"will QoS 3", "[MQTT-3.1.2-12]", 0, pkt(0x10, connect311(0x1E, 0, 1, "w", 0, 0)...), ErrMalformed, MalformedPacket},
		{"will retain without will", "[MQTT-3.1.2-13]", 0, pkt(0x10, connect311(0x22)...), ErrMalformed, MalformedPacket},
		{"will QoS without will", "[MQTT-3.1.2-11]", 0, pkt(0x10, connect311(0x0A)...), ErrMalformed, MalformedPacket},
		{"3.1.1 password without user name", "MQTT 3.1.1 [MQTT-3.1.2-22]", 0, pkt(0x10, connect311(0x42, 0, 1, "p")...), ErrMalformed, MalformedPacket},
		{"will topic with wildcard", "[MQTT-3.1.3-11]", 0, pkt(0x10, connect311(0x06, 0, 1, "#", 0, 0)...), ErrTopicNameInvalid, TopicNameInvalid},
		{"bytes after CONNECT payload", "§3.1.3", 0, pkt(0x10, connect311(0x02, 0)...), ErrMalformed, MalformedPacket},
		{"client id truncated", "§1.5.4", 0, pkt(0x10, 0, 4, "MQTT", 4, 2, 0, 60, 0, 5, "a"), ErrMalformed, MalformedPacket},

		// UTF-8 Encoded Strings.
		{"ill-formed UTF-8", "[MQTT-1.5.4-1]", 0, pkt(0x10, 0, 4, "MQTT", 4, 2, 0, 60, 0, 2, 0xC3, 0x28), ErrMalformed, MalformedPacket},
		{"UTF-8 surrogate", "[MQTT-1.5.4-1]", 0, pkt(0x10, 0, 4, "MQTT", 4, 2, 0, 60, 0, 3, 0xED, 0xA0, 0x80), ErrMalformed, MalformedPacket},
		{"overlong UTF-8 NUL", "[MQTT-1.5.4-1]", 0, pkt(0x10, 0, 4, "MQTT", 4, 2, 0, 60, 0, 2, 0xC0, 0x80), ErrMalformed, MalformedPacket},
		{"U+0000 in a string", "[MQTT-1.5.4-2]", V311, pkt(0x30, 0, 3, "a", 0, "b"), ErrMalformed, MalformedPacket},
		{"U+0000 after multi-byte rune", "[MQTT-1.5.4-2]", V311, pkt(0x30, 0, 4, "é", 0, "b"), ErrMalformed, MalformedPacket},

		// PUBLISH.
		{"topic name with +", "[MQTT-3.3.2-2]", V311, pkt(0x30, 0, 3, "a/+", "x"), ErrTopicNameInvalid, TopicNameInvalid},
		{"topic name with #", "[MQTT-3.3.2-2]", V5, pkt(0x30, 0, 1, "#", 0), ErrTopicNameInvalid, TopicNameInvalid},
		{"empty topic name in v3", "[MQTT-4.7.3-1]", V311, pkt(0x30, 0, 0, "x"), ErrTopicNameInvalid, TopicNameInvalid},
		{"empty topic without alias in v5", "§3.3.2.1", V5, pkt(0x30, 0, 0, 0), ErrTopicNameInvalid, TopicNameInvalid},
		{"PUBLISH QoS 1 packet id 0", "[MQTT-2.2.1-3]", V311, pkt(0x32, 0, 1, "t", 0, 0), ErrProtocol, ProtocolError},
		{"PUBLISH truncated packet id", "§3.3.2.2", V311, pkt(0x32, 0, 1, "t", 0), ErrMalformed, MalformedPacket},

		// Properties.
		{"duplicate Message Expiry Interval", "§3.3.2.3.3", V5, pkt(0x30, 0, 1, "t", withProps(2, 0, 0, 0, 1, 2, 0, 0, 0, 2)), ErrProtocol, ProtocolError},
		{"Session Expiry in PUBLISH", "§2.2.2.2 Table 2-4", V5, pkt(0x30, 0, 1, "t", withProps(0x11, 0, 0, 0, 1)), ErrProtocol, ProtocolError},
		{"Will Delay outside will", "§3.1.3.2.2", 0, pkt(0x10, connect5(withProps(0x18, 0, 0, 0, 1))...), ErrProtocol, ProtocolError},
		{"unknown property 0x05", "§2.2.2.2", V5, pkt(0x30, 0, 1, "t", withProps(0x05, 0)), ErrMalformed, MalformedPacket},
		{"property length past the end", "§2.2.2.1", V5, pkt(0x30, 0, 1, "t", 9, 1, 1), ErrMalformed, MalformedPacket},
		{"property value past property length", "§2.2.2.1", V5, pkt(0x30, 0, 1, "t", 2, 2, 0, 0, 0, 1), ErrMalformed, MalformedPacket},
		{"Topic Alias 0", "§3.3.2.3.4", V5, pkt(0x30, 0, 0, withProps(0x23, 0, 0)), ErrProtocol, TopicAliasInvalid},
		{"Receive Maximum 0", "§3.1.2.11.3", 0, pkt(0x10, connect5(withProps(0x21, 0, 0))...), ErrProtocol, ProtocolError},
		{"Maximum Packet Size 0", "§3.1.2.11.4", 0, pkt(0x10, connect5(withProps(0x27, 0, 0, 0, 0))...), ErrProtocol, ProtocolError},
		{"Request Problem Information 2", "§3.1.2.11.7", 0, pkt(0x10, connect5(withProps(0x17, 2))...), ErrProtocol, ProtocolError},
		{"Request Response Information twice", "§3.1.2.11.6", 0, pkt(0x10, connect5(withProps(0x19, 1, 0x19, 1))...), ErrProtocol, ProtocolError},
		{"Authentication Data without Method", "§3.1.2.11.10", 0, pkt(0x10, connect5(withProps(0x16, 0, 1, 7))...), ErrProtocol, ProtocolError},
		{"Maximum QoS 2", "§3.2.2.3.4", V5, pkt(0x20, 0, 0, withProps(0x24, 2)), ErrProtocol, ProtocolError},
		{"Payload Format Indicator 2", "§3.3.2.3.2", V5, pkt(0x30, 0, 1, "t", withProps(0x01, 2)), ErrProtocol, ProtocolError},
		{"Response Topic with wildcard", "[MQTT-3.3.2-14]", V5, pkt(0x30, 0, 1, "t", withProps(0x08, 0, 1, "+")), ErrProtocol, ProtocolError},
		{"Subscription Identifier 0", "§3.8.2.1.2", V5, pkt(0x82, 0, 1, withProps(0x0B, 0), 0, 1, "a", 0), ErrProtocol, ProtocolError},
		{"two Subscription Identifiers in SUBSCRIBE", "§3.8.2.1.2", V5, pkt(0x82, 0, 1, withProps(0x0B, 1, 0x0B, 2), 0, 1, "a", 0), ErrProtocol, ProtocolError},
		{"Subscription Identifier of five bytes", "§1.5.5", V5, pkt(0x82, 0, 1, withProps(0x0B, 0xFF, 0xFF, 0xFF, 0xFF, 1), 0, 1, "a", 0), ErrMalformed, MalformedPacket},
		{"user property value truncated", "§1.5.7", V5, pkt(0xE0, 0x80, withProps(0x26, 0, 1, "k", 0, 9)), ErrMalformed, MalformedPacket},

		// Acknowledgements and reason codes.
		{"PUBACK packet id 0", "[MQTT-2.2.1-3]", V5, pkt(0x40, 0, 0), ErrProtocol, ProtocolError},
		{"PUBACK 3.1.1 remaining length 3", "MQTT 3.1.1 §3.4.1", V311, pkt(0x40, 0, 1, 0), ErrMalformed, MalformedPacket},
		{"PUBACK reason 0x04", "§3.4.2.1 Table 2-6", V5, pkt(0x40, 0, 1, 0x04), ErrProtocol, ProtocolError},
		{"PUBREL reason 0x80", "§3.6.2.1", V5, pkt(0x62, 0, 1, 0x80), ErrProtocol, ProtocolError},
		{"DISCONNECT reason 0x84", "§3.14.2.1", V5, pkt(0xE0, 0x84), ErrProtocol, ProtocolError},
		{"DISCONNECT 3.1.1 with a body", "MQTT 3.1.1 §3.14.1", V311, pkt(0xE0, 0), ErrMalformed, MalformedPacket},
		{"CONNACK reason 0x8E", "§3.2.2.2", V5, pkt(0x20, 0, 0x8E, 0), ErrProtocol, ProtocolError},
		{"CONNACK reserved flags", "[MQTT-3.2.2-1]", V5, pkt(0x20, 2, 0, 0), ErrMalformed, MalformedPacket},
		{"CONNACK session present with refusal", "[MQTT-3.2.2-6]", V5, pkt(0x20, 1, 0x87, 0), ErrProtocol, ProtocolError},
		{"CONNACK 3.1.1 return code 6", "MQTT 3.1.1 §3.2.2.3", V311, pkt(0x20, 0, 6), ErrProtocol, ProtocolError},
		{"CONNACK v5 without property length", "§3.2.2.3", V5, pkt(0x20, 0, 0), ErrMalformed, MalformedPacket},
		{"AUTH reason 0x87", "§3.15.2.1", V5, pkt(0xF0, 0x87), ErrProtocol, ProtocolError},
		{"PINGREQ with a body", "§3.12.1", V5, pkt(0xC0, 0), ErrMalformed, MalformedPacket},

		// SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK.
		{"SUBSCRIBE packet id 0", "[MQTT-2.2.1-3]", V311, pkt(0x82, 0, 0, 0, 1, "a", 0), ErrProtocol, ProtocolError},
		{"SUBSCRIBE without filters", "[MQTT-3.8.3-2]", V5, pkt(0x82, 0, 1, 0), ErrProtocol, ProtocolError},
		{"SUBSCRIBE 3.1.1 reserved option bits", "MQTT 3.1.1 [MQTT-3-8.3-4]", V311, pkt(0x82, 0, 1, 0, 1, "a", 0x04), ErrMalformed, MalformedPacket},
		{"SUBSCRIBE QoS 3", "§3.8.3.1", V5, pkt(0x82, 0, 1, 0, 0, 1, "a", 0x03), ErrMalformed, MalformedPacket},
		{"SUBSCRIBE v5 reserved option bits", "[MQTT-3.8.3-5]", V5, pkt(0x82, 0, 1, 0, 0, 1, "a", 0x40), ErrMalformed, MalformedPacket},
		{"SUBSCRIBE retain handling 3", "§3.8.3.1", V5, pkt(0x82, 0, 1, 0, 0, 1, "a", 0x30), ErrProtocol, ProtocolError},
		{"No Local on a shared subscription", "[MQTT-3.8.3-4]", V5, pkt(0x82, 0, 1, 0, 0, 11, "$share/g/a/", 0x04), ErrProtocol, ProtocolError},
		{"SUBSCRIBE options byte missing", "§3.8.3", V311, pkt(0x82, 0, 1, 0, 1, "a"), ErrMalformed, MalformedPacket},
		{"SUBACK 3.1.1 code 0x87", "MQTT 3.1.1 §3.9.3", V311, pkt(0x90, 0, 1, 0x87), ErrProtocol, ProtocolError},
		{"SUBACK v5 code 0x11", "§3.9.3 Table 2-6", V5, pkt(0x90, 0, 1, 0, 0x11), ErrProtocol, ProtocolError},
		{"SUBACK without codes", "§3.9.3", V5, pkt(0x90, 0, 1, 0), ErrProtocol, ProtocolError},
		{"UNSUBSCRIBE without filters", "[MQTT-3.10.3-2]", V311, pkt(0xA2, 0, 1), ErrProtocol, ProtocolError},
		{"UNSUBACK 3.1.1 with a code", "MQTT 3.1.1 §3.11.1", V311, pkt(0xB0, 0, 1, 0), ErrMalformed, MalformedPacket},
		{"UNSUBACK v5 code 0x10", "§3.11.3 Table 2-6", V5, pkt(0xB0, 0, 1, 0, 0x10), ErrProtocol, ProtocolError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, _, err := Decode(tt.b, tt.v)
			if err == nil {
				t.Fatalf("%s: % x decoded as %+v", tt.spec, tt.b, p)
			}
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, tt.class) || e.Code != tt.code || ReasonCodeOf(err) != tt.code {
				t.Fatalf("%s: % x: got %v (code %v), want class %v code %v", tt.spec, tt.b, err, ReasonCodeOf(err), tt.class, tt.code)
			}
			// The error's reason code is one the server may send in
			// DISCONNECT (or CONNACK while connecting), Table 2-6.
			if !e.Code.ValidIn(DISCONNECT) && !e.Code.ValidIn(CONNACK) {
				t.Fatalf("reason code %v cannot be sent", e.Code)
			}
			// Every strict prefix is incomplete, or fails the same way
			// once the header is known: never a different packet.
			for i := range len(tt.b) {
				if q, _, err := Decode(tt.b[:i], tt.v); err == nil {
					t.Fatalf("prefix %d decoded as %+v", i, q)
				}
			}
		})
	}
}

// TestAccepted lists inputs near the rules of TestMalformed that are valid.
func TestAccepted(t *testing.T) {
	tests := []struct {
		name string
		spec string
		v    Version
		b    []byte
	}{
		{"3.1 PUBREL with DUP", "MQTT 3.1 §2.1", V31, pkt(0x6A, 0, 1)},
		{"3.1 SUBSCRIBE with DUP", "MQTT 3.1 §3.8", V31, pkt(0x8A, 0, 1, 0, 1, "a", 1)},
		{"3.1.1 DUP on QoS 0 tolerated", "doc: leniency", V311, pkt(0x38, 0, 1, "t")},
		{"v5 empty topic with Topic Alias", "§3.3.2.3.4", V5, pkt(0x30, 0, 0, withProps(0x23, 0, 1))},
		{"v5 password without user name", "§3.1.2.9", 0, pkt(0x10, 0, 4, "MQTT", 5, 0x42, 0, 60, 0, 0, 1, "a", 0, 1, "p")},
		{"two Subscription Identifiers in PUBLISH", "§3.3.2.3.8", V5, pkt(0x30, 0, 1, "t", withProps(0x0B, 1, 0x0B, 2))},
		{"repeated User Property", "§3.3.2.3.7", V5, pkt(0x30, 0, 1, "t", withProps(0x26, 0, 1, "k", 0, 1, "v", 0x26, 0, 1, "k", 0, 1, "w"))},
		{"PUBACK v5 reason without properties", "§3.4.2.2.1", V5, pkt(0x40, 0, 1, 0x10)},
		{"DISCONNECT v5 reason only", "§3.14.2.2.1", V5, pkt(0xE0, 0x04)},
		{"AUTH v5 reason only", "§3.15.2.2.1", V5, pkt(0xF0, 0x18)},
		{"control characters in a string", "§1.5.4 (SHOULD NOT, not MUST)", V311, pkt(0x30, 0, 2, "a", 0x01)},
		{"invalid topic filter is left to SUBACK", "§3.9.3 (0x8F)", V5, pkt(0x82, 0, 1, 0, 0, 3, "a#b", 0)},
		{"3.1 CONNACK reserved byte", "MQTT 3.1 §3.2", V31, pkt(0x20, 0x7F, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, n, err := Decode(tt.b, tt.v)
			if err != nil || n != len(tt.b) {
				t.Fatalf("%s: % x: %v", tt.spec, tt.b, err)
			}
			// Accepted packets re-encode and decode to the same packet.
			b, err := p.Append(nil, versionOf(p, tt.v))
			if err != nil {
				t.Fatalf("re-encode %+v: %v", p, err)
			}
			q, _, err := Decode(b, tt.v)
			if err != nil || !equal(p, q) {
				t.Fatalf("re-decode: %v\n%+v\n%+v", err, p, q)
			}
		})
	}
}

func versionOf(p Packet, v Version) Version {
	if c, ok := p.(*Connect); ok {
		return c.Version
	}
	return v
}

// TestUnsupportedVersionReturnCode: a v3 client asking for an unknown level
// gets CONNACK return code 0x01 (MQTT 3.1.1 §3.1.2.2 [MQTT-3.1.2-2]); the
// error tells the level when it is 5, so a v5 CONNACK can carry 0x84.
func TestUnsupportedVersionReturnCode(t *testing.T) {
	_, _, err := Decode(pkt(0x10, 0, 4, "MQTT", 7, 2, 0, 60, 0, 1, "a"), 0)
	var e *Error
	if !errors.As(err, &e) {
		t.Fatal(err)
	}
	if rc, ok := e.ReturnCode(); !ok || rc != RefusedProtocolVersion {
		t.Fatalf("return code %v %v", rc, ok)
	}
	_, _, err = Decode(pkt(0x10, 0, 4, "MQTT", 5, 0x01, 0, 60, 0, 0, 1, "a"), 0)
	if !errors.As(err, &e) || e.Version != V5 || e.Code != MalformedPacket {
		t.Fatalf("v5 CONNECT error does not carry version 5: %v", err)
	}
	if _, ok := e.ReturnCode(); ok {
		t.Fatal("malformed CONNECT has a v3 return code")
	}
}

// TestDecoderLimits: the Decoder refuses a second CONNECT [MQTT-3.1.0-2] and
// a packet over MaxPacketSize from its header alone (0x95).
func TestDecoderLimits(t *testing.T) {
	c, _ := (&Connect{Version: V311, ClientID: "a"}).Append(nil, V311)
	var d Decoder
	if _, _, err := d.Decode(c); err != nil || d.Version != V311 {
		t.Fatal(err, d.Version)
	}
	if _, _, err := d.Decode(c); !errors.Is(err, ErrProtocol) {
		t.Fatalf("second CONNECT: %v", err)
	}
	d.MaxPacketSize = 10
	// Only the fixed header of an 11-byte packet is present.
	if _, _, err := d.Decode([]byte{0x30, 9}); !errors.Is(err, ErrPacketTooLarge) || ReasonCodeOf(err) != PacketTooLarge {
		t.Fatalf("too large: %v", err)
	}
	if _, _, err := d.Decode([]byte{0x30, 8}); err != ErrIncomplete {
		t.Fatalf("10-byte packet header: %v", err)
	}
	if ReasonCodeOf(errors.New("io")) != UnspecifiedError {
		t.Fatal("plain error")
	}
}
