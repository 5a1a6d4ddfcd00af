package packet

import "fmt"

// PropertyID is an MQTT 5.0 property identifier (MQTT 5.0 §2.2.2.2,
// Table 2-4). These numbers are part of the wire format.
type PropertyID byte

// Property identifiers, MQTT 5.0 §2.2.2.2 Table 2-4.
const (
	PropPayloadFormatIndicator          PropertyID = 0x01
	PropMessageExpiryInterval           PropertyID = 0x02
	PropContentType                     PropertyID = 0x03
	PropResponseTopic                   PropertyID = 0x08
	PropCorrelationData                 PropertyID = 0x09
	PropSubscriptionIdentifier          PropertyID = 0x0B
	PropSessionExpiryInterval           PropertyID = 0x11
	PropAssignedClientIdentifier        PropertyID = 0x12
	PropServerKeepAlive                 PropertyID = 0x13
	PropAuthenticationMethod            PropertyID = 0x15
	PropAuthenticationData              PropertyID = 0x16
	PropRequestProblemInformation       PropertyID = 0x17
	PropWillDelayInterval               PropertyID = 0x18
	PropRequestResponseInformation      PropertyID = 0x19
	PropResponseInformation             PropertyID = 0x1A
	PropServerReference                 PropertyID = 0x1C
	PropReasonString                    PropertyID = 0x1F
	PropReceiveMaximum                  PropertyID = 0x21
	PropTopicAliasMaximum               PropertyID = 0x22
	PropTopicAlias                      PropertyID = 0x23
	PropMaximumQoS                      PropertyID = 0x24
	PropRetainAvailable                 PropertyID = 0x25
	PropUserProperty                    PropertyID = 0x26
	PropMaximumPacketSize               PropertyID = 0x27
	PropWildcardSubscriptionAvailable   PropertyID = 0x28
	PropSubscriptionIdentifierAvailable PropertyID = 0x29
	PropSharedSubscriptionAvailable     PropertyID = 0x2A
)

// PropertyType is the data type of a property value (MQTT 5.0 §1.5).
type PropertyType byte

// Property value types.
const (
	TypeByte       PropertyType = iota + 1 // one byte
	TypeTwoByte                            // big-endian uint16
	TypeFourByte                           // big-endian uint32
	TypeVarint                             // Variable Byte Integer (§1.5.5)
	TypeString                             // UTF-8 Encoded String (§1.5.4)
	TypeBinary                             // Binary Data (§1.5.6)
	TypeStringPair                         // UTF-8 String Pair (§1.5.7)
)

// inWill marks the Will Properties of CONNECT (MQTT 5.0 §3.1.3.2) in a
// packet-type set; type 0 is reserved, so bit 0 is free for it.
const inWill pt = 1 << 0

// PropertyInfo is one row of MQTT 5.0 Table 2-4.
type PropertyInfo struct {
	Name     string
	Type     PropertyType
	packets  pt
	Multiple bool // may appear more than once (User Property; Subscription Identifier in PUBLISH)
}

// In reports whether the property may appear in packets of type t.
func (i PropertyInfo) In(t Type) bool { return i.packets.has(t) && t != 0 }

// InWill reports whether the property may appear in CONNECT's will properties.
func (i PropertyInfo) InWill() bool { return i.packets&inWill != 0 }

// propTable is MQTT 5.0 §2.2.2.2 Table 2-4, indexed by identifier.
var propTable = [0x2B]PropertyInfo{
	PropPayloadFormatIndicator:          {"Payload Format Indicator", TypeByte, inPUBLISH | inWill, false},
	PropMessageExpiryInterval:           {"Message Expiry Interval", TypeFourByte, inPUBLISH | inWill, false},
	PropContentType:                     {"Content Type", TypeString, inPUBLISH | inWill, false},
	PropResponseTopic:                   {"Response Topic", TypeString, inPUBLISH | inWill, false},
	PropCorrelationData:                 {"Correlation Data", TypeBinary, inPUBLISH | inWill, false},
	PropSubscriptionIdentifier:          {"Subscription Identifier", TypeVarint, inPUBLISH | inSUBSCRIBE, true},
	PropSessionExpiryInterval:           {"Session Expiry Interval", TypeFourByte, inCONNECT | inCONNACK | inDISCONNECT, false},
	PropAssignedClientIdentifier:        {"Assigned Client Identifier", TypeString, inCONNACK, false},
	PropServerKeepAlive:                 {"Server Keep Alive", TypeTwoByte, inCONNACK, false},
	PropAuthenticationMethod:            {"Authentication Method", TypeString, inCONNECT | inCONNACK | inAUTH, false},
	PropAuthenticationData:              {"Authentication Data", TypeBinary, inCONNECT | inCONNACK | inAUTH, false},
	PropRequestProblemInformation:       {"Request Problem Information", TypeByte, inCONNECT, false},
	PropWillDelayInterval:               {"Will Delay Interval", TypeFourByte, inWill, false},
	PropRequestResponseInformation:      {"Request Response Information", TypeByte, inCONNECT, false},
	PropResponseInformation:             {"Response Information", TypeString, inCONNACK, false},
	PropServerReference:                 {"Server Reference", TypeString, inCONNACK | inDISCONNECT, false},
	PropReasonString:                    {"Reason String", TypeString, inCONNACK | inPUBACK | inPUBREC | inPUBREL | inPUBCOMP | inSUBACK | inUNSUBACK | inDISCONNECT | inAUTH, false},
	PropReceiveMaximum:                  {"Receive Maximum", TypeTwoByte, inCONNECT | inCONNACK, false},
	PropTopicAliasMaximum:               {"Topic Alias Maximum", TypeTwoByte, inCONNECT | inCONNACK, false},
	PropTopicAlias:                      {"Topic Alias", TypeTwoByte, inPUBLISH, false},
	PropMaximumQoS:                      {"Maximum QoS", TypeByte, inCONNACK, false},
	PropRetainAvailable:                 {"Retain Available", TypeByte, inCONNACK, false},
	PropUserProperty:                    {"User Property", TypeStringPair, inCONNECT | inCONNACK | inPUBLISH | inWill | inPUBACK | inPUBREC | inPUBREL | inPUBCOMP | inSUBSCRIBE | inSUBACK | inUNSUBSCRIBE | inUNSUBACK | inDISCONNECT | inAUTH, true},
	PropMaximumPacketSize:               {"Maximum Packet Size", TypeFourByte, inCONNECT | inCONNACK, false},
	PropWildcardSubscriptionAvailable:   {"Wildcard Subscription Available", TypeByte, inCONNACK, false},
	PropSubscriptionIdentifierAvailable: {"Subscription Identifier Available", TypeByte, inCONNACK, false},
	PropSharedSubscriptionAvailable:     {"Shared Subscription Available", TypeByte, inCONNACK, false},
}

// Info returns the Table 2-4 row for id; ok is false for an identifier the
// spec does not define.
func (id PropertyID) Info() (info PropertyInfo, ok bool) {
	if int(id) < len(propTable) && propTable[id].Type != 0 {
		return propTable[id], true
	}
	return PropertyInfo{}, false
}

func (id PropertyID) String() string {
	if info, ok := id.Info(); ok {
		return info.Name
	}
	return fmt.Sprintf("PropertyID(0x%02X)", byte(id))
}

// allowedProps[t] is the set of property identifiers (bit per id) allowed in
// packet type t; allowedProps[0] is the will properties.
var allowedProps [16]uint64

func init() {
	for id, info := range propTable {
		if info.Type == 0 {
			continue
		}
		for t := 0; t < 16; t++ {
			if info.packets.has(Type(t)) {
				allowedProps[t] |= 1 << id
			}
		}
	}
}

// UserProperty is one User Property name-value pair (MQTT 5.0 §3.1.2.11.8).
// Their order is kept and a name may repeat [MQTT-3.3.2-18].
type UserProperty struct {
	Key, Value string
}

// Properties holds the MQTT 5.0 properties of one packet (or of a will).
// Every field is named after its Table 2-4 row.
//
// A single-valued property is sent when its field is non-zero or it was
// marked present with Set (to send an explicit zero, such as Session
// Expiry Interval 0 in DISCONNECT). Decoding marks every property it saw,
// so Has tells "absent" from "zero". SubscriptionIdentifiers and
// UserProperties are sent when non-empty.
//
// After decoding, CorrelationData and AuthenticationData alias the packet
// buffer (see the package doc on ownership); strings are ordinary strings.
type Properties struct {
	present uint64 // bit per PropertyID

	PayloadFormatIndicator          byte
	MessageExpiryInterval           uint32
	ContentType                     string
	ResponseTopic                   string
	CorrelationData                 []byte
	SubscriptionIdentifiers         []uint32 // at most one in SUBSCRIBE
	SessionExpiryInterval           uint32
	AssignedClientIdentifier        string
	ServerKeepAlive                 uint16
	AuthenticationMethod            string
	AuthenticationData              []byte
	RequestProblemInformation       byte
	WillDelayInterval               uint32
	RequestResponseInformation      byte
	ResponseInformation             string
	ServerReference                 string
	ReasonString                    string
	ReceiveMaximum                  uint16
	TopicAliasMaximum               uint16
	TopicAlias                      uint16
	MaximumQoS                      byte
	RetainAvailable                 byte
	UserProperties                  []UserProperty
	MaximumPacketSize               uint32
	WildcardSubscriptionAvailable   byte
	SubscriptionIdentifierAvailable byte
	SharedSubscriptionAvailable     byte
}

// Set marks a single-valued property present, so that it is sent even when
// its field is zero.
func (p *Properties) Set(id PropertyID) {
	if _, ok := id.Info(); ok {
		p.present |= 1 << id
	}
}

// Has reports whether the property is present: decoded, marked with Set,
// or (for encoding) non-zero.
func (p *Properties) Has(id PropertyID) bool { return p.mask()&(1<<id) != 0 }

// Reset clears every property, keeping the capacity of the slices.
func (p *Properties) Reset() {
	sub, user := p.SubscriptionIdentifiers[:0], p.UserProperties[:0]
	*p = Properties{SubscriptionIdentifiers: sub, UserProperties: user}
}

// mask is the set of properties Append will send.
func (p *Properties) mask() uint64 {
	m := p.present
	set := func(cond bool, id PropertyID) {
		if cond {
			m |= 1 << id
		}
	}
	set(p.PayloadFormatIndicator != 0, PropPayloadFormatIndicator)
	set(p.MessageExpiryInterval != 0, PropMessageExpiryInterval)
	set(p.ContentType != "", PropContentType)
	set(p.ResponseTopic != "", PropResponseTopic)
	set(p.CorrelationData != nil, PropCorrelationData)
	set(len(p.SubscriptionIdentifiers) > 0, PropSubscriptionIdentifier)
	set(p.SessionExpiryInterval != 0, PropSessionExpiryInterval)
	set(p.AssignedClientIdentifier != "", PropAssignedClientIdentifier)
	set(p.ServerKeepAlive != 0, PropServerKeepAlive)
	set(p.AuthenticationMethod != "", PropAuthenticationMethod)
	set(p.AuthenticationData != nil, PropAuthenticationData)
	set(p.RequestProblemInformation != 0, PropRequestProblemInformation)
	set(p.WillDelayInterval != 0, PropWillDelayInterval)
	set(p.RequestResponseInformation != 0, PropRequestResponseInformation)
	set(p.ResponseInformation != "", PropResponseInformation)
	set(p.ServerReference != "", PropServerReference)
	set(p.ReasonString != "", PropReasonString)
	set(p.ReceiveMaximum != 0, PropReceiveMaximum)
	set(p.TopicAliasMaximum != 0, PropTopicAliasMaximum)
	set(p.TopicAlias != 0, PropTopicAlias)
	set(p.MaximumQoS != 0, PropMaximumQoS)
	set(p.RetainAvailable != 0, PropRetainAvailable)
	set(len(p.UserProperties) > 0, PropUserProperty)
	set(p.MaximumPacketSize != 0, PropMaximumPacketSize)
	set(p.WildcardSubscriptionAvailable != 0, PropWildcardSubscriptionAvailable)
	set(p.SubscriptionIdentifierAvailable != 0, PropSubscriptionIdentifierAvailable)
	set(p.SharedSubscriptionAvailable != 0, PropSharedSubscriptionAvailable)
	return m
}

// check validates the properties for encoding in packet type t (0 for
// will properties) and returns the property set and its encoded length
// (without the length prefix).
func (p *Properties) check(t Type) (m uint64, n int, err error) {
	m = p.mask()
	if bad := m &^ allowedProps[t]; bad != 0 {
		for id := range propTable {
			if bad&(1<<id) != 0 {
				return 0, 0, invalidf(t, "property %v not allowed here", PropertyID(id))
			}
		}
	}
	if m == 0 {
		return 0, 0, nil
	}
	if t == SUBSCRIBE && len(p.SubscriptionIdentifiers) > 1 {
		return 0, 0, invalidf(t, "more than one Subscription Identifier")
	}
	strs := [...]string{p.ContentType, p.ResponseTopic, p.AssignedClientIdentifier,
		p.AuthenticationMethod, p.ResponseInformation, p.ServerReference, p.ReasonString}
	for _, s := range strs {
		if len(s) > maxString {
			return 0, 0, invalidf(t, "property string longer than %d bytes", maxString)
		}
	}
	if len(p.CorrelationData) > maxString || len(p.AuthenticationData) > maxString {
		return 0, 0, invalidf(t, "property binary data longer than %d bytes", maxString)
	}
	for id := range propTable {
		if m&(1<<id) == 0 {
			continue
		}
		switch PropertyID(id) {
		case PropSubscriptionIdentifier:
			for _, s := range p.SubscriptionIdentifiers {
				if s == 0 || s > MaxRemainingLength {
					return 0, 0, invalidf(t, "Subscription Identifier %d out of range", s)
				}
				n += 1 + varintLen(s)
			}
			continue
		case PropUserProperty:
			for _, u := range p.UserProperties {
				if len(u.Key) > maxString || len(u.Value) > maxString {
					return 0, 0, invalidf(t, "user property longer than %d bytes", maxString)
				}
				n += 1 + 4 + len(u.Key) + len(u.Value)
			}
			continue
		}
		n++
		switch propTable[id].Type {
		case TypeByte:
			n++
		case TypeTwoByte:
			n += 2
		case TypeFourByte:
			n += 4
		case TypeString, TypeBinary:
			n += 2 + p.lenOf(PropertyID(id))
		}
	}
	return m, n, nil
}

func (p *Properties) lenOf(id PropertyID) int {
	switch id {
	case PropContentType:
		return len(p.ContentType)
	case PropResponseTopic:
		return len(p.ResponseTopic)
	case PropCorrelationData:
		return len(p.CorrelationData)
	case PropAssignedClientIdentifier:
		return len(p.AssignedClientIdentifier)
	case PropAuthenticationMethod:
		return len(p.AuthenticationMethod)
	case PropAuthenticationData:
		return len(p.AuthenticationData)
	case PropResponseInformation:
		return len(p.ResponseInformation)
	case PropServerReference:
		return len(p.ServerReference)
	case PropReasonString:
		return len(p.ReasonString)
	}
	return 0
}

// appendProps appends the property length and the properties in m, in
// identifier order (User Properties in their own order).
func (p *Properties) appendProps(b []byte, m uint64, n int) []byte {
	b = appendVarint(b, uint32(n))
	if m == 0 {
		return b
	}
	has := func(id PropertyID) bool { return m&(1<<id) != 0 }
	if has(PropPayloadFormatIndicator) {
		b = append(b, byte(PropPayloadFormatIndicator), p.PayloadFormatIndicator)
	}
	if has(PropMessageExpiryInterval) {
		b = appendU32(append(b, byte(PropMessageExpiryInterval)), p.MessageExpiryInterval)
	}
	if has(PropContentType) {
		b = appendString(append(b, byte(PropContentType)), p.ContentType)
	}
	if has(PropResponseTopic) {
		b = appendString(append(b, byte(PropResponseTopic)), p.ResponseTopic)
	}
	if has(PropCorrelationData) {
		b = appendBinary(append(b, byte(PropCorrelationData)), p.CorrelationData)
	}
	for _, s := range p.SubscriptionIdentifiers {
		b = appendVarint(append(b, byte(PropSubscriptionIdentifier)), s)
	}
	if has(PropSessionExpiryInterval) {
		b = appendU32(append(b, byte(PropSessionExpiryInterval)), p.SessionExpiryInterval)
	}
	if has(PropAssignedClientIdentifier) {
		b = appendString(append(b, byte(PropAssignedClientIdentifier)), p.AssignedClientIdentifier)
	}
	if has(PropServerKeepAlive) {
		b = appendU16(append(b, byte(PropServerKeepAlive)), p.ServerKeepAlive)
	}
	if has(PropAuthenticationMethod) {
		b = appendString(append(b, byte(PropAuthenticationMethod)), p.AuthenticationMethod)
	}
	if has(PropAuthenticationData) {
		b = appendBinary(append(b, byte(PropAuthenticationData)), p.AuthenticationData)
	}
	if has(PropRequestProblemInformation) {
		b = append(b, byte(PropRequestProblemInformation), p.RequestProblemInformation)
	}
	if has(PropWillDelayInterval) {
		b = appendU32(append(b, byte(PropWillDelayInterval)), p.WillDelayInterval)
	}
	if has(PropRequestResponseInformation) {
		b = append(b, byte(PropRequestResponseInformation), p.RequestResponseInformation)
	}
	if has(PropResponseInformation) {
		b = appendString(append(b, byte(PropResponseInformation)), p.ResponseInformation)
	}
	if has(PropServerReference) {
		b = appendString(append(b, byte(PropServerReference)), p.ServerReference)
	}
	if has(PropReasonString) {
		b = appendString(append(b, byte(PropReasonString)), p.ReasonString)
	}
	if has(PropReceiveMaximum) {
		b = appendU16(append(b, byte(PropReceiveMaximum)), p.ReceiveMaximum)
	}
	if has(PropTopicAliasMaximum) {
		b = appendU16(append(b, byte(PropTopicAliasMaximum)), p.TopicAliasMaximum)
	}
	if has(PropTopicAlias) {
		b = appendU16(append(b, byte(PropTopicAlias)), p.TopicAlias)
	}
	if has(PropMaximumQoS) {
		b = append(b, byte(PropMaximumQoS), p.MaximumQoS)
	}
	if has(PropRetainAvailable) {
		b = append(b, byte(PropRetainAvailable), p.RetainAvailable)
	}
	for _, u := range p.UserProperties {
		b = appendString(appendString(append(b, byte(PropUserProperty)), u.Key), u.Value)
	}
	if has(PropMaximumPacketSize) {
		b = appendU32(append(b, byte(PropMaximumPacketSize)), p.MaximumPacketSize)
	}
	if has(PropWildcardSubscriptionAvailable) {
		b = append(b, byte(PropWildcardSubscriptionAvailable), p.WildcardSubscriptionAvailable)
	}
	if has(PropSubscriptionIdentifierAvailable) {
		b = append(b, byte(PropSubscriptionIdentifierAvailable), p.SubscriptionIdentifierAvailable)
	}
	if has(PropSharedSubscriptionAvailable) {
		b = append(b, byte(PropSharedSubscriptionAvailable), p.SharedSubscriptionAvailable)
	}
	return b
}

// decodeProps reads a property length and the properties after it into p
// (MQTT 5.0 §2.2.2) for packet type t, or for will properties when will is
// set. p is reset first.
//
// An identifier the spec does not define makes the packet malformed (its
// value cannot even be skipped); a known property not allowed in this
// packet, a repeated single-valued property or a value out of its range is
// a Protocol Error.
func (d *decoder) decodeProps(p *Properties, will bool) {
	p.Reset()
	n := d.varint("property length")
	if d.err != nil {
		return
	}
	if int64(n) > int64(d.remaining()) {
		d.malformed("property length runs past the end of the packet")
		return
	}
	end := d.off + int(n)
	allowed := allowedProps[d.t]
	if will {
		allowed = allowedProps[0]
	}
	var seen uint64
	for d.err == nil && d.off < end {
		id := d.varint("property identifier")
		if d.err != nil {
			return
		}
		if id >= uint32(len(propTable)) || propTable[id].Type == 0 {
			d.malformed(fmt.Sprintf("unknown property identifier 0x%02X", id))
			return
		}
		info := &propTable[id]
		if allowed&(1<<id) == 0 {
			d.protocol(fmt.Sprintf("property %s not allowed here", info.Name))
			return
		}
		if seen&(1<<id) != 0 && !(info.Multiple && (id != uint32(PropSubscriptionIdentifier) || d.t == PUBLISH)) {
			d.protocol(fmt.Sprintf("property %s appears more than once", info.Name))
			return
		}
		seen |= 1 << id
		if !info.Multiple {
			p.present |= 1 << id // lists are present when non-empty
		}
		d.decodeProp(p, PropertyID(id))
	}
	if d.err == nil && d.off != end {
		d.malformed("property runs past the property length")
	}
}

func (d *decoder) bool01(name string) byte {
	v := d.u8(name)
	if v > 1 {
		d.protocol(name + " is neither 0 nor 1")
	}
	return v
}

func (d *decoder) propStr(name string) string {
	b := d.strBytes(name)
	if d.topics != nil && len(b) > 0 {
		return d.topics.intern(b)
	}
	if len(b) == 0 {
		return ""
	}
	return string(b)
}

func (d *decoder) decodeProp(p *Properties, id PropertyID) {
	name := propTable[id].Name
	switch id {
	case PropPayloadFormatIndicator:
		p.PayloadFormatIndicator = d.bool01(name)
	case PropMessageExpiryInterval:
		p.MessageExpiryInterval = d.u32(name)
	case PropContentType:
		p.ContentType = d.propStr(name)
	case PropResponseTopic:
		p.ResponseTopic = d.propStr(name)
		if d.err == nil && (p.ResponseTopic == "" || !ValidTopicName(p.ResponseTopic)) {
			// MQTT 5.0 §3.3.2.3.5 [MQTT-3.3.2-14]
			d.protocol("Response Topic is not a valid topic name")
		}
	case PropCorrelationData:
		p.CorrelationData = d.binaryData(name)
	case PropSubscriptionIdentifier:
		v := d.varint(name)
		if d.err == nil && v == 0 {
			d.protocol("Subscription Identifier 0") // §3.8.2.1.2
		}
		p.SubscriptionIdentifiers = append(p.SubscriptionIdentifiers, v)
	case PropSessionExpiryInterval:
		p.SessionExpiryInterval = d.u32(name)
	case PropAssignedClientIdentifier:
		p.AssignedClientIdentifier = d.str(name)
	case PropServerKeepAlive:
		p.ServerKeepAlive = d.u16(name)
	case PropAuthenticationMethod:
		p.AuthenticationMethod = d.str(name)
	case PropAuthenticationData:
		p.AuthenticationData = d.binaryData(name)
	case PropRequestProblemInformation:
		p.RequestProblemInformation = d.bool01(name) // §3.1.2.11.7
	case PropWillDelayInterval:
		p.WillDelayInterval = d.u32(name)
	case PropRequestResponseInformation:
		p.RequestResponseInformation = d.bool01(name) // §3.1.2.11.6
	case PropResponseInformation:
		p.ResponseInformation = d.str(name)
	case PropServerReference:
		p.ServerReference = d.str(name)
	case PropReasonString:
		p.ReasonString = d.str(name)
	case PropReceiveMaximum:
		p.ReceiveMaximum = d.u16(name)
		if d.err == nil && p.ReceiveMaximum == 0 {
			d.protocol("Receive Maximum 0") // §3.1.2.11.3, §3.2.2.3.3
		}
	case PropTopicAliasMaximum:
		p.TopicAliasMaximum = d.u16(name)
	case PropTopicAlias:
		p.TopicAlias = d.u16(name)
		if d.err == nil && p.TopicAlias == 0 {
			// MQTT 5.0 §3.3.2.3.4: DISCONNECT with 0x94 Topic Alias invalid.
			d.protocol("Topic Alias 0")
			d.err.Code = TopicAliasInvalid
		}
	case PropMaximumQoS:
		p.MaximumQoS = d.bool01(name) // §3.2.2.3.4
	case PropRetainAvailable:
		p.RetainAvailable = d.bool01(name)
	case PropUserProperty:
		k := d.propStr(name)
		v := d.propStr(name)
		p.UserProperties = append(p.UserProperties, UserProperty{k, v})
	case PropMaximumPacketSize:
		p.MaximumPacketSize = d.u32(name)
		if d.err == nil && p.MaximumPacketSize == 0 {
			d.protocol("Maximum Packet Size 0") // §3.1.2.11.4, §3.2.2.3.6
		}
	case PropWildcardSubscriptionAvailable:
		p.WildcardSubscriptionAvailable = d.bool01(name)
	case PropSubscriptionIdentifierAvailable:
		p.SubscriptionIdentifierAvailable = d.bool01(name)
	case PropSharedSubscriptionAvailable:
		p.SharedSubscriptionAvailable = d.bool01(name)
	}
}
