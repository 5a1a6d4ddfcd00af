package node

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quiremq/quire/frontends/mqtt/packet"
	"github.com/quiremq/quire/frontends/mqtt/store"
	"github.com/quiremq/quire/meta/schema"
)

// sessionDirectoryOf is node n's mqtt.SessionDirectory.
func sessionDirectoryOf(t *testing.T, n *Node) *sessionDirectory {
	t.Helper()
	d, ok := n.broker.mqtt.SessionDirectory().(*sessionDirectory)
	if !ok {
		t.Fatal("the node has no session directory")
	}
	return d
}

// keptHandovers are the client ids whose state node n keeps for the node
// it released them to (not confirmed yet).
func keptHandovers(t *testing.T, n *Node) []string {
	t.Helper()
	var out []string
	if err := n.broker.mqttDB.Handovers(func(client string, _ *store.Handover) error { out = append(out, client); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestNodeMQTTSessionHandoverReplyLost: node 1 released a session whose
// QoS 1 messages it owed, and its Release reply was lost. It kept the
// state: once, the CONNECT's own call again gets it; for longer, the
// CONNECT on node 2 is refused (node 1 is up and may hold the state) and
// the client's next CONNECT gets it. Either way every owed message
// arrives, once and in order, and node 1 forgets its copy once node 2
// stored the session.
func TestNodeMQTTSessionHandoverReplyLost(t *testing.T) {
	_, nodes := startCluster(t, twoNodeConfigs)
	pub := mqttClient(t, nodes[0], "lost-pub", true, nil)
	d1 := sessionDirectoryOf(t, nodes[0])
	const n = 10
	owe := func(id string) {
		t.Helper()
		conns := gaugeValue(t, nodes[0], "quire_mqtt_connections")
		c := connectV5(t, nodes[0], id)
		c.subscribe(t, "lost/"+id+"/#")
		c.Disconnect(&paho.Disconnect{})
		waitFor(t, "node 1 sees "+id+" go", func() bool { return gaugeValue(t, nodes[0], "quire_mqtt_connections") == conns })
		publish(t, pub, "lost/"+id+"/x", 0, n) // queued for the offline session on node 1
	}
	lostReply := status.Error(codes.Unavailable, "reply lost (test)")

	// The first reply is lost.
	owe("once")
	var replies atomic.Int32
	once := func(id string) error {
		if id == "once" && replies.Add(1) == 1 {
			return lostReply
		}
		return nil
	}
	d1.replyFault.Store(&once)
	c := connectV5(t, nodes[1], "once")
	if replies.Load() < 2 {
		t.Fatalf("node 1 answered %d Release calls, want the lost one and another", replies.Load())
	}
	if !c.ack.SessionPresent {
		t.Fatal("Session Present 0 after a lost Release reply: the state did not come")
	}
	c.expect(t, "lost/once/x", n)

	// Every reply is lost for a while.
	owe("later")
	var lost atomic.Bool
	lost.Store(true)
	always := func(string) error {
		if lost.Load() {
			return lostReply
		}
		return nil
	}
	d1.replyFault.Store(&always)
	if _, err := dialV5(t, nodes[1], "later"); err == nil {
		t.Fatal("the CONNECT on node 2 was accepted while node 1's replies were lost")
	}
	if got := keptHandovers(t, nodes[0]); !slicesContain(got, "later") {
		t.Fatalf("node 1 keeps the states of %q, want later's among them", got)
	}
	lost.Store(false)
	c = connectV5(t, nodes[1], "later")
	if !c.ack.SessionPresent {
		t.Fatal("Session Present 0 on the CONNECT after the lost replies")
	}
	c.expect(t, "lost/later/x", n)
	if got := sessionOwner(t, nodes[1], "later"); got != 2 {
		t.Fatalf("owner of the session in meta = %d, want 2", got)
	}
	waitFor(t, "node 1 forgets the states node 2 stored", func() bool { return len(keptHandovers(t, nodes[0])) == 0 })
}

func slicesContain(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestNodeMQTTSessionRacingConnects: CONNECTs of one client id reach two
// nodes at the same moment, again and again: each time exactly one
// connection survives (the other is refused, or closed with 0x8E), meta
// names the survivor's node as the owner, and the other node keeps no
// copy of the session. Without the retry of a Release that reaches a node
// binding an older claim, both connections stay (each node binds its own).
func TestNodeMQTTSessionRacingConnects(t *testing.T) {
	_, nodes := startCluster(t, twoNodeConfigs)
	// Release replies take 50 ms: the claims overlap (the window is a few
	// ms on an idle machine).
	slow := func(string) error { time.Sleep(50 * time.Millisecond); return nil }
	for _, n := range nodes {
		sessionDirectoryOf(t, n).replyFault.Store(&slow)
	}
	base := mqttSessions(t, nodes[0]) + mqttSessions(t, nodes[1])
	const rounds = 12
	for i := range rounds {
		id := fmt.Sprintf("race-%d", i)
		conns := make([]*v5conn, 2)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for k := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				if c, err := dialV5(t, nodes[k], id); err == nil {
					conns[k] = c
				}
			}()
		}
		close(start)
		wg.Wait()
		gone := make([]bool, 2)
		alive := func() []int {
			var out []int
			for k, c := range conns {
				if c == nil || gone[k] {
					continue
				}
				select {
				case d := <-c.disconnected:
					if d.ReasonCode != byte(packet.SessionTakenOver) {
						t.Fatalf("round %d: the connection to node %d got DISCONNECT 0x%02X, want 0x8E", i, k+1, d.ReasonCode)
					}
					gone[k] = true
				default:
					out = append(out, k)
				}
			}
			return out
		}
		for deadline := time.Now().Add(time.Minute); len(alive()) != 1; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				// What each side believes: two owners, or none?
				t.Fatalf("round %d: after a minute, connections alive %v (accepted: %v, %v; taken over: %v); meta names node %d; "+
					"node 1 holds %d sessions and %v connections, node 2 %d and %v", i, alive(), conns[0] != nil, conns[1] != nil, gone,
					sessionOwner(t, nodes[0], id), mqttSessions(t, nodes[0]), gaugeValue(t, nodes[0], "quire_mqtt_connections"),
					mqttSessions(t, nodes[1]), gaugeValue(t, nodes[1], "quire_mqtt_connections"))
			}
		}
		time.Sleep(300 * time.Millisecond) // a late takeover would come now
		left := alive()
		if len(left) != 1 {
			t.Fatalf("round %d: %d connections alive", i, len(left))
		}
		k := left[0]
		t.Logf("round %d: node %d's connection survived (the other refused: %v)", i, k+1, conns[1-k] == nil)
		conns[k].subscribe(t, "race/"+id) // the survivor answers
		if got := sessionOwner(t, nodes[0], id); got != uint64(k+1) {
			t.Fatalf("round %d: the connection to node %d survived, meta names node %d", i, k+1, got)
		}
		if got := mqttSessions(t, nodes[0]) + mqttSessions(t, nodes[1]); got != base+i+1 {
			t.Fatalf("round %d: the nodes hold %d sessions, want %d (one per round)", i, got, base+i+1)
		}
	}
}

// TestNodeMQTTSessionKickedBeforeConnack: node 2's claim kicks a
// connection on node 1 after its session was bound there and before its
// CONNACK went out (the window TestNodeMQTTSessionRacingConnects hits
// under load). That client's CONNECT fails (DISCONNECT 0x8E, no CONNACK),
// node 1 unbinds the session, answers the Release at once, and node 2's
// CONNECT is accepted. Before the fix the session kept the dead
// connection as its owner: node 1 kicked it again and again until the
// Release's timeout, and node 2 refused the client for a minute
// (handoverPatience), node 1 for good.
func TestNodeMQTTSessionKickedBeforeConnack(t *testing.T) {
	_, nodes := startCluster(t, twoNodeConfigs)
	const id = "kick-early"
	first := make(chan error, 1)  // node 1's CONNECT
	second := make(chan error, 1) // node 2's
	var once sync.Once
	hook := func(client string) {
		if client != id {
			return
		}
		once.Do(func() {
			// Bound on node 1, no CONNACK yet: node 2 takes the session.
			go func() {
				_, err := dialV5(t, nodes[1], id)
				second <- err
			}()
			select {
			case err := <-first:
				first <- err // the client saw the kick before any CONNACK
			case <-time.After(15 * time.Second):
				t.Error("node 1's client was not kicked while its CONNACK was held")
			}
		})
	}
	sessionDirectoryOf(t, nodes[0]).boundHook.Store(&hook)
	go func() {
		_, err := dialV5(t, nodes[0], id)
		first <- err
	}()
	select {
	case err := <-second:
		if err != nil {
			t.Fatalf("node 2 refused the CONNECT that took the session from a connection kicked before its CONNACK: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("node 2's CONNECT did not end")
	}
	if err := <-first; err == nil {
		t.Fatal("node 1's CONNECT succeeded although its connection was kicked before the CONNACK")
	}
	if got := sessionOwner(t, nodes[0], id); got != 2 {
		t.Fatalf("owner of the session in meta = %d, want 2", got)
	}
	waitFor(t, "node 1 holds no session", func() bool { return mqttSessions(t, nodes[0]) == 0 })
	// Node 1 takes the session back at once: no dead owner is in the way.
	c := connectV5(t, nodes[0], id)
	c.subscribe(t, "kick/early")
}

// TestNodeMQTTSessionOwnerListedDown: node 2 lists node 1 down (its lease
// lapsed, as on a node too slow to renew it under load) while node 1
// still serves the client. The client's CONNECT on node 2 still has node
// 1 close that connection (0x8E) and hand the session over: one
// connection, not two (before, node 2 did not ask a node listed down).
func TestNodeMQTTSessionOwnerListedDown(t *testing.T) {
	_, nodes := startCluster(t, twoNodeConfigs)
	const id = "down-owner"
	c1 := connectV5(t, nodes[0], id)
	c1.subscribe(t, "down/owner")
	d2 := sessionDirectoryOf(t, nodes[1])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	peers, err := d2.others(ctx, true)
	if err != nil || len(peers) != 1 || !peers[0].Up {
		t.Fatalf("node 2's peers: %+v, %v; want node 1, up", peers, err)
	}
	d2.mu.Lock()
	down := peers[0]
	down.Up = false
	d2.peers = []schema.NodeState{down}
	d2.peersAt = time.Now().Add(time.Hour) // read again only when fresh
	d2.mu.Unlock()
	c2 := connectV5(t, nodes[1], id)
	c1.takenOver(t, "node 1's connection, its node listed down")
	if !c2.ack.SessionPresent {
		t.Fatal("Session Present 0 on node 2: node 1 did not hand the session over")
	}
	if got := sessionOwner(t, nodes[0], id); got != 2 {
		t.Fatalf("owner of the session in meta = %d, want 2", got)
	}
}

// rawV5 is a packet-level MQTT 5 client.
type rawV5 struct {
	t  *testing.T
	nc net.Conn
	r  *packet.Reader
	w  *packet.Writer
}

// connectRawV5 connects id to node n with Clean Start 0 and a session
// expiry of 300 s, and returns the client and its CONNACK (a success).
func connectRawV5(t *testing.T, n *Node, id string) (*rawV5, *packet.Connack) {
	t.Helper()
	nc, err := net.Dial("tcp", n.MQTTAddr("tcp").String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &rawV5{t: t, nc: nc, r: packet.NewReader(nc, 1<<20), w: packet.NewWriter(nc, packet.V5)}
	c.r.SetVersion(packet.V5)
	c.send(&packet.Connect{Version: packet.V5, ClientID: id, KeepAlive: 60, Properties: packet.Properties{SessionExpiryInterval: 300}})
	ack, ok := c.read().(*packet.Connack)
	if !ok || ack.ReasonCode != packet.Success {
		t.Fatalf("connect %s to node %d: %+v", id, n.cfg.NodeID, ack)
	}
	return c, ack
}

func (c *rawV5) send(p packet.Packet) {
	c.t.Helper()
	if err := c.w.WritePacket(p); err != nil {
		c.t.Fatal(err)
	}
	if err := c.w.Flush(); err != nil {
		c.t.Fatal(err)
	}
}

func (c *rawV5) read() packet.Packet {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	p, err := c.r.ReadPacket()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return p
}

// close disconnects c (normal disconnection: the session stays) and waits
// until node n has no connection more than before.
func (c *rawV5) close(n *Node, conns float64) {
	c.t.Helper()
	c.send(&packet.Disconnect{})
	c.nc.Close()
	waitFor(c.t, "the node sees the client go", func() bool { return gaugeValue(c.t, n, "quire_mqtt_connections") <= conns })
}

// TestNodeMQTTSessionHandoverInboundQoS2: a client's QoS 2 PUBLISH was
// stored and answered with PUBREC on node 1, and its PUBREL not sent when
// the session moved to node 2. Node 2 stores the packet id handed over as
// its own: after node 2 restarts, the client's PUBLISH resent with DUP is
// answered with PUBREC and not stored again, its PUBREL completes, and the
// subscriber gets the message once.
func TestNodeMQTTSessionHandoverInboundQoS2(t *testing.T) {
	cfgs, nodes := startCluster(t, clusterConfigs) // three voters: node 2 can restart
	rec := newRecorder()
	sub := mqttClient(t, nodes[0], "q2-sub", true, rec)
	if tok := sub.Subscribe("q2h/#", 2, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	conns1 := gaugeValue(t, nodes[0], "quire_mqtt_connections")
	c, _ := connectRawV5(t, nodes[0], "q2h")
	c.send(&packet.Publish{Topic: "q2h/a", QoS: packet.QoS2, PacketID: 7, Payload: []byte("once")})
	if r, ok := c.read().(*packet.Pubrec); !ok || r.PacketID != 7 {
		t.Fatalf("got %+v, want PUBREC 7", r)
	}
	c.close(nodes[0], conns1)

	conns2 := gaugeValue(t, nodes[1], "quire_mqtt_connections")
	c, ack := connectRawV5(t, nodes[1], "q2h")
	if !ack.SessionPresent {
		t.Fatal("Session Present 0 on node 2: the session did not follow")
	}
	c.close(nodes[1], conns2)
	if err := nodes[1].Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	n2 := restartNode(t, cfgs[1])

	// Node 1's subscriber would get what node 2 stores (its route).
	pub := mqttClient(t, n2, "q2-probe", true, nil)
	routed(t, pub, "q2h/probe", rec)
	c, ack = connectRawV5(t, n2, "q2h")
	if !ack.SessionPresent {
		t.Fatal("Session Present 0 on node 2 after its restart")
	}
	c.send(&packet.Publish{Topic: "q2h/a", QoS: packet.QoS2, PacketID: 7, Dup: true, Payload: []byte("once")})
	if r, ok := c.read().(*packet.Pubrec); !ok || r.PacketID != 7 {
		t.Fatalf("got %+v, want PUBREC 7", r)
	}
	c.send(&packet.Pubrel{PacketID: 7})
	if comp, ok := c.read().(*packet.Pubcomp); !ok || comp.ReasonCode != packet.Success {
		t.Fatalf("got %+v, want PUBCOMP 7 success (the packet id handed over was forgotten)", comp)
	}
	if got := storedCopies(t, n2, "q2h/a"); got[""] != 0 {
		t.Fatalf("node 2 stored the resent PUBLISH as its own: %v", got)
	}
	routed(t, pub, "q2h/probe2", rec) // anything node 2 stored before reached node 1
	if got := rec.topic("q2h/a"); len(got) != 1 || got[0] != "once" {
		t.Fatalf("the subscriber got %q, want [once]", got)
	}
}
