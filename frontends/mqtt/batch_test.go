package mqtt

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/quiremq/quire/frontends/mqtt/packet"
	"github.com/quiremq/quire/frontends/pubsub"
)

// batchRecorder is a BatchStorage that records the size of each batch and
// can fail the messages of one topic.
type batchRecorder struct {
	*ShardStorage
	mu    sync.Mutex
	sizes []int
	fail  string // topic whose appends fail
}

func (b *batchRecorder) AppendBatch(ctx context.Context, ms []*pubsub.Message, pos []Position, errs []error) {
	b.mu.Lock()
	b.sizes = append(b.sizes, len(ms))
	b.mu.Unlock()
	b.ShardStorage.AppendBatch(ctx, ms, pos, errs)
	for i, m := range ms {
		if m.Topic == b.fail {
			errs[i] = errors.New("injected failure")
		}
	}
}

// TestPublishBatch: QoS 0 and 1 PUBLISHes sent in one burst are appended
// in batches (fewer appends than messages), stored in order per topic, and
// acknowledged in order; a message whose append failed gets a v5 PUBACK
// with an error, and the others of its batch are still stored.
func TestPublishBatch(t *testing.T) {
	var rec *batchRecorder
	b := startBroker(t, func(s Storage) Storage {
		rec = &batchRecorder{ShardStorage: s.(*ShardStorage), fail: "bad"}
		return rec
	}, nil)
	c, _ := rawConnect(t, b.tcp, "batcher", true)
	const n = 200
	want := map[string][]string{}
	for i := range n {
		topic := fmt.Sprintf("t/%d", i%7)
		qos := packet.QoS(i % 2)
		if i == 50 {
			topic, qos = "bad", packet.QoS1
		}
		payload := fmt.Sprint(i)
		if topic != "bad" {
			want[topic] = append(want[topic], payload)
		}
		pk := &packet.Publish{Topic: topic, QoS: qos, Payload: []byte(payload)}
		if qos > 0 {
			pk.PacketID = uint16(i + 1)
		}
		if err := c.w.WritePacket(pk); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.w.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if i%2 == 0 && i != 50 {
			continue
		}
		ack, ok := c.read().(*packet.Puback)
		if !ok || ack.PacketID != uint16(i+1) {
			t.Fatalf("PUBACK %d: got %+v", i+1, ack)
		}
		if wantCode := map[bool]packet.ReasonCode{true: packet.UnspecifiedError, false: packet.Success}[i == 50]; ack.ReasonCode != wantCode {
			t.Fatalf("PUBACK %d: reason %v, want %v", i+1, ack.ReasonCode, wantCode)
		}
	}
	for topic, payloads := range want {
		if got := b.stored(t, topic); fmt.Sprint(got) != fmt.Sprint(payloads) {
			t.Fatalf("%s: stored %v, want %v", topic, got, payloads)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	total := 0
	for _, s := range rec.sizes {
		total += s
	}
	if total != n || len(rec.sizes) >= n/2 {
		t.Fatalf("%d messages in %d batches %v: want all of %d in fewer than %d", total, len(rec.sizes), rec.sizes, n, n/2)
	}
}
