package main

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/quiremq/quire/frontends/auth"
	"github.com/quiremq/quire/frontends/mqtt/packet"
)

// Limits and re-authentication of a `quire start` node from its config,
// with paho.golang: max_inflight = 2, max_publish_rate = 20 (bursts of
// 20), and a user with SCRAM-SHA-256 credentials (scram_sha256).
const (
	limitsInflight = 2
	limitsRate     = 20
)

func TestMQTTLimitsAndReauth(t *testing.T) {
	cred, err := auth.NewSCRAMCredentials([]byte("pencil"), auth.DefaultSCRAMIterations)
	if err != nil {
		t.Fatal(err)
	}
	n := newFeatNode(t, fmt.Sprintf(`allow_anonymous = true
acl_default = "allow"
max_inflight = %d
max_publish_rate = %d
max_keep_alive = %d
[[mqtt.users]]
name = "carol"
scram_sha256 = %q
`, limitsInflight, limitsRate, limitsKeepAlive, cred.String()))
	n.start(t)
	for _, tc := range []struct {
		name string
		run  func(*testing.T, *featNode)
	}{
		{"max-inflight", limitMaxInflight},
		{"max-publish-rate", limitPublishRate},
		{"scram-reauthentication", limitSCRAMReauth},
		{"server-keep-alive", limitServerKeepAlive},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, n) })
	}
}

// limitsKeepAlive is the node's max_keep_alive in seconds.
const limitsKeepAlive = 30

// limitServerKeepAlive: max_keep_alive caps a v5 client's keep alive,
// told in CONNACK's Server Keep Alive (MQTT 5.0 §3.2.2.3.14); a client
// asking for at most the cap keeps its own. (A client asking for none, 0,
// is capped too: TestNodeMQTTMaxKeepAlive; connectV5 never asks for 0.)
func limitServerKeepAlive(t *testing.T, n *featNode) {
	for _, tc := range []struct {
		asked uint16
		want  *uint16 // nil: no Server Keep Alive in CONNACK
	}{
		{asked: 600, want: paho.Uint16(limitsKeepAlive)},
		{asked: limitsKeepAlive + 1, want: paho.Uint16(limitsKeepAlive)},
		{asked: limitsKeepAlive},
		{asked: 10},
	} {
		c := n.connectV5(t, &paho.Connect{ClientID: fmt.Sprintf("ska-%d", tc.asked), CleanStart: true, KeepAlive: tc.asked}, fopts{})
		if c.err != nil {
			t.Fatal(c.err)
		}
		var got *uint16
		if c.ack.Properties != nil {
			got = c.ack.Properties.ServerKeepAlive
		}
		switch {
		case tc.want == nil && got != nil && *got != tc.asked:
			t.Errorf("keep alive %d: Server Keep Alive %d, want none (or %d)", tc.asked, *got, tc.asked)
		case tc.want != nil && (got == nil || *got != *tc.want):
			t.Errorf("keep alive %d: Server Keep Alive %v, want %d", tc.asked, got, *tc.want)
		}
	}
}

// limitMaxInflight: a subscriber allowing 100 unacknowledged messages
// (Receive Maximum) gets at most max_inflight of them; each PUBACK lets
// the next one go, in order.
func limitMaxInflight(t *testing.T, n *featNode) {
	c := n.connectV5(t, &paho.Connect{ClientID: "mi-sub", CleanStart: true,
		Properties: &paho.ConnectProperties{ReceiveMaximum: paho.Uint16(100)}}, fopts{manual: true})
	c.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "mi/t", QoS: 1}}})
	heldAt(t, c, n.v5c(t, "mi-pub"), "mi/t", limitsInflight, fmt.Sprintf("max_inflight %d", limitsInflight))
}

// limitPublishRate: a publisher over max_publish_rate is slowed, not
// refused: 3 s of messages at the rate after a burst of one second's take
// at least 2 s, every one arrives, and the wait is counted.
func limitPublishRate(t *testing.T, n *featNode) {
	sub := n.v5c(t, "rate-sub")
	sub.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "rate/t", QoS: 1}}})
	pub := n.v5c(t, "rate-pub")
	before := n.metric(t, "quire_mqtt_publish_throttled_seconds_total")
	const count = 3 * limitsRate
	start := time.Now()
	for i := range count {
		if r := pub.pub(t, &paho.Publish{Topic: "rate/t", QoS: 1, Payload: fmt.Appendf(nil, "%d", i)}); r.ReasonCode != 0 {
			t.Fatalf("PUBACK %#x", r.ReasonCode)
		}
	}
	if took, least := time.Since(start), time.Duration(count-limitsRate)*time.Second/limitsRate; took < least*9/10 {
		t.Fatalf("%d messages took %v at %d/s (burst %d), want at least %v", count, took, limitsRate, limitsRate, least)
	}
	pub.pub(t, &paho.Publish{Topic: "rate/t", QoS: 1, Payload: []byte("end")})
	if got := sub.upTo(t, "end"); len(got) != count {
		t.Fatalf("subscriber got %d messages, want %d", len(got), count)
	}
	if d := n.metric(t, "quire_mqtt_publish_throttled_seconds_total") - before; d <= 0 {
		t.Fatalf("publish_throttled_seconds_total grew by %v, want the wait counted", d)
	}
}

// scramPaho is paho.golang's side of a SCRAM-SHA-256 exchange, for the
// exchange under way (a re-authentication starts a new one).
type scramPaho struct {
	t      *testing.T
	client atomic.Pointer[auth.SCRAMClient]
}

func (a *scramPaho) Authenticate(in *paho.Auth) *paho.Auth {
	final, err := a.client.Load().Final(in.Properties.AuthData)
	if err != nil {
		a.t.Errorf("server-first: %v", err)
	}
	return &paho.Auth{ReasonCode: 0x18, Properties: &paho.AuthProperties{AuthMethod: auth.SCRAMMethod, AuthData: final}}
}

func (a *scramPaho) Authenticated() {}

// limitSCRAMReauth: carol connects with SCRAM-SHA-256 (CONNECT, AUTH,
// AUTH, CONNACK), re-authenticates twice on the same connection (AUTH
// 0x19) and is still served, checking the server's proof in CONNACK; a
// re-authentication with a wrong password gets DISCONNECT 0x87.
func limitSCRAMReauth(t *testing.T, n *featNode) {
	tap, err := dialTapped(t, n.tcp)
	if err != nil {
		t.Fatal(err)
	}
	a := &scramPaho{t: t}
	first := &auth.SCRAMClient{User: "carol", Password: "pencil"}
	a.client.Store(first)
	c := paho.NewClient(paho.ClientConfig{Conn: tap.Conn, AuthHandler: a, PacketTimeout: 30 * time.Second,
		OnClientError: func(error) {}, OnServerDisconnect: func(*paho.Disconnect) {}})
	ack, err := c.Connect(fctx(t), &paho.Connect{ClientID: "scram-carol", KeepAlive: 30, CleanStart: true,
		Properties: &paho.ConnectProperties{AuthMethod: auth.SCRAMMethod, AuthData: first.First()}})
	if err != nil {
		t.Fatalf("SCRAM connect: %v", err)
	}
	defer c.Disconnect(&paho.Disconnect{})
	if err := first.Verify(ack.Properties.AuthData); err != nil {
		t.Fatalf("server proof in CONNACK: %v", err)
	}
	reauth := func(pass string) (*paho.AuthResponse, error) {
		sc := &auth.SCRAMClient{User: "carol", Password: pass}
		a.client.Store(sc)
		return c.Authenticate(fctx(t), &paho.Auth{ReasonCode: 0x19,
			Properties: &paho.AuthProperties{AuthMethod: auth.SCRAMMethod, AuthData: sc.First()}})
	}
	for i := range 2 {
		if resp, err := reauth("pencil"); err != nil || !resp.Success || resp.ReasonCode != 0 {
			t.Fatalf("re-authentication %d: %+v, %v", i, resp, err)
		}
		if pr, err := c.Publish(fctx(t), &paho.Publish{Topic: "scram/x", QoS: 1, Payload: []byte("still carol")}); err != nil || pr.ReasonCode != 0 {
			t.Fatalf("publish after re-authentication %d: %v %+v", i, err, pr)
		}
	}
	resp, err := reauth("wrong")
	if err == nil && resp.Success {
		t.Fatal("re-authentication with a wrong password succeeded")
	}
	var code packet.ReasonCode
	waitUntil(t, "DISCONNECT after a failed re-authentication", func() bool {
		tap.each(func(p packet.Packet) {
			if d, ok := p.(*packet.Disconnect); ok {
				code = d.ReasonCode
			}
		})
		return code != 0
	})
	if code != packet.NotAuthorized {
		t.Fatalf("DISCONNECT %v after a failed re-authentication, want 0x87", code)
	}
}
