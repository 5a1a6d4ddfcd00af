package packet

import (
	"bytes"
	"testing"
)

func hexBytes(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch p := p.(type) {
		case int:
			b = append(b, byte(p))
		case string:
			b = append(b, p...)
		}
	}
	return b
}

// TestGolden checks encodings built by hand from the spec's figures, both
// ways: Append gives these bytes and Decode gives this packet.
func TestGolden(t *testing.T) {
	pfi := Properties{PayloadFormatIndicator: 1, MessageExpiryInterval: 30}
	pfi.Set(PropPayloadFormatIndicator)
	pfi.Set(PropMessageExpiryInterval)
	sessionExpiry0 := Properties{}
	sessionExpiry0.Set(PropSessionExpiryInterval)
	tests := []struct {
		name string
		v    Version
		p    Packet
		b    []byte
	}{
		{
			// MQTT 3.1.1 §3.1.2 Figures 3.2-3.6: protocol name "MQTT", level 4,
			// flags with Clean Session, keep alive 60, client id "a".
			"CONNECT 3.1.1 minimal", V311,
			&Connect{Version: V311, CleanStart: true, KeepAlive: 60, ClientID: "a"},
			hexBytes(0x10, 13, 0, 4, "MQTT", 4, 0x02, 0, 60, 0, 1, "a"),
		},
		{
			// MQTT 3.1 §3.1: protocol name "MQIsdp", version 3.
			"CONNECT 3.1 minimal", V31,
			&Connect{Version: V31, CleanStart: true, KeepAlive: 60, ClientID: "a"},
			hexBytes(0x10, 15, 0, 6, "MQIsdp", 3, 0x02, 0, 60, 0, 1, "a"),
		},
		{
			// MQTT 5.0 §3.1.2.12 Figure 3-8 shape: level 5, property length 0.
			"CONNECT 5.0 minimal", V5,
			&Connect{Version: V5, CleanStart: true, KeepAlive: 60, ClientID: "a"},
			hexBytes(0x10, 14, 0, 4, "MQTT", 5, 0x02, 0, 60, 0, 0, 1, "a"),
		},
		{
			// MQTT 3.1.1 §3.1.2.3: user name and password flags, will QoS 1
			// retained; payload order client id, will topic, will message,
			// user name, password (§3.1.3).
			"CONNECT 3.1.1 full", V311,
			&Connect{Version: V311, KeepAlive: 10, ClientID: "c",
				Will:        &Will{QoS: QoS1, Retain: true, Topic: "w", Payload: []byte("bye")},
				HasUsername: true, Username: "u", HasPassword: true, Password: []byte("p")},
			hexBytes(0x10, 27, 0, 4, "MQTT", 4, 0xEC, 0, 10, 0, 1, "c", 0, 1, "w", 0, 3, "bye", 0, 1, "u", 0, 1, "p"),
		},
		{
			// MQTT 3.1.1 §3.2: session present, return code 0.
			"CONNACK 3.1.1 session present", V311,
			&Connack{SessionPresent: true}, hexBytes(0x20, 2, 1, 0),
		},
		{
			"CONNACK 3.1.1 not authorized", V311,
			&Connack{ReturnCode: RefusedNotAuthorized}, hexBytes(0x20, 2, 0, 5),
		},
		{
			// MQTT 5.0 §3.2.2: flags, reason code, property length.
			"CONNACK 5.0 bad user name", V5,
			&Connack{ReasonCode: BadUserNameOrPassword}, hexBytes(0x20, 3, 0, 0x86, 0),
		},
		{
			// MQTT 5.0 §3.3: QoS 1 (flags 0010), topic "a/b", packet id 10,
			// properties Payload Format Indicator 1 and Message Expiry 30.
			"PUBLISH 5.0 QoS 1 with properties", V5,
			&Publish{QoS: QoS1, Topic: "a/b", PacketID: 10, Properties: pfi, Payload: []byte("hi")},
			hexBytes(0x32, 17, 0, 3, "a/b", 0, 10, 7, 0x01, 1, 0x02, 0, 0, 0, 30, "hi"),
		},
		{
			// MQTT 3.1.1 §3.3.2: topic name example "a/b", QoS 0 has no packet id.
			"PUBLISH 3.1.1 QoS 0 retained", V311,
			&Publish{Retain: true, Topic: "a/b", Payload: []byte("x")},
			hexBytes(0x31, 6, 0, 3, "a/b", "x"),
		},
		{
			"PUBLISH 3.1.1 QoS 2 DUP", V311,
			&Publish{Dup: true, QoS: QoS2, Topic: "t", PacketID: 0x1234, Payload: []byte{}},
			hexBytes(0x3C, 5, 0, 1, "t", 0x12, 0x34),
		},
		{
			// MQTT 5.0 §3.4.2.1: reason code and properties omitted when 0x00
			// with no properties.
			"PUBACK 5.0 short", V5, &Puback{PacketID: 10}, hexBytes(0x40, 2, 0, 10),
		},
		{
			"PUBREC 5.0 no matching subscribers", V5,
			&Pubrec{PacketID: 10, ReasonCode: NoMatchingSubscribers}, hexBytes(0x50, 3, 0, 10, 0x10),
		},
		{
			// MQTT 3.1.1 §3.6.1: PUBREL flags 0010.
			"PUBREL 3.1.1", V311, &Pubrel{PacketID: 1}, hexBytes(0x62, 2, 0, 1),
		},
		{
			"PUBCOMP 5.0 with reason string", V5,
			&Pubcomp{PacketID: 1, ReasonCode: PacketIdentifierNotFound, Properties: Properties{ReasonString: "gone"}},
			hexBytes(0x70, 11, 0, 1, 0x92, 7, 0x1F, 0, 4, "gone"),
		},
		{
			// MQTT 3.1.1 §3.8.3 Figure 3.22 style: filter "a/b" QoS 1.
			"SUBSCRIBE 3.1.1", V311,
			&Subscribe{PacketID: 1, Subscriptions: []Subscription{{Filter: "a/b", QoS: QoS1}}},
			hexBytes(0x82, 8, 0, 1, 0, 3, "a/b", 1),
		},
		{
			// MQTT 5.0 §3.8.2.1.2, §3.8.3.1: Subscription Identifier 300
			// (varint AC 02), options QoS 2 | No Local | RAP | retain handling 2.
			"SUBSCRIBE 5.0 options", V5,
			&Subscribe{PacketID: 2, Properties: Properties{SubscriptionIdentifiers: []uint32{300}},
				Subscriptions: []Subscription{{Filter: "s/#", QoS: QoS2, NoLocal: true, RetainAsPublished: true, RetainHandling: 2}}},
			hexBytes(0x82, 12, 0, 2, 3, 0x0B, 0xAC, 0x02, 0, 3, "s/#", 0x2E),
		},
		{
			// MQTT 3.1.1 §3.9.3 Figure 3.26: granted QoS 0, 2 and failure.
			"SUBACK 3.1.1", V311,
			&Suback{PacketID: 1, ReasonCodes: []ReasonCode{0, 2, 0x80}}, hexBytes(0x90, 5, 0, 1, 0, 2, 0x80),
		},
		{
			"UNSUBSCRIBE 3.1.1", V311,
			&Unsubscribe{PacketID: 1, Filters: []string{"a", "b/+"}}, hexBytes(0xA2, 10, 0, 1, 0, 1, "a", 0, 3, "b/+"),
		},
		{
			"UNSUBACK 3.1.1", V311, &Unsuback{PacketID: 7}, hexBytes(0xB0, 2, 0, 7),
		},
		{
			"UNSUBACK 5.0", V5,
			&Unsuback{PacketID: 7, ReasonCodes: []ReasonCode{Success, NoSubscriptionExisted}}, hexBytes(0xB0, 5, 0, 7, 0, 0, 0x11),
		},
		{"PINGREQ", V311, &Pingreq{}, hexBytes(0xC0, 0)},
		{"PINGRESP", V5, &Pingresp{}, hexBytes(0xD0, 0)},
		{"DISCONNECT 3.1.1", V311, &Disconnect{}, hexBytes(0xE0, 0)},
		{
			// MQTT 5.0 §3.14.2.1: reason code only, property length omitted.
			"DISCONNECT 5.0 session taken over", V5, &Disconnect{ReasonCode: SessionTakenOver}, hexBytes(0xE0, 1, 0x8E),
		},
		{
			// MQTT 5.0 §3.14.2.2.2: an explicit Session Expiry Interval 0 is sent.
			"DISCONNECT 5.0 session expiry 0", V5,
			&Disconnect{Properties: sessionExpiry0}, hexBytes(0xE0, 7, 0, 5, 0x11, 0, 0, 0, 0),
		},
		{
			// MQTT 5.0 §3.15.2: continue authentication with method and data.
			"AUTH 5.0", V5,
			&Auth{ReasonCode: ContinueAuthentication, Properties: Properties{AuthenticationMethod: "m", AuthenticationData: []byte{1}}},
			hexBytes(0xF0, 10, 0x18, 8, 0x15, 0, 1, "m", 0x16, 0, 1, 1),
		},
		{"AUTH 5.0 success short", V5, &Auth{}, hexBytes(0xF0, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.p.Append(nil, tt.v)
			if err != nil || !bytes.Equal(b, tt.b) {
				t.Fatalf("Append: %v\n got % x\nwant % x", err, b, tt.b)
			}
			p, n, err := Decode(tt.b, tt.v)
			if err != nil || n != len(tt.b) {
				t.Fatalf("Decode: %v, %d", err, n)
			}
			// Decoding marks present properties; mark the expected ones too.
			if pp := props(p); pp != nil {
				want := props(tt.p)
				want.present = want.mask() &^ (1<<PropUserProperty | 1<<PropSubscriptionIdentifier)
			}
			if !equal(p, tt.p) {
				t.Fatalf("Decode:\n got %+v\nwant %+v", p, tt.p)
			}
		})
	}
}

// props returns the properties of p, or nil.
func props(p Packet) *Properties {
	switch p := p.(type) {
	case *Connect:
		return &p.Properties
	case *Connack:
		return &p.Properties
	case *Publish:
		return &p.Properties
	case *Puback:
		return &p.Properties
	case *Pubrec:
		return &p.Properties
	case *Pubrel:
		return &p.Properties
	case *Pubcomp:
		return &p.Properties
	case *Subscribe:
		return &p.Properties
	case *Suback:
		return &p.Properties
	case *Unsubscribe:
		return &p.Properties
	case *Unsuback:
		return &p.Properties
	case *Disconnect:
		return &p.Properties
	case *Auth:
		return &p.Properties
	}
	return nil
}

// TestVarint checks the Variable Byte Integer examples of MQTT 5.0 §1.5.5
// Table 1-1 and MQTT 3.1.1 §2.2.3 Table 2.4.
func TestVarint(t *testing.T) {
	tests := []struct {
		v uint32
		b []byte
	}{
		{0, []byte{0x00}},
		{127, []byte{0x7F}},
		{128, []byte{0x80, 0x01}},
		{16383, []byte{0xFF, 0x7F}},
		{16384, []byte{0x80, 0x80, 0x01}},
		{2097151, []byte{0xFF, 0xFF, 0x7F}},
		{2097152, []byte{0x80, 0x80, 0x80, 0x01}},
		{268435455, []byte{0xFF, 0xFF, 0xFF, 0x7F}},
	}
	for _, tt := range tests {
		if b := appendVarint(nil, tt.v); !bytes.Equal(b, tt.b) || varintLen(tt.v) != len(b) {
			t.Errorf("appendVarint(%d) = % x", tt.v, b)
		}
		v, n, ok := readVarint(tt.b)
		if v != tt.v || n != len(tt.b) || !ok {
			t.Errorf("readVarint(% x) = %d, %d, %v", tt.b, v, n, ok)
		}
	}
	// A fifth byte, and non-minimal encodings [MQTT-1.5.5-1], are refused.
	for _, b := range [][]byte{{0xFF, 0xFF, 0xFF, 0xFF, 0x01}, {0x80, 0x00}, {0xFF, 0x80, 0x00}} {
		if _, _, ok := readVarint(b); ok {
			t.Errorf("readVarint(% x) accepted", b)
		}
	}
	if _, n, _ := readVarint([]byte{0x80, 0x80}); n != 0 {
		t.Error("truncated varint not reported as incomplete")
	}
}
