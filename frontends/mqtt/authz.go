package mqtt

import (
	"context"
	"errors"
	"strings"

	"github.com/quiremq/quire/frontends/auth"
	"github.com/quiremq/quire/frontends/listen"
	"github.com/quiremq/quire/frontends/mqtt/packet"
)

// This file applies Options.Auth and Options.ACL (package frontends/auth):
// CONNECT is authenticated; the will, every PUBLISH (retained or not) and
// every SUBSCRIBE are checked against the ACL. Retained messages reach a
// client only through a subscription the ACL allowed, and an allowed
// subscribe filter is covered by an allow rule and meets no deny rule, so
// no retained message escapes it.

// authClient is what auth knows of this connection.
func (c *conn) authClient(cp *packet.Connect) *auth.Client {
	ac := &auth.Client{ID: c.clientID, Listener: c.listener, Peer: c.remote}
	if cp != nil {
		ac.Username, ac.HasPassword = cp.Username, cp.HasPassword
		if cp.HasPassword {
			ac.Password = append([]byte(nil), cp.Password...)
		}
	}
	if cc, ok := c.nc.(*countingConn); ok {
		if cert := listen.PeerCertificate(cc.Conn); cert != nil {
			ac.CommonName = cert.Subject.CommonName
		}
	}
	return ac
}

// enhanced is a completed MQTT 5 enhanced authentication.
type enhanced struct {
	method string
	data   []byte // the server's last data (SCRAM: its proof), sent in CONNACK
	user   string // the user it authenticated
}

// enhancedAuth runs the AUTH exchange a v5 CONNECT with an Authentication
// Method starts (MQTT 5.0 §4.12). SCRAM-SHA-256 is the one method: CONNECT
// carries client-first, the server answers AUTH 0x18 with server-first,
// the client AUTH 0x18 with client-final, and CONNACK carries the server's
// proof. Any other method gets CONNACK 0x8C; a failed exchange 0x86.
// Re-authentication later on is onAuth's.
func (c *conn) enhancedAuth(cp *packet.Connect) error {
	method := cp.Properties.AuthenticationMethod
	sc := c.s.opts.SCRAM
	if method != auth.SCRAMMethod || sc == nil {
		return c.refuse(packet.BadAuthenticationMethod, "unsupported authentication method "+method)
	}
	x, first, err := sc.Start(cp.Properties.AuthenticationData)
	if err != nil {
		return c.refuse(packet.BadUserNameOrPassword, err.Error())
	}
	if err := c.send(&packet.Auth{ReasonCode: packet.ContinueAuthentication,
		Properties: packet.Properties{AuthenticationMethod: method, AuthenticationData: first}}); err != nil {
		return err
	}
	p, err := c.r.ReadPacket() // still under the CONNECT deadline
	if err != nil {
		return err
	}
	c.s.m.packetsIn[p.Type()].Inc()
	ap, ok := p.(*packet.Auth)
	if !ok || ap.ReasonCode != packet.ContinueAuthentication || ap.Properties.AuthenticationMethod != method {
		return c.refuse(packet.ProtocolError, "expected AUTH (continue) with method "+method)
	}
	final, err := x.Finish(ap.Properties.AuthenticationData)
	if err != nil {
		return c.refuse(packet.BadUserNameOrPassword, err.Error())
	}
	c.enhanced = &enhanced{method: method, data: final, user: x.User()}
	return nil
}

// onAuth handles an AUTH packet after CONNACK: re-authentication (MQTT 5.0
// §4.12.1). The client sends AUTH 0x19 with the method of its CONNECT and
// client-first, the server answers AUTH 0x18 with server-first, the client
// AUTH 0x18 with client-final, and the server AUTH 0x00 with its proof.
// Other packets flow meanwhile under the previous authentication. The user
// must stay the same: the connection's identity (ACL checks, %u) does not
// change. Failures close the connection with a DISCONNECT (§4.13): 0x82
// for AUTH on a connection that did not authenticate with a method (§4.12:
// a protocol error), for an AUTH out of turn and for a reason code a
// client may not send; 0x8C for another method [MQTT-4.12.1-1]; 0x87 (not
// authorized; 0x86 is not a DISCONNECT code) for a failed exchange or
// another user [MQTT-4.12.1-2].
func (c *conn) onAuth(p *packet.Auth) error {
	if c.enhanced == nil {
		return &closeError{code: packet.ProtocolError, msg: "AUTH on a connection without enhanced authentication"}
	}
	method := p.Properties.AuthenticationMethod
	if method != c.enhanced.method {
		return &closeError{code: packet.BadAuthenticationMethod, msg: "re-authentication with method " + method + ", not " + c.enhanced.method}
	}
	answer := func(code packet.ReasonCode, data []byte) error {
		return c.reply(&packet.Auth{ReasonCode: code, Properties: packet.Properties{AuthenticationMethod: method, AuthenticationData: data}})
	}
	switch {
	case p.ReasonCode == packet.ReAuthenticate && c.reauth == nil:
		x, first, err := c.s.opts.SCRAM.Start(p.Properties.AuthenticationData)
		if err != nil {
			return &closeError{code: packet.NotAuthorized, msg: "re-authentication: " + err.Error()}
		}
		c.reauth = x
		return answer(packet.ContinueAuthentication, first)
	case p.ReasonCode == packet.ContinueAuthentication && c.reauth != nil:
		x := c.reauth
		c.reauth = nil
		final, err := x.Finish(p.Properties.AuthenticationData)
		if err != nil {
			return &closeError{code: packet.NotAuthorized, msg: "re-authentication: " + err.Error()}
		}
		if x.User() != c.enhanced.user {
			return &closeError{code: packet.NotAuthorized, msg: "re-authentication as " + x.User() + ", not " + c.enhanced.user}
		}
		c.s.m.reauths.Inc()
		return answer(packet.Success, final)
	default:
		return &closeError{code: packet.ProtocolError, msg: "AUTH " + p.ReasonCode.Name(packet.AUTH) + " out of turn"}
	}
}

// authenticate checks CONNECT; on refusal it answers CONNACK with the
// reason and returns the error that ends the connection. c.clientID is set.
// A client that passed enhanced authentication is that user: the password
// chain is not asked again.
func (c *conn) authenticate(ctx context.Context, cp *packet.Connect) error {
	ac := c.authClient(cp)
	who := *ac
	who.Password = nil // not kept for the connection's life
	c.who = &who
	if c.enhanced != nil {
		who.Username = c.enhanced.user
	} else if a := c.s.opts.Auth; a != nil {
		if err := a.Authenticate(ctx, ac); err != nil {
			code := packet.NotAuthorized
			switch {
			case errors.Is(err, auth.ErrBadCredentials):
				code = packet.BadUserNameOrPassword
			case errors.Is(err, auth.ErrUnavailable):
				code = packet.ServerUnavailable
				c.s.log.Warn("mqtt authentication could not decide; client refused", "client_id", c.clientID, "err", err)
			}
			return c.refuse(code, err.Error())
		}
	}
	if cp.Will != nil && !c.allowed(auth.Publish, cp.Will.Topic) {
		return c.refuse(packet.NotAuthorized, "not authorized to publish the will on "+cp.Will.Topic)
	}
	return nil
}

// allowed asks the ACL whether this client may publish to a topic or
// subscribe to a filter (for a shared subscription, its inner filter, as
// onSubscribe's pubsub.ParseShared returns it).
func (c *conn) allowed(act auth.Action, topic string) bool {
	if act == auth.Publish {
		topic = aclTopic(topic) // a delayed publish is judged by its real topic
		if strings.HasPrefix(topic, sysPrefix) {
			return false // $SYS topics are the server's (sys.go)
		}
	}
	if c.s.opts.ACL == nil {
		return true
	}
	who := c.who
	if who == nil {
		who = &auth.Client{ID: c.clientID}
	}
	return c.s.opts.ACL.Check(act, who, topic)
}

// refusePublish answers a PUBLISH the ACL refused: dropped and counted; in
// v5 QoS 1/2 get reason code 0x87; v3 cannot refuse, so it is acknowledged
// as usual (MQTT 3.1.1 §3.3.5 allows a positive acknowledgement).
func (c *conn) refusePublish(p *packet.Publish) error {
	c.s.m.dropped.WithLabelValues(dropNotAuthorized).Inc()
	code := packet.Success
	if c.version == packet.V5 {
		code = packet.NotAuthorized
	}
	switch p.QoS {
	case packet.QoS1:
		return c.send(&packet.Puback{PacketID: p.PacketID, ReasonCode: code})
	case packet.QoS2:
		if code == packet.Success {
			// A positive PUBREC in v3: remember the id so PUBREL
			// completes the flow, though nothing was stored.
			c.sess.awaitRelease(p.PacketID)
		}
		return c.send(&packet.Pubrec{PacketID: p.PacketID, ReasonCode: code})
	}
	return nil
}
