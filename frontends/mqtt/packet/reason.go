package packet

import "fmt"

// ReasonCode is an MQTT 5.0 reason code (MQTT 5.0 §2.4, Table 2-6). Values
// below 0x80 report success, 0x80 and above failure. In v3 the SUBACK return
// codes 0x00, 0x01, 0x02 and 0x80 (MQTT 3.1.1 §3.9.3) share these numbers
// and this type.
type ReasonCode byte

// Reason codes, MQTT 5.0 §2.4 Table 2-6. These numbers are part of the wire
// format. Several names share a value (0x00 is Success, Normal disconnection
// and Granted QoS 0).
const (
	Success                             ReasonCode = 0x00
	NormalDisconnection                 ReasonCode = 0x00
	GrantedQoS0                         ReasonCode = 0x00
	GrantedQoS1                         ReasonCode = 0x01
	GrantedQoS2                         ReasonCode = 0x02
	DisconnectWithWillMessage           ReasonCode = 0x04
	NoMatchingSubscribers               ReasonCode = 0x10
	NoSubscriptionExisted               ReasonCode = 0x11
	ContinueAuthentication              ReasonCode = 0x18
	ReAuthenticate                      ReasonCode = 0x19
	UnspecifiedError                    ReasonCode = 0x80
	MalformedPacket                     ReasonCode = 0x81
	ProtocolError                       ReasonCode = 0x82
	ImplementationSpecificError         ReasonCode = 0x83
	UnsupportedProtocolVersion          ReasonCode = 0x84
	ClientIdentifierNotValid            ReasonCode = 0x85
	BadUserNameOrPassword               ReasonCode = 0x86
	NotAuthorized                       ReasonCode = 0x87
	ServerUnavailable                   ReasonCode = 0x88
	ServerBusy                          ReasonCode = 0x89
	Banned                              ReasonCode = 0x8A
	ServerShuttingDown                  ReasonCode = 0x8B
	BadAuthenticationMethod             ReasonCode = 0x8C
	KeepAliveTimeout                    ReasonCode = 0x8D
	SessionTakenOver                    ReasonCode = 0x8E
	TopicFilterInvalid                  ReasonCode = 0x8F
	TopicNameInvalid                    ReasonCode = 0x90
	PacketIdentifierInUse               ReasonCode = 0x91
	PacketIdentifierNotFound            ReasonCode = 0x92
	ReceiveMaximumExceeded              ReasonCode = 0x93
	TopicAliasInvalid                   ReasonCode = 0x94
	PacketTooLarge                      ReasonCode = 0x95
	MessageRateTooHigh                  ReasonCode = 0x96
	QuotaExceeded                       ReasonCode = 0x97
	AdministrativeAction                ReasonCode = 0x98
	PayloadFormatInvalid                ReasonCode = 0x99
	RetainNotSupported                  ReasonCode = 0x9A
	QoSNotSupported                     ReasonCode = 0x9B
	UseAnotherServer                    ReasonCode = 0x9C
	ServerMoved                         ReasonCode = 0x9D
	SharedSubscriptionsNotSupported     ReasonCode = 0x9E
	ConnectionRateExceeded              ReasonCode = 0x9F
	MaximumConnectTime                  ReasonCode = 0xA0
	SubscriptionIdentifiersNotSupported ReasonCode = 0xA1
	WildcardSubscriptionsNotSupported   ReasonCode = 0xA2
)

// pt is a set of packet types, one bit per Type.
type pt uint16

func (s pt) has(t Type) bool { return s&(1<<t) != 0 }

const (
	inCONNECT     pt = 1 << CONNECT
	inCONNACK     pt = 1 << CONNACK
	inPUBLISH     pt = 1 << PUBLISH
	inPUBACK      pt = 1 << PUBACK
	inPUBREC      pt = 1 << PUBREC
	inPUBREL      pt = 1 << PUBREL
	inPUBCOMP     pt = 1 << PUBCOMP
	inSUBSCRIBE   pt = 1 << SUBSCRIBE
	inSUBACK      pt = 1 << SUBACK
	inUNSUBSCRIBE pt = 1 << UNSUBSCRIBE
	inUNSUBACK    pt = 1 << UNSUBACK
	inDISCONNECT  pt = 1 << DISCONNECT
	inAUTH        pt = 1 << AUTH
)

// reasonInfo is one row of MQTT 5.0 Table 2-6.
type reasonInfo struct {
	name    string
	packets pt
}

// reasonTable is MQTT 5.0 §2.4 Table 2-6: for each reason code, its name and
// the packets it may appear in. The value 0x00 has a different name per
// packet; reasonName handles that.
var reasonTable = map[ReasonCode]reasonInfo{
	0x00: {"Success", inCONNACK | inPUBACK | inPUBREC | inPUBREL | inPUBCOMP | inUNSUBACK | inAUTH | inDISCONNECT | inSUBACK},
	0x01: {"Granted QoS 1", inSUBACK},
	0x02: {"Granted QoS 2", inSUBACK},
	0x04: {"Disconnect with Will Message", inDISCONNECT},
	0x10: {"No matching subscribers", inPUBACK | inPUBREC},
	0x11: {"No subscription existed", inUNSUBACK},
	0x18: {"Continue authentication", inAUTH},
	0x19: {"Re-authenticate", inAUTH},
	0x80: {"Unspecified error", inCONNACK | inPUBACK | inPUBREC | inSUBACK | inUNSUBACK | inDISCONNECT},
	0x81: {"Malformed Packet", inCONNACK | inDISCONNECT},
	0x82: {"Protocol Error", inCONNACK | inDISCONNECT},
	0x83: {"Implementation specific error", inCONNACK | inPUBACK | inPUBREC | inSUBACK | inUNSUBACK | inDISCONNECT},
	0x84: {"Unsupported Protocol Version", inCONNACK},
	0x85: {"Client Identifier not valid", inCONNACK},
	0x86: {"Bad User Name or Password", inCONNACK},
	0x87: {"Not authorized", inCONNACK | inPUBACK | inPUBREC | inSUBACK | inUNSUBACK | inDISCONNECT},
	0x88: {"Server unavailable", inCONNACK},
	0x89: {"Server busy", inCONNACK | inDISCONNECT},
	0x8A: {"Banned", inCONNACK},
	0x8B: {"Server shutting down", inDISCONNECT},
	0x8C: {"Bad authentication method", inCONNACK | inDISCONNECT},
	0x8D: {"Keep Alive timeout", inDISCONNECT},
	0x8E: {"Session taken over", inDISCONNECT},
	0x8F: {"Topic Filter invalid", inSUBACK | inUNSUBACK | inDISCONNECT},
	0x90: {"Topic Name invalid", inCONNACK | inPUBACK | inPUBREC | inDISCONNECT},
	0x91: {"Packet Identifier in use", inPUBACK | inPUBREC | inSUBACK | inUNSUBACK},
	0x92: {"Packet Identifier not found", inPUBREL | inPUBCOMP},
	0x93: {"Receive Maximum exceeded", inDISCONNECT},
	0x94: {"Topic Alias invalid", inDISCONNECT},
	0x95: {"Packet too large", inCONNACK | inDISCONNECT},
	0x96: {"Message rate too high", inDISCONNECT},
	0x97: {"Quota exceeded", inCONNACK | inPUBACK | inPUBREC | inSUBACK | inDISCONNECT},
	0x98: {"Administrative action", inDISCONNECT},
	0x99: {"Payload format invalid", inCONNACK | inPUBACK | inPUBREC | inDISCONNECT},
	0x9A: {"Retain not supported", inCONNACK | inDISCONNECT},
	0x9B: {"QoS not supported", inCONNACK | inDISCONNECT},
	0x9C: {"Use another server", inCONNACK | inDISCONNECT},
	0x9D: {"Server moved", inCONNACK | inDISCONNECT},
	0x9E: {"Shared Subscriptions not supported", inSUBACK | inDISCONNECT},
	0x9F: {"Connection rate exceeded", inCONNACK | inDISCONNECT},
	0xA0: {"Maximum connect time", inDISCONNECT},
	0xA1: {"Subscription Identifiers not supported", inSUBACK | inDISCONNECT},
	0xA2: {"Wildcard Subscriptions not supported", inSUBACK | inDISCONNECT},
}

// reasonValid is reasonTable flattened for the decode path: a bit set of
// packet types per code value.
var reasonValid [256]pt

func init() {
	for c, info := range reasonTable {
		reasonValid[c] = info.packets
	}
}

// String is the spec's name for the code (for 0x00, "Success").
func (c ReasonCode) String() string {
	if info, ok := reasonTable[c]; ok {
		return info.name
	}
	return fmt.Sprintf("ReasonCode(0x%02X)", byte(c))
}

// Name is the spec's name for the code as it appears in packet type t:
// 0x00 is "Normal disconnection" in DISCONNECT and "Granted QoS 0" in SUBACK.
func (c ReasonCode) Name(t Type) string {
	if c == 0 {
		switch t {
		case DISCONNECT:
			return "Normal disconnection"
		case SUBACK:
			return "Granted QoS 0"
		}
	}
	return c.String()
}

// IsError reports whether c reports a failure (0x80 or above, §2.4).
func (c ReasonCode) IsError() bool { return c >= 0x80 }

// ValidIn reports whether MQTT 5.0 Table 2-6 allows c in packets of type t.
func (c ReasonCode) ValidIn(t Type) bool { return reasonValid[c].has(t) }

// ConnectReturnCode is the v3 CONNACK return code (MQTT 3.1.1 §3.2.2.3
// Table 3.1; MQTT 3.1 uses the same values).
type ConnectReturnCode byte

// v3 CONNACK return codes. These numbers are part of the wire format.
const (
	ConnectionAccepted           ConnectReturnCode = 0x00
	RefusedProtocolVersion       ConnectReturnCode = 0x01
	RefusedIdentifierRejected    ConnectReturnCode = 0x02
	RefusedServerUnavailable     ConnectReturnCode = 0x03
	RefusedBadUsernameOrPassword ConnectReturnCode = 0x04
	RefusedNotAuthorized         ConnectReturnCode = 0x05
)

var returnCodeNames = [...]string{
	"Connection Accepted",
	"Connection Refused, unacceptable protocol version",
	"Connection Refused, identifier rejected",
	"Connection Refused, Server unavailable",
	"Connection Refused, bad user name or password",
	"Connection Refused, not authorized",
}

func (c ConnectReturnCode) String() string {
	if int(c) < len(returnCodeNames) {
		return returnCodeNames[c]
	}
	return fmt.Sprintf("ConnectReturnCode(0x%02X)", byte(c))
}

// ReturnCodeFor maps a v5 CONNACK reason code to the nearest v3 return code,
// for a broker that decides in v5 terms and answers a v3 client. Success
// maps to ConnectionAccepted; codes without a v3 equivalent map to
// RefusedServerUnavailable.
func ReturnCodeFor(c ReasonCode) ConnectReturnCode {
	switch c {
	case Success:
		return ConnectionAccepted
	case UnsupportedProtocolVersion:
		return RefusedProtocolVersion
	case ClientIdentifierNotValid:
		return RefusedIdentifierRejected
	case BadUserNameOrPassword, BadAuthenticationMethod:
		return RefusedBadUsernameOrPassword
	case NotAuthorized, Banned:
		return RefusedNotAuthorized
	}
	return RefusedServerUnavailable
}
