package mqtt

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/quiremq/quire/frontends/mqtt/packet"
	"github.com/quiremq/quire/internal/vfs"
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

// TestSharedOfflineQueueSurvivesRestart: two persistent members of
// $share/g/jobs/# consume some messages online, then go offline while QoS
// 1 messages are acknowledged to a publisher (queued round robin at the
// offline members). After a graceful restart, or a crash that keeps only
// synced writes, the first member to reconnect gets every one of them, its
// share and the other's (MQTT 5.0 §4.8.2: a message of the group goes to
// a member that can take it); the other member, reconnecting, gets none
// of them again, and the messages consumed before are not redelivered
// after the graceful restart. A live message after that still goes to the
// group once.
func TestSharedOfflineQueueSurvivesRestart(t *testing.T) {
	for _, crash := range []bool{false, true} {
		t.Run(map[bool]string{false: "graceful", true: "crash"}[crash], func(t *testing.T) {
			fs := vfs.NewCrashableMem()
			n := fileNode(t, fs)
			b := n.start(t, true, nil)
			m1 := persistent5(t, b.tcp, "m1")
			subscribe5(t, m1, "$share/g/jobs/#", 1)
			m2 := persistent5(t, b.tcp, "m2")
			subscribe5(t, m2, "$share/g/jobs/#", 1)
			pub := connect5(t, b.tcp, &paho.Connect{ClientID: "pub", CleanStart: true})
			online := payloads("online", 6)
			publishEach(t, pub, func(int) string { return "jobs/a" }, online)
			seen := map[string]bool{}
			for len(seen) < len(online) {
				select {
				case m := <-m1.msgs:
					seen[string(m.Payload)] = true
				case m := <-m2.msgs:
					seen[string(m.Payload)] = true
				case <-time.After(10 * time.Second):
					t.Fatalf("online: the group got %d of %d", len(seen), len(online))
				}
			}
			// Every online message acknowledged before the members leave
			// (paho sends PUBACK after its handler returned).
			waitFor(t, "online messages acknowledged", func() bool { return b.owes("m1") == 0 && b.owes("m2") == 0 })
			m1.Disconnect(&paho.Disconnect{})
			m2.Disconnect(&paho.Disconnect{})
			waitFor(t, "members offline", func() bool { return b.sessionOwner("m1") == nil && b.sessionOwner("m2") == nil })
			want := payloads("offline", 20)
			publishEach(t, pub, func(i int) string { return fmt.Sprintf("jobs/%d", i%3) }, want)
			if q1, q2 := b.owes("m1"), b.owes("m2"); q1 == 0 || q2 == 0 || q1+q2 != len(want) {
				t.Fatalf("queued at the offline members: %d and %d, want both some of %d", q1, q2, len(want))
			}
			if crash {
				image := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0, RNG: rand.New(rand.NewPCG(7, 8))})
				pub.Disconnect(&paho.Disconnect{})
				b.stop(t)
				n = fileNode(t, image)
			} else {
				pub.Disconnect(&paho.Disconnect{})
				b.stop(t)
			}

			b = n.start(t, true, nil)
			m1 = resumed5(t, b.tcp, "m1")
			got := collect5(t, m1, want)
			if !crash {
				if slices.Sort(got); !slices.Equal(got, want) {
					t.Fatalf("after a graceful restart the member got %q, want %q once each", got, want)
				}
			}
			raw := rawResume(t, b.tcp, "m2")
			raw.send(&packet.Pingreq{})
			if p := raw.read(); p.Type() != packet.PINGRESP {
				t.Fatalf("the other member got %s %+v, want nothing: the first one took the group's messages", p.Type(), p)
			}
			if !crash {
				select {
				case m := <-m1.msgs:
					t.Fatalf("m1 got %q again", m.Payload)
				default:
				}
			}
			pub = connect5(t, b.tcp, &paho.Connect{ClientID: "pub", CleanStart: true})
			publish5(t, pub, "jobs/live", 1, false, "live")
			select {
			case m := <-m1.msgs:
				if string(m.Payload) != "live" && !crash {
					t.Fatalf("m1 got %q, want live", m.Payload)
				}
			case p := <-rawPublishes(t, raw):
				if string(p.Payload) != "live" {
					t.Fatalf("m2 got %q, want live", p.Payload)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the live message reached no member")
			}
		})
	}
}

// owes returns how many messages session id holds, queued or inflight.
func (s *Server) owes(id string) int {
	s.mu.Lock()
	sess := s.sessions[id]
	s.mu.Unlock()
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return len(sess.queue) + len(sess.inflight)
}

// rawPublishes reads c's PUBLISHes in the background, acknowledging QoS 1.
func rawPublishes(t *testing.T, c *rawClient) <-chan *packet.Publish {
	out := make(chan *packet.Publish, 16)
	go func() {
		for {
			c.nc.SetReadDeadline(time.Now().Add(15 * time.Second))
			p, err := c.r.ReadPacket()
			if err != nil {
				return
			}
			if pp, ok := p.(*packet.Publish); ok {
				pp = pp.Clone()
				if pp.QoS == packet.QoS1 {
					c.w.WritePacket(&packet.Puback{PacketID: pp.PacketID})
					c.w.Flush()
				}
				out <- pp
			}
		}
	}()
	return out
}

// TestSharedQoS2AcrossRestart: a persistent member of $share/g/q2/# that
// had two QoS 2 messages in flight — one PUBREC'd, one not — gets, after
// a graceful restart, PUBREL for the first and the second again with DUP
// and its packet identifier, and no further copy from the group's replay
// (MQTT 5.0 §4.3.3, §4.8.2).
func TestSharedQoS2AcrossRestart(t *testing.T) {
	n := memNode()
	b := n.start(t, true, nil)
	m, _ := rawConnect(t, b.tcp, "q2m", false)
	m.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "$share/g/q2/#", QoS: packet.QoS2}}})
	if _, ok := m.read().(*packet.Suback); !ok {
		t.Fatal("no SUBACK")
	}
	pub := connect5(t, b.tcp, &paho.Connect{ClientID: "pub", CleanStart: true})
	for _, p := range []string{"first", "second"} {
		if _, err := pub.Publish(ctx5(t), &paho.Publish{Topic: "q2/" + p, QoS: 2, Payload: []byte(p)}); err != nil {
			t.Fatal(err)
		}
	}
	var ids []uint16
	for _, want := range []string{"first", "second"} {
		p, ok := m.read().(*packet.Publish)
		if !ok || string(p.Payload) != want {
			t.Fatalf("member got %+v, want %s", p, want)
		}
		ids = append(ids, p.PacketID)
	}
	m.send(&packet.Pubrec{PacketID: ids[0]})
	if rel, ok := m.read().(*packet.Pubrel); !ok || rel.PacketID != ids[0] {
		t.Fatalf("member got %+v, want PUBREL %d", rel, ids[0])
	}
	m.nc.Close()
	waitFor(t, "member offline", func() bool { return b.sessionOwner("q2m") == nil })
	pub.Disconnect(&paho.Disconnect{})
	b.stop(t)

	b = n.start(t, true, nil)
	m = rawResume(t, b.tcp, "q2m")
	if rel, ok := m.read().(*packet.Pubrel); !ok || rel.PacketID != ids[0] {
		t.Fatalf("member got %+v, want PUBREL %d", rel, ids[0])
	}
	again, ok := m.read().(*packet.Publish)
	if !ok || !again.Dup || again.PacketID != ids[1] || string(again.Payload) != "second" {
		t.Fatalf("member got %+v, want PUBLISH DUP %d second", again, ids[1])
	}
	m.send(&packet.Pubcomp{PacketID: ids[0]})
	m.send(&packet.Pubrec{PacketID: ids[1]})
	if rel, ok := m.read().(*packet.Pubrel); !ok || rel.PacketID != ids[1] {
		t.Fatalf("member got %+v, want PUBREL %d", rel, ids[1])
	}
	m.send(&packet.Pubcomp{PacketID: ids[1]})
	m.send(&packet.Pingreq{})
	if p := m.read(); p.Type() != packet.PINGRESP {
		t.Fatalf("member got %s %+v, want no further copy", p.Type(), p)
	}
}

// TestSharedEndedMemberHandsOver: when a member's session ends (here it
// reconnects with Clean Start), what it held of the group's messages goes
// to the other member, offline as it is, which gets it when it returns.
func TestSharedEndedMemberHandsOver(t *testing.T) {
	b := startBroker(t, nil, nil)
	for _, id := range []string{"e1", "e2"} {
		c := persistent5(t, b.tcp, id)
		subscribe5(t, c, "$share/g/work/#", 1)
		c.Disconnect(&paho.Disconnect{})
		waitFor(t, id+" offline", func() bool { return b.sessionOwner(id) == nil })
	}
	pub := connect5(t, b.tcp, &paho.Connect{ClientID: "pub", CleanStart: true})
	want := payloads("w", 6)
	publishEach(t, pub, func(int) string { return "work/x" }, want)
	// e1 starts afresh: its session, and its share, end.
	connect5(t, b.tcp, &paho.Connect{ClientID: "e1", CleanStart: true})
	e2 := resumed5(t, b.tcp, "e2")
	got := collect5(t, e2, want)
	if slices.Sort(got); !slices.Equal(got, want) {
		t.Fatalf("e2 got %q, want %q once each", got, want)
	}
}

// TestSharedCleanMemberAtStop: messages of a group in flight at a clean
// member (session expiry 0) that never acknowledged them when the node
// stops gracefully are not lost with its session: the group's persistent
// member, offline then, gets them after the restart.
func TestSharedCleanMemberAtStop(t *testing.T) {
	n := memNode()
	b := n.start(t, true, nil)
	p := persistent5(t, b.tcp, "keeper")
	subscribe5(t, p, "$share/g/tasks/#", 1)
	p.Disconnect(&paho.Disconnect{})
	waitFor(t, "keeper offline", func() bool { return b.sessionOwner("keeper") == nil })
	clean := rawOn(t, dial(t, b.tcp))
	clean.connect(&packet.Connect{Version: packet.V5, ClientID: "clean", CleanStart: true, KeepAlive: 30})
	clean.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "$share/g/tasks/#", QoS: packet.QoS1}}})
	if _, ok := clean.read().(*packet.Suback); !ok {
		t.Fatal("no SUBACK")
	}
	pub := connect5(t, b.tcp, &paho.Connect{ClientID: "pub", CleanStart: true})
	want := payloads("t", 5)
	publishEach(t, pub, func(int) string { return "tasks/x" }, want)
	for range want {
		if _, ok := clean.read().(*packet.Publish); !ok {
			t.Fatal("the online clean member did not get the group's messages")
		}
	}
	pub.Disconnect(&paho.Disconnect{})
	b.stop(t)

	b = n.start(t, true, nil)
	got := collect5(t, resumed5(t, b.tcp, "keeper"), want)
	if slices.Sort(got); !slices.Equal(got, want) {
		t.Fatalf("keeper got %q, want %q once each", got, want)
	}
}

// TestSharedGroupForgotten: once a group has no member and owes nothing,
// the broker forgets it (at a sweep, every groupSweepEvery cursor
// flushes), and no cursor of it is left in the store.
func TestSharedGroupForgotten(t *testing.T) {
	b := memNode().start(t, true, nil)
	c := persistent5(t, b.tcp, "member")
	subscribe5(t, c, "$share/g/gone/#", 1)
	groups := func() (mem, stored int) {
		b.gmu.RLock()
		mem = len(b.groups)
		b.gmu.RUnlock()
		gc, err := b.st.GroupCursors()
		if err != nil {
			t.Fatal(err)
		}
		return mem, len(gc)
	}
	if mem, _ := groups(); mem != 1 {
		t.Fatalf("after SUBSCRIBE: %d groups in memory, want 1", mem)
	}
	if _, err := c.Unsubscribe(ctx5(t), &paho.Unsubscribe{Topics: []string{"$share/g/gone/#"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the group forgotten", func() bool { mem, stored := groups(); return mem == 0 && stored == 0 })
}
