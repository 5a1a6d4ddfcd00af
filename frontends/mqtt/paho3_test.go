package mqtt

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
)

type received struct {
	mu   sync.Mutex
	msgs []paho3.Message
}

func (r *received) handler(_ paho3.Client, m paho3.Message) {
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
}

func (r *received) wait(t *testing.T, n int) []paho3.Message {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d messages", n), func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.msgs) >= n
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs)
}

func (r *received) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

func paho3Client(t *testing.T, url, id string, tweak func(*paho3.ClientOptions)) paho3.Client {
	t.Helper()
	o := paho3.NewClientOptions().AddBroker(url).SetClientID(id).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second)
	if tweak != nil {
		tweak(o)
	}
	c := paho3.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func ok(t *testing.T, tok paho3.Token) {
	t.Helper()
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("token: %v", tok.Error())
	}
}

// TestPaho311PubSub: QoS 0, 1 and 2 both ways; the delivered QoS is the
// minimum of the publish and the subscription (MQTT 3.1.1 §3.8.4); every
// message is in its shard.
func TestPaho311PubSub(t *testing.T) {
	b := startBroker(t, nil, nil)
	url := "tcp://" + b.tcp
	for subQoS := byte(0); subQoS <= 2; subQoS++ {
		var got received
		topic := fmt.Sprintf("t/%d", subQoS)
		sub := paho3Client(t, url, fmt.Sprintf("sub%d", subQoS), nil)
		tok := sub.Subscribe("t/+", subQoS, got.handler)
		ok(t, tok)
		if g := tok.(*paho3.SubscribeToken).Result()["t/+"]; g != subQoS {
			t.Fatalf("granted %d, want %d", g, subQoS)
		}
		pub := paho3Client(t, url, fmt.Sprintf("pub%d", subQoS), nil)
		for q := byte(0); q <= 2; q++ {
			ok(t, pub.Publish(topic, q, false, fmt.Sprintf("m%d", q)))
		}
		msgs := got.wait(t, 3)
		for i, m := range msgs {
			if string(m.Payload()) != fmt.Sprintf("m%d", i) || m.Qos() != min(byte(i), subQoS) || m.Topic() != topic {
				t.Errorf("sub QoS %d: message %d = %q qos %d topic %s", subQoS, i, m.Payload(), m.Qos(), m.Topic())
			}
		}
		if s := b.stored(t, topic); !slices.Equal(s, []string{"m0", "m1", "m2"}) {
			t.Fatalf("stored %v", s)
		}
		sub.Disconnect(100)
		pub.Disconnect(100)
	}
	if n := b.metric(t, "quire_mqtt_messages_published_total", map[string]string{"qos": "2"}); n != 3 {
		t.Fatalf("published qos 2 = %v", n)
	}
}

// TestPaho311Retained: a retained message is delivered on subscribe with
// RETAIN set, and an empty retained payload clears it [MQTT-3.3.1-6,10].
func TestPaho311Retained(t *testing.T) {
	b := startBroker(t, nil, nil)
	url := "tcp://" + b.tcp
	pub := paho3Client(t, url, "pub", nil)
	ok(t, pub.Publish("r/a", 1, true, "kept"))
	var got received
	sub := paho3Client(t, url, "sub", nil)
	ok(t, sub.Subscribe("r/#", 1, got.handler))
	m := got.wait(t, 1)[0]
	if string(m.Payload()) != "kept" || !m.Retained() || m.Qos() != 1 {
		t.Fatalf("retained delivery %q retained=%v qos=%d", m.Payload(), m.Retained(), m.Qos())
	}
	// A live forward has RETAIN cleared [MQTT-3.3.1-9].
	ok(t, pub.Publish("r/a", 1, true, "new"))
	m = got.wait(t, 2)[1]
	if string(m.Payload()) != "new" || m.Retained() {
		t.Fatalf("live forward %q retained=%v", m.Payload(), m.Retained())
	}
	ok(t, pub.Publish("r/a", 1, true, ""))
	got.wait(t, 3)
	var late received
	sub2 := paho3Client(t, url, "sub2", nil)
	ok(t, sub2.Subscribe("r/#", 1, late.handler))
	time.Sleep(100 * time.Millisecond)
	if late.count() != 0 {
		t.Fatalf("cleared retained message still delivered")
	}
	if n := b.metric(t, "quire_mqtt_retained_messages", nil); n != 0 {
		t.Fatalf("retained gauge %v", n)
	}
}

// TestPaho311Will: the will is published when the connection drops, and not
// after a DISCONNECT [MQTT-3.1.2-8, MQTT-3.14.4-3].
func TestPaho311Will(t *testing.T) {
	b := startBroker(t, nil, nil)
	url := "tcp://" + b.tcp
	var got received
	sub := paho3Client(t, url, "watcher", nil)
	ok(t, sub.Subscribe("will/#", 1, got.handler))

	polite := paho3Client(t, url, "polite", func(o *paho3.ClientOptions) { o.SetWill("will/polite", "gone", 1, false) })
	polite.Disconnect(100)

	c := dial(t, b.tcp)
	// CONNECT v3.1.1, client "rude", will "will/rude" = "lost" QoS 1.
	connect := []byte{0x10, 0, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x2e, 0, 60, 0, 4, 'r', 'u', 'd', 'e',
		0, 9, 'w', 'i', 'l', 'l', '/', 'r', 'u', 'd', 'e', 0, 4, 'l', 'o', 's', 't'}
	connect[1] = byte(len(connect) - 2)
	c.Write(connect)
	ack := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		t.Fatalf("CONNACK %x %v", ack, err)
	}
	c.Close()
	m := got.wait(t, 1)[0]
	if m.Topic() != "will/rude" || string(m.Payload()) != "lost" {
		t.Fatalf("will %s %q", m.Topic(), m.Payload())
	}
	time.Sleep(100 * time.Millisecond)
	if got.count() != 1 {
		var ms []string
		for _, m := range got.wait(t, 0) {
			ms = append(ms, m.Topic()+"="+string(m.Payload()))
		}
		t.Fatalf("%d messages %q (published %v, delivered %v): the polite client's will was published", got.count(), ms,
			b.metric(t, "quire_mqtt_messages_published_total", map[string]string{"qos": "1"}),
			b.metric(t, "quire_mqtt_messages_delivered_total", nil))
	}
}

// TestPaho311Takeover: a second CONNECT with the same client id closes the
// first connection (RobustMQ #2057), and a persistent session resumes with
// its subscription and the QoS 1 messages queued while it was offline.
func TestPaho311Takeover(t *testing.T) {
	b := startBroker(t, nil, nil)
	url := "tcp://" + b.tcp
	lost := make(chan error, 1)
	var first received
	c1 := paho3Client(t, url, "dup", func(o *paho3.ClientOptions) {
		o.SetCleanSession(false)
		o.SetConnectionLostHandler(func(_ paho3.Client, err error) { lost <- err })
	})
	ok(t, c1.Subscribe("q/1", 1, first.handler))
	var second received
	c2 := paho3Client(t, url, "dup", func(o *paho3.ClientOptions) {
		o.SetCleanSession(false)
		o.SetDefaultPublishHandler(second.handler)
	})
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("the first connection was not closed by the takeover")
	}
	if !c2.IsConnectionOpen() {
		t.Fatal("second connection closed")
	}
	if n := b.metric(t, "quire_mqtt_session_takeovers_total", nil); n != 1 {
		t.Fatalf("takeovers %v", n)
	}
	// Offline queue: disconnect, publish, reconnect.
	c2.Disconnect(100)
	waitFor(t, "the session offline", func() bool {
		return b.metric(t, "quire_mqtt_connections", map[string]string{"listener": "tcp"}) == 0
	})
	pub := paho3Client(t, url, "pub", nil)
	// QoS 0 first: the PUBACKs of the QoS 1 messages after it on the same
	// connection prove the server has handled it.
	ok(t, pub.Publish("q/1", 0, false, "qos0-dropped"))
	for i := range 5 {
		ok(t, pub.Publish("q/1", 1, false, fmt.Sprint(i)))
	}
	var third received
	paho3Client(t, url, "dup", func(o *paho3.ClientOptions) {
		o.SetCleanSession(false)
		o.SetDefaultPublishHandler(third.handler)
	})
	msgs := third.wait(t, 5)
	for i, m := range msgs[:5] {
		if string(m.Payload()) != fmt.Sprint(i) {
			t.Fatalf("offline message %d = %q", i, m.Payload())
		}
	}
	if n := b.metric(t, "quire_mqtt_messages_dropped_total", map[string]string{"reason": "offline_qos0"}); n != 1 {
		t.Fatalf("offline_qos0 drops %v", n)
	}
}

// TestOfflineQueueBound: an offline session keeps at most MaxQueued
// messages; the rest are dropped and counted.
func TestOfflineQueueBound(t *testing.T) {
	b := startBroker(t, nil, func(o *Options) { o.MaxQueued = 3 })
	url := "tcp://" + b.tcp
	c := paho3Client(t, url, "slow", func(o *paho3.ClientOptions) { o.SetCleanSession(false) })
	ok(t, c.Subscribe("b/1", 1, nil))
	c.Disconnect(100)
	waitFor(t, "the session offline", func() bool {
		return b.metric(t, "quire_mqtt_connections", map[string]string{"listener": "tcp"}) == 0
	})
	pub := paho3Client(t, url, "pub", nil)
	for i := range 10 {
		ok(t, pub.Publish("b/1", 1, false, fmt.Sprint(i)))
	}
	if n := b.metric(t, "quire_mqtt_messages_dropped_total", map[string]string{"reason": "queue_full"}); n != 7 {
		t.Fatalf("queue_full drops %v, want 7", n)
	}
	var got received
	paho3Client(t, url, "slow", func(o *paho3.ClientOptions) {
		o.SetCleanSession(false)
		o.SetDefaultPublishHandler(got.handler)
	})
	msgs := got.wait(t, 3)
	time.Sleep(100 * time.Millisecond)
	if got.count() != 3 || string(msgs[0].Payload()) != "0" || string(msgs[2].Payload()) != "2" {
		t.Fatalf("got %d messages (tail drop keeps the first three)", got.count())
	}
}

// TestPaho311WebSocket: a real client over ws:// with subprotocol mqtt.
func TestPaho311WebSocket(t *testing.T) {
	b := startBroker(t, nil, nil)
	var got received
	sub := paho3Client(t, "ws://"+b.ws+"/mqtt", "ws-sub", nil)
	ok(t, sub.Subscribe("ws/#", 1, got.handler))
	pub := paho3Client(t, "tcp://"+b.tcp, "tcp-pub", nil)
	ok(t, pub.Publish("ws/x", 1, false, "over websocket"))
	if m := got.wait(t, 1)[0]; string(m.Payload()) != "over websocket" {
		t.Fatalf("got %q", m.Payload())
	}
	if n := b.metric(t, "quire_mqtt_connections", map[string]string{"listener": "ws"}); n != 1 {
		t.Fatalf("ws connections gauge %v", n)
	}
}
