package packet

import "testing"

// TestReasonCodeTable spot-checks MQTT 5.0 §2.4 Table 2-6 row by row for the
// codes a broker sends most, and the table's shape.
func TestReasonCodeTable(t *testing.T) {
	rows := []struct {
		c       ReasonCode
		name    string
		packets []Type
	}{
		{0x00, "Success", []Type{CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK, AUTH, DISCONNECT, SUBACK}},
		{0x01, "Granted QoS 1", []Type{SUBACK}},
		{0x04, "Disconnect with Will Message", []Type{DISCONNECT}},
		{0x10, "No matching subscribers", []Type{PUBACK, PUBREC}},
		{0x11, "No subscription existed", []Type{UNSUBACK}},
		{0x18, "Continue authentication", []Type{AUTH}},
		{0x19, "Re-authenticate", []Type{AUTH}},
		{0x80, "Unspecified error", []Type{CONNACK, PUBACK, PUBREC, SUBACK, UNSUBACK, DISCONNECT}},
		{0x81, "Malformed Packet", []Type{CONNACK, DISCONNECT}},
		{0x82, "Protocol Error", []Type{CONNACK, DISCONNECT}},
		{0x84, "Unsupported Protocol Version", []Type{CONNACK}},
		{0x8B, "Server shutting down", []Type{DISCONNECT}},
		{0x8E, "Session taken over", []Type{DISCONNECT}},
		{0x8F, "Topic Filter invalid", []Type{SUBACK, UNSUBACK, DISCONNECT}},
		{0x90, "Topic Name invalid", []Type{CONNACK, PUBACK, PUBREC, DISCONNECT}},
		{0x91, "Packet Identifier in use", []Type{PUBACK, PUBREC, SUBACK, UNSUBACK}},
		{0x92, "Packet Identifier not found", []Type{PUBREL, PUBCOMP}},
		{0x95, "Packet too large", []Type{CONNACK, DISCONNECT}},
		{0x97, "Quota exceeded", []Type{CONNACK, PUBACK, PUBREC, SUBACK, DISCONNECT}},
		{0x9E, "Shared Subscriptions not supported", []Type{SUBACK, DISCONNECT}},
		{0xA2, "Wildcard Subscriptions not supported", []Type{SUBACK, DISCONNECT}},
	}
	for _, r := range rows {
		if r.c.String() != r.name {
			t.Errorf("0x%02X named %q, want %q", byte(r.c), r.c.String(), r.name)
		}
		want := map[Type]bool{}
		for _, p := range r.packets {
			want[p] = true
		}
		for typ := Type(1); typ <= AUTH; typ++ {
			if r.c.ValidIn(typ) != want[typ] {
				t.Errorf("%v in %v: %v, want %v", r.c, typ, r.c.ValidIn(typ), want[typ])
			}
		}
	}
	if len(reasonTable) != 43 {
		t.Errorf("%d reason codes, Table 2-6 has 43 values", len(reasonTable))
	}
	for c := range 256 {
		_, known := reasonTable[ReasonCode(c)]
		if !known && reasonValid[c] != 0 {
			t.Errorf("0x%02X valid somewhere but not in the table", c)
		}
	}
	if NormalDisconnection.Name(DISCONNECT) != "Normal disconnection" || GrantedQoS0.Name(SUBACK) != "Granted QoS 0" {
		t.Error("names of 0x00")
	}
	if !PacketTooLarge.IsError() || NoMatchingSubscribers.IsError() {
		t.Error("IsError")
	}
	// MQTT 3.1.1 §3.2.2.3 Table 3.1.
	if RefusedProtocolVersion != 1 || RefusedNotAuthorized != 5 || ReturnCodeFor(UnsupportedProtocolVersion) != RefusedProtocolVersion ||
		ReturnCodeFor(BadUserNameOrPassword) != RefusedBadUsernameOrPassword || ReturnCodeFor(Success) != ConnectionAccepted {
		t.Error("v3 return codes")
	}
}

// TestPropertyTable checks MQTT 5.0 §2.2.2.2 Table 2-4: identifiers, types
// and the packets each may appear in.
func TestPropertyTable(t *testing.T) {
	n := 0
	for id := range 256 {
		if _, ok := PropertyID(id).Info(); ok {
			n++
		}
	}
	if n != 27 {
		t.Errorf("%d properties, Table 2-4 has 27", n)
	}
	rows := []struct {
		id   PropertyID
		typ  PropertyType
		in   []Type
		will bool
	}{
		{0x01, TypeByte, []Type{PUBLISH}, true},
		{0x02, TypeFourByte, []Type{PUBLISH}, true},
		{0x09, TypeBinary, []Type{PUBLISH}, true},
		{0x0B, TypeVarint, []Type{PUBLISH, SUBSCRIBE}, false},
		{0x11, TypeFourByte, []Type{CONNECT, CONNACK, DISCONNECT}, false},
		{0x13, TypeTwoByte, []Type{CONNACK}, false},
		{0x15, TypeString, []Type{CONNECT, CONNACK, AUTH}, false},
		{0x18, TypeFourByte, nil, true},
		{0x1C, TypeString, []Type{CONNACK, DISCONNECT}, false},
		{0x1F, TypeString, []Type{CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT, AUTH}, false},
		{0x23, TypeTwoByte, []Type{PUBLISH}, false},
		{0x26, TypeStringPair, []Type{CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT, AUTH}, true},
		{0x27, TypeFourByte, []Type{CONNECT, CONNACK}, false},
		{0x2A, TypeByte, []Type{CONNACK}, false},
	}
	for _, r := range rows {
		info, _ := r.id.Info()
		if info.Type != r.typ || info.InWill() != r.will {
			t.Errorf("%v: type %v will %v", r.id, info.Type, info.InWill())
		}
		want := map[Type]bool{}
		for _, p := range r.in {
			want[p] = true
		}
		for typ := Type(1); typ <= AUTH; typ++ {
			if info.In(typ) != want[typ] {
				t.Errorf("%v in %v: %v", r.id, typ, info.In(typ))
			}
		}
	}
	if _, ok := PropertyID(0x05).Info(); ok {
		t.Error("0x05 is not a property")
	}
	// PINGREQ, PINGRESP carry no properties at all.
	if allowedProps[PINGREQ] != 0 || allowedProps[PINGRESP] != 0 {
		t.Error("properties allowed in PINGREQ/PINGRESP")
	}
}

// TestAppendRefuses: Append will not produce a packet the spec forbids.
func TestAppendRefuses(t *testing.T) {
	sessionExpiry := Properties{SessionExpiryInterval: 1}
	tests := []struct {
		name string
		p    Packet
		v    Version
	}{
		{"property not allowed", &Publish{Topic: "t", Properties: sessionExpiry}, V5},
		{"properties in v3", &Publish{Topic: "t", Properties: Properties{ContentType: "x"}}, V311},
		{"QoS 3", &Publish{Topic: "t", QoS: 3, PacketID: 1}, V311},
		{"QoS 1 without packet id", &Publish{Topic: "t", QoS: 1}, V311},
		{"packet id on QoS 0", &Publish{Topic: "t", PacketID: 1}, V311},
		{"DUP on QoS 0", &Publish{Topic: "t", Dup: true}, V311},
		{"AUTH in v3", &Auth{}, V311},
		{"PUBACK id 0", &Puback{}, V5},
		{"PUBACK reason 0x8E", &Puback{PacketID: 1, ReasonCode: SessionTakenOver}, V5},
		{"reason code in v3", &Puback{PacketID: 1, ReasonCode: 0x80}, V311},
		{"v5 subscription options in v3", &Subscribe{PacketID: 1, Subscriptions: []Subscription{{Filter: "a", NoLocal: true}}}, V311},
		{"empty SUBSCRIBE", &Subscribe{PacketID: 1}, V5},
		{"two subscription ids in SUBSCRIBE", &Subscribe{PacketID: 1, Properties: Properties{SubscriptionIdentifiers: []uint32{1, 2}},
			Subscriptions: []Subscription{{Filter: "a"}}}, V5},
		{"subscription id 0", &Publish{Topic: "t", Properties: Properties{SubscriptionIdentifiers: []uint32{0}}}, V5},
		{"password without user name in v3", &Connect{Version: V311, HasPassword: true}, V311},
		{"CONNECT version mismatch", &Connect{Version: V311}, V5},
		{"session present in 3.1", &Connack{SessionPresent: true}, V31},
		{"return code 6", &Connack{ReturnCode: 6}, V311},
		{"UNSUBACK codes in v3", &Unsuback{PacketID: 1, ReasonCodes: []ReasonCode{0}}, V311},
		{"SUBACK v3 code 0x87", &Suback{PacketID: 1, ReasonCodes: []ReasonCode{0x87}}, V311},
		{"topic too long", &Publish{Topic: string(make([]byte, 65536))}, V311},
		{"unknown version", &Pingreq{}, 6},
	}
	for _, tt := range tests {
		if b, err := tt.p.Append([]byte("keep"), tt.v); err == nil {
			t.Errorf("%s: encoded % x", tt.name, b)
		} else if string(b) != "keep" {
			t.Errorf("%s: dst changed on error", tt.name)
		}
	}
}

// TestTopicRules checks MQTT 5.0 §4.7 (topic names and filters) and §4.8.2
// (shared subscriptions).
func TestTopicRules(t *testing.T) {
	names := map[string]bool{
		"a": true, "a/b": true, "/": true, "a//b": true, "$SYS/x": true, "é/中": true, " ": true,
		"": false, "a/+": false, "#": false, "a/b#": false, "a\x00b": false, "\xff": false,
	}
	for s, want := range names {
		if ValidTopicName(s) != want {
			t.Errorf("ValidTopicName(%q) = %v", s, !want)
		}
	}
	filters := map[string]bool{
		"#": true, "+": true, "a/#": true, "a/+/b": true, "+/+": true, "/+": true, "a/+/#": true, "sport/tennis/player1/#": true,
		"": false, "a#": false, "a/#/b": false, "a+": false, "a/+b": false, "+a/b": false, "a/b#": false, "\x00": false,
		"$share/g/a/#": true, "$share/g/+": true, "$share//a": false, "$share/g": false, "$share/g/": false,
		"$share/g+/a": false, "$share/g/a#": false,
	}
	for s, want := range filters {
		if ValidTopicFilter(s) != want {
			t.Errorf("ValidTopicFilter(%q) = %v", s, !want)
		}
	}
	if g, f, ok := SharedSubscription("$share/grp/a/b/#"); !ok || g != "grp" || f != "a/b/#" {
		t.Errorf("SharedSubscription = %q %q %v", g, f, ok)
	}
	if _, _, ok := SharedSubscription("a/b"); ok {
		t.Error("a/b is not shared")
	}
}

// TestPropertiesPresence: Set sends an explicit zero, Has tells absent from
// zero after decoding (MQTT 5.0 §3.3.2.3.3: Message Expiry Interval absent
// means "does not expire").
func TestPropertiesPresence(t *testing.T) {
	p := &Publish{Topic: "t"}
	p.Properties.Set(PropMessageExpiryInterval)
	b, err := p.Append(nil, V5)
	if err != nil {
		t.Fatal(err)
	}
	q, _, err := Decode(b, V5)
	if err != nil {
		t.Fatal(err)
	}
	pp := &q.(*Publish).Properties
	if !pp.Has(PropMessageExpiryInterval) || pp.MessageExpiryInterval != 0 || pp.Has(PropContentType) {
		t.Fatalf("presence lost: %+v", pp)
	}
	pp.Reset()
	if pp.Has(PropMessageExpiryInterval) {
		t.Fatal("Reset kept presence")
	}
}
