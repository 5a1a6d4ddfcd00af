package mqtt

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/quiremq/quire/frontends/mqtt/packet"
)

// TestPublishRateLimit: a connection over MaxPublishRate is slowed, not
// refused: every message arrives, no sooner than the rate allows, and the
// wait is counted.
func TestPublishRateLimit(t *testing.T) {
	b := startBroker(t, nil, func(o *Options) { o.MaxPublishRate = 20; o.PublishBurst = 1 })
	sub := connect5(t, b.tcp, &paho.Connect{ClientID: "sub", CleanStart: true})
	subscribe5(t, sub, "rate/#", 1)
	pub := connect5(t, b.tcp, &paho.Connect{ClientID: "pub", CleanStart: true})
	start := time.Now()
	const n = 11
	for i := range n {
		publish5(t, pub, "rate/x", 1, false, string(rune('a'+i)))
	}
	for range n {
		sub.next(t)
	}
	// 11 messages at 20/s with a burst of 1: at least 10 × 50 ms.
	if d := time.Since(start); d < 450*time.Millisecond {
		t.Fatalf("%d publishes took %v, faster than the limit allows", n, d)
	}
	if w := b.metric(t, "quire_mqtt_publish_throttled_seconds_total", nil); w < 0.3 {
		t.Fatalf("throttled seconds = %v", w)
	}
}

// TestPacketTooLarge: a packet over MaxPacketSize closes that connection
// with 0x95 (counted by reason), and only that one.
func TestPacketTooLarge(t *testing.T) {
	b := startBroker(t, nil, func(o *Options) { o.MaxPacketSize = 1024 })
	other := connect5(t, b.tcp, &paho.Connect{ClientID: "other", CleanStart: true})
	c := rawOn(t, dial(t, b.tcp))
	c.connect(&packet.Connect{Version: packet.V5, ClientID: "big", CleanStart: true, KeepAlive: 60})
	c.send(&packet.Publish{Topic: "big", Payload: []byte(strings.Repeat("x", 2000))})
	d, ok := c.read().(*packet.Disconnect)
	if !ok || d.ReasonCode != packet.PacketTooLarge {
		t.Fatalf("got %+v, want DISCONNECT 0x95", d)
	}
	if n := b.metric(t, "quire_mqtt_server_disconnects_total", map[string]string{"reason": packet.PacketTooLarge.String()}); n != 1 {
		t.Fatalf("server_disconnects_total{Packet too large} = %v", n)
	}
	subscribe5(t, other, "fine", 0) // the other client is unaffected
	publish5(t, other, "fine", 0, false, "ok")
	if m := other.next(t); string(m.Payload) != "ok" {
		t.Fatalf("got %q", m.Payload)
	}
}

// A client that sends a packet over the server's maximum with more data
// behind it reads the DISCONNECT 0x95 before the connection ends: the
// server half-closes and drains its input before closing. A close with
// unread input makes the kernel send a TCP reset and drop what it had not
// sent yet, here the end of a burst of messages the client (with a small
// receive buffer) has not read, and the DISCONNECT behind them.
func TestPacketTooLargeDisconnectBeforeReset(t *testing.T) {
	b := startBroker(t, nil, func(o *Options) { o.MaxPacketSize = 4096 })
	pub := connect5(t, b.tcp, &paho.Connect{ClientID: "pub", CleanStart: true})
	for i := range 5 {
		d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) {
				syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048)
			})
		}}
		nc, err := d.Dial("tcp", b.tcp)
		if err != nil {
			t.Fatal(err)
		}
		c := rawOn(t, nc)
		c.connect(&packet.Connect{Version: packet.V5, ClientID: fmt.Sprintf("big-%d", i), CleanStart: true, KeepAlive: 60})
		c.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "burst"}}})
		if _, ok := c.read().(*packet.Suback); !ok {
			t.Fatal("no SUBACK")
		}
		sent := func() float64 {
			return b.metric(t, "quire_mqtt_packets_sent_total", map[string]string{"type": "PUBLISH"})
		}
		before := sent()
		for range 40 {
			publish5(t, pub, "burst", 1, false, strings.Repeat("b", 1000))
		}
		// The 40 deliveries are written to the subscriber's socket (most
		// stay in the server's send buffer: the client reads nothing yet)
		// before the oversized packet arrives: on a loaded machine the
		// writer may still be taking them from the queue otherwise, and
		// what it has not taken when the connection ends is not sent.
		for deadline := time.Now().Add(10 * time.Second); sent() < before+40; {
			if time.Now().After(deadline) {
				t.Fatalf("attempt %d: %v deliveries written, want 40", i, sent()-before)
			}
			time.Sleep(5 * time.Millisecond)
		}
		// A PUBLISH of 256 KiB, written in the background: the server
		// reads only its fixed header.
		var buf bytes.Buffer
		w := packet.NewWriter(&buf, packet.V5)
		if err := w.WritePacket(&packet.Publish{Topic: "big", Payload: bytes.Repeat([]byte("x"), 256<<10)}); err != nil {
			t.Fatal(err)
		}
		w.Flush()
		go nc.Write(buf.Bytes())
		time.Sleep(200 * time.Millisecond)
		n := 0
		for {
			nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			p, err := c.r.ReadPacket()
			if err != nil {
				t.Fatalf("attempt %d: %v after %d messages, want DISCONNECT 0x95", i, err, n)
			}
			if d, ok := p.(*packet.Disconnect); ok {
				if d.ReasonCode != packet.PacketTooLarge {
					t.Fatalf("attempt %d: DISCONNECT %v", i, d.ReasonCode)
				}
				break
			}
			n++
		}
		if n != 40 {
			t.Fatalf("attempt %d: %d messages before the DISCONNECT, want 40", i, n)
		}
		nc.Close()
	}
}
