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

// authenticate checks CONNECT; on refusal it answers CONNACK with the
// reason and returns the error that ends the connection. c.clientID is set.
func (c *conn) authenticate(ctx context.Context, cp *packet.Connect) error {
	ac := c.authClient(cp)
	who := *ac
	who.Password = nil // not kept for the connection's life
	c.who = &who
	if a := c.s.opts.Auth; a != nil {
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
// subscribe to a filter (the inner filter of a shared subscription).
func (c *conn) allowed(act auth.Action, topic string) bool {
	if act == auth.Publish && strings.HasPrefix(topic, sysPrefix) {
		return false // $SYS topics are the server's (sys.go)
	}
	if c.s.opts.ACL == nil {
		return true
	}
	if act == auth.Subscribe {
		topic = auth.InnerFilter(topic)
	} else {
		topic = aclTopic(topic) // a delayed publish is judged by its real topic
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
			c.sess.mu.Lock()
			if c.sess.inQoS2 != nil {
				c.sess.inQoS2[p.PacketID] = struct{}{}
			}
			c.sess.mu.Unlock()
		}
		return c.send(&packet.Pubrec{PacketID: p.PacketID, ReasonCode: code})
	}
	return nil
}
