package mqtt

import (
	"fmt"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/quiremq/quire/frontends/mqtt/packet"
)

// TestSharedRedelivery: a member of $share/g/jobs/# that received QoS 1
// messages and disconnected without acknowledging them has them handed to
// the other member; the other member ends up with every message.
func TestSharedRedelivery(t *testing.T) {
	b := startBroker(t, nil, nil)
	// The lazy member: a raw client that never acknowledges.
	lazy, _ := rawConnect(t, b.tcp, "lazy", true)
	lazy.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "$share/g/jobs/#", QoS: packet.QoS1}}})
	if _, ok := lazy.read().(*packet.Suback); !ok {
		t.Fatal("no SUBACK")
	}
	busy := connect5(t, b.tcp, &paho.Connect{ClientID: "busy", CleanStart: true})
	subscribe5(t, busy, "$share/g/jobs/#", 1)
	pub := connect5(t, b.tcp, &paho.Connect{ClientID: "pub", CleanStart: true})
	const n = 6
	for i := range n {
		publish5(t, pub, "jobs/x", 1, false, fmt.Sprintf("job-%d", i))
	}
	// Round robin: the lazy member got some; it reads them and leaves.
	got := 0
	for {
		lazy.nc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		p, err := lazy.r.ReadPacket()
		if err != nil {
			break
		}
		if _, ok := p.(*packet.Publish); ok {
			got++
		}
	}
	if got == 0 || got == n {
		t.Fatalf("the lazy member got %d of %d: round robin did not split them", got, n)
	}
	lazy.nc.Close()
	seen := map[string]bool{}
	for len(seen) < n {
		select {
		case m := <-busy.msgs:
			seen[string(m.Payload)] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("the other member has %d of %d messages: %v", len(seen), n, seen)
		}
	}
	if r := b.metric(t, "quire_mqtt_shared_redelivered_total", nil); int(r) != got {
		t.Fatalf("shared_redelivered_total = %v, want %d", r, got)
	}
}
