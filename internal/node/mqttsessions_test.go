package node

import (
	"context"
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/quiremq/quire/frontends/mqtt/packet"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
)

// gaugeValue is the value of the gauge name on n (0 when absent).
func gaugeValue(t *testing.T, n *Node, name string) float64 {
	t.Helper()
	mfs, err := n.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			v := 0.0
			for _, m := range mf.GetMetric() {
				v += m.GetGauge().GetValue()
			}
			return v
		}
	}
	return 0
}

func mqttSessions(t *testing.T, n *Node) int {
	return int(gaugeValue(t, n, "quire_mqtt_sessions"))
}

// sessionOwner is the node that meta says owns clientID's session (0:
// none).
func sessionOwner(t *testing.T, n *Node, clientID string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		r, err := schema.Get[mqttSessionOwner](ctx, n.meta.kv(), MQTTSessionKey(clientID))
		switch {
		case err == nil:
			return r.Value.Node
		case errors.Is(err, meta.ErrNotFound):
			return 0
		case ctx.Err() != nil:
			t.Fatalf("reading the owner of %s from meta: %v", clientID, err)
		}
		time.Sleep(50 * time.Millisecond) // no leader for a moment (a loaded machine): again
	}
}

// v5conn is an MQTT 5 client (eclipse/paho.golang) on a node.
type v5conn struct {
	*paho.Client
	msgs         chan *paho.Publish
	disconnected chan *paho.Disconnect
	ack          *paho.Connack
}

func connectV5(t *testing.T, n *Node, id string) *v5conn {
	t.Helper()
	c, err := dialV5(t, n, id)
	if err != nil {
		t.Fatalf("connect %q: %v", id, err)
	}
	return c
}

// dialV5 is connectV5 returning the CONNECT's error (a refusal too).
func dialV5(t *testing.T, n *Node, id string) (*v5conn, error) {
	t.Helper()
	nc, err := net.Dial("tcp", n.MQTTAddr("tcp").String())
	if err != nil {
		return nil, err
	}
	c := &v5conn{msgs: make(chan *paho.Publish, 1000), disconnected: make(chan *paho.Disconnect, 1)}
	c.Client = paho.NewClient(paho.ClientConfig{
		Conn: nc,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			c.msgs <- pr.Packet
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) { c.disconnected <- d },
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	expiry := uint32(300)
	c.ack, err = c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}})
	if err != nil {
		nc.Close()
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return c, nil
}

func (c *v5conn) subscribe(t *testing.T, filter string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
}

// takenOver waits for the server's DISCONNECT 0x8E Session taken over.
func (c *v5conn) takenOver(t *testing.T, what string) {
	t.Helper()
	select {
	case d := <-c.disconnected:
		if d.ReasonCode != byte(packet.SessionTakenOver) {
			t.Fatalf("%s got DISCONNECT 0x%02X, want 0x8E", what, d.ReasonCode)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s got no DISCONNECT", what)
	}
}

// TestNodeMQTTSessionTakeover: a client id connected to node 1 connects
// again to node 2 (Clean Start 0): node 1 sends DISCONNECT 0x8E (MQTT 5.0
// §3.1.4) and ends its copy of the session (it queues nothing more for
// it), meta records node 2 as the owner, the session goes on there
// (Session Present 1, its subscription with it), and what is published
// afterwards reaches the client on node 2 once.
func TestNodeMQTTSessionTakeover(t *testing.T) {
	_, nodes := startCluster(t, twoNodeConfigs)
	before := mqttSessions(t, nodes[0])
	first := connectV5(t, nodes[0], "mover")
	first.subscribe(t, "take/#")
	if got := sessionOwner(t, nodes[0], "mover"); got != 1 {
		t.Fatalf("owner of the session in meta after connecting to node 1 = %d, want 1", got)
	}
	if got := mqttSessions(t, nodes[0]); got != before+1 {
		t.Fatalf("node 1 holds %d sessions, want %d", got, before+1)
	}

	second := connectV5(t, nodes[1], "mover")
	first.takenOver(t, "the first connection")
	if !second.ack.SessionPresent {
		t.Error("Session Present 0 on node 2: the session's state did not follow")
	}
	if got := sessionOwner(t, nodes[1], "mover"); got != 2 {
		t.Fatalf("owner of the session in meta = %d, want 2", got)
	}
	// CONNACK came after node 1 released the session.
	if got := mqttSessions(t, nodes[0]); got != before {
		t.Fatalf("node 1 holds %d sessions after the takeover, want %d", got, before)
	}

	// The subscription followed the session: once node 2's route reached
	// node 1, node 1's messages reach the client on node 2.
	pub := mqttClient(t, nodes[0], "mover-pub", true, nil)
	second.routed(t, pub, "take/probe")
	publish(t, pub, "take/x", 0, 20)
	second.expect(t, "take/x", 20)
	select {
	case m := <-first.msgs:
		if m.Topic == "take/x" {
			t.Fatalf("the closed connection on node 1 got %s %q", m.Topic, m.Payload)
		}
	default:
	}

	// And back: node 2 releases it to node 1.
	third := connectV5(t, nodes[0], "mover")
	second.takenOver(t, "the connection on node 2")
	if !third.ack.SessionPresent {
		t.Error("Session Present 0 on node 1: the session's state did not follow back")
	}
	if got := sessionOwner(t, nodes[0], "mover"); got != 1 {
		t.Fatalf("owner of the session in meta = %d, want 1", got)
	}
}

// routed waits until a probe published through pub on probeTopic reaches
// c (its route reached pub's node), then drains c.
func (c *v5conn) routed(t *testing.T, pub paho3.Client, probeTopic string) {
	t.Helper()
	for i := 0; ; i++ {
		publish(t, pub, probeTopic, i, i+1)
		select {
		case <-c.msgs:
		case <-time.After(200 * time.Millisecond):
			if i > 100 {
				t.Fatalf("no probe on %s reached the client", probeTopic)
			}
			continue
		}
		break
	}
	drain(c.msgs, 300*time.Millisecond)
}

// expect checks that c gets the QoS 1 messages "0".."n-1" on topic, in
// order, and nothing more.
func (c *v5conn) expect(t *testing.T, topic string, n int) {
	t.Helper()
	for i := range n {
		select {
		case m := <-c.msgs:
			if m.Topic != topic || string(m.Payload) != strconv.Itoa(i) || m.QoS != 1 {
				t.Fatalf("message %d: %s %q QoS %d, want %s %q QoS 1", i, m.Topic, m.Payload, m.QoS, topic, strconv.Itoa(i))
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("message %d on %s did not come", i, topic)
		}
	}
	select {
	case m := <-c.msgs:
		t.Fatalf("a message more: %s %q", m.Topic, m.Payload)
	case <-time.After(300 * time.Millisecond):
	}
}

// drain empties ch until it stays empty for quiet.
func drain[T any](ch chan T, quiet time.Duration) {
	for {
		select {
		case <-ch:
		case <-time.After(quiet):
			return
		}
	}
}

// TestNodeMQTTSessionTakeoverOwnerDown: the node that owns a session is
// down when the client connects to another node: that node proceeds, and
// the old owner, restarted, drops the stored session it restored (meta says
// another node owns it) instead of queuing for it.
func TestNodeMQTTSessionTakeoverOwnerDown(t *testing.T) {
	cfgs, nodes := startCluster(t, clusterConfigs)
	c := mqttClient(t, nodes[0], "durable", false, nil) // 3.1.1, persistent session
	subscribe(t, c, "down/#")
	if got := sessionOwner(t, nodes[1], "durable"); got != 1 {
		t.Fatalf("owner of the session in meta = %d, want 1", got)
	}
	c.Disconnect(50)
	if err := nodes[0].Stop(context.Background()); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	rec := newRecorder()
	o := paho3.NewClientOptions().AddBroker("tcp://" + nodes[1].MQTTAddr("tcp").String()).SetClientID("durable").SetProtocolVersion(4).
		SetCleanSession(false).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).SetOrderMatters(true).SetDefaultPublishHandler(rec.handle)
	c2 := paho3.NewClient(o)
	tok := c2.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect to node 2 with node 1 down: %v", tok.Error())
	}
	t.Cleanup(func() { c2.Disconnect(50) })
	t.Logf("connected to node 2 in %v with node 1 down", time.Since(start))
	if tok.(*paho3.ConnectToken).SessionPresent() {
		t.Error("Session Present 1 on node 2, which has no state of the session")
	}
	if got := sessionOwner(t, nodes[1], "durable"); got != 2 {
		t.Fatalf("owner of the session in meta = %d, want 2", got)
	}
	subscribe(t, c2, "down/#")

	n1 := restartNode(t, cfgs[0])
	if got := mqttSessions(t, n1); got != 0 {
		t.Fatalf("node 1 restored %d sessions, want 0 (node 2 owns the session)", got)
	}
	pub := mqttClient(t, n1, "down-pub", true, nil)
	routed(t, pub, "down/probe", rec)
	publish(t, pub, "down/x", 0, 10)
	waitFor(t, "the messages reach the client on node 2", func() bool { return len(rec.topic("down/x")) >= 10 })
	time.Sleep(200 * time.Millisecond) // a duplicate would come now
	if got := rec.topic("down/x"); len(got) != 10 {
		t.Fatalf("the client on node 2 got %v, want 0..9 once each", got)
	}
	if got := mqttSessions(t, n1); got != 1 { // the publisher's
		t.Fatalf("node 1 holds %d sessions, want 1 (the publisher's)", got)
	}
}

// TestNodeMQTTSessionHandover: the QoS 1 messages queued on node 1 for an
// offline session are delivered, once each and in order, when the client
// comes back through node 2 (Session Present 1), and its subscription
// follows: node 1 queues nothing more, node 2 gets the later messages.
func TestNodeMQTTSessionHandover(t *testing.T) {
	_, nodes := startCluster(t, twoNodeConfigs)
	pub := mqttClient(t, nodes[0], "owed-pub", true, nil)
	conns := gaugeValue(t, nodes[0], "quire_mqtt_connections")
	first := connectV5(t, nodes[0], "owed")
	first.subscribe(t, "owed/#")
	if err := first.Disconnect(&paho.Disconnect{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node 1 sees the client go", func() bool { return gaugeValue(t, nodes[0], "quire_mqtt_connections") == conns })
	const n = 10
	publish(t, pub, "owed/x", 0, n) // queued for the offline session on node 1

	second := connectV5(t, nodes[1], "owed")
	if !second.ack.SessionPresent {
		t.Fatal("Session Present 0 on node 2: the session's state did not follow")
	}
	second.expect(t, "owed/x", n)
	if got := mqttSessions(t, nodes[0]); got != 1 { // the publisher's
		t.Fatalf("node 1 holds %d sessions after the handover, want 1 (the publisher's)", got)
	}
	// Later messages come through node 2's route, once each.
	second.routed(t, pub, "owed/probe")
	publish(t, pub, "owed/y", 0, n)
	second.expect(t, "owed/y", n)
}
