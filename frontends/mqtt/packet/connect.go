package packet

import "strings"

// Connect is the CONNECT packet (MQTT 5.0 §3.1, MQTT 3.1.1 §3.1, MQTT 3.1
// §3.1). Version selects the protocol name and level written; Append's
// version argument must equal it.
type Connect struct {
	Version    Version // protocol level: V31 ("MQIsdp"), V311 or V5 ("MQTT")
	CleanStart bool    // Clean Session in v3
	KeepAlive  uint16  // seconds
	Properties Properties
	ClientID   string
	Will       *Will // nil when the Will Flag is 0

	HasUsername bool
	Username    string
	HasPassword bool   // v3 requires HasUsername too [MQTT-3.1.2-22]
	Password    []byte // aliases the packet buffer after decoding
}

// Will is the will message of a CONNECT (MQTT 5.0 §3.1.2.5, §3.1.3.2-4).
type Will struct {
	QoS        QoS
	Retain     bool
	Properties Properties // v5 will properties
	Topic      string
	Payload    []byte // aliases the packet buffer after decoding
}

// Connect flag bits (MQTT 5.0 §3.1.2.3, Figure 3-4).
const (
	flagUsername   = 0x80
	flagPassword   = 0x40
	flagWillRetain = 0x20
	flagWillQoS    = 0x18
	flagWill       = 0x04
	flagCleanStart = 0x02
	flagReserved   = 0x01
)

// Type returns CONNECT.
func (*Connect) Type() Type { return CONNECT }

// Append implements Packet.
func (c *Connect) Append(dst []byte, v Version) ([]byte, error) {
	if !v.Valid() || c.Version != v {
		return dst, invalidf(CONNECT, "version %v does not match CONNECT version %v", v, c.Version)
	}
	var flags byte
	if c.CleanStart {
		flags |= flagCleanStart
	}
	if c.HasUsername {
		flags |= flagUsername
	}
	if c.HasPassword {
		if v < V5 && !c.HasUsername {
			return dst, invalidf(CONNECT, "password without user name in v3")
		}
		flags |= flagPassword
	}
	if !c.HasUsername && c.Username != "" || !c.HasPassword && c.Password != nil {
		return dst, invalidf(CONNECT, "user name or password set without its flag")
	}
	if len(c.ClientID) > maxString || len(c.Username) > maxString || len(c.Password) > maxString {
		return dst, invalidf(CONNECT, "field longer than %d bytes", maxString)
	}
	name := v.protocolName()
	n := 2 + len(name) + 1 + 1 + 2 + 2 + len(c.ClientID)
	var pm, wm uint64
	var pn, wn int
	var err error
	if v == V5 {
		if pm, pn, err = c.Properties.check(CONNECT); err != nil {
			return dst, err
		}
		n += varintLen(uint32(pn)) + pn
	} else if c.Properties.mask() != 0 {
		return dst, invalidf(CONNECT, "properties in v3")
	}
	if w := c.Will; w != nil {
		if w.QoS > QoS2 {
			return dst, invalidf(CONNECT, "will QoS %d", w.QoS)
		}
		if len(w.Topic) > maxString || len(w.Payload) > maxString {
			return dst, invalidf(CONNECT, "will field longer than %d bytes", maxString)
		}
		flags |= flagWill | byte(w.QoS)<<3
		if w.Retain {
			flags |= flagWillRetain
		}
		if v == V5 {
			if wm, wn, err = w.Properties.check(0); err != nil {
				return dst, err
			}
			n += varintLen(uint32(wn)) + wn
		} else if w.Properties.mask() != 0 {
			return dst, invalidf(CONNECT, "will properties in v3")
		}
		n += 2 + len(w.Topic) + 2 + len(w.Payload)
	}
	if c.HasUsername {
		n += 2 + len(c.Username)
	}
	if c.HasPassword {
		n += 2 + len(c.Password)
	}
	dst = appendHeader(dst, CONNECT, 0, n)
	dst = appendString(dst, name)
	dst = append(dst, byte(v), flags)
	dst = appendU16(dst, c.KeepAlive)
	if v == V5 {
		dst = c.Properties.appendProps(dst, pm, pn)
	}
	dst = appendString(dst, c.ClientID)
	if w := c.Will; w != nil {
		if v == V5 {
			dst = w.Properties.appendProps(dst, wm, wn)
		}
		dst = appendString(dst, w.Topic)
		dst = appendBinary(dst, w.Payload)
	}
	if c.HasUsername {
		dst = appendString(dst, c.Username)
	}
	if c.HasPassword {
		dst = appendBinary(dst, c.Password)
	}
	return dst, nil
}

func (c *Connect) decode(d *decoder, _ byte) {
	name := d.strBytes("protocol name")
	level := Version(d.u8("protocol level"))
	if d.err != nil {
		return
	}
	switch {
	case string(name) == "MQTT" && (level == V311 || level == V5),
		string(name) == "MQIsdp" && level == V31:
		d.v = level
	default:
		// MQTT 3.1.1 §3.1.2.1-2, MQTT 5.0 §3.1.2.1-2: CONNACK 0x01 (v3) or
		// 0x84 (v5), then close.
		if level == V5 {
			d.v = V5
		}
		d.fail(ErrUnsupportedVersion, "protocol "+strings.ToValidUTF8(string(name), "?")+" level "+Version(level).String())
		return
	}
	v := level
	flags := d.u8("connect flags")
	keepAlive := d.u16("keep alive")
	if d.err != nil {
		return
	}
	*c = Connect{Version: v, KeepAlive: keepAlive, Properties: c.Properties}
	if flags&flagReserved != 0 {
		d.malformed("reserved connect flag set") // [MQTT-3.1.2-3]
		return
	}
	c.CleanStart = flags&flagCleanStart != 0
	c.HasUsername = flags&flagUsername != 0
	c.HasPassword = flags&flagPassword != 0
	willQoS := QoS(flags & flagWillQoS >> 3)
	if flags&flagWill == 0 && flags&(flagWillQoS|flagWillRetain) != 0 {
		d.malformed("will QoS or retain without will flag") // [MQTT-3.1.2-11], [MQTT-3.1.2-13]
		return
	}
	if willQoS > QoS2 {
		d.malformed("will QoS 3") // [MQTT-3.1.2-12]
		return
	}
	if v < V5 && c.HasPassword && !c.HasUsername {
		d.malformed("password flag without user name flag") // MQTT 3.1.1 [MQTT-3.1.2-22]
		return
	}
	if v == V5 {
		d.decodeProps(&c.Properties, false)
		checkAuth(d, &c.Properties)
	} else {
		c.Properties.Reset()
	}
	c.ClientID = d.str("client identifier")
	if flags&flagWill != 0 {
		w := &Will{QoS: willQoS, Retain: flags&flagWillRetain != 0}
		if v == V5 {
			d.decodeProps(&w.Properties, true)
		}
		topic := d.str("will topic")
		if d.err == nil && !ValidTopicName(topic) {
			d.fail(ErrTopicNameInvalid, "will topic") // [MQTT-3.1.3-11]
		}
		w.Topic = topic
		w.Payload = d.binaryData("will payload")
		c.Will = w
	}
	if c.HasUsername {
		c.Username = d.str("user name")
	}
	if c.HasPassword {
		c.Password = d.binaryData("password")
	}
	if d.remaining() != 0 {
		d.malformed("bytes after the last field")
	}
}

// checkAuth enforces MQTT 5.0 §3.1.2.11.10: Authentication Data without an
// Authentication Method is a Protocol Error.
func checkAuth(d *decoder, p *Properties) {
	if d.err == nil && p.Has(PropAuthenticationData) && !p.Has(PropAuthenticationMethod) {
		d.protocol("Authentication Data without Authentication Method")
	}
}

// Connack is the CONNACK packet (MQTT 5.0 §3.2, MQTT 3.1.1 §3.2).
type Connack struct {
	SessionPresent bool              // always false in v3.1, which has no such flag
	ReasonCode     ReasonCode        // v5
	ReturnCode     ConnectReturnCode // v3
	Properties     Properties        // v5
}

// Type returns CONNACK.
func (*Connack) Type() Type { return CONNACK }

// Append implements Packet.
func (c *Connack) Append(dst []byte, v Version) ([]byte, error) {
	var flags byte
	if c.SessionPresent {
		if v == V31 {
			return dst, invalidf(CONNACK, "session present in v3.1")
		}
		flags = 1
	}
	switch v {
	case V31, V311:
		if c.ReturnCode > RefusedNotAuthorized {
			return dst, invalidf(CONNACK, "return code %d", c.ReturnCode)
		}
		if c.Properties.mask() != 0 || c.ReasonCode != 0 {
			return dst, invalidf(CONNACK, "v5 fields in v3")
		}
		dst = appendHeader(dst, CONNACK, 0, 2)
		return append(dst, flags, byte(c.ReturnCode)), nil
	case V5:
		if !c.ReasonCode.ValidIn(CONNACK) {
			return dst, invalidf(CONNACK, "reason code %v", c.ReasonCode)
		}
		if c.ReturnCode != 0 {
			return dst, invalidf(CONNACK, "v3 return code in v5")
		}
		m, n, err := c.Properties.check(CONNACK)
		if err != nil {
			return dst, err
		}
		dst = appendHeader(dst, CONNACK, 0, 2+varintLen(uint32(n))+n)
		dst = append(dst, flags, byte(c.ReasonCode))
		return c.Properties.appendProps(dst, m, n), nil
	}
	return dst, invalidf(CONNACK, "version %v", v)
}

func (c *Connack) decode(d *decoder, _ byte) {
	flags := d.u8("acknowledge flags")
	code := d.u8("return code")
	*c = Connack{Properties: c.Properties}
	if d.err != nil {
		return
	}
	switch {
	case d.v == V31:
		// MQTT 3.1 §3.2: the first byte is reserved and not used.
	case flags&^1 != 0:
		d.malformed("reserved acknowledge flags set") // [MQTT-3.2.2-1] (v5), MQTT 3.1.1 §3.2.2.1
		return
	default:
		c.SessionPresent = flags == 1
	}
	if d.v == V5 {
		c.ReasonCode = ReasonCode(code)
		if !c.ReasonCode.ValidIn(CONNACK) {
			d.protocol("reason code " + c.ReasonCode.String() + " not allowed in CONNACK")
			return
		}
		d.decodeProps(&c.Properties, false)
		checkAuth(d, &c.Properties)
	} else {
		c.Properties.Reset()
		c.ReturnCode = ConnectReturnCode(code)
		if c.ReturnCode > RefusedNotAuthorized {
			d.protocol("reserved return code") // MQTT 3.1.1 §3.2.2.3
			return
		}
	}
	if d.err == nil && c.SessionPresent && code != 0 {
		d.protocol("session present with a refusal") // [MQTT-3.2.2-6] (v5), [MQTT-3.2.2-4] (3.1.1)
		return
	}
	if d.remaining() != 0 {
		d.malformed("bytes after the last field")
	}
}
