package mqtt

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/proto"

	"github.com/quiremq/quire/frontends/mqtt/packet"
	"github.com/quiremq/quire/frontends/mqtt/store"
	mqttclusterv1 "github.com/quiremq/quire/internal/proto/mqttcluster/v1"
)

// pairDirectory is a SessionDirectory for two servers in one process:
// node self claims every session from the other (prev) once, as
// internal/node does through meta and the Release RPC; lose drops that
// many Release replies (after the release took place), which the CONNECT
// is refused for (ErrHandoverIncomplete), as a node whose previous owner
// is up but did not answer.
type pairDirectory struct {
	self, other uint64
	prev        func() *Server

	mu     sync.Mutex
	owned  map[string]bool
	lose   int
	forgot int
}

func (d *pairDirectory) Claim(ctx context.Context, clientID string, cleanStart bool) (*mqttclusterv1.SessionState, func(bool), error) {
	d.mu.Lock()
	owned := d.owned[clientID]
	d.mu.Unlock()
	if owned {
		return nil, nil, nil
	}
	prev := d.prev()
	st, _, err := prev.ReleaseSession(ctx, Release{ClientID: clientID, CleanStart: cleanStart, To: d.self, Self: d.other})
	if err != nil {
		return nil, nil, err
	}
	// Through the wire, as a peer's reply.
	b, err := proto.Marshal(st)
	if err != nil {
		return nil, nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lose > 0 {
		d.lose--
		return nil, nil, fmt.Errorf("node %d: reply lost: %w", d.other, ErrHandoverIncomplete)
	}
	d.owned[clientID] = true
	var got *mqttclusterv1.SessionState
	if st != nil {
		got = new(mqttclusterv1.SessionState)
		if err := proto.Unmarshal(b, got); err != nil {
			return nil, nil, err
		}
	}
	return got, func(stored bool) {
		if stored && got != nil && prev.ForgetHandover(clientID, d.self) {
			d.mu.Lock()
			d.forgot++
			d.mu.Unlock()
		}
	}, nil
}

func (d *pairDirectory) Foreign(context.Context, []string) ([]string, error) { return nil, nil }

// handoverPair is a persistent broker (node 1) whose sessions a second
// one (node 2, with a pairDirectory) takes over.
func handoverPair(t *testing.T) (n1, n2 *node, b1, b2 *persistentBroker, dir *pairDirectory) {
	n1, n2 = memNode(), memNode()
	b1 = n1.start(t, true, nil)
	dir = &pairDirectory{self: 2, other: 1, prev: func() *Server { return b1.Server }, owned: map[string]bool{}}
	b2 = n2.start(t, true, func(o *Options) { o.Sessions = dir })
	return n1, n2, b1, b2, dir
}

// owe5 leaves client id offline on b with a subscription to owe/# and
// n QoS 1 messages owed to it.
func owe5(t *testing.T, b *persistentBroker, id string, n int) []string {
	t.Helper()
	c := persistent5(t, b.tcp, id)
	subscribe5(t, c, "owe/#", 1)
	c.Disconnect(&paho.Disconnect{})
	waitFor(t, id+" offline", func() bool { return b.sessionOwner(id) == nil })
	pub := persistent5(t, b.tcp, id+"-pub")
	ps := payloads("m", n)
	publishEach(t, pub, func(int) string { return "owe/x" }, ps)
	waitFor(t, "the messages queued for "+id, func() bool { return b.sessionHasWork(id) })
	return ps
}

func storedHandovers(t *testing.T, st *store.Store) []string {
	t.Helper()
	var out []string
	if err := st.Handovers(func(client string, _ *store.Handover) error { out = append(out, client); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestHandoverReplyLost: the reply of the node that released a session is
// lost (the CONNECT on the new node is refused): that node kept the state,
// stored, and hands the same again when the client connects again; every
// owed message arrives, and once the new node stored the session the old
// one forgets its copy.
func TestHandoverReplyLost(t *testing.T) {
	_, _, b1, b2, dir := handoverPair(t)
	want := owe5(t, b1, "lost", 5)
	dir.lose = 1

	nc := rawOn(t, dial(t, b2.tcp))
	nc.send(&packet.Connect{Version: packet.V5, ClientID: "lost", Properties: packet.Properties{SessionExpiryInterval: 3600}})
	if ack, ok := nc.read().(*packet.Connack); !ok || ack.ReasonCode != packet.ServerUnavailable {
		t.Fatalf("CONNECT whose handover reply was lost got %+v, want CONNACK 0x88", ack)
	}
	if got := storedHandovers(t, b1.st); len(got) != 1 || got[0] != "lost" {
		t.Fatalf("node 1 keeps the handovers %q, want [lost]", got)
	}
	if b2.sessionCount() != 0 {
		t.Fatal("node 2 kept a session for the refused CONNECT")
	}

	c := resumed5(t, b2.tcp, "lost")
	if got := collect5(t, c, want); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %q after the lost reply, want %q", got, want)
	}
	waitFor(t, "node 1 forgets the state", func() bool { return len(storedHandovers(t, b1.st)) == 0 })
	if dir.forgot != 1 {
		t.Fatalf("ForgetHandover dropped %d states, want 1", dir.forgot)
	}
	if b1.pendingHandover("lost") != nil {
		t.Fatal("node 1 still keeps the state in memory")
	}
}

// TestHandoverKeptAcrossRestart: a released state not confirmed survives
// a restart of the node that released it (the same state is returned to
// the same node, not to another), and is dropped once its time passes.
func TestHandoverKeptAcrossRestart(t *testing.T) {
	n1 := memNode()
	b1 := n1.start(t, true, nil)
	owe5(t, b1, "kept", 3)
	ctx := context.Background()
	first, released, err := b1.ReleaseSession(ctx, Release{ClientID: "kept", To: 2, Self: 1})
	if err != nil || !released || len(first.Owed) != 3 {
		t.Fatalf("release: %v, released %v, %d owed, want 3", err, released, len(first.GetOwed()))
	}
	b1.stop(t)

	b1 = n1.start(t, true, nil)
	if st, _, _ := b1.ReleaseSession(ctx, Release{ClientID: "kept", To: 3, Self: 1}); st != nil {
		t.Fatal("the state was handed to another node than the one it was released to")
	}
	again, released, err := b1.ReleaseSession(ctx, Release{ClientID: "kept", To: 2, Self: 1})
	if err != nil || !released || !proto.Equal(first, again) {
		t.Fatalf("release again after a restart: %v, released %v, same state %v", err, released, proto.Equal(first, again))
	}

	b1.mu.Lock()
	p := b1.pending["kept"]
	b1.mu.Unlock()
	p.timer.Reset(time.Millisecond) // its time passes
	waitFor(t, "the state dropped", func() bool { return b1.pendingHandover("kept") == nil && len(storedHandovers(t, b1.st)) == 0 })
	if st, _, _ := b1.ReleaseSession(ctx, Release{ClientID: "kept", To: 2, Self: 1}); st != nil {
		t.Fatal("a dropped state was returned")
	}
}

// TestHandoverTakenBack: the client comes back to the node that released
// its session before the new node confirmed it: that node takes its kept
// state back (Session Present 1, the owed messages).
func TestHandoverTakenBack(t *testing.T) {
	// The other node never got the state: it releases nothing.
	other := memNode().start(t, false, nil)
	dir := &pairDirectory{self: 1, other: 2, prev: func() *Server { return other.Server }, owned: map[string]bool{}}
	b1 := memNode().start(t, true, func(o *Options) { o.Sessions = dir })
	want := owe5(t, b1, "back", 4)
	if _, _, err := b1.ReleaseSession(context.Background(), Release{ClientID: "back", To: 2, Self: 1}); err != nil {
		t.Fatal(err)
	}
	c := resumed5(t, b1.tcp, "back")
	if got := collect5(t, c, want); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	waitFor(t, "the kept state dropped", func() bool { return len(storedHandovers(t, b1.st)) == 0 })
}

// TestHandoverInboundQoS2SurvivesRestart: an inbound QoS 2 packet
// identifier awaiting PUBREL is handed over and stored on the new node as
// its own: after a restart of the new node, the client's PUBLISH resent
// with DUP is acknowledged and not stored again, and its PUBREL completes.
func TestHandoverInboundQoS2SurvivesRestart(t *testing.T) {
	n1, n2, b1, b2, _ := handoverPair(t)
	c, _ := rawConnect(t, b1.tcp, "q2h", false)
	c.send(&packet.Publish{Topic: "q2h/a", QoS: packet.QoS2, PacketID: 7, Payload: []byte("once")})
	if rec, ok := c.read().(*packet.Pubrec); !ok || rec.PacketID != 7 {
		t.Fatalf("got %+v, want PUBREC 7", rec)
	}
	c.nc.Close()
	waitFor(t, "q2h offline", func() bool { return b1.sessionOwner("q2h") == nil })

	c = rawResume(t, b2.tcp, "q2h") // taken over: Session Present 1
	c.nc.Close()
	waitFor(t, "q2h offline on node 2", func() bool { return b2.sessionOwner("q2h") == nil })
	b2.stop(t)
	b2 = n2.start(t, true, func(o *Options) { o.Sessions = b2.opts.Sessions })

	c = rawResume(t, b2.tcp, "q2h")
	c.send(&packet.Publish{Topic: "q2h/a", QoS: packet.QoS2, PacketID: 7, Dup: true, Payload: []byte("once")})
	if rec, ok := c.read().(*packet.Pubrec); !ok || rec.PacketID != 7 {
		t.Fatalf("got %+v, want PUBREC 7", rec)
	}
	c.send(&packet.Pubrel{PacketID: 7})
	if comp, ok := c.read().(*packet.Pubcomp); !ok || comp.ReasonCode != packet.Success {
		t.Fatalf("got %+v, want PUBCOMP 7 success (the packet id handed over was forgotten?)", comp)
	}
	if got := storedPayloads(t, n2.eng, "q2h/a"); len(got) != 0 {
		t.Fatalf("the resent PUBLISH was stored again on node 2: %q", got)
	}
	if got := storedPayloads(t, n1.eng, "q2h/a"); len(got) != 1 {
		t.Fatalf("node 1 stored %q, want the message once", got)
	}
}

// TestHandoverStateChecked: a state of another layout version, or of
// another client, is refused with an error that says so.
func TestHandoverStateChecked(t *testing.T) {
	ok := &mqttclusterv1.SessionState{Format: handoverFormat, ClientId: "c"}
	if err := CheckHandover("c", ok); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []*mqttclusterv1.SessionState{
		{Format: handoverFormat + 1, ClientId: "c"},
		{ClientId: "c"},
		{Format: handoverFormat, ClientId: "d"},
		{Format: handoverFormat, ClientId: "c", Owed: []*mqttclusterv1.OwedMessage{{Qos: 1}}},
		{Format: handoverFormat, ClientId: "c", InboundQos2: []uint32{0x10000}},
	} {
		if err := CheckHandover("c", bad); err == nil {
			t.Errorf("state %v accepted", bad)
		}
	}
	if err := CheckHandover("c", &mqttclusterv1.SessionState{Format: 7, ClientId: "c"}); err == nil || !strings.Contains(err.Error(), "format 7") {
		t.Errorf("a state of format 7: %v, want an error naming the format", err)
	}
}
