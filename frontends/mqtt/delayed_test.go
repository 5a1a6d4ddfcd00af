package mqtt

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/eclipse/paho.golang/paho"

	"github.com/quiremq/quire/frontends/mqtt/packet"
	"github.com/quiremq/quire/frontends/mqtt/store"
	"github.com/quiremq/quire/frontends/pubsub"
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

// syncImages records a crash image of fs (every synced write, nothing
// else) before each sync of the file system it wraps, with the value of
// phase at that moment.
type syncImages struct {
	fs        *vfs.MemFS
	phase     *atomic.Int32
	recording atomic.Bool
	mu        sync.Mutex
	images    []*vfs.MemFS
	phases    []int32
}

func (s *syncImages) MaybeError(op errorfs.Op) error {
	switch op.Kind {
	case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
		if s.recording.Load() {
			s.take()
		}
	}
	return nil
}

func (s *syncImages) String() string { return "sync images" }

func (s *syncImages) take() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.phases = append(s.phases, s.phase.Load())
	s.images = append(s.images, s.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0, RNG: rand.New(rand.NewPCG(5, 6))}))
}

// TestDelayedQoS2ExactlyOnceAcrossCrash: a delayed QoS 2 PUBLISH
// ($delayed/1/…) of a persistent session is released into its shard
// exactly once whatever moment the node is killed at: the store's state
// is imaged before each of its syncs (the store's write-ahead log keeps
// its order, and a sync is where a crash shows) from the PUBLISH to after
// the release, and a node restarted from each image, with the publisher
// resuming its QoS 2 flow as MQTT 5.0 §4.3.3 and §4.4 let it (PUBLISH
// again if it had no PUBREC, PUBREL if it had no PUBCOMP), ends with the
// message stored once.
func TestDelayedQoS2ExactlyOnceAcrossCrash(t *testing.T) {
	fs := vfs.NewCrashableMem()
	n := fileNode(t, fs)
	var phase atomic.Int32 // 0: PUBLISH sent; 1: PUBREC received; 2: PUBCOMP received
	imgs := &syncImages{fs: fs, phase: &phase}
	n.fs = vfs.InjectFS(fs, imgs)
	b := n.start(t, true, nil)
	const topic = "later/q2"
	pub, _ := rawConnect(t, b.tcp, "dpub", false)
	publish := &packet.Publish{Topic: "$delayed/1/" + topic, QoS: packet.QoS2, PacketID: 9, Payload: []byte("once")}

	imgs.recording.Store(true)
	pub.send(publish)
	if rec, ok := pub.read().(*packet.Pubrec); !ok || rec.PacketID != 9 || rec.ReasonCode != packet.Success {
		t.Fatalf("got %+v, want PUBREC 9", rec)
	}
	phase.Store(1)
	pub.send(&packet.Pubrel{PacketID: 9})
	if comp, ok := pub.read().(*packet.Pubcomp); !ok || comp.ReasonCode != packet.Success {
		t.Fatalf("got %+v, want PUBCOMP", comp)
	}
	phase.Store(2)
	waitFor(t, "the delayed publish released and forgotten", func() bool {
		left := 0
		b.st.Delayed(func(store.DelayedID, *pubsub.Message, *store.Position) error { left++; return nil })
		return left == 0 && len(storedPayloads(t, n.eng, topic)) == 1
	})
	// Let a cursor batch sync what the release left unsynced, then image
	// the end state with a synced write of our own.
	time.Sleep(50 * time.Millisecond)
	if err := b.st.DeleteInbound("nobody", 0); err != nil {
		t.Fatal(err)
	}
	imgs.recording.Store(false)
	b.stop(t)
	if len(imgs.images) < 4 {
		t.Fatalf("only %d sync points recorded", len(imgs.images))
	}

	for i, image := range imgs.images {
		t.Run(fmt.Sprintf("crash-%02d-phase-%d", i, imgs.phases[i]), func(t *testing.T) {
			n2 := fileNode(t, image)
			b2 := n2.start(t, true, nil)
			pub, _ := rawConnect(t, b2.tcp, "dpub", false)
			switch imgs.phases[i] {
			case 0:
				dup := *publish
				dup.Dup = true
				pub.send(&dup)
				if rec, ok := pub.read().(*packet.Pubrec); !ok || rec.PacketID != 9 || rec.ReasonCode != packet.Success {
					t.Fatalf("resent PUBLISH: got %+v, want PUBREC 9", rec)
				}
				pub.send(&packet.Pubrel{PacketID: 9})
				if comp, ok := pub.read().(*packet.Pubcomp); !ok || comp.ReasonCode != packet.Success {
					t.Fatalf("PUBREL: got %+v, want PUBCOMP success", comp)
				}
			case 1:
				// The image may be from after the broker forgot the id
				// (PUBREL handled, PUBCOMP not yet read): 0x92 then.
				pub.send(&packet.Pubrel{PacketID: 9})
				if comp, ok := pub.read().(*packet.Pubcomp); !ok ||
					comp.ReasonCode != packet.Success && comp.ReasonCode != packet.PacketIdentifierNotFound {
					t.Fatalf("resent PUBREL: got %+v, want PUBCOMP", comp)
				}
			}
			waitFor(t, "the delayed publish released", func() bool {
				return b2.delayed.len() == 0 && len(storedPayloads(t, n2.eng, topic)) >= 1
			})
			b2.stop(t) // waits for a release under way
			if got := storedPayloads(t, n2.eng, topic); len(got) != 1 {
				t.Fatalf("released %d times: %q", len(got), got)
			}
		})
	}
}

// readCounter is a ShardStorage that counts the records read back, and
// can make Appends store their message and report a failure (a lost
// acknowledgement).
type readCounter struct {
	*ShardStorage
	records  atomic.Int64
	loseAcks atomic.Int32 // the next loseAcks Appends store and fail
}

func (r *readCounter) Read(ctx context.Context, name string, from uint64, max int) ([]Stored, error) {
	out, err := r.ShardStorage.Read(ctx, name, from, max)
	r.records.Add(int64(len(out)))
	return out, err
}

func (r *readCounter) Append(ctx context.Context, m *pubsub.Message) (Position, error) {
	pos, err := r.ShardStorage.Append(ctx, m)
	if err == nil && r.loseAcks.Add(-1) >= 0 {
		return Position{}, errors.New("acknowledgement lost")
	}
	return pos, err
}

// TestDelayedReleaseReadsNothing: many delayed publishes falling due at
// once on one shard are released without reading the shard back (a first
// attempt cannot be there already; searching from the release mark for
// each was O(n²) reads: over 20,000 records for these 600), and each is
// stored once. A retry after an append whose acknowledgement was lost
// does search, finds the message and does not store it again.
func TestDelayedReleaseReadsNothing(t *testing.T) {
	n := memNode()
	var rc *readCounter
	b := n.start(t, false, func(o *Options) {
		rc = &readCounter{ShardStorage: o.Storage.(*ShardStorage)}
		o.Storage = rc
		o.MaxDelayed = 1000
	})
	const topic, count = "due/together", 600
	for i := range count {
		m := &pubsub.Message{Topic: topic, QoS: 1, Payload: []byte(strconv.Itoa(i))}
		if err := b.delayed.add(m, 300*time.Millisecond, 0); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "every delayed publish released", func() bool {
		return b.delayed.len() == 0 && len(storedPayloads(t, n.eng, topic)) >= count
	})
	got := storedPayloads(t, n.eng, topic)
	if len(got) != count {
		t.Fatalf("stored %d messages, want %d", len(got), count)
	}
	for i, p := range got {
		if p != strconv.Itoa(i) {
			t.Fatalf("message %d is %q: out of order", i, p)
		}
	}
	if r := rc.records.Load(); r != 0 {
		t.Fatalf("releasing %d delayed publishes read %d records back", count, r)
	}

	rc.loseAcks.Store(1)
	if err := b.delayed.add(&pubsub.Message{Topic: topic, QoS: 1, Payload: []byte("retried")}, 0, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the retried release", func() bool { return b.delayed.len() == 0 && rc.records.Load() > 0 })
	b.stop(t) // waits for a release under way
	if got := storedPayloads(t, n.eng, topic); len(got) != count+1 || got[count] != "retried" {
		t.Fatalf("after the retry the shard holds %d messages, last %q: want it stored once", len(got), got[len(got)-1])
	}
}
