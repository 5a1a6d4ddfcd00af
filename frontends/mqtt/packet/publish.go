package packet

// Publish is the PUBLISH packet (MQTT 5.0 §3.3, MQTT 3.1.1 §3.3).
//
// After decoding, Payload and the binary properties alias the packet
// buffer; see the package doc on ownership, and Clone.
type Publish struct {
	Dup        bool
	QoS        QoS
	Retain     bool
	Topic      string // may be empty in v5 when Properties.TopicAlias is set
	PacketID   uint16 // non-zero for QoS 1 and 2, absent for QoS 0
	Properties Properties
	Payload    []byte
}

// Type returns PUBLISH.
func (*Publish) Type() Type { return PUBLISH }

// Clone returns a deep copy of p that owns all its memory.
func (p *Publish) Clone() *Publish {
	c := *p
	c.Payload = clone(p.Payload)
	c.Properties = p.Properties.clone()
	return &c
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append(make([]byte, 0, len(b)), b...)
}

func (p *Properties) clone() Properties {
	c := *p
	c.CorrelationData = clone(p.CorrelationData)
	c.AuthenticationData = clone(p.AuthenticationData)
	if p.SubscriptionIdentifiers != nil {
		c.SubscriptionIdentifiers = append([]uint32(nil), p.SubscriptionIdentifiers...)
	}
	if p.UserProperties != nil {
		c.UserProperties = append([]UserProperty(nil), p.UserProperties...)
	}
	return c
}

// Append implements Packet.
func (p *Publish) Append(dst []byte, v Version) ([]byte, error) {
	if !v.Valid() {
		return dst, invalidf(PUBLISH, "version %v", v)
	}
	if p.QoS > QoS2 {
		return dst, invalidf(PUBLISH, "QoS %d", p.QoS)
	}
	if len(p.Topic) > maxString {
		return dst, invalidf(PUBLISH, "topic longer than %d bytes", maxString)
	}
	flags := byte(p.QoS) << 1
	if p.Dup && p.QoS == 0 {
		return dst, invalidf(PUBLISH, "DUP on QoS 0") // [MQTT-3.3.1-2]
	}
	if p.Dup {
		flags |= 0x08
	}
	if p.Retain {
		flags |= 0x01
	}
	n := 2 + len(p.Topic) + len(p.Payload)
	if p.QoS > 0 {
		if p.PacketID == 0 {
			return dst, invalidf(PUBLISH, "packet identifier 0 with QoS %d", p.QoS)
		}
		n += 2
	} else if p.PacketID != 0 {
		return dst, invalidf(PUBLISH, "packet identifier with QoS 0")
	}
	var m uint64
	var pn int
	if v == V5 {
		var err error
		if m, pn, err = p.Properties.check(PUBLISH); err != nil {
			return dst, err
		}
		n += varintLen(uint32(pn)) + pn
	} else if p.Properties.mask() != 0 {
		return dst, invalidf(PUBLISH, "properties in v3")
	}
	if n > MaxRemainingLength {
		return dst, invalidf(PUBLISH, "packet longer than %d bytes", MaxRemainingLength)
	}
	dst = appendHeader(dst, PUBLISH, flags, n)
	dst = appendString(dst, p.Topic)
	if p.QoS > 0 {
		dst = appendU16(dst, p.PacketID)
	}
	if v == V5 {
		dst = p.Properties.appendProps(dst, m, pn)
	}
	return append(dst, p.Payload...), nil
}

func (p *Publish) decode(d *decoder, flags byte) {
	p.QoS = QoS(flags >> 1 & 3)
	// DUP on QoS 0 is refused in v5 by ParseFixedHeader and dropped here
	// in v3, where it is tolerated (see the package doc).
	p.Dup = flags&0x08 != 0 && p.QoS > 0
	p.Retain = flags&0x01 != 0
	topic := d.strBytes("topic name")
	p.PacketID = 0
	if p.QoS > 0 {
		p.PacketID = d.u16("packet identifier")
		if d.err == nil && p.PacketID == 0 {
			d.protocol("packet identifier 0") // [MQTT-2.2.1-3]
		}
	}
	if d.v == V5 {
		d.decodeProps(&p.Properties, false)
	} else {
		p.Properties.Reset()
	}
	if d.err != nil {
		return
	}
	switch {
	case len(topic) == 0:
		p.Topic = ""
		if d.v != V5 || !p.Properties.Has(PropTopicAlias) {
			// [MQTT-4.7.3-1]; in v5 an empty topic needs a Topic Alias, §3.3.2.1
			d.fail(ErrTopicNameInvalid, "empty topic name")
			return
		}
	case d.topics != nil:
		p.Topic = d.topics.intern(topic)
	default:
		p.Topic = string(topic)
	}
	for _, c := range topic {
		if c == '+' || c == '#' {
			d.fail(ErrTopicNameInvalid, "wildcard in topic name") // [MQTT-3.3.2-2]
			return
		}
	}
	p.Payload = d.b[d.off:len(d.b):len(d.b)]
	d.off = len(d.b)
}

// ack is the common shape of PUBACK, PUBREC, PUBREL and PUBCOMP
// (MQTT 5.0 §3.4-3.7).
type ack struct {
	PacketID   uint16
	ReasonCode ReasonCode // v5
	Properties Properties // v5
}

// Puback is the PUBACK packet (MQTT 5.0 §3.4, MQTT 3.1.1 §3.4).
type Puback ack

// Pubrec is the PUBREC packet (MQTT 5.0 §3.5, MQTT 3.1.1 §3.5).
type Pubrec ack

// Pubrel is the PUBREL packet (MQTT 5.0 §3.6, MQTT 3.1.1 §3.6).
type Pubrel ack

// Pubcomp is the PUBCOMP packet (MQTT 5.0 §3.7, MQTT 3.1.1 §3.7).
type Pubcomp ack

// Type returns PUBACK.
func (*Puback) Type() Type { return PUBACK }

// Type returns PUBREC.
func (*Pubrec) Type() Type { return PUBREC }

// Type returns PUBREL.
func (*Pubrel) Type() Type { return PUBREL }

// Type returns PUBCOMP.
func (*Pubcomp) Type() Type { return PUBCOMP }

// Append implements Packet.
func (p *Puback) Append(dst []byte, v Version) ([]byte, error) {
	return (*ack)(p).append(dst, v, PUBACK)
}

// Append implements Packet.
func (p *Pubrec) Append(dst []byte, v Version) ([]byte, error) {
	return (*ack)(p).append(dst, v, PUBREC)
}

// Append implements Packet.
func (p *Pubrel) Append(dst []byte, v Version) ([]byte, error) {
	return (*ack)(p).append(dst, v, PUBREL)
}

// Append implements Packet.
func (p *Pubcomp) Append(dst []byte, v Version) ([]byte, error) {
	return (*ack)(p).append(dst, v, PUBCOMP)
}

func (p *Puback) decode(d *decoder, _ byte)  { (*ack)(p).decode(d) }
func (p *Pubrec) decode(d *decoder, _ byte)  { (*ack)(p).decode(d) }
func (p *Pubrel) decode(d *decoder, _ byte)  { (*ack)(p).decode(d) }
func (p *Pubcomp) decode(d *decoder, _ byte) { (*ack)(p).decode(d) }

func (a *ack) append(dst []byte, v Version, t Type) ([]byte, error) {
	if a.PacketID == 0 {
		return dst, invalidf(t, "packet identifier 0")
	}
	switch v {
	case V31, V311:
		if a.ReasonCode != 0 || a.Properties.mask() != 0 {
			return dst, invalidf(t, "v5 fields in v3")
		}
		dst = appendHeader(dst, t, requiredFlags[t], 2)
		return appendU16(dst, a.PacketID), nil
	case V5:
		if !a.ReasonCode.ValidIn(t) {
			return dst, invalidf(t, "reason code %v", a.ReasonCode)
		}
		m, n, err := a.Properties.check(t)
		if err != nil {
			return dst, err
		}
		// MQTT 5.0 §3.4.2.1: the reason code may be omitted when it is 0x00
		// and there are no properties; the property length may be omitted
		// when there are no properties.
		switch {
		case m == 0 && a.ReasonCode == Success:
			dst = appendHeader(dst, t, requiredFlags[t], 2)
			return appendU16(dst, a.PacketID), nil
		case m == 0:
			dst = appendHeader(dst, t, requiredFlags[t], 3)
			return append(appendU16(dst, a.PacketID), byte(a.ReasonCode)), nil
		}
		dst = appendHeader(dst, t, requiredFlags[t], 3+varintLen(uint32(n))+n)
		dst = append(appendU16(dst, a.PacketID), byte(a.ReasonCode))
		return a.Properties.appendProps(dst, m, n), nil
	}
	return dst, invalidf(t, "version %v", v)
}

func (a *ack) decode(d *decoder) {
	a.PacketID = d.u16("packet identifier")
	a.ReasonCode = Success
	a.Properties.Reset()
	if d.err == nil && a.PacketID == 0 {
		d.protocol("packet identifier 0") // [MQTT-2.2.1-3]
		return
	}
	if d.v == V5 && d.remaining() > 0 {
		a.ReasonCode = ReasonCode(d.u8("reason code"))
		if !a.ReasonCode.ValidIn(d.t) {
			d.protocol("reason code " + a.ReasonCode.String() + " not allowed in " + d.t.String())
			return
		}
		if d.remaining() > 0 {
			d.decodeProps(&a.Properties, false)
		}
	}
	if d.remaining() != 0 {
		d.malformed("bytes after the last field") // MQTT 3.1.1 §3.4.1: remaining length 2
	}
}
