package mqtt

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/quiremq/quire/frontends/mqtt/packet"
)

// TestDirectSendKeepsOrder: publishers deliver to an idle subscriber's
// connection from their own goroutines (conn.sendDirect) while its writer
// sends what queued behind a busy moment, and the subscriber's Receive
// Maximum of 3 holds messages back. Every message arrives once, in order
// per topic, never more than 3 unacknowledged, and some went out directly.
func TestDirectSendKeepsOrder(t *testing.T) {
	b := startBroker(t, nil, nil)
	const recvMax, pubs, n = 3, 4, 300
	sub := rawOn(t, dial(t, b.tcp))
	sub.connect(&packet.Connect{Version: packet.V5, ClientID: "sub", CleanStart: true, KeepAlive: 60,
		Properties: packet.Properties{ReceiveMaximum: recvMax}})
	sub.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "d/#", QoS: 1}}})
	if _, ok := sub.read().(*packet.Suback); !ok {
		t.Fatal("no SUBACK")
	}
	var wg sync.WaitGroup
	for p := range pubs {
		pc := connect5(t, b.tcp, &paho.Connect{ClientID: "pub" + strconv.Itoa(p), CleanStart: true})
		wg.Add(1)
		go func() {
			defer wg.Done()
			qos := byte(p % 2) // QoS 0 and QoS 1 publishers
			for i := range n {
				if _, err := pc.Publish(ctx5(t), &paho.Publish{Topic: fmt.Sprintf("d/%d", p), QoS: qos, Payload: []byte(strconv.Itoa(i))}); err != nil {
					t.Errorf("publish %d/%d: %v", p, i, err)
					return
				}
			}
		}()
	}
	next := make([]int, pubs)
	var held []uint16 // QoS 1 ids received, not yet acknowledged
	ack := func() {
		for _, id := range held {
			sub.send(&packet.Puback{PacketID: id})
		}
		held = held[:0]
	}
	for got := 0; got < pubs*n; {
		// Acknowledge in bursts: when recvMax are held, or when nothing
		// more comes (the broker waits for room).
		sub.nc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		pk, err := sub.r.ReadPacket()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			ack()
			continue
		}
		if err != nil {
			t.Fatalf("read after %d messages: %v", got, err)
		}
		m, ok := pk.(*packet.Publish)
		if !ok {
			t.Fatalf("got %v, want PUBLISH", pk.Type())
		}
		p, _ := strconv.Atoi(strings.TrimPrefix(m.Topic, "d/"))
		if want := strconv.Itoa(next[p]); string(m.Payload) != want || m.Dup {
			t.Fatalf("%s: got %q (dup %v), want %s", m.Topic, m.Payload, m.Dup, want)
		}
		next[p]++
		got++
		if m.QoS == packet.QoS1 {
			held = append(held, m.PacketID)
			if len(held) > recvMax {
				t.Fatalf("%d QoS 1 messages unacknowledged, Receive Maximum %d", len(held), recvMax)
			}
			if len(held) == recvMax {
				ack()
			}
		}
	}
	ack()
	wg.Wait()
	b.mu.Lock()
	sess := b.sessions["sub"]
	b.mu.Unlock()
	if sess.owner().directSent.Load() == 0 {
		t.Fatal("no delivery was sent directly")
	}
}

// TestDirectSendFullSocket: a subscriber that stops reading fills its
// socket; the publisher's goroutine, which sends to it directly while its
// writer is idle, is not held up (every PUBLISH is acknowledged), and once
// the subscriber reads again every message arrives once, in order: what
// a non-blocking write left buffered went out before what followed it.
func TestDirectSendFullSocket(t *testing.T) {
	b := startBroker(t, nil, nil)
	sub := rawOn(t, dial(t, b.tcp))
	sub.connect(&packet.Connect{Version: packet.V5, ClientID: "slow", CleanStart: true, KeepAlive: 60})
	sub.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "full", QoS: 0}}})
	if _, ok := sub.read().(*packet.Suback); !ok {
		t.Fatal("no SUBACK")
	}
	pub := connect5(t, b.tcp, &paho.Connect{ClientID: "fast", CleanStart: true})
	const n = 400 // 400 × 32 KiB: more than loopback socket buffers hold
	payload := strings.Repeat("x", 32<<10)
	for i := range n {
		publish5(t, pub, "full", 1, false, strconv.Itoa(i)+":"+payload)
	}
	for i := range n {
		m, ok := sub.read().(*packet.Publish)
		if !ok {
			t.Fatalf("message %d: not a PUBLISH", i)
		}
		if seq, _, _ := strings.Cut(string(m.Payload), ":"); seq != strconv.Itoa(i) {
			t.Fatalf("got message %s, want %d", seq, i)
		}
	}
}
