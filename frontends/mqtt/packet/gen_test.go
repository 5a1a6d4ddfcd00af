package packet

import (
	"math/rand/v2"
	"reflect"
	"strings"
)

// gen builds random valid packets: every field the version allows gets a
// random value, every property the packet allows appears at random. A
// property included is also marked with Set, so that a decoded copy (which
// marks what it saw) compares equal with reflect.DeepEqual.
type gen struct{ r *rand.Rand }

func newGen(seed uint64) *gen { return &gen{rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))} }

func (g *gen) bool() bool   { return g.r.IntN(2) == 0 }
func (g *gen) u8() byte     { return byte(g.r.UintN(256)) }
func (g *gen) u16() uint16  { return uint16(g.r.UintN(1 << 16)) }
func (g *gen) u32() uint32  { return g.r.Uint32() }
func (g *gen) id() uint16   { return uint16(1 + g.r.UintN(1<<16-1)) }
func (g *gen) qos() QoS     { return QoS(g.r.IntN(3)) }
func (g *gen) chance() bool { return g.r.IntN(3) == 0 }

var runes = []rune("abcxyz019 /-_.$é€𝄞中+#")

// str returns well-formed UTF-8 without U+0000, sometimes empty, with
// multi-byte runes.
func (g *gen) str(max int) string {
	n := g.r.IntN(max + 1)
	var b strings.Builder
	for range n {
		b.WriteRune(runes[g.r.IntN(len(runes))])
	}
	return b.String()
}

// topic returns a valid topic name (no wildcards, at least one character).
func (g *gen) topic() string {
	for {
		s := strings.NewReplacer("+", "p", "#", "h").Replace(g.str(12))
		if s != "" {
			return s
		}
	}
}

func (g *gen) bytes(max int) []byte {
	b := make([]byte, g.r.IntN(max+1))
	for i := range b {
		b[i] = g.u8()
	}
	return b
}

// props fills random properties allowed in packet type t (0: will).
func (g *gen) props(t Type) Properties {
	var p Properties
	for id, info := range propTable {
		if info.Type == 0 || allowedProps[t]&(1<<id) == 0 || !g.chance() {
			continue
		}
		pid := PropertyID(id)
		switch pid {
		case PropPayloadFormatIndicator:
			p.PayloadFormatIndicator = byte(g.r.IntN(2))
		case PropMessageExpiryInterval:
			p.MessageExpiryInterval = g.u32()
		case PropContentType:
			p.ContentType = g.str(8)
		case PropResponseTopic:
			p.ResponseTopic = g.topic()
		case PropCorrelationData:
			p.CorrelationData = g.bytes(8)
		case PropSubscriptionIdentifier:
			n := 1
			if t == PUBLISH {
				n += g.r.IntN(3)
			}
			for range n {
				p.SubscriptionIdentifiers = append(p.SubscriptionIdentifiers, 1+g.r.Uint32N(MaxRemainingLength))
			}
			continue
		case PropSessionExpiryInterval:
			p.SessionExpiryInterval = g.u32()
		case PropAssignedClientIdentifier:
			p.AssignedClientIdentifier = g.str(8)
		case PropServerKeepAlive:
			p.ServerKeepAlive = g.u16()
		case PropAuthenticationMethod:
			p.AuthenticationMethod = g.str(8)
		case PropAuthenticationData:
			if !p.Has(PropAuthenticationMethod) {
				continue
			}
			p.AuthenticationData = g.bytes(8)
		case PropRequestProblemInformation:
			p.RequestProblemInformation = byte(g.r.IntN(2))
		case PropWillDelayInterval:
			p.WillDelayInterval = g.u32()
		case PropRequestResponseInformation:
			p.RequestResponseInformation = byte(g.r.IntN(2))
		case PropResponseInformation:
			p.ResponseInformation = g.str(8)
		case PropServerReference:
			p.ServerReference = g.str(8)
		case PropReasonString:
			p.ReasonString = g.str(8)
		case PropReceiveMaximum:
			p.ReceiveMaximum = g.id()
		case PropTopicAliasMaximum:
			p.TopicAliasMaximum = g.u16()
		case PropTopicAlias:
			p.TopicAlias = g.id()
		case PropMaximumQoS:
			p.MaximumQoS = byte(g.r.IntN(2))
		case PropRetainAvailable:
			p.RetainAvailable = byte(g.r.IntN(2))
		case PropUserProperty:
			for range 1 + g.r.IntN(3) {
				p.UserProperties = append(p.UserProperties, UserProperty{g.str(5), g.str(5)})
			}
			continue
		case PropMaximumPacketSize:
			p.MaximumPacketSize = 1 + g.r.Uint32N(1<<32-1)
		case PropWildcardSubscriptionAvailable:
			p.WildcardSubscriptionAvailable = byte(g.r.IntN(2))
		case PropSubscriptionIdentifierAvailable:
			p.SubscriptionIdentifierAvailable = byte(g.r.IntN(2))
		case PropSharedSubscriptionAvailable:
			p.SharedSubscriptionAvailable = byte(g.r.IntN(2))
		}
		p.Set(pid)
	}
	return p
}

// reason picks a reason code that Table 2-6 allows in t.
func (g *gen) reason(t Type) ReasonCode {
	var ok []ReasonCode
	for c := range 256 {
		if ReasonCode(c).ValidIn(t) {
			ok = append(ok, ReasonCode(c))
		}
	}
	return ok[g.r.IntN(len(ok))]
}

// packet returns a random valid packet of type t for version v.
func (g *gen) packet(t Type, v Version) Packet {
	v5 := v == V5
	propsFor := func(t Type) Properties {
		if v5 {
			return g.props(t)
		}
		return Properties{}
	}
	switch t {
	case CONNECT:
		c := &Connect{Version: v, CleanStart: g.bool(), KeepAlive: g.u16(), ClientID: g.str(10),
			Properties: propsFor(CONNECT)}
		if g.bool() {
			c.Will = &Will{QoS: g.qos(), Retain: g.bool(), Properties: propsFor(0), Topic: g.topic(), Payload: g.bytes(20)}
		}
		if g.bool() {
			c.HasUsername, c.Username = true, g.str(8)
		}
		if g.bool() && (v5 || c.HasUsername) {
			c.HasPassword, c.Password = true, g.bytes(8)
		}
		return c
	case CONNACK:
		c := &Connack{}
		if v5 {
			c.ReasonCode = g.reason(CONNACK)
			c.Properties = g.props(CONNACK)
		} else {
			c.ReturnCode = ConnectReturnCode(g.r.IntN(6))
		}
		c.SessionPresent = v != V31 && c.ReasonCode == 0 && c.ReturnCode == 0 && g.bool()
		return c
	case PUBLISH:
		p := &Publish{QoS: g.qos(), Retain: g.bool(), Topic: g.topic(), Payload: g.bytes(40), Properties: propsFor(PUBLISH)}
		if p.QoS > 0 {
			p.PacketID = g.id()
			p.Dup = g.bool()
		}
		if v5 && p.Properties.TopicAlias != 0 && g.bool() {
			p.Topic = ""
		}
		return p
	case PUBACK, PUBREC, PUBREL, PUBCOMP:
		a := ack{PacketID: g.id()}
		if v5 {
			a.ReasonCode = g.reason(t)
			a.Properties = g.props(t)
		}
		switch t {
		case PUBACK:
			return (*Puback)(&a)
		case PUBREC:
			return (*Pubrec)(&a)
		case PUBREL:
			return (*Pubrel)(&a)
		}
		return (*Pubcomp)(&a)
	case SUBSCRIBE:
		s := &Subscribe{PacketID: g.id(), Properties: propsFor(SUBSCRIBE)}
		for range 1 + g.r.IntN(4) {
			sub := Subscription{Filter: g.str(10), QoS: g.qos()}
			if v5 {
				sub.NoLocal = g.bool() && !strings.HasPrefix(sub.Filter, sharePrefix)
				sub.RetainAsPublished = g.bool()
				sub.RetainHandling = byte(g.r.IntN(3))
			}
			s.Subscriptions = append(s.Subscriptions, sub)
		}
		return s
	case SUBACK:
		s := &Suback{PacketID: g.id(), Properties: propsFor(SUBACK)}
		for range 1 + g.r.IntN(4) {
			if v5 {
				s.ReasonCodes = append(s.ReasonCodes, g.reason(SUBACK))
			} else {
				s.ReasonCodes = append(s.ReasonCodes, []ReasonCode{0, 1, 2, 0x80}[g.r.IntN(4)])
			}
		}
		return s
	case UNSUBSCRIBE:
		u := &Unsubscribe{PacketID: g.id(), Properties: propsFor(UNSUBSCRIBE)}
		for range 1 + g.r.IntN(4) {
			u.Filters = append(u.Filters, g.str(10))
		}
		return u
	case UNSUBACK:
		u := &Unsuback{PacketID: g.id(), Properties: propsFor(UNSUBACK)}
		if v5 {
			for range 1 + g.r.IntN(4) {
				u.ReasonCodes = append(u.ReasonCodes, g.reason(UNSUBACK))
			}
		}
		return u
	case PINGREQ:
		return &Pingreq{}
	case PINGRESP:
		return &Pingresp{}
	case DISCONNECT:
		d := &Disconnect{}
		if v5 {
			d.ReasonCode = g.reason(DISCONNECT)
			d.Properties = g.props(DISCONNECT)
		}
		return d
	case AUTH:
		return &Auth{ReasonCode: g.reason(AUTH), Properties: g.props(AUTH)}
	}
	panic("unknown type")
}

// typesFor lists the packet types of version v.
func typesFor(v Version) []Type {
	ts := []Type{CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE,
		SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT}
	if v == V5 {
		ts = append(ts, AUTH)
	}
	return ts
}

var versions = []Version{V31, V311, V5}

// equal is reflect.DeepEqual except that a nil slice equals an empty one (a
// reusing Decoder keeps the capacity of the slices it decoded into before)
// and unexported fields are compared too.
func equal(a, b any) bool { return equalValue(reflect.ValueOf(a), reflect.ValueOf(b)) }

func equalValue(a, b reflect.Value) bool {
	if a.IsValid() != b.IsValid() {
		return false
	}
	if !a.IsValid() {
		return true
	}
	if a.Type() != b.Type() {
		return false
	}
	switch a.Kind() {
	case reflect.Pointer, reflect.Interface:
		if a.IsNil() || b.IsNil() {
			return a.IsNil() == b.IsNil()
		}
		return equalValue(a.Elem(), b.Elem())
	case reflect.Struct:
		for i := range a.NumField() {
			if !equalValue(a.Field(i), b.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Slice, reflect.Array:
		if a.Len() != b.Len() {
			return false
		}
		for i := range a.Len() {
			if !equalValue(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	case reflect.String:
		return a.String() == b.String()
	case reflect.Bool:
		return a.Bool() == b.Bool()
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return a.Uint() == b.Uint()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return a.Int() == b.Int()
	}
	panic("equal: unhandled kind " + a.Kind().String())
}
