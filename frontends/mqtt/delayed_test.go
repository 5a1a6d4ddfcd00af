package mqtt

import (
	"strconv"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/quiremq/quire/internal/vfs"
)

// TestDelayedPublish: $delayed/1/<topic> reaches <topic>'s subscribers
// after a second, not before, stored like any message; a malformed delay
// gets 0x90, a full delay queue 0x97; the ACL judges the real topic.
func TestDelayedPublish(t *testing.T) {
	b := startBroker(t, nil, func(o *Options) { o.MaxDelayed = 2 })
	sub := connect5(t, b.tcp, &paho.Connect{ClientID: "sub", CleanStart: true})
	subscribe5(t, sub, "later/#", 1)
	pub := connect5(t, b.tcp, &paho.Connect{ClientID: "pub", CleanStart: true})
	sent := time.Now()
	publish5(t, pub, "$delayed/1/later/a", 1, false, "in a second")
	select {
	case m := <-sub.msgs:
		t.Fatalf("delivered at once: %s %q", m.Topic, m.Payload)
	case <-time.After(500 * time.Millisecond):
	}
	m := sub.next(t)
	if m.Topic != "later/a" || string(m.Payload) != "in a second" {
		t.Fatalf("got %s %q", m.Topic, m.Payload)
	}
	if d := time.Since(sent); d < 900*time.Millisecond {
		t.Fatalf("delivered after %v, before its delay", d)
	}
	if got := b.stored(t, "later/a"); len(got) != 1 || got[0] != "in a second" {
		t.Fatalf("stored %q", got)
	}
	for _, tc := range []struct {
		topic string
		want  byte
	}{
		{"$delayed/x/later/b", 0x90},
		{"$delayed/5", 0x90},
		{"$delayed/99999999/later/b", 0x90},
		{"$delayed/60/later/b", 0},
		{"$delayed/60/later/c", 0},
		{"$delayed/60/later/d", 0x97},
	} {
		pr, err := pub.Publish(ctx5(t), &paho.Publish{Topic: tc.topic, QoS: 1, Payload: []byte("x")})
		if pr == nil {
			t.Fatalf("%s: %v", tc.topic, err)
		}
		if pr.ReasonCode != tc.want {
			t.Fatalf("%s: PUBACK %#x, want %#x", tc.topic, pr.ReasonCode, tc.want)
		}
	}
}

// TestDelayedPublishSurvivesRestart: a delayed publish acknowledged before
// a restart is published after it, once its time comes.
func TestDelayedPublishSurvivesRestart(t *testing.T) {
	n := fileNode(t, vfs.NewMem())
	b := n.start(t, true, nil)
	pub := connect5(t, b.tcp, &paho.Connect{ClientID: "pub", CleanStart: true})
	for i := range 3 {
		publish5(t, pub, "$delayed/2/wake/"+strconv.Itoa(i), 1, i == 2, "msg-"+strconv.Itoa(i))
	}
	pub.Disconnect(&paho.Disconnect{})
	b.stop(t)

	b = n.start(t, true, nil)
	sub := connect5(t, b.tcp, &paho.Connect{ClientID: "sub", CleanStart: true})
	subscribe5(t, sub, "wake/#", 1)
	var got []string
	deadline := time.After(10 * time.Second)
	for len(got) < 3 {
		select {
		case m := <-sub.msgs:
			got = append(got, string(m.Payload))
		case <-deadline:
			t.Fatalf("after the restart got %q", got)
		}
	}
	if got[0] != "msg-0" || got[1] != "msg-1" || got[2] != "msg-2" {
		t.Fatalf("got %q", got)
	}
	// The retained one is retained once published.
	late := connect5(t, b.tcp, &paho.Connect{ClientID: "late", CleanStart: true})
	subscribe5(t, late, "wake/2", 1)
	if m := late.next(t); string(m.Payload) != "msg-2" || !m.Retain {
		t.Fatalf("retained %q retain=%v", m.Payload, m.Retain)
	}
}

// TestSys: $SYS/broker/ statistics arrive on "$SYS/#" (and not on "#"),
// and clients may not publish to $SYS.
func TestSys(t *testing.T) {
	b := startBroker(t, nil, func(o *Options) { o.SysInterval = 100 * time.Millisecond; o.Version = "quire-test" })
	c := connect5(t, b.tcp, &paho.Connect{ClientID: "watch", CleanStart: true})
	subscribe5(t, c, "#", 0)
	publish5(t, c, "plain/topic", 1, false, "p")
	if m := c.next(t); m.Topic != "plain/topic" {
		t.Fatalf("# delivered %s", m.Topic)
	}
	subscribe5(t, c, "$SYS/#", 0)
	// The retained values come first, then a fresh set every 100 ms.
	seen := map[string]string{}
	deadline := time.After(5 * time.Second)
	for seen["$SYS/broker/messages/received"] == "" || seen["$SYS/broker/messages/received"] == "0" ||
		seen["$SYS/broker/clients/connected"] != "1" || seen["$SYS/broker/version"] == "" {
		select {
		case m := <-c.msgs:
			seen[m.Topic] = string(m.Payload)
		case <-deadline:
			t.Fatalf("$SYS topics seen: %v", seen)
		}
	}
	if seen["$SYS/broker/version"] != "quire-test" {
		t.Fatalf("$SYS values %v", seen)
	}
	if n, err := strconv.Atoi(seen["$SYS/broker/messages/received"]); err != nil || n < 1 {
		t.Fatalf("messages/received = %q", seen["$SYS/broker/messages/received"])
	}
	pr, err := c.Publish(ctx5(t), &paho.Publish{Topic: "$SYS/broker/version", QoS: 1, Payload: []byte("forged")})
	if pr == nil || pr.ReasonCode != 0x87 {
		t.Fatalf("publish to $SYS: %+v %v", pr, err)
	}
}
