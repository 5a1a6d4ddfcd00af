package packet

import "strings"

// Subscription is one topic filter of a SUBSCRIBE with its options
// (MQTT 5.0 §3.8.3.1). v3 has only QoS.
type Subscription struct {
	Filter            string
	QoS               QoS  // maximum QoS
	NoLocal           bool // v5: do not send this client's own publications back
	RetainAsPublished bool // v5: keep the RETAIN flag when forwarding
	RetainHandling    byte // v5: 0 send retained, 1 only on new subscription, 2 never
}

// Subscription option bits (MQTT 5.0 §3.8.3.1, Figure 3-21).
const (
	optQoS               = 0x03
	optNoLocal           = 0x04
	optRetainAsPublished = 0x08
	optRetainHandling    = 0x30
	optReserved          = 0xC0
)

// Subscribe is the SUBSCRIBE packet (MQTT 5.0 §3.8, MQTT 3.1.1 §3.8).
// Filters are not validated by decoding (a bad filter earns its own SUBACK
// reason code 0x8F, §3.9.3); use ValidTopicFilter.
type Subscribe struct {
	PacketID      uint16
	Properties    Properties // v5: Subscription Identifier, User Property
	Subscriptions []Subscription
}

// Type returns SUBSCRIBE.
func (*Subscribe) Type() Type { return SUBSCRIBE }

// Append implements Packet.
func (s *Subscribe) Append(dst []byte, v Version) ([]byte, error) {
	if !v.Valid() {
		return dst, invalidf(SUBSCRIBE, "version %v", v)
	}
	if s.PacketID == 0 {
		return dst, invalidf(SUBSCRIBE, "packet identifier 0")
	}
	if len(s.Subscriptions) == 0 {
		return dst, invalidf(SUBSCRIBE, "no subscriptions")
	}
	n := 2
	var m uint64
	var pn int
	if v == V5 {
		var err error
		if m, pn, err = s.Properties.check(SUBSCRIBE); err != nil {
			return dst, err
		}
		n += varintLen(uint32(pn)) + pn
	} else if s.Properties.mask() != 0 {
		return dst, invalidf(SUBSCRIBE, "properties in v3")
	}
	for i := range s.Subscriptions {
		sub := &s.Subscriptions[i]
		if sub.QoS > QoS2 || sub.RetainHandling > 2 || len(sub.Filter) > maxString {
			return dst, invalidf(SUBSCRIBE, "subscription %q: bad QoS, retain handling or length", sub.Filter)
		}
		if v < V5 && (sub.NoLocal || sub.RetainAsPublished || sub.RetainHandling != 0) {
			return dst, invalidf(SUBSCRIBE, "v5 subscription options in v3")
		}
		n += 2 + len(sub.Filter) + 1
	}
	dst = appendHeader(dst, SUBSCRIBE, requiredFlags[SUBSCRIBE], n)
	dst = appendU16(dst, s.PacketID)
	if v == V5 {
		dst = s.Properties.appendProps(dst, m, pn)
	}
	for i := range s.Subscriptions {
		sub := &s.Subscriptions[i]
		opts := byte(sub.QoS) | sub.RetainHandling<<4
		if sub.NoLocal {
			opts |= optNoLocal
		}
		if sub.RetainAsPublished {
			opts |= optRetainAsPublished
		}
		dst = append(appendString(dst, sub.Filter), opts)
	}
	return dst, nil
}

func (s *Subscribe) decode(d *decoder, _ byte) {
	s.PacketID = d.u16("packet identifier")
	s.Subscriptions = s.Subscriptions[:0]
	if d.err == nil && s.PacketID == 0 {
		d.protocol("packet identifier 0") // [MQTT-2.2.1-3]
		return
	}
	if d.v == V5 {
		d.decodeProps(&s.Properties, false)
	} else {
		s.Properties.Reset()
	}
	for d.remaining() > 0 {
		f := d.str("topic filter")
		opts := d.u8("subscription options")
		if d.err != nil {
			return
		}
		sub := Subscription{Filter: f, QoS: QoS(opts & optQoS)}
		if sub.QoS > QoS2 {
			d.malformed("subscription QoS 3") // [MQTT-3-8.3-4] (3.1.1), §3.8.3.1 (v5)
			return
		}
		if d.v == V5 {
			if opts&optReserved != 0 {
				d.malformed("reserved subscription option bits set") // [MQTT-3.8.3-5]
				return
			}
			sub.NoLocal = opts&optNoLocal != 0
			sub.RetainAsPublished = opts&optRetainAsPublished != 0
			sub.RetainHandling = opts & optRetainHandling >> 4
			if sub.RetainHandling == 3 {
				d.protocol("retain handling 3") // §3.8.3.1
				return
			}
			if sub.NoLocal && strings.HasPrefix(f, sharePrefix) {
				d.protocol("No Local on a shared subscription") // [MQTT-3.8.3-4]
				return
			}
		} else if opts&^optQoS != 0 {
			d.malformed("reserved subscription option bits set") // MQTT 3.1.1 [MQTT-3-8.3-4]
			return
		}
		s.Subscriptions = append(s.Subscriptions, sub)
	}
	if d.err == nil && len(s.Subscriptions) == 0 {
		d.protocol("SUBSCRIBE without a topic filter") // [MQTT-3.8.3-2] (v5), [MQTT-3.8.3-3] (3.1.1)
	}
}

// Suback is the SUBACK packet (MQTT 5.0 §3.9, MQTT 3.1.1 §3.9): one reason
// code per subscription, in order. In v3 the codes are 0x00, 0x01, 0x02
// and 0x80 (the granted QoS, or failure).
type Suback struct {
	PacketID    uint16
	Properties  Properties // v5
	ReasonCodes []ReasonCode
}

// Type returns SUBACK.
func (*Suback) Type() Type { return SUBACK }

func validSubackCode(c ReasonCode, v Version) bool {
	if v == V5 {
		return c.ValidIn(SUBACK)
	}
	return c <= GrantedQoS2 || c == UnspecifiedError
}

// Append implements Packet.
func (s *Suback) Append(dst []byte, v Version) ([]byte, error) {
	return appendAckList(dst, v, SUBACK, s.PacketID, &s.Properties, s.ReasonCodes)
}

func appendAckList(dst []byte, v Version, t Type, id uint16, p *Properties, codes []ReasonCode) ([]byte, error) {
	if !v.Valid() {
		return dst, invalidf(t, "version %v", v)
	}
	if id == 0 {
		return dst, invalidf(t, "packet identifier 0")
	}
	n := 2
	var m uint64
	var pn int
	if v == V5 {
		var err error
		if m, pn, err = p.check(t); err != nil {
			return dst, err
		}
		n += varintLen(uint32(pn)) + pn
	} else if p.mask() != 0 {
		return dst, invalidf(t, "properties in v3")
	}
	if t == UNSUBACK && v < V5 {
		if len(codes) != 0 {
			return dst, invalidf(t, "reason codes in v3")
		}
	} else {
		if len(codes) == 0 {
			return dst, invalidf(t, "no reason codes")
		}
		for _, c := range codes {
			if t == SUBACK && !validSubackCode(c, v) || t == UNSUBACK && !c.ValidIn(UNSUBACK) {
				return dst, invalidf(t, "reason code %v", c)
			}
		}
	}
	n += len(codes)
	dst = appendHeader(dst, t, 0, n)
	dst = appendU16(dst, id)
	if v == V5 {
		dst = p.appendProps(dst, m, pn)
	}
	for _, c := range codes {
		dst = append(dst, byte(c))
	}
	return dst, nil
}

func (d *decoder) decodeAckList(id *uint16, p *Properties, codes []ReasonCode) []ReasonCode {
	*id = d.u16("packet identifier")
	codes = codes[:0]
	if d.err == nil && *id == 0 {
		d.protocol("packet identifier 0") // [MQTT-2.2.1-3]
		return codes
	}
	if d.v == V5 {
		d.decodeProps(p, false)
	} else {
		p.Reset()
		if d.t == UNSUBACK {
			if d.remaining() != 0 {
				d.malformed("bytes after the packet identifier") // MQTT 3.1.1 §3.11.1
			}
			return codes
		}
	}
	for d.remaining() > 0 {
		c := ReasonCode(d.u8("reason code"))
		if d.t == SUBACK && !validSubackCode(c, d.v) || d.t == UNSUBACK && !c.ValidIn(UNSUBACK) {
			d.protocol("reason code " + c.String() + " not allowed in " + d.t.String())
			return codes
		}
		codes = append(codes, c)
	}
	if d.err == nil && len(codes) == 0 {
		d.protocol("no reason codes")
	}
	return codes
}

func (s *Suback) decode(d *decoder, _ byte) {
	s.ReasonCodes = d.decodeAckList(&s.PacketID, &s.Properties, s.ReasonCodes)
}

// Unsubscribe is the UNSUBSCRIBE packet (MQTT 5.0 §3.10, MQTT 3.1.1 §3.10).
type Unsubscribe struct {
	PacketID   uint16
	Properties Properties // v5: User Property
	Filters    []string
}

// Type returns UNSUBSCRIBE.
func (*Unsubscribe) Type() Type { return UNSUBSCRIBE }

// Append implements Packet.
func (u *Unsubscribe) Append(dst []byte, v Version) ([]byte, error) {
	if !v.Valid() {
		return dst, invalidf(UNSUBSCRIBE, "version %v", v)
	}
	if u.PacketID == 0 {
		return dst, invalidf(UNSUBSCRIBE, "packet identifier 0")
	}
	if len(u.Filters) == 0 {
		return dst, invalidf(UNSUBSCRIBE, "no topic filters")
	}
	n := 2
	var m uint64
	var pn int
	if v == V5 {
		var err error
		if m, pn, err = u.Properties.check(UNSUBSCRIBE); err != nil {
			return dst, err
		}
		n += varintLen(uint32(pn)) + pn
	} else if u.Properties.mask() != 0 {
		return dst, invalidf(UNSUBSCRIBE, "properties in v3")
	}
	for _, f := range u.Filters {
		if len(f) > maxString {
			return dst, invalidf(UNSUBSCRIBE, "topic filter longer than %d bytes", maxString)
		}
		n += 2 + len(f)
	}
	dst = appendHeader(dst, UNSUBSCRIBE, requiredFlags[UNSUBSCRIBE], n)
	dst = appendU16(dst, u.PacketID)
	if v == V5 {
		dst = u.Properties.appendProps(dst, m, pn)
	}
	for _, f := range u.Filters {
		dst = appendString(dst, f)
	}
	return dst, nil
}

func (u *Unsubscribe) decode(d *decoder, _ byte) {
	u.PacketID = d.u16("packet identifier")
	u.Filters = u.Filters[:0]
	if d.err == nil && u.PacketID == 0 {
		d.protocol("packet identifier 0") // [MQTT-2.2.1-3]
		return
	}
	if d.v == V5 {
		d.decodeProps(&u.Properties, false)
	} else {
		u.Properties.Reset()
	}
	for d.remaining() > 0 {
		f := d.str("topic filter")
		if d.err != nil {
			return
		}
		u.Filters = append(u.Filters, f)
	}
	if d.err == nil && len(u.Filters) == 0 {
		d.protocol("UNSUBSCRIBE without a topic filter") // [MQTT-3.10.3-2]
	}
}

// Unsuback is the UNSUBACK packet (MQTT 5.0 §3.11, MQTT 3.1.1 §3.11). v3
// carries only the packet identifier.
type Unsuback struct {
	PacketID    uint16
	Properties  Properties   // v5
	ReasonCodes []ReasonCode // v5: one per filter, in order
}

// Type returns UNSUBACK.
func (*Unsuback) Type() Type { return UNSUBACK }

// Append implements Packet.
func (u *Unsuback) Append(dst []byte, v Version) ([]byte, error) {
	return appendAckList(dst, v, UNSUBACK, u.PacketID, &u.Properties, u.ReasonCodes)
}

func (u *Unsuback) decode(d *decoder, _ byte) {
	u.ReasonCodes = d.decodeAckList(&u.PacketID, &u.Properties, u.ReasonCodes)
}

// Pingreq is the PINGREQ packet (MQTT 5.0 §3.12): no variable header, no payload.
type Pingreq struct{}

// Pingresp is the PINGRESP packet (MQTT 5.0 §3.13): no variable header, no payload.
type Pingresp struct{}

// Type returns PINGREQ.
func (*Pingreq) Type() Type { return PINGREQ }

// Type returns PINGRESP.
func (*Pingresp) Type() Type { return PINGRESP }

// Append implements Packet.
func (*Pingreq) Append(dst []byte, v Version) ([]byte, error) {
	if !v.Valid() {
		return dst, invalidf(PINGREQ, "version %v", v)
	}
	return append(dst, byte(PINGREQ)<<4, 0), nil
}

// Append implements Packet.
func (*Pingresp) Append(dst []byte, v Version) ([]byte, error) {
	if !v.Valid() {
		return dst, invalidf(PINGRESP, "version %v", v)
	}
	return append(dst, byte(PINGRESP)<<4, 0), nil
}

func (*Pingreq) decode(d *decoder, _ byte)  { d.empty() }
func (*Pingresp) decode(d *decoder, _ byte) { d.empty() }

func (d *decoder) empty() {
	if d.remaining() != 0 {
		d.malformed("non-zero remaining length") // §3.12.1, §3.13.1, MQTT 3.1.1 §3.14.1
	}
}

// Disconnect is the DISCONNECT packet (MQTT 5.0 §3.14, MQTT 3.1.1 §3.14).
// v3 has no fields.
type Disconnect struct {
	ReasonCode ReasonCode // v5
	Properties Properties // v5
}

// Type returns DISCONNECT.
func (*Disconnect) Type() Type { return DISCONNECT }

// Append implements Packet.
func (p *Disconnect) Append(dst []byte, v Version) ([]byte, error) {
	return appendReasonOnly(dst, v, DISCONNECT, p.ReasonCode, &p.Properties)
}

func (p *Disconnect) decode(d *decoder, _ byte) {
	p.ReasonCode = d.decodeReasonOnly(&p.Properties)
}

// Auth is the AUTH packet (MQTT 5.0 §3.15), v5 only.
type Auth struct {
	ReasonCode ReasonCode // Success, ContinueAuthentication or ReAuthenticate
	Properties Properties
}

// Type returns AUTH.
func (*Auth) Type() Type { return AUTH }

// Append implements Packet.
func (p *Auth) Append(dst []byte, v Version) ([]byte, error) {
	if v != V5 {
		return dst, invalidf(AUTH, "AUTH exists only in v5")
	}
	return appendReasonOnly(dst, v, AUTH, p.ReasonCode, &p.Properties)
}

func (p *Auth) decode(d *decoder, _ byte) {
	p.ReasonCode = d.decodeReasonOnly(&p.Properties)
	checkAuth(d, &p.Properties)
}

// appendReasonOnly encodes DISCONNECT and AUTH: in v5 a reason code and
// properties, both omitted when the code is 0x00 and there are no
// properties (§3.14.2.1, §3.15.2.1); the property length is omitted when
// there are no properties (§3.14.2.2.1, §3.15.2.2.1).
func appendReasonOnly(dst []byte, v Version, t Type, c ReasonCode, p *Properties) ([]byte, error) {
	switch v {
	case V31, V311:
		if c != 0 || p.mask() != 0 {
			return dst, invalidf(t, "v5 fields in v3")
		}
		return appendHeader(dst, t, 0, 0), nil
	case V5:
		if !c.ValidIn(t) {
			return dst, invalidf(t, "reason code %v", c)
		}
		m, n, err := p.check(t)
		if err != nil {
			return dst, err
		}
		switch {
		case m == 0 && c == 0:
			return appendHeader(dst, t, 0, 0), nil
		case m == 0:
			return append(appendHeader(dst, t, 0, 1), byte(c)), nil
		}
		dst = appendHeader(dst, t, 0, 1+varintLen(uint32(n))+n)
		dst = append(dst, byte(c))
		return p.appendProps(dst, m, n), nil
	}
	return dst, invalidf(t, "version %v", v)
}

func (d *decoder) decodeReasonOnly(p *Properties) ReasonCode {
	p.Reset()
	if d.v != V5 {
		d.empty() // MQTT 3.1.1 §3.14.1
		return 0
	}
	if d.remaining() == 0 {
		return Success
	}
	c := ReasonCode(d.u8("reason code"))
	if !c.ValidIn(d.t) {
		d.protocol("reason code " + c.String() + " not allowed in " + d.t.String())
		return c
	}
	if d.remaining() > 0 {
		d.decodeProps(p, false)
	}
	if d.remaining() != 0 {
		d.malformed("bytes after the properties")
	}
	return c
}
