package main

// The MQTT feature list of issue 6, each exercised by a real client —
// eclipse/paho.golang (v5), eclipse/paho.mqtt.golang (3.1.1) and Debian's
// mosquitto_pub/mosquitto_sub (3.1, 3.1.1, 5) — against one `quire start`
// process serving TCP, TLS, WebSocket and WSS with users, ACL rules and
// limits from its config. frontends/mqtt/FEATURES.md maps every feature to
// its test. Where a check needs the bytes the server sent (a server-sent
// DISCONNECT and its Reason String), the client's connection is tapped and
// the bytes decoded afterwards with frontends/mqtt/packet: the client
// drives the exchange, the tap only reads.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paholog "github.com/eclipse/paho.golang/paho/log"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/crypto/bcrypt"

	"github.com/quiremq/quire/frontends/mqtt/packet"
	"github.com/quiremq/quire/internal/testcert"
)

// Limits of the feature node's config.
const (
	featMaxPacket = 65536
	featMaxQueued = 50
)

// featNode is a `quire start` process with every MQTT listener but QUIC:
// mqtt_e2e_test.go's node (file engine) with TLS, WebSocket and WSS
// listeners, users, ACL rules and limits added to its [mqtt] section.
type featNode struct {
	*mqttNode
	tls, ws, wss string
	ca           *testcert.Authority // the server's certificate, also the client CA
	caFile       string              // ca.CertFile
	roots        *x509.CertPool      // ca.Pool
}

func startFeatNode(t *testing.T) *featNode {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	n := newFeatNode(t, fmt.Sprintf(`
allow_anonymous = true
acl_default = "allow"
max_packet_size = %d
max_queued = %d
[[mqtt.users]]
name = "alice"
password_hash = %q
[[mqtt.acl]]
permission = "allow"
action = "all"
topics = ["users/%%u/#"]
[[mqtt.acl]]
permission = "deny"
action = "all"
topics = ["users/#", "secret/#"]
`, featMaxPacket, featMaxQueued, hash))
	n.start(t)
	return n
}

// newFeatNode writes the config of a featNode, with extra (TOML) at the
// end of its [mqtt] section; it does not start it.
func newFeatNode(t *testing.T, extra string) *featNode {
	t.Helper()
	addrs := freeAddrs(t, 3)
	n := &featNode{tls: addrs[0], ws: addrs[1], wss: addrs[2]}
	n.ca = testcert.NewAuthority(t, "mqtt-ca")
	n.caFile, n.roots = n.ca.CertFile, n.ca.Pool
	n.mqttNode = newMQTTNodeWith(t, mqttNodeOpts{tls: n.tls, ws: n.ws, wss: n.wss,
		extra: fmt.Sprintf("tls_cert_file = %q\ntls_key_file = %q\n", n.caFile, n.ca.KeyFile) + extra})
	t.Cleanup(func() {
		if t.Failed() && n.p != nil {
			out := n.p.stderr.String()
			t.Logf("quire output (last 16 KiB):\n%s", out[max(0, len(out)-16<<10):])
		}
	})
	return n
}

// metric is the value of one /metrics sample (name with its labels, as
// printed), 0 when absent.
func (n *mqttNode) metric(t *testing.T, sample string) float64 {
	t.Helper()
	_, body := httpGet(t, "http://"+n.admin+"/metrics")
	for line := range strings.Lines(body) {
		if rest, ok := strings.CutPrefix(line, sample+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", sample, err)
			}
			return v
		}
	}
	return 0
}

// tapConn is a client's connection to the node through a loopback proxy
// that records what the server sent, so that the packets can be decoded
// after the client is done with them. The client gets a bare
// *net.TCPConn: paho.golang writes a packet in several Writes
// (net.Buffers) with no lock between its goroutines, which only writev on
// a *net.TCPConn makes atomic — wrapping the conn let a PINGREQ or an ack
// land inside another packet (seen under -race; the server rightly
// answered DISCONNECT 0x81).
type tapConn struct {
	net.Conn // the client's end
	mu       sync.Mutex
	got      bytes.Buffer
	upErr    error // how the server's side ended
}

// dialTapped connects to addr through a recording proxy.
func dialTapped(t *testing.T, addr string) (*tapConn, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	up, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := &tapConn{}
	accepted := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		close(accepted)
		if err != nil {
			up.Close()
			return
		}
		go func() { io.Copy(up, c); up.Close() }()
		buf := make([]byte, 32<<10)
		for {
			n, err := up.Read(buf)
			tc.mu.Lock()
			tc.got.Write(buf[:n])
			tc.upErr = err
			tc.mu.Unlock()
			if _, werr := c.Write(buf[:n]); err != nil || werr != nil {
				c.Close()
				return
			}
		}
	}()
	if tc.Conn, err = net.Dial("tcp", ln.Addr().String()); err != nil {
		up.Close()
		return nil, err
	}
	<-accepted
	t.Cleanup(func() { tc.Conn.Close(); up.Close() })
	return tc, nil
}

// readTap records in tap what the client reads, for a connection that
// dialTapped's proxy would see encrypted (TLS): failure messages then say
// what the server sent on it too.
type readTap struct {
	net.Conn
	tap *tapConn
}

func (r readTap) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	r.tap.mu.Lock()
	r.tap.got.Write(b[:n])
	r.tap.upErr = err
	r.tap.mu.Unlock()
	return n, err
}

// each calls fn with each packet the server sent so far (v5). A packet is
// valid only during the call: the reader reuses its buffer.
func (c *tapConn) each(fn func(packet.Packet)) {
	c.mu.Lock()
	b := bytes.Clone(c.got.Bytes())
	c.mu.Unlock()
	r := packet.NewReader(bytes.NewReader(b), 0)
	r.SetVersion(packet.V5)
	for {
		p, err := r.ReadPacket()
		if err != nil {
			return
		}
		fn(p)
	}
}

// summary lists the packets the server sent, for failure messages.
func (c *tapConn) summary() string {
	var s []string
	c.each(func(p packet.Packet) {
		x := p.Type().String()
		switch p := p.(type) {
		case *packet.Suback:
			x += fmt.Sprintf("(%d)", p.PacketID)
		case *packet.Puback:
			x += fmt.Sprintf("(%d)", p.PacketID)
		case *packet.Pubrec:
			x += fmt.Sprintf("(%d)", p.PacketID)
		case *packet.Pubcomp:
			x += fmt.Sprintf("(%d)", p.PacketID)
		case *packet.Publish:
			x += fmt.Sprintf("(%s %d)", p.Topic, p.PacketID)
		case *packet.Disconnect:
			x += fmt.Sprintf("(%v %q)", p.ReasonCode, p.Properties.ReasonString)
		}
		s = append(s, x)
	})
	return strings.Join(s, " ")
}

// waitDisconnect waits for the server's DISCONNECT on c and returns its
// reason code and Reason String.
func (c *tapConn) waitDisconnect(t *testing.T) (packet.ReasonCode, string) {
	t.Helper()
	var code packet.ReasonCode
	var reason string
	found := false
	waitUntil(t, "a DISCONNECT from the server", func() bool {
		c.each(func(p packet.Packet) {
			if d, ok := p.(*packet.Disconnect); ok {
				code, reason, found = d.ReasonCode, strings.Clone(d.Properties.ReasonString), true
			}
		})
		return found
	})
	return code, reason
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s in 30s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fclient is a paho.golang v5 client with what it received.
type fclient struct {
	*paho.Client
	tap  *tapConn
	ack  *paho.Connack
	msgs chan *paho.Publish
	err  error // Connect's
}

type fopts struct {
	dial   func() (net.Conn, error) // default TCP to the node
	manual bool                     // EnableManualAcknowledgment
	pinger paho.Pinger              // default paho's over TCP, silentPinger with dial
}

// silentPinger never pings: the client goes quiet after CONNECT.
type silentPinger struct{}

func (silentPinger) Run(ctx context.Context, _ net.Conn, _ uint16) error { <-ctx.Done(); return nil }
func (silentPinger) PacketSent()                                         {}
func (silentPinger) PacketReceived()                                     {}
func (silentPinger) PingResp()                                           {}
func (silentPinger) SetDebug(paholog.Logger)                             {}

// connectV5 connects cp; a refused CONNECT returns the client with err set.
func (n *featNode) connectV5(t *testing.T, cp *paho.Connect, o fopts) *fclient {
	t.Helper()
	c := &fclient{msgs: make(chan *paho.Publish, 1000)}
	var err error
	if o.dial == nil {
		c.tap, err = dialTapped(t, n.tcp)
	} else {
		c.tap = &tapConn{}
		var nc net.Conn
		if nc, err = o.dial(); err == nil {
			c.tap.Conn = readTap{Conn: nc, tap: c.tap}
		}
		// paho writes a packet in several Writes (net.Buffers), one
		// syscall (writev) on TCP but one Write each through TLS, and
		// its pinger sends a PINGREQ at once from its own goroutine: the
		// PINGREQ then lands inside the first SUBSCRIBE now and then,
		// which the server rightly finds malformed (0x81).
		if o.pinger == nil {
			o.pinger = silentPinger{}
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	c.Client = paho.NewClient(paho.ClientConfig{Conn: c.tap.Conn, EnableManualAcknowledgment: o.manual, PingHandler: o.pinger,
		PacketTimeout: 30 * time.Second, // paho's 10 s is short on a loaded machine under -race
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			c.msgs <- pr.Packet
			return true, nil
		}},
		OnClientError: func(error) {}, OnServerDisconnect: func(*paho.Disconnect) {}})
	if cp.KeepAlive == 0 {
		cp.KeepAlive = 30
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c.ack, c.err = c.Connect(ctx, cp)
	if c.err == nil {
		t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	} else if c.ack == nil {
		t.Fatalf("connect %q: %v", cp.ClientID, c.err)
	}
	return c
}

// v5c connects a clean-start v5 client over TCP.
func (n *featNode) v5c(t *testing.T, id string) *fclient {
	t.Helper()
	c := n.connectV5(t, &paho.Connect{ClientID: id, CleanStart: true}, fopts{})
	if c.err != nil {
		t.Fatalf("connect %s: %v", id, c.err)
	}
	return c
}

func fctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (c *fclient) sub(t *testing.T, s *paho.Subscribe) []byte {
	t.Helper()
	sa, err := c.Subscribe(fctx(t), s)
	if sa == nil {
		t.Fatalf("subscribe: %v; the server sent %s", err, c.tap.summary())
	}
	return sa.Reasons
}

func (c *fclient) pub(t *testing.T, p *paho.Publish) *paho.PublishResponse {
	t.Helper()
	r, err := c.Publish(fctx(t), p)
	if r == nil {
		t.Fatalf("publish %s: %v; the server sent %s", p.Topic, err, c.tap.summary())
	}
	return r
}

func (c *fclient) next(t *testing.T) *paho.Publish {
	t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-time.After(30 * time.Second):
		t.Fatal("no message in 30s")
		return nil
	}
}

// upTo receives messages until one with payload last arrived; it returns
// the payloads before it.
func (c *fclient) upTo(t *testing.T, last string) []*paho.Publish {
	t.Helper()
	var got []*paho.Publish
	for {
		m := c.next(t)
		if string(m.Payload) == last {
			return got
		}
		got = append(got, m)
	}
}

func payloads(ms []*paho.Publish) []string {
	var s []string
	for _, m := range ms {
		s = append(s, string(m.Payload))
	}
	return s
}

// TestMQTTFeatures runs each feature of the issue against one node; the
// subtests are independent (own client ids and topics) and run in order.
func TestMQTTFeatures(t *testing.T) {
	n := startFeatNode(t)
	for _, tc := range []struct {
		name string
		run  func(*testing.T, *featNode)
	}{
		{"qos012-user-properties-request-response", featRequestResponse},
		{"retain-handling", featRetainHandling},
		{"retain-as-published", featRetainAsPublished},
		{"no-local", featNoLocal},
		{"subscription-identifiers", featSubscriptionIDs},
		{"topic-alias-inbound", featTopicAliasIn},
		{"topic-alias-outbound", featTopicAliasOut},
		{"message-expiry", featMessageExpiry},
		{"receive-maximum", featReceiveMaximum},
		{"maximum-packet-size-client", featMaxPacketClient},
		{"maximum-packet-size-server", featMaxPacketServer},
		{"assigned-client-id", featAssignedID},
		{"session-takeover-0x8e", featTakeover},
		{"session-expiry", featSessionExpiry},
		{"will-delay", featWillDelay},
		{"keep-alive-timeout", featKeepAlive},
		{"shared-subscriptions", featShared},
		{"sys-topics", featSys},
		{"delayed-publish", featDelayed},
		{"auth-and-acl", featAuthACL},
		{"queue-limit", featQueueLimit},
		{"bad-input", featBadInput},
		{"websocket-and-wss", featWebSocket},
		{"tls-v5", featTLSv5},
		{"mosquitto", featMosquitto},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, n) })
	}
	if code := n.p.terminate(t); code != 0 {
		t.Fatalf("exit status after SIGTERM = %d\n%s", code, n.p.stderr)
	}
}

// featRequestResponse: QoS 0, 1 and 2 end to end; user properties,
// content type, payload format, response topic and correlation data reach
// the subscriber unchanged, which answers on the response topic.
func featRequestResponse(t *testing.T, n *featNode) {
	req, resp := n.v5c(t, "rr-requester"), n.v5c(t, "rr-responder")
	resp.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "rr/service", QoS: 2}}})
	req.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "rr/reply/requester", QoS: 2}}})
	for qos := range byte(3) {
		corr := []byte{0, 1, qos, 0xff}
		r := req.pub(t, &paho.Publish{Topic: "rr/service", QoS: qos, Payload: []byte("ping"), Properties: &paho.PublishProperties{
			ResponseTopic: "rr/reply/requester", CorrelationData: corr, ContentType: "text/plain", PayloadFormat: paho.Byte(1),
			User: paho.UserProperties{{Key: "trace", Value: "t1"}, {Key: "trace", Value: "t2"}, {Key: "qos", Value: strconv.Itoa(int(qos))}}}})
		if qos > 0 && r.ReasonCode != 0 {
			t.Fatalf("QoS %d: reason %#x", qos, r.ReasonCode)
		}
		m := resp.next(t)
		p := m.Properties
		if m.QoS != qos || string(m.Payload) != "ping" || p == nil || p.ResponseTopic != "rr/reply/requester" ||
			!bytes.Equal(p.CorrelationData, corr) || p.ContentType != "text/plain" || p.PayloadFormat == nil || *p.PayloadFormat != 1 {
			t.Fatalf("QoS %d request arrived as %+v %+v", qos, m, p)
		}
		if got := p.User.GetAll("trace"); !slices.Equal(got, []string{"t1", "t2"}) || p.User.Get("qos") != strconv.Itoa(int(qos)) {
			t.Fatalf("user properties %v", p.User)
		}
		resp.pub(t, &paho.Publish{Topic: p.ResponseTopic, QoS: qos, Payload: []byte("pong"),
			Properties: &paho.PublishProperties{CorrelationData: p.CorrelationData}})
		if a := req.next(t); string(a.Payload) != "pong" || !bytes.Equal(a.Properties.CorrelationData, corr) {
			t.Fatalf("QoS %d response %q corr %x", qos, a.Payload, a.Properties.CorrelationData)
		}
	}
}

// featRetainHandling: Retain Handling 0 sends retained messages at every
// SUBSCRIBE, 1 only for a new subscription, 2 never (MQTT 5.0 §3.8.3.1);
// an empty retained payload clears.
func featRetainHandling(t *testing.T, n *featNode) {
	pub := n.v5c(t, "rh-pub")
	pub.pub(t, &paho.Publish{Topic: "rh/a", QoS: 1, Retain: true, Payload: []byte("kept")})
	c := n.v5c(t, "rh-sub")
	subscribe := func(filter string, rh byte) []string {
		c.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1, RetainHandling: rh}}})
		pub.pub(t, &paho.Publish{Topic: filter, QoS: 1, Payload: []byte("marker")})
		var got []string
		for _, m := range c.upTo(t, "marker") {
			got = append(got, fmt.Sprintf("%s retain=%v", m.Payload, m.Retain))
		}
		return got
	}
	for _, step := range []struct {
		filter string
		rh     byte
		want   []string
	}{
		{"rh/a", 0, []string{"kept retain=true"}},
		{"rh/a", 0, []string{"kept retain=true"}}, // again: 0 sends at every SUBSCRIBE
		{"rh/a", 1, nil}, // exists already
		{"rh/a", 2, nil},
	} {
		if got := subscribe(step.filter, step.rh); !slices.Equal(got, step.want) {
			t.Fatalf("Retain Handling %d on %s: got %q, want %q", step.rh, step.filter, got, step.want)
		}
	}
	c2 := n.v5c(t, "rh-sub2")
	c2.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "rh/+", QoS: 1, RetainHandling: 1}}})
	if m := c2.next(t); string(m.Payload) != "kept" || !m.Retain {
		t.Fatalf("Retain Handling 1 on a new subscription: %q retain=%v", m.Payload, m.Retain)
	}
	c3 := n.v5c(t, "rh-sub3")
	c3.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "rh/#", QoS: 1, RetainHandling: 2}}})
	pub.pub(t, &paho.Publish{Topic: "rh/b", QoS: 1, Payload: []byte("marker")})
	if got := c3.upTo(t, "marker"); len(got) != 0 {
		t.Fatalf("Retain Handling 2 sent %q", payloads(got))
	}
	pub.pub(t, &paho.Publish{Topic: "rh/a", QoS: 1, Retain: true}) // clear
	c4 := n.v5c(t, "rh-sub4")
	c4.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "rh/#", QoS: 1}}})
	pub.pub(t, &paho.Publish{Topic: "rh/b", QoS: 1, Payload: []byte("marker")})
	if got := c4.upTo(t, "marker"); len(got) != 0 {
		t.Fatalf("a cleared retained message was sent: %q", payloads(got))
	}
}

// featRetainAsPublished: a live retained PUBLISH reaches a subscriber with
// Retain As Published with RETAIN 1, and one without it with RETAIN 0.
func featRetainAsPublished(t *testing.T, n *featNode) {
	rap, plain, pub := n.v5c(t, "rap-yes"), n.v5c(t, "rap-no"), n.v5c(t, "rap-pub")
	rap.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "rap/t", QoS: 1, RetainAsPublished: true}}})
	plain.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "rap/t", QoS: 1}}})
	pub.pub(t, &paho.Publish{Topic: "rap/t", QoS: 1, Retain: true, Payload: []byte("r")})
	if m := rap.next(t); !m.Retain {
		t.Error("Retain As Published: RETAIN 0")
	}
	if m := plain.next(t); m.Retain {
		t.Error("without Retain As Published: RETAIN 1 on a live message")
	}
	pub.pub(t, &paho.Publish{Topic: "rap/t", QoS: 1, Retain: true})
}

// featNoLocal: a No Local subscriber does not get its own messages.
func featNoLocal(t *testing.T, n *featNode) {
	c, other := n.v5c(t, "nl-self"), n.v5c(t, "nl-other")
	c.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "nl/#", QoS: 1, NoLocal: true}}})
	c.pub(t, &paho.Publish{Topic: "nl/x", QoS: 1, Payload: []byte("own")})
	other.pub(t, &paho.Publish{Topic: "nl/x", QoS: 1, Payload: []byte("marker")})
	if got := c.upTo(t, "marker"); len(got) != 0 {
		t.Fatalf("No Local delivered %q", payloads(got))
	}
}

// featSubscriptionIDs: each message carries the identifier of the
// subscription it matched; an UNSUBSCRIBE of one filter leaves the other.
func featSubscriptionIDs(t *testing.T, n *featNode) {
	c, pub := n.v5c(t, "sid-sub"), n.v5c(t, "sid-pub")
	for id, f := range map[int]string{7: "sid/a/+", 300000: "sid/b/#"} {
		c.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: f, QoS: 1}},
			Properties: &paho.SubscribeProperties{SubscriptionIdentifier: func() *int { i := id; return &i }()}})
	}
	for topic, want := range map[string]int{"sid/a/1": 7, "sid/b/1/2": 300000} {
		pub.pub(t, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(topic)})
		m := c.next(t)
		if m.Topic != topic || m.Properties == nil || m.Properties.SubscriptionIdentifier == nil || *m.Properties.SubscriptionIdentifier != want {
			t.Fatalf("%s: got %s with %+v, want identifier %d", topic, m.Topic, m.Properties, want)
		}
	}
	// Two matching subscriptions of one session: one copy with both
	// identifiers (MQTT 5.0 §3.3.4). paho.golang keeps only one of them,
	// so the check reads the PUBLISH off the wire.
	for id, f := range map[int]string{11: "sid/c/#", 12: "sid/c/+"} {
		c.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: f, QoS: 1}},
			Properties: &paho.SubscribeProperties{SubscriptionIdentifier: func() *int { i := id; return &i }()}})
	}
	pub.pub(t, &paho.Publish{Topic: "sid/c/x", QoS: 1, Payload: []byte("both")})
	pub.pub(t, &paho.Publish{Topic: "sid/a/1", QoS: 1, Payload: []byte("marker")})
	if got := c.upTo(t, "marker"); len(got) != 1 {
		t.Fatalf("%d copies for two matching subscriptions, want 1", len(got))
	}
	var ids []int
	c.tap.each(func(p packet.Packet) {
		if p, ok := p.(*packet.Publish); ok && p.Topic == "sid/c/x" {
			for _, id := range p.Properties.SubscriptionIdentifiers {
				ids = append(ids, int(id))
			}
		}
	})
	if slices.Sort(ids); !slices.Equal(ids, []int{11, 12}) {
		t.Fatalf("subscription identifiers %v, want [11 12]", ids)
	}
}

// featTopicAliasIn: a client PUBLISH that sets an alias with the topic and
// then sends the alias alone reaches subscribers under the topic.
func featTopicAliasIn(t *testing.T, n *featNode) {
	sub, pub := n.v5c(t, "tai-sub"), n.v5c(t, "tai-pub")
	if a := pub.ack.Properties.TopicAliasMaximum; a == nil || *a == 0 {
		t.Fatal("CONNACK has no Topic Alias Maximum")
	}
	sub.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "tai/#", QoS: 1}}})
	pub.pub(t, &paho.Publish{Topic: "tai/long/topic", QoS: 1, Payload: []byte("1"), Properties: &paho.PublishProperties{TopicAlias: paho.Uint16(3)}})
	pub.pub(t, &paho.Publish{QoS: 1, Payload: []byte("2"), Properties: &paho.PublishProperties{TopicAlias: paho.Uint16(3)}})
	for _, want := range []string{"1", "2"} {
		if m := sub.next(t); m.Topic != "tai/long/topic" || string(m.Payload) != want {
			t.Fatalf("got %q on %q, want %q on tai/long/topic", m.Payload, m.Topic, want)
		}
	}
}

// featTopicAliasOut: to a client with Topic Alias Maximum, the server sends
// the topic with an alias once, then the alias alone.
func featTopicAliasOut(t *testing.T, n *featNode) {
	sub := n.connectV5(t, &paho.Connect{ClientID: "tao-sub", CleanStart: true,
		Properties: &paho.ConnectProperties{TopicAliasMaximum: paho.Uint16(4)}}, fopts{})
	pub := n.v5c(t, "tao-pub")
	sub.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "tao/#", QoS: 1}}})
	for i := range 3 {
		pub.pub(t, &paho.Publish{Topic: "tao/sensor/temperature", QoS: 1, Payload: []byte{byte('0' + i)}})
	}
	first := sub.next(t)
	if first.Topic != "tao/sensor/temperature" || first.Properties == nil || first.Properties.TopicAlias == nil {
		t.Fatalf("first PUBLISH: topic %q alias %+v", first.Topic, first.Properties)
	}
	alias := *first.Properties.TopicAlias
	if alias == 0 || alias > 4 {
		t.Fatalf("alias %d outside 1..4", alias)
	}
	for range 2 {
		m := sub.next(t)
		if m.Topic != "" || m.Properties == nil || m.Properties.TopicAlias == nil || *m.Properties.TopicAlias != alias {
			t.Fatalf("later PUBLISH: topic %q alias %+v, want the alias %d alone", m.Topic, m.Properties, alias)
		}
	}
}

// featMessageExpiry: a message whose expiry passes while its subscriber is
// offline is not delivered; one that has not expired arrives with the
// remaining interval.
func featMessageExpiry(t *testing.T, n *featNode) {
	persistent := &paho.Connect{ClientID: "exp-sub", Properties: &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(600)}}
	s := n.connectV5(t, persistent, fopts{})
	s.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "exp/#", QoS: 1}}})
	s.Disconnect(&paho.Disconnect{})
	pub := n.v5c(t, "exp-pub")
	before := n.metric(t, `quire_mqtt_messages_dropped_total{reason="expired"}`)
	pub.pub(t, &paho.Publish{Topic: "exp/short", QoS: 1, Payload: []byte("short"), Properties: &paho.PublishProperties{MessageExpiry: paho.Uint32(1)}})
	pub.pub(t, &paho.Publish{Topic: "exp/long", QoS: 1, Payload: []byte("long"), Properties: &paho.PublishProperties{MessageExpiry: paho.Uint32(3600)}})
	pub.pub(t, &paho.Publish{Topic: "expret/short", QoS: 1, Retain: true, Payload: []byte("short"), Properties: &paho.PublishProperties{MessageExpiry: paho.Uint32(1)}})
	pub.pub(t, &paho.Publish{Topic: "expret/long", QoS: 1, Retain: true, Payload: []byte("long"), Properties: &paho.PublishProperties{MessageExpiry: paho.Uint32(3600)}})
	time.Sleep(2500 * time.Millisecond) // the 1 s expiry passes
	// A retained message expires too (MQTT 5.0 §3.3.2.3.3).
	late := n.v5c(t, "exp-late")
	late.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "expret/#", QoS: 1}}})
	pub.pub(t, &paho.Publish{Topic: "expret/x", QoS: 1, Payload: []byte("marker")})
	if got := late.upTo(t, "marker"); len(got) != 1 || string(got[0].Payload) != "long" || got[0].Properties.MessageExpiry == nil ||
		*got[0].Properties.MessageExpiry > 3600-2 {
		t.Fatalf("retained after 2.5 s: %q, want only the unexpired one with its remaining expiry", payloads(got))
	}
	pub.pub(t, &paho.Publish{Topic: "expret/long", QoS: 1, Retain: true})
	s = n.connectV5(t, persistent, fopts{})
	if !s.ack.SessionPresent {
		t.Fatal("Session Present 0")
	}
	m := s.next(t)
	if string(m.Payload) != "long" {
		t.Fatalf("got %q first, want only the unexpired message", m.Payload)
	}
	if e := m.Properties.MessageExpiry; e == nil || *e > 3600-2 || *e == 0 {
		t.Fatalf("remaining expiry %v, want below 3599", e)
	}
	if d := n.metric(t, `quire_mqtt_messages_dropped_total{reason="expired"}`) - before; d < 1 {
		t.Fatalf("expired drops %v, want at least the queued one", d)
	}
	s.Disconnect(&paho.Disconnect{Properties: &paho.DisconnectProperties{SessionExpiryInterval: paho.Uint32(0)}})
}

// featReceiveMaximum: the server has at most Receive Maximum QoS 1
// messages unacknowledged at a client; acknowledging frees room.
func featReceiveMaximum(t *testing.T, n *featNode) {
	c := n.connectV5(t, &paho.Connect{ClientID: "rm-sub", CleanStart: true,
		Properties: &paho.ConnectProperties{ReceiveMaximum: paho.Uint16(2)}}, fopts{manual: true})
	c.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "rm/t", QoS: 1}}})
	heldAt(t, c, n.v5c(t, "rm-pub"), "rm/t", 2, "Receive Maximum 2")
}

// heldAt publishes five QoS 1 messages to topic with pub and checks that
// c, subscribed to it and acknowledging by hand, has at most bound of them
// unacknowledged (the reason: why), and that each acknowledgement lets the
// next one go, in order.
func heldAt(t *testing.T, c, pub *fclient, topic string, bound int, why string) {
	t.Helper()
	for i := range 5 {
		pub.pub(t, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte{byte('0' + i)}})
	}
	var got []*paho.Publish
	for range bound {
		got = append(got, c.next(t))
	}
	select {
	case m := <-c.msgs:
		t.Fatalf("unacknowledged message %d (%q) with %s", bound+1, m.Payload, why)
	case <-time.After(time.Second):
	}
	for len(got) < 5 {
		if err := c.Ack(got[len(got)-bound]); err != nil {
			t.Fatal(err)
		}
		got = append(got, c.next(t))
	}
	if p := strings.Join(payloads(got), ""); p != "01234" {
		t.Fatalf("order %q", p)
	}
	for _, m := range got[5-bound:] {
		c.Ack(m)
	}
}

// featMaxPacketClient: a message larger than the client's Maximum Packet
// Size is not sent to it (and counted); the next one is.
func featMaxPacketClient(t *testing.T, n *featNode) {
	c := n.connectV5(t, &paho.Connect{ClientID: "mps-sub", CleanStart: true,
		Properties: &paho.ConnectProperties{MaximumPacketSize: paho.Uint32(512)}}, fopts{})
	c.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "mps/t", QoS: 1}}})
	pub := n.v5c(t, "mps-pub")
	before := n.metric(t, `quire_mqtt_messages_dropped_total{reason="packet_too_large"}`)
	pub.pub(t, &paho.Publish{Topic: "mps/t", QoS: 1, Payload: bytes.Repeat([]byte("x"), 2000)})
	pub.pub(t, &paho.Publish{Topic: "mps/t", QoS: 1, Payload: []byte("marker")})
	if got := c.upTo(t, "marker"); len(got) != 0 {
		t.Fatalf("got %d messages over the client's Maximum Packet Size", len(got))
	}
	if d := n.metric(t, `quire_mqtt_messages_dropped_total{reason="packet_too_large"}`) - before; d != 1 {
		t.Fatalf("packet_too_large drops %v, want 1", d)
	}
}

// featMaxPacketServer: CONNACK tells the configured Maximum Packet Size;
// a larger PUBLISH gets DISCONNECT 0x95 with a Reason String, read by the
// client before the connection ends, and other clients are served on.
func featMaxPacketServer(t *testing.T, n *featNode) {
	c := n.v5c(t, "mpss-big")
	if m := c.ack.Properties.MaximumPacketSize; m == nil || *m != featMaxPacket {
		t.Fatalf("CONNACK Maximum Packet Size %v, want %d", m, featMaxPacket)
	}
	go c.Publish(context.Background(), &paho.Publish{Topic: "mpss/t", QoS: 1, Payload: make([]byte, featMaxPacket+1)})
	// The server half-closes after the DISCONNECT and drains what is left
	// of the packet before closing (no TCP reset to overtake it).
	var code packet.ReasonCode
	var reason string
	found := false
	waitUntil(t, "a DISCONNECT or the end of the connection", func() bool {
		c.tap.each(func(p packet.Packet) {
			if d, ok := p.(*packet.Disconnect); ok {
				code, reason, found = d.ReasonCode, strings.Clone(d.Properties.ReasonString), true
			}
		})
		c.tap.mu.Lock()
		ended := c.tap.upErr != nil
		c.tap.mu.Unlock()
		return found || ended
	})
	if !found {
		c.tap.mu.Lock()
		defer c.tap.mu.Unlock()
		t.Fatalf("the connection ended before the DISCONNECT arrived: %v", c.tap.upErr)
	}
	if code != packet.PacketTooLarge || reason == "" {
		t.Fatalf("DISCONNECT %v %q, want 0x95 with a reason string", code, reason)
	}
	ok := n.v5c(t, "mpss-ok")
	if r := ok.pub(t, &paho.Publish{Topic: "mpss/t", QoS: 1, Payload: make([]byte, featMaxPacket/2)}); r.ReasonCode != 0 {
		t.Fatalf("publish below the limit: %#x", r.ReasonCode)
	}
}

// featAssignedID: a v5 client without a client id is assigned one, and a
// 3.1.1 clean-session client without one is accepted.
func featAssignedID(t *testing.T, n *featNode) {
	c := n.connectV5(t, &paho.Connect{CleanStart: true}, fopts{})
	if c.err != nil || !strings.HasPrefix(c.ack.Properties.AssignedClientID, "quire-") {
		t.Fatalf("assigned client id %q (%v)", c.ack.Properties.AssignedClientID, c.err)
	}
	c3 := paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + n.tcp).SetClientID("").SetCleanSession(true).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(20 * time.Second))
	wait3(t, c3.Connect())
	c3.Disconnect(50)
}

// featTakeover: a second CONNECT with the same client id gets the session;
// the first connection gets DISCONNECT 0x8E with a Reason String.
func featTakeover(t *testing.T, n *featNode) {
	persistent := &paho.Connect{ClientID: "to-same", Properties: &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(600)}}
	first := n.connectV5(t, persistent, fopts{})
	first.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "to/t", QoS: 1}}})
	before := n.metric(t, "quire_mqtt_session_takeovers_total")
	second := n.connectV5(t, persistent, fopts{})
	if second.err != nil || !second.ack.SessionPresent {
		t.Fatalf("takeover CONNACK: %v present=%v", second.err, second.ack.SessionPresent)
	}
	if code, reason := first.tap.waitDisconnect(t); code != packet.SessionTakenOver || reason == "" {
		t.Fatalf("DISCONNECT %v %q, want 0x8E with a reason string", code, reason)
	}
	if n.metric(t, "quire_mqtt_session_takeovers_total")-before != 1 {
		t.Fatal("takeover not counted")
	}
	pub := n.v5c(t, "to-pub")
	pub.pub(t, &paho.Publish{Topic: "to/t", QoS: 1, Payload: []byte("to the new connection")})
	if m := second.next(t); string(m.Payload) != "to the new connection" {
		t.Fatalf("got %q", m.Payload)
	}
	second.Disconnect(&paho.Disconnect{Properties: &paho.DisconnectProperties{SessionExpiryInterval: paho.Uint32(0)}})
}

// featSessionExpiry: a session outlives its connection for its Session
// Expiry Interval, not longer.
func featSessionExpiry(t *testing.T, n *featNode) {
	for _, tc := range []struct {
		expiry  uint32
		present bool
	}{{1, false}, {600, true}} {
		id := fmt.Sprintf("se-%d", tc.expiry)
		cp := func() *paho.Connect {
			return &paho.Connect{ClientID: id, Properties: &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(tc.expiry)}}
		}
		c := n.connectV5(t, cp(), fopts{})
		c.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "se/t", QoS: 1}}})
		c.Disconnect(&paho.Disconnect{})
		time.Sleep(2500 * time.Millisecond) // past the 1 s expiry
		c = n.connectV5(t, cp(), fopts{})
		if c.ack.SessionPresent != tc.present {
			t.Fatalf("expiry %d s: Session Present %v after 2.5 s offline", tc.expiry, c.ack.SessionPresent)
		}
		c.Disconnect(&paho.Disconnect{Properties: &paho.DisconnectProperties{SessionExpiryInterval: paho.Uint32(0)}})
	}
}

// featWillDelay: a will with Will Delay Interval is published no earlier
// than the delay after the connection dropped; a client that reconnects
// within the delay cancels it; a normal DISCONNECT never publishes it.
func featWillDelay(t *testing.T, n *featNode) {
	watch := n.v5c(t, "will-watch")
	watch.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "will/#", QoS: 1}}})
	willConnect := func(id string, delay uint32) *paho.Connect {
		return &paho.Connect{ClientID: id, Properties: &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(600)},
			WillMessage:    &paho.WillMessage{Topic: "will/" + id, QoS: 1, Payload: []byte("gone " + id)},
			WillProperties: &paho.WillProperties{WillDelayInterval: paho.Uint32(delay)}}
	}
	// Reconnects within 60 s: no will; then a normal DISCONNECT: no will.
	c := n.connectV5(t, willConnect("will-back", 60), fopts{})
	c.tap.Conn.Close()
	c = n.connectV5(t, willConnect("will-back", 60), fopts{})
	if !c.ack.SessionPresent {
		t.Fatal("Session Present 0 within the will delay")
	}
	c.Disconnect(&paho.Disconnect{Properties: &paho.DisconnectProperties{SessionExpiryInterval: paho.Uint32(0)}})
	// Drops for good: the will comes after 2 s.
	c = n.connectV5(t, willConnect("will-late", 2), fopts{})
	dropped := time.Now()
	c.tap.Conn.Close()
	m := watch.next(t)
	if string(m.Payload) != "gone will-late" {
		t.Fatalf("will %q on %s, want will-late's (a cancelled will was published?)", m.Payload, m.Topic)
	}
	if e := time.Since(dropped); e < 1500*time.Millisecond {
		t.Fatalf("will published %v after the drop, want the 2 s delay", e)
	}
}

// featKeepAlive: a client silent for 1.5 times its keep alive gets
// DISCONNECT 0x8D with a Reason String and is closed; its will (no
// DISCONNECT was sent) is published.
func featKeepAlive(t *testing.T, n *featNode) {
	watch := n.v5c(t, "ka-watch")
	watch.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "ka/will", QoS: 1}}})
	c := n.connectV5(t, &paho.Connect{ClientID: "ka-silent", CleanStart: true, KeepAlive: 1,
		WillMessage: &paho.WillMessage{Topic: "ka/will", QoS: 1, Payload: []byte("timed out")}}, fopts{pinger: silentPinger{}})
	if c.err != nil {
		t.Fatal(c.err)
	}
	if code, reason := c.tap.waitDisconnect(t); code != packet.KeepAliveTimeout || reason == "" {
		t.Fatalf("DISCONNECT %v %q, want 0x8D with a reason string", code, reason)
	}
	if m := watch.next(t); string(m.Payload) != "timed out" {
		t.Fatalf("will %q", m.Payload)
	}
}

// featShared: a shared subscription delivers each message to one member;
// what a member got and did not acknowledge goes to another member when
// its connection drops.
func featShared(t *testing.T, n *featNode) {
	slow := n.connectV5(t, &paho.Connect{ClientID: "sh-slow", CleanStart: true}, fopts{manual: true}) // never acknowledges
	fast := n.v5c(t, "sh-fast")
	for _, c := range []*fclient{slow, fast} {
		if r := c.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$share/workers/jobs/#", QoS: 1}}}); r[0] != 1 {
			t.Fatalf("SUBACK %x", r)
		}
	}
	pub := n.v5c(t, "sh-pub")
	var want []string
	for i := range 20 {
		p := fmt.Sprintf("job-%02d", i)
		pub.pub(t, &paho.Publish{Topic: fmt.Sprintf("jobs/%d", i%3), QoS: 1, Payload: []byte(p)})
		want = append(want, p)
	}
	seen := map[string]string{}
	var slowGot []string
	for len(seen) < 20 {
		select {
		case m := <-slow.msgs:
			if w := seen[string(m.Payload)]; w != "" {
				t.Fatalf("%s delivered to two members", m.Payload)
			}
			seen[string(m.Payload)] = "slow"
			slowGot = append(slowGot, string(m.Payload))
		case m := <-fast.msgs:
			if w := seen[string(m.Payload)]; w != "" {
				t.Fatalf("%s delivered to two members", m.Payload)
			}
			seen[string(m.Payload)] = "fast"
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of 20 shared messages delivered", len(seen))
		}
	}
	for _, p := range want {
		if seen[p] == "" {
			t.Fatalf("%s never delivered (got %v)", p, seen)
		}
	}
	if len(slowGot) == 0 || len(slowGot) == 20 {
		t.Fatalf("one member got %d of 20: no dispatch across members", len(slowGot))
	}
	before := n.metric(t, "quire_mqtt_shared_redelivered_total")
	slow.tap.Conn.Close()
	redelivered := map[string]bool{}
	for len(redelivered) < len(slowGot) {
		m := fast.next(t)
		if slices.Contains(slowGot, string(m.Payload)) {
			redelivered[string(m.Payload)] = true
		}
	}
	if d := n.metric(t, "quire_mqtt_shared_redelivered_total") - before; d < float64(len(slowGot)) {
		t.Fatalf("shared_redelivered_total grew by %v, want %d", d, len(slowGot))
	}
}

// featSys: $SYS/broker/ topics are served, as retained messages, and
// clients may not publish there.
func featSys(t *testing.T, n *featNode) {
	c := n.v5c(t, "sys-sub")
	c.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$SYS/broker/version", QoS: 0}}})
	if m := c.next(t); !strings.HasPrefix(string(m.Payload), "quire") || !m.Retain {
		t.Fatalf("$SYS/broker/version = %q retain=%v", m.Payload, m.Retain)
	}
	c.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$SYS/broker/clients/connected", QoS: 0}}})
	if m := c.next(t); m.Topic != "$SYS/broker/clients/connected" {
		t.Fatalf("got %s", m.Topic)
	} else if v, err := strconv.Atoi(string(m.Payload)); err != nil || v < 0 {
		t.Fatalf("clients/connected = %q", m.Payload)
	}
	if r := c.pub(t, &paho.Publish{Topic: "$SYS/broker/version", QoS: 1, Payload: []byte("fake")}); r.ReasonCode < 0x80 {
		t.Fatalf("a client publish to $SYS was accepted (%#x)", r.ReasonCode)
	}
}

// featDelayed: $delayed/<seconds>/<topic> is delivered on the topic after
// the delay, not before.
func featDelayed(t *testing.T, n *featNode) {
	sub, pub := n.v5c(t, "dl-sub"), n.v5c(t, "dl-pub")
	sub.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "dl/#", QoS: 1}}})
	start := time.Now()
	if r := pub.pub(t, &paho.Publish{Topic: "$delayed/2/dl/x", QoS: 1, Payload: []byte("later")}); r.ReasonCode != 0 {
		t.Fatalf("delayed publish refused: %#x", r.ReasonCode)
	}
	m := sub.next(t)
	if m.Topic != "dl/x" || string(m.Payload) != "later" {
		t.Fatalf("got %q on %s", m.Payload, m.Topic)
	}
	if e := time.Since(start); e < 1500*time.Millisecond {
		t.Fatalf("delivered after %v, want the 2 s delay", e)
	}
}

// featAuthACL: bcrypt users from the config, ACL rules with %u for
// publish, subscribe, retained messages and wills; refusals carry reason
// codes (and a Reason String in CONNACK).
func featAuthACL(t *testing.T, n *featNode) {
	bad := n.connectV5(t, &paho.Connect{ClientID: "acl-bad", CleanStart: true, Username: "alice", UsernameFlag: true,
		Password: []byte("wrong"), PasswordFlag: true}, fopts{})
	if bad.err == nil || bad.ack.ReasonCode != byte(packet.BadUserNameOrPassword) || bad.ack.Properties.ReasonString == "" {
		t.Fatalf("wrong password: CONNACK %#x %q (%v)", bad.ack.ReasonCode, bad.ack.Properties.ReasonString, bad.err)
	}
	alice := n.connectV5(t, &paho.Connect{ClientID: "acl-alice", CleanStart: true, Username: "alice", UsernameFlag: true,
		Password: []byte("alice-pw"), PasswordFlag: true}, fopts{})
	if alice.err != nil {
		t.Fatal(alice.err)
	}
	if r := alice.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: "users/alice/#", QoS: 1}, {Topic: "users/bob/#", QoS: 1}}}); !bytes.Equal(r, []byte{1, byte(packet.NotAuthorized)}) {
		t.Fatalf("alice SUBACK %x", r)
	}
	if r := alice.pub(t, &paho.Publish{Topic: "users/bob/x", QoS: 1, Payload: []byte("no")}); r.ReasonCode != byte(packet.NotAuthorized) {
		t.Fatalf("publish to another user's topic: %#x", r.ReasonCode)
	}
	alice.pub(t, &paho.Publish{Topic: "users/alice/x", QoS: 1, Payload: []byte("mine"), Retain: true})
	if m := alice.next(t); string(m.Payload) != "mine" {
		t.Fatalf("got %q", m.Payload)
	}
	anon := n.v5c(t, "acl-anon")
	if r := anon.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "users/alice/#", QoS: 1}}}); r[0] != byte(packet.NotAuthorized) {
		t.Fatalf("anonymous SUBACK on users/alice/# %x", r)
	}
	if r := anon.pub(t, &paho.Publish{Topic: "secret/x", QoS: 1, Payload: []byte("no")}); r.ReasonCode != byte(packet.NotAuthorized) {
		t.Fatalf("anonymous publish to secret/x: %#x", r.ReasonCode)
	}
	// A subscription whose filter could match a denied topic is refused
	// (frontends/auth: a deny rule applies to every filter it intersects),
	// so no wildcard carries a denied topic's retained or live messages.
	for _, f := range []string{"#", "users/+/x", "+/alice/x"} {
		if r := anon.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: f, QoS: 1}}}); r[0] != byte(packet.NotAuthorized) {
			t.Fatalf("anonymous SUBACK on %s %x, want 0x87", f, r)
		}
	}
	if r := anon.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "public/#", QoS: 1}}}); r[0] != 1 {
		t.Fatalf("anonymous SUBACK on public/# %x", r)
	}
	alice.pub(t, &paho.Publish{Topic: "public/x", QoS: 1, Payload: []byte("open")})
	if m := anon.next(t); string(m.Payload) != "open" {
		t.Fatalf("got %q", m.Payload)
	}
	will := n.connectV5(t, &paho.Connect{ClientID: "acl-will", CleanStart: true,
		WillMessage: &paho.WillMessage{Topic: "secret/will", Payload: []byte("w")}}, fopts{})
	if will.err == nil || will.ack.ReasonCode != byte(packet.NotAuthorized) {
		t.Fatalf("a will on a denied topic: CONNACK %#x (%v)", will.ack.ReasonCode, will.err)
	}
	alice.pub(t, &paho.Publish{Topic: "users/alice/x", QoS: 1, Retain: true})
}

// featQueueLimit: an offline session's queue holds max_queued messages;
// the rest are dropped and counted.
func featQueueLimit(t *testing.T, n *featNode) {
	cp := func() *paho.Connect {
		return &paho.Connect{ClientID: "ql-sub", Properties: &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(600)}}
	}
	s := n.connectV5(t, cp(), fopts{})
	s.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "ql/t", QoS: 1}}})
	s.Disconnect(&paho.Disconnect{})
	before := n.metric(t, `quire_mqtt_messages_dropped_total{reason="queue_full"}`)
	pub := n.v5c(t, "ql-pub")
	for i := range featMaxQueued + 30 {
		pub.pub(t, &paho.Publish{Topic: "ql/t", QoS: 1, Payload: fmt.Appendf(nil, "m%03d", i)})
	}
	s = n.connectV5(t, cp(), fopts{})
	got := s.upTo(t, fmt.Sprintf("m%03d", featMaxQueued-1))
	if len(got) != featMaxQueued-1 {
		t.Fatalf("%d messages before the last queued one", len(got))
	}
	pub.pub(t, &paho.Publish{Topic: "ql/t", QoS: 1, Payload: []byte("marker")})
	if extra := s.upTo(t, "marker"); len(extra) != 0 {
		t.Fatalf("%d messages beyond max_queued = %d", len(extra), featMaxQueued)
	}
	if d := n.metric(t, `quire_mqtt_messages_dropped_total{reason="queue_full"}`) - before; d != 30 {
		t.Fatalf("queue_full drops %v, want 30", d)
	}
	s.Disconnect(&paho.Disconnect{Properties: &paho.DisconnectProperties{SessionExpiryInterval: paho.Uint32(0)}})
}

// featBadInput: malformed packets from raw connections close only that
// connection — v5 with DISCONNECT 0x81 and a Reason String, v3 silently —
// while a real client's subscription keeps being served.
func featBadInput(t *testing.T, n *featNode) {
	good, pub := n.v5c(t, "bad-good"), n.v5c(t, "bad-pub")
	good.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "bad/ok", QoS: 1}}})
	for _, tc := range []struct {
		name string
		v    packet.Version
		in   []byte
	}{
		{"v5 PUBLISH QoS 3", packet.V5, []byte{0x36, 0x05, 0x00, 0x01, 'x', 0x00, 0x01}},
		{"v5 reserved packet type 0", packet.V5, []byte{0x00, 0x00}},
		{"v5 SUBSCRIBE without filters", packet.V5, []byte{0x82, 0x03, 0x00, 0x01, 0x00}},
		{"v5 remaining length over 4 bytes", packet.V5, []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01}},
		{"v3.1.1 truncated SUBSCRIBE", packet.V311, []byte{0x82, 0x03, 0x00, 0x01, 0x00}},
		{"v3.1.1 second CONNECT", packet.V311, must((&packet.Connect{Version: packet.V311, CleanStart: true, ClientID: "x"}).Append(nil, packet.V311))},
	} {
		nc, err := net.Dial("tcp", n.tcp)
		if err != nil {
			t.Fatal(err)
		}
		nc.Write(must((&packet.Connect{Version: tc.v, CleanStart: true, ClientID: "bad-raw"}).Append(nil, tc.v)))
		nc.Write(tc.in)
		nc.SetReadDeadline(time.Now().Add(30 * time.Second))
		r := packet.NewReader(nc, 0)
		r.SetVersion(tc.v)
		if p, err := r.ReadPacket(); err != nil || p.Type() != packet.CONNACK {
			t.Fatalf("%s: CONNACK %v %v", tc.name, p, err)
		}
		p, err := r.ReadPacket()
		if tc.v == packet.V5 {
			d, ok := p.(*packet.Disconnect)
			if err != nil || !ok || d.ReasonCode < 0x80 || d.Properties.ReasonString == "" {
				t.Fatalf("%s: got %v (%v), want DISCONNECT with an error code and reason string", tc.name, p, err)
			}
			p, err = r.ReadPacket()
		}
		if err == nil {
			t.Fatalf("%s: connection open after bad input (read %v)", tc.name, p)
		}
		nc.Close()
	}
	pub.pub(t, &paho.Publish{Topic: "bad/ok", QoS: 1, Payload: []byte("still served")})
	if m := good.next(t); string(m.Payload) != "still served" {
		t.Fatalf("got %q", m.Payload)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// featWebSocket: paho.mqtt.golang (3.1.1) over ws:// and wss:// (path
// /mqtt, subprotocol mqtt), with a retained message and QoS 2.
func featWebSocket(t *testing.T, n *featNode) {
	for _, url := range []string{"ws://" + n.ws + "/mqtt", "wss://" + n.wss + "/mqtt"} {
		got := make(chan paho3.Message, 10)
		o := paho3.NewClientOptions().AddBroker(url).SetClientID("ws-" + url[:3]).SetProtocolVersion(4).
			SetAutoReconnect(false).SetConnectTimeout(20 * time.Second).SetTLSConfig(&tls.Config{RootCAs: n.roots}).
			SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) { got <- m })
		c := paho3.NewClient(o)
		wait3(t, c.Connect())
		topic := "ws/" + url[:3]
		wait3(t, c.Publish(topic, 2, true, "over "+url[:3]))
		wait3(t, c.Subscribe(topic, 2, nil))
		select {
		case m := <-got:
			if string(m.Payload()) != "over "+url[:3] || !m.Retained() || m.Qos() != 2 {
				t.Fatalf("%s: %q retained=%v qos=%d", url, m.Payload(), m.Retained(), m.Qos())
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: nothing delivered", url)
		}
		wait3(t, c.Publish(topic, 1, true, ""))
		c.Disconnect(50)
	}
}

// featTLSv5: paho.golang over TLS, to and from a TCP client.
func featTLSv5(t *testing.T, n *featNode) {
	tc := n.connectV5(t, &paho.Connect{ClientID: "tls-sub", CleanStart: true}, fopts{dial: func() (net.Conn, error) {
		return tls.Dial("tcp", n.tls, &tls.Config{RootCAs: n.roots})
	}})
	if tc.err != nil {
		t.Fatal(tc.err)
	}
	tc.sub(t, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "tls/t", QoS: 2}}})
	n.v5c(t, "tls-pub").pub(t, &paho.Publish{Topic: "tls/t", QoS: 2, Payload: []byte("secure")})
	if m := tc.next(t); string(m.Payload) != "secure" || m.QoS != 2 {
		t.Fatalf("got %q qos %d", m.Payload, m.QoS)
	}
}

// featMosquitto runs Debian's mosquitto_sub and mosquitto_pub for MQTT
// 3.1, 3.1.1 and 5 over TCP and TLS: QoS 0–2, retained messages, wills,
// user names; for v5 properties (-D), subscription identifiers, Retain As
// Published and Retain Handling.
func featMosquitto(t *testing.T, n *featNode) {
	if _, err := exec.LookPath("mosquitto_sub"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("mosquitto_sub not installed (make test installs mosquitto-clients)")
		}
		t.Skip("mosquitto-clients not installed; run make test")
	}
	for _, tr := range []struct {
		name string
		addr string
		args []string
	}{{"tcp", n.tcp, nil}, {"tls", n.tls, []string{"--cafile", n.caFile}}} {
		host, port, _ := net.SplitHostPort(tr.addr)
		conn := append([]string{"-h", host, "-p", port}, tr.args...)
		for _, v := range []string{"mqttv31", "mqttv311", "mqttv5"} {
			t.Run(tr.name+"/"+v, func(t *testing.T) {
				topic := "mosq/" + tr.name + "/" + v
				id := func(s string) string { return s + "-" + tr.name + "-" + v }
				run := func(args ...string) {
					t.Helper()
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					out, err := exec.CommandContext(ctx, "mosquitto_pub", append(append(slices.Clone(conn), "-V", v), args...)...).CombinedOutput()
					if err != nil {
						t.Fatalf("mosquitto_pub %v: %v %s", args, err, out)
					}
				}
				run("-i", id("ret"), "-t", topic+"/retained", "-r", "-q", "1", "-m", "kept")
				format := "%t|%p|%r|%q"
				var extra []string
				if v == "mqttv5" {
					format += "|%P|%R|%C|%D|%S"
					extra = []string{"-D", "subscribe", "subscription-identifier", "42", "--retain-as-published"}
				}
				sub := startMosquittoSub(t, append(append(slices.Clone(conn), "-V", v, "-i", id("sub"), "-t", topic+"/#", "-q", "2",
					"-C", "4", "-W", "30", "-F", format), extra...)...)
				waitUntil(t, "the retained message at mosquitto_sub", func() bool { return len(sub.lines()) >= 1 })
				props := []string{}
				if v == "mqttv5" {
					props = []string{"-D", "publish", "user-property", "k", "v", "-D", "publish", "response-topic", topic + "/reply",
						"-D", "publish", "content-type", "text/plain", "-D", "publish", "correlation-data", "c0ffee"}
				}
				for q := range 3 {
					run(append([]string{"-i", id("pub"), "-t", fmt.Sprintf("%s/q%d", topic, q), "-q", strconv.Itoa(q), "-m", fmt.Sprintf("qos %d", q), "-r"}, props...)...)
				}
				lines := sub.wait(t)
				want := []string{topic + "/retained|kept|1|1"}
				for q := range 3 {
					w := fmt.Sprintf("%s/q%d|qos %d|%d|%d", topic, q, q, 0, q)
					if v == "mqttv5" {
						// Retain As Published: the live retained PUBLISH keeps RETAIN 1.
						w = fmt.Sprintf("%s/q%d|qos %d|1|%d|k:v|%s/reply|text/plain|c0ffee|42", topic, q, q, q, topic)
					}
					want = append(want, w)
				}
				if v == "mqttv5" {
					want[0] += "|||||42"
				}
				slices.Sort(lines) // the three publishers' order is the scheduler's
				slices.Sort(want)
				if !slices.Equal(lines, want) {
					t.Fatalf("mosquitto_sub printed\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
				}
				// A killed mosquitto_sub's will is published; a retained
				// "ready" message tells when each client has subscribed.
				run("-i", id("rdy"), "-t", topic+"/will", "-r", "-q", "1", "-m", "ready")
				run("-i", id("rdy"), "-t", topic+"/doomed", "-r", "-q", "1", "-m", "ready")
				watch := startMosquittoSub(t, append(slices.Clone(conn), "-V", v, "-i", id("watch"), "-t", topic+"/will", "-q", "1",
					"-C", "2", "-W", "30", "-F", "%t|%p")...)
				doomed := startMosquittoSub(t, append(slices.Clone(conn), "-V", v, "-i", id("doomed"), "-t", topic+"/doomed", "-W", "60",
					"--will-topic", topic+"/will", "--will-payload", "doomed died", "--will-qos", "1")...)
				waitUntil(t, "both mosquitto_sub subscribed", func() bool { return len(watch.lines()) == 1 && len(doomed.lines()) == 1 })
				doomed.cmd.Process.Signal(syscall.SIGKILL)
				if got := watch.wait(t); !slices.Equal(got, []string{topic + "/will|ready", topic + "/will|doomed died"}) {
					t.Fatalf("will watcher printed %q", got)
				}
				run("-i", id("clr"), "-t", topic+"/will", "-r", "-n")
				run("-i", id("clr"), "-t", topic+"/doomed", "-r", "-n")
				for q := range 3 {
					run("-i", id("clr"), "-t", fmt.Sprintf("%s/q%d", topic, q), "-r", "-n")
				}
				run("-i", id("clr"), "-t", topic+"/retained", "-r", "-n")
			})
		}
		t.Run(tr.name+"/auth", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, "mosquitto_pub", append(slices.Clone(conn), "-V", "mqttv311", "-u", "alice", "-P", "wrong",
				"-t", "users/alice/x", "-m", "x")...).CombinedOutput()
			if err == nil || !regexp.MustCompile(`(?i)bad user ?name or password|not authori[sz]ed`).Match(out) {
				t.Fatalf("wrong password: %v %s", err, out)
			}
			out, err = exec.CommandContext(ctx, "mosquitto_pub", append(slices.Clone(conn), "-V", "mqttv5", "-u", "alice", "-P", "alice-pw",
				"-t", "users/alice/x", "-q", "1", "-m", "x")...).CombinedOutput()
			if err != nil {
				t.Fatalf("alice: %v %s", err, out)
			}
		})
	}
}

// mosquittoSub is a running mosquitto_sub and what it printed.
type mosquittoSub struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  []string
	done chan error
	read chan struct{}
}

func startMosquittoSub(t *testing.T, args ...string) *mosquittoSub {
	t.Helper()
	s := &mosquittoSub{cmd: exec.Command("mosquitto_sub", args...), done: make(chan error, 1), read: make(chan struct{})}
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	s.cmd.Stderr = &stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			s.mu.Lock()
			s.out = append(s.out, sc.Text())
			s.mu.Unlock()
		}
		close(s.read)
		s.done <- s.cmd.Wait()
	}()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-s.read
	})
	return s
}

func (s *mosquittoSub) lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.out)
}

// wait waits for mosquitto_sub to exit by itself (its -C count reached)
// and returns what it printed.
func (s *mosquittoSub) wait(t *testing.T) []string {
	t.Helper()
	select {
	case err := <-s.done:
		if err != nil {
			t.Fatalf("mosquitto_sub: %v (printed %q)", err, s.lines())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("mosquitto_sub still running after 60s (printed %q)", s.lines())
	}
	return s.lines()
}

// TestMQTTClientCertAndAuthHook: with tls_client_ca_file the TLS listener
// takes only clients with a certificate its CA signed; with
// allow_anonymous = false and auth_hook_url, the HTTP hook decides on the
// clients the user table does not know, told the certificate's CN.
// Clients: paho.golang over TLS with a certificate, paho.mqtt.golang over
// TCP with a user name the hook knows, mosquitto_pub over TLS with and
// without a certificate.
func TestMQTTClientCertAndAuthHook(t *testing.T) {
	var mu sync.Mutex
	var asked []map[string]string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req map[string]string
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		mu.Lock()
		asked = append(asked, req)
		mu.Unlock()
		if req["common_name"] == "device-7" || req["username"] == "hook-user" && req["password"] == "hook-pw" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.WriteHeader(http.StatusForbidden)
	}))
	defer hook.Close()
	n := newFeatNode(t, "allow_anonymous = false\n")
	b, err := os.ReadFile(n.cfg)
	if err != nil {
		t.Fatal(err)
	}
	writeConfig(t, n.dir, filepath.Base(n.cfg), string(b)+fmt.Sprintf("tls_client_ca_file = %q\nauth_hook_url = %q\n", n.caFile, hook.URL))
	devCert, devKey := n.ca.Issue(t, "device-7")
	rogueCert, rogueKey := testcert.NewAuthority(t, "rogue-ca").Issue(t, "device-7")
	n.start(t)

	got := make(chan string, 10)
	sub := paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + n.tcp).SetClientID("hook-sub").SetUsername("hook-user").
		SetPassword("hook-pw").SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(20 * time.Second).
		SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) { got <- string(m.Payload()) }))
	wait3(t, sub.Connect())
	defer sub.Disconnect(50)
	wait3(t, sub.Subscribe("dev/#", 1, nil))
	expect := func(want string) {
		t.Helper()
		select {
		case m := <-got:
			if m != want {
				t.Fatalf("got %q, want %q", m, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%q not delivered", want)
		}
	}

	pair, err := tls.LoadX509KeyPair(devCert, devKey)
	if err != nil {
		t.Fatal(err)
	}
	dev := n.connectV5(t, &paho.Connect{ClientID: "device-7", CleanStart: true}, fopts{dial: func() (net.Conn, error) {
		return tls.Dial("tcp", n.tls, &tls.Config{RootCAs: n.roots, Certificates: []tls.Certificate{pair}})
	}})
	if dev.err != nil {
		t.Fatalf("client with a certificate: %v", dev.err)
	}
	dev.pub(t, &paho.Publish{Topic: "dev/7", QoS: 1, Payload: []byte("from paho")})
	expect("from paho")
	if c, err := tls.Dial("tcp", n.tls, &tls.Config{RootCAs: n.roots}); err == nil {
		// TLS 1.3: the server's refusal comes with the first read.
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, err := c.Read(make([]byte, 1))
		c.Close()
		if err == nil {
			t.Fatal("a TLS client without a certificate was served")
		}
	}
	for _, tc := range []struct {
		name string
		cp   *paho.Connect
	}{
		{"anonymous", &paho.Connect{ClientID: "anon", CleanStart: true}},
		{"wrong password", &paho.Connect{ClientID: "wrong", CleanStart: true, Username: "hook-user", UsernameFlag: true, Password: []byte("x"), PasswordFlag: true}},
	} {
		c := n.connectV5(t, tc.cp, fopts{})
		if c.err == nil || c.ack.ReasonCode < 0x80 || c.ack.Properties.ReasonString == "" {
			t.Fatalf("%s over TCP: CONNACK %#x %q (%v), want a refusal with a reason string", tc.name, c.ack.ReasonCode, c.ack.Properties.ReasonString, c.err)
		}
	}
	mu.Lock()
	cn := slices.ContainsFunc(asked, func(r map[string]string) bool { return r["common_name"] == "device-7" && r["listener"] == "tls" })
	mu.Unlock()
	if !cn {
		t.Fatalf("the hook was never told the certificate's CN on the tls listener: %v", asked)
	}

	if _, err := exec.LookPath("mosquitto_pub"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("mosquitto_pub not installed (make test installs mosquitto-clients)")
		}
		t.Skip("mosquitto-clients not installed; run make test")
	}
	host, port, _ := net.SplitHostPort(n.tls)
	mosq := func(args ...string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return exec.CommandContext(ctx, "mosquitto_pub", append([]string{"-h", host, "-p", port, "--cafile", n.caFile,
			"-V", "mqttv5", "-t", "dev/mosq", "-q", "1"}, args...)...).CombinedOutput()
	}
	if out, err := mosq("--cert", devCert, "--key", devKey, "-m", "from mosquitto"); err != nil {
		t.Fatalf("mosquitto_pub with a certificate: %v %s", err, out)
	}
	expect("from mosquitto")
	for name, args := range map[string][]string{
		"without a certificate":         {"-m", "no cert"},
		"with another CA's certificate": {"--cert", rogueCert, "--key", rogueKey, "-m", "rogue"},
	} {
		if out, err := mosq(args...); err == nil {
			t.Fatalf("mosquitto_pub %s was served: %s", name, out)
		}
	}
	select {
	case m := <-got:
		t.Fatalf("a refused client's message %q was delivered", m)
	default:
	}
	if code := n.p.terminate(t); code != 0 {
		t.Fatalf("exit status after SIGTERM = %d\n%s", code, n.p.stderr)
	}
}
