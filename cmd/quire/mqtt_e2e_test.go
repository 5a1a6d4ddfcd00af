package main

// MQTT persistence end to end: a real `quire start` process on the file
// engine, real MQTT clients (eclipse/paho.golang for v5,
// eclipse/paho.mqtt.golang for 3.1.1), kill -9 and graceful restarts.

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
)

// mqttNode is one quire process serving MQTT on tcp, restartable on the
// same data directory and ports.
type mqttNode struct {
	dir, cfg, admin, tcp string
	p                    *proc
}

func newMQTTNode(t *testing.T) *mqttNode {
	t.Helper()
	return newMQTTNodeWith(t, mqttNodeOpts{})
}

// mqttNodeOpts are what a test node's [mqtt] section holds beyond TCP.
type mqttNodeOpts struct {
	tls, ws, wss string // listener addresses, "" for none
	extra        string // TOML at the end of the [mqtt] section, which ends the file
}

// newMQTTNodeWith writes the config of a single node (file engine, batch
// sync) with the MQTT listeners and settings of o; it does not start it.
func newMQTTNodeWith(t *testing.T, o mqttNodeOpts) *mqttNode {
	t.Helper()
	dir := t.TempDir()
	addrs := freeAddrs(t, 3)
	n := &mqttNode{dir: dir, admin: addrs[1], tcp: addrs[2]}
	n.cfg = writeConfig(t, dir, "quire.toml", fmt.Sprintf(`
cluster_name = "mqtt-e2e"
data_dir = %q
meta_addrs = ["1@%s"]
[grpc]
addr = %q
[admin]
addr = %q
[storage]
default_engine = "file"
[storage.file]
sync = "batch"
[mqtt]
tcp = %q
tls = %q
ws = %q
wss = %q
quic = ""
%s`, filepath.Join(dir, "data"), addrs[0], addrs[0], n.admin, n.tcp, o.tls, o.ws, o.wss, o.extra))
	return n
}

func (n *mqttNode) start(t *testing.T) {
	t.Helper()
	n.p = startQuire(t, n.dir, "start", "--config", n.cfg)
	n.p.waitReady(t, n.admin)
}

func (n *mqttNode) kill9(t *testing.T) {
	t.Helper()
	if err := n.p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-n.p.done
}

// inbox collects the payloads a client received.
type inbox struct {
	mu  sync.Mutex
	got map[string]int
	all []string
}

func newInbox() *inbox { return &inbox{got: map[string]int{}} }

func (in *inbox) add(payload string) {
	in.mu.Lock()
	in.got[payload]++
	in.all = append(in.all, payload)
	in.mu.Unlock()
}

// waitAll waits until every one of want arrived at least once; it returns
// how many messages arrived in all (duplicates included).
func (in *inbox) waitAll(t *testing.T, who string, want []string) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		in.mu.Lock()
		var missing []string
		for _, w := range want {
			if in.got[w] == 0 {
				missing = append(missing, w)
			}
		}
		n := len(in.all)
		in.mu.Unlock()
		if len(missing) == 0 {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d acknowledged messages lost, e.g. %q", who, len(missing), len(want), missing[0])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// v5 connects a paho.golang client; with persistent, Clean Start 0 and a
// one-hour session expiry.
func v5(t *testing.T, addr, id string, persistent bool, in *inbox) (*paho.Client, *paho.Connack) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cfg := paho.ClientConfig{Conn: conn}
	if in != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			in.add(string(pr.Packet.Payload))
			return true, nil
		}}
	}
	c := paho.NewClient(cfg)
	cp := &paho.Connect{ClientID: id, CleanStart: !persistent, KeepAlive: 30}
	if persistent {
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(3600)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := c.Connect(ctx, cp)
	if err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return c, ack
}

func v5ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// v311 connects a paho.mqtt.golang 3.1.1 client with Clean Session 0.
func v311(t *testing.T, addr, id string, in *inbox) (paho3.Client, bool) {
	t.Helper()
	o := paho3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetProtocolVersion(4).
		SetCleanSession(false).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second).
		SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) { in.add(string(m.Payload())) })
	c := paho3.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, tok.(*paho3.ConnectToken).SessionPresent()
}

func wait3(t *testing.T, tok paho3.Token) {
	t.Helper()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("paho 3.1.1: %v", tok.Error())
	}
}

// TestMQTTKill9PersistentSessions is the test of the issue "MQTT": QoS 1
// messages acknowledged to a publisher while persistent-session
// subscribers (paho v5 and paho 3.1.1) are offline are all delivered to
// them after `quire start` (file engine) is killed with SIGKILL and
// restarted — duplicates allowed (QoS 1 is at least once), none lost; so
// is a retained message acknowledged before the kill. Twice: the second
// kill comes after the subscribers caught up once, so it also checks
// that the positions persisted after a restart hold.
func TestMQTTKill9PersistentSessions(t *testing.T) {
	n := newMQTTNode(t)
	n.start(t)
	in5, in3 := newInbox(), newInbox()
	s5, _ := v5(t, n.tcp, "sub-v5", true, in5)
	if _, err := s5.Subscribe(v5ctx(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "plant/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	s5.Disconnect(&paho.Disconnect{})
	s3, _ := v311(t, n.tcp, "sub-v311", in3)
	wait3(t, s3.Subscribe("plant/#", 1, nil))
	s3.Disconnect(100)

	var all []string
	for round := range 2 {
		pub, _ := v5(t, n.tcp, "pub", false, nil)
		var want []string
		for i := range 100 {
			p := fmt.Sprintf("r%d-m%04d", round, i)
			if _, err := pub.Publish(v5ctx(t), &paho.Publish{Topic: fmt.Sprintf("plant/line%d/temp", i%13), QoS: 1, Payload: []byte(p)}); err != nil {
				t.Fatalf("publish %s: %v", p, err)
			}
			want = append(want, p) // PUBACK received: acknowledged
		}
		retained := fmt.Sprintf("retained-%d", round)
		if _, err := pub.Publish(v5ctx(t), &paho.Publish{Topic: "config/site", QoS: 1, Retain: true, Payload: []byte(retained)}); err != nil {
			t.Fatal(err)
		}
		n.kill9(t)
		all = append(all, want...)
		n.start(t)

		c5, ack := v5(t, n.tcp, "sub-v5", true, in5)
		if !ack.SessionPresent {
			t.Fatalf("round %d: v5 subscriber: Session Present 0 after kill -9", round)
		}
		got5 := in5.waitAll(t, "paho v5", all)
		c3, present := v311(t, n.tcp, "sub-v311", in3)
		if !present {
			t.Fatalf("round %d: 3.1.1 subscriber: Session Present 0 after kill -9", round)
		}
		got3 := in3.waitAll(t, "paho 3.1.1", all)
		t.Logf("round %d: %d acknowledged messages so far; delivered %d (v5) and %d (3.1.1) in all, duplicates included",
			round, len(all), got5, got3)

		rin := newInbox()
		late, _ := v5(t, n.tcp, fmt.Sprintf("late-%d", round), false, rin)
		if _, err := late.Subscribe(v5ctx(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "config/#", QoS: 1}}}); err != nil {
			t.Fatal(err)
		}
		rin.waitAll(t, "retained", []string{retained})
		late.Disconnect(&paho.Disconnect{})
		c5.Disconnect(&paho.Disconnect{})
		c3.Disconnect(100)
		pub.Disconnect(&paho.Disconnect{})
	}
	if code := n.p.terminate(t); code != 0 {
		t.Fatalf("exit status after SIGTERM = %d\n%s", code, n.p.stderr)
	}
}

// TestMQTTQoS2GracefulRestart: QoS 2 messages published while a persistent
// v5 subscriber is offline are delivered exactly once after a graceful
// restart (SIGTERM) of `quire start`, and nothing more arrives after a
// second restart.
func TestMQTTQoS2GracefulRestart(t *testing.T) {
	n := newMQTTNode(t)
	n.start(t)
	in := newInbox()
	s, _ := v5(t, n.tcp, "q2-sub", true, in)
	if _, err := s.Subscribe(v5ctx(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "pay/#", QoS: 2}}}); err != nil {
		t.Fatal(err)
	}
	s.Disconnect(&paho.Disconnect{})
	pub, _ := v5(t, n.tcp, "q2-pub", false, nil)
	var want []string
	for i := range 40 {
		p := fmt.Sprintf("payment-%03d", i)
		if _, err := pub.Publish(v5ctx(t), &paho.Publish{Topic: fmt.Sprintf("pay/%d", i%5), QoS: 2, Payload: []byte(p)}); err != nil {
			t.Fatal(err)
		}
		want = append(want, p)
	}
	pub.Disconnect(&paho.Disconnect{})
	for restart := range 2 {
		if code := n.p.terminate(t); code != 0 {
			t.Fatalf("exit status after SIGTERM = %d\n%s", code, n.p.stderr)
		}
		n.start(t)
		in.mu.Lock()
		before := len(in.all)
		in.mu.Unlock()
		c, ack := v5(t, n.tcp, "q2-sub", true, in)
		if !ack.SessionPresent {
			t.Fatalf("restart %d: Session Present 0", restart)
		}
		in.waitAll(t, "QoS 2", want)
		// paho sends PUBREC only after its handler returns: leaving before
		// the flow completes would have the broker resend a PUBLISH to a
		// client that keeps no QoS 2 state. Wait for a PUBCOMP per copy
		// delivered in this round (the counter starts at 0 with the node).
		in.mu.Lock()
		delivered := len(in.all) - before
		in.mu.Unlock()
		n.waitMetric(t, `quire_mqtt_packets_received_total{type="PUBCOMP"}`, delivered)
		// A copy arriving late is counted by the next round.
		c.Disconnect(&paho.Disconnect{})
		in.mu.Lock()
		for p, k := range in.got {
			if k != 1 {
				t.Errorf("restart %d: %s delivered %d times, want exactly once", restart, p, k)
			}
		}
		if len(in.all) != len(want) {
			t.Errorf("restart %d: %d deliveries, want %d", restart, len(in.all), len(want))
		}
		in.mu.Unlock()
	}
	if code := n.p.terminate(t); code != 0 {
		t.Fatalf("exit status after SIGTERM = %d\n%s", code, n.p.stderr)
	}
}

// waitMetric waits up to a minute until the counter series (its full
// name with labels) on the node's /metrics is at least want.
func (n *mqttNode) waitMetric(t *testing.T, series string, want int) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; {
		got := n.metric(t, series)
		if got >= float64(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v after a minute, want >= %d", series, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
