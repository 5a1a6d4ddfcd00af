package mqtt

import (
	"strconv"
	"testing"
	"time"

	"github.com/quiremq/quire/frontends/pubsub"
)

// TestTakeKeepsOrderPastSlab: take hands out QoS 0 deliveries from a slab
// reused by the connection's next take (conn.sent0) and QoS 1 ones from
// the heap (the inflight map holds them). A take of more QoS 0 deliveries
// than the slab holds, mixed with QoS 1 ones, returns every delivery once,
// in queue order, each still its own message after the next take reused
// the slab; the slab holds no message once a take found the queue empty.
func TestTakeKeepsOrderPastSlab(t *testing.T) {
	c := &conn{}
	sess := newSession("sub")
	sess.bind(c, 0)
	const n = slab0Len + 100
	msgs := make([]*pubsub.Message, 2*n)
	for i := range msgs {
		qos := byte(0)
		if i%7 == 3 {
			qos = 1
		}
		msgs[i] = &pubsub.Message{Topic: "t/" + strconv.Itoa(i), QoS: qos}
	}
	enqueue := func(ms []*pubsub.Message) {
		for _, m := range ms {
			if reason := sess.enqueue(delivery{msg: m, qos: m.QoS}, 1<<20); reason != "" {
				t.Fatalf("enqueue dropped %s: %s", m.Topic, reason)
			}
		}
	}
	check := func(got []*delivery, want []*pubsub.Message) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("took %d deliveries, want %d", len(got), len(want))
		}
		for i, d := range got {
			if d.msg != want[i] || d.qos != want[i].QoS {
				t.Fatalf("delivery %d is %s QoS %d, want %s QoS %d", i, d.msg.Topic, d.qos, want[i].Topic, want[i].QoS)
			}
			if (d.qos == 1) != (d.id != 0) {
				t.Fatalf("delivery %d (QoS %d) has packet id %d", i, d.qos, d.id)
			}
		}
	}
	enqueue(msgs[:n])
	first, _ := sess.take(c, 1<<16, 1<<20, time.Now(), nil)
	check(first, msgs[:n])
	enqueue(msgs[n:])
	second, _ := sess.take(c, 1<<16, 1<<20, time.Now(), nil)
	check(second, msgs[n:])
	for i, d := range first {
		if d.qos == 1 && d.msg != msgs[i] {
			t.Fatalf("inflight delivery %d changed by the next take", i)
		}
	}
	if out, _ := sess.take(c, 1<<16, 1<<20, time.Now(), nil); len(out) != 0 {
		t.Fatalf("empty queue gave %d deliveries", len(out))
	}
	for i := range c.slab0[:cap(c.slab0)] {
		if c.slab0[:cap(c.slab0)][i].msg != nil {
			t.Fatalf("slab entry %d still holds message %s", i, c.slab0[:cap(c.slab0)][i].msg.Topic)
		}
	}
}
