package main

// Re-replication end to end: real `quire start` processes on the journal
// engine, a real MQTT client, bookies lost to SIGKILL.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/quiremq/quire/internal/node/adminapi"
)

// startJournalCluster starts n nodes, all meta voters with a bookie each,
// whose default engine is the journal (E/Qw/Qa 3/2/2, ledgers rolled every
// 20 entries) with rereplicate_after 2s, serving MQTT on tcp; it returns
// when all are ready.
func startJournalCluster(t *testing.T, n int) []*clusterNode {
	return startNodes(t, "rereplicate", n, func(cn *clusterNode) string {
		return fmt.Sprintf(`[storage]
default_engine = "journal"
[storage.journal]
ensemble = 3
write_quorum = 2
ack_quorum = 2
ledger_entries = 20
rereplicate_after = "2s"
[mqtt]
tcp = %q
tls = ""
ws = ""
wss = ""
quic = ""
`, cn.tcp)
	})
}

func (jn *clusterNode) kill9(t *testing.T) {
	t.Helper()
	(&mqttNode{p: jn.p}).kill9(t)
	jn.killed = true
}

// ledgers lists the journal ledgers as node jn's admin API reports them.
func (jn *clusterNode) ledgers(t *testing.T, underReplicated bool) adminapi.LedgerList {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := adminapi.NewClient(jn.admin).Ledgers(ctx, underReplicated)
	if err != nil {
		t.Fatalf("GET %s on node %d: %v", adminapi.LedgersPath(underReplicated), jn.id, err)
	}
	return l
}

// ledgerBookies are the bookies named by any fragment of l.
func ledgerBookies(l adminapi.Ledger) []string {
	var bs []string
	for _, f := range l.Fragments {
		for _, b := range f.Bookies {
			if !slices.Contains(bs, b) {
				bs = append(bs, b)
			}
		}
	}
	return bs
}

func describeLedgers(ls []adminapi.Ledger) string {
	var b strings.Builder
	for _, l := range ls {
		fmt.Fprintf(&b, "\n  ledger %d %s last=%d missing=%v:", l.ID, l.State, l.LastEntry, l.Missing)
		for _, f := range l.Fragments {
			fmt.Fprintf(&b, " [%d: %s]", f.FirstEntry, strings.Join(f.Bookies, " "))
		}
	}
	return b.String()
}

// TestJournalRereplication: five `quire start` nodes (five meta voters and
// five bookies) store MQTT messages on the journal engine, E/Qw/Qa 3/2/2,
// rereplicate_after 2s. QoS 1 messages acknowledged through node 1 while
// a persistent-session subscriber is offline; then a node whose bookie is
// in a ledger's ensemble (not node 1) is killed with SIGKILL for good,
// and more messages are acknowledged. Within a minute no ledger is
// under-replicated: every ledger that named the dead bookie still exists
// and names only live bookies in all its fragments, and the nodes count
// re-replicated ledgers and entries. Then a second bookie of that same
// ensemble is killed — without re-replication the entries whose write set
// was those two bookies would have no copy left — and node 1 is
// restarted, so that its sessions are rebuilt by reading its shards back
// from the bookies: the subscriber gets every acknowledged message.
func TestJournalRereplication(t *testing.T) {
	start := time.Now()
	nodes := startJournalCluster(t, 5)
	pub := nodes[0] // publish and read through node 1
	t.Logf("5 nodes ready after %v", time.Since(start).Round(time.Millisecond))

	hist := newInbox()
	sub, _ := v5(t, pub.tcp, "rr-history", true, hist)
	if _, err := sub.Subscribe(v5ctx(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "rr/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	sub.Disconnect(&paho.Disconnect{})

	topics := []string{"rr/plant/a", "rr/plant/b", "rr/plant/c"}
	var acked []string
	publish := func(batch string, perTopic int) {
		t.Helper()
		began := time.Now()
		var slowest time.Duration
		c, _ := v5(t, pub.tcp, "rr-pub-"+batch, false, nil)
		for i := range perTopic {
			for ti, topic := range topics {
				p := fmt.Sprintf("%s-t%d-m%03d", batch, ti, i)
				// A publish waits out the journal's add timeout (5s)
				// when a bookie of its ensemble has just died.
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				sent := time.Now()
				_, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(p)})
				cancel()
				if err != nil {
					t.Fatalf("publish %s: %v", p, err)
				}
				slowest = max(slowest, time.Since(sent))
				acked = append(acked, p) // PUBACK received
			}
		}
		c.Disconnect(&paho.Disconnect{})
		t.Logf("%d messages %q acknowledged in %v, the slowest after %v", perTopic*len(topics), batch,
			time.Since(began).Round(time.Millisecond), slowest.Round(time.Millisecond))
	}
	publish("before", 50)

	// Pick two bookies, neither node 1's, of the ensemble of a ledger
	// closed with at least 3 entries: every pair of an ensemble of 3 is
	// the write set (Qw 2) of some of its entries.
	byBookie := map[string]*clusterNode{}
	for _, jn := range nodes {
		byBookie[jn.grpc] = jn
	}
	before := pub.ledgers(t, false)
	var first, second *clusterNode
	var named []uint64 // ledgers naming first's bookie
	for _, l := range before.Ledgers {
		if l.State != "CLOSED" || l.LastEntry < 2 || len(l.Fragments) != 1 {
			continue
		}
		var others []*clusterNode
		for _, b := range l.Fragments[0].Bookies {
			if jn := byBookie[b]; jn != nil && jn != pub {
				others = append(others, jn)
			}
		}
		if len(others) >= 2 {
			first, second = others[0], others[1]
			break
		}
	}
	if first == nil {
		t.Fatalf("no closed ledger with 3 entries or more has two bookies other than node 1's:%s", describeLedgers(before.Ledgers))
	}
	for _, l := range before.Ledgers {
		if slices.Contains(ledgerBookies(l), first.grpc) {
			named = append(named, l.ID)
		}
	}
	t.Logf("%d ledgers after %d messages, %d naming node %d's bookie; killing nodes %d then %d:%s",
		len(before.Ledgers), len(acked), len(named), first.id, first.id, second.id, describeLedgers(before.Ledgers))

	// Lose the first bookie for good; traffic goes on (the writers replace
	// it in their open ledgers' ensembles).
	first.kill9(t)
	killedAt := time.Now()
	publish("after", 20)

	// No ledger is under-replicated any more, once the dead bookie is out
	// of the live list (else the answer would say nothing).
	var after adminapi.LedgerList
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		under := pub.ledgers(t, true)
		if len(under.Ledgers) == 0 && !slices.Contains(under.LiveBookies, first.grpc) {
			after = pub.ledgers(t, false)
			if !slices.Contains(after.LiveBookies, first.grpc) && !slices.ContainsFunc(after.Ledgers, func(l adminapi.Ledger) bool { return len(l.Missing) > 0 }) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v after killing node %d, live bookies %v, under-replicated ledgers:%s",
				time.Since(killedAt).Round(time.Millisecond), first.id, under.LiveBookies, describeLedgers(under.Ledgers))
		}
	}
	t.Logf("no ledger under-replicated %v after killing node %d", time.Since(killedAt).Round(time.Millisecond), first.id)
	if len(after.LiveBookies) != 4 {
		t.Errorf("live bookies %v, want the 4 of the live nodes", after.LiveBookies)
	}
	if after.Auditor == "" || after.Auditor == fmt.Sprint(first.id) {
		t.Errorf("auditor %q after node %d's death, want a live node's id", after.Auditor, first.id)
	}
	for _, l := range after.Ledgers {
		for _, b := range ledgerBookies(l) {
			if !slices.Contains(after.LiveBookies, b) {
				t.Errorf("ledger %d names bookie %s, not live %v", l.ID, b, after.LiveBookies)
			}
		}
	}
	for _, id := range named {
		if !slices.ContainsFunc(after.Ledgers, func(l adminapi.Ledger) bool { return l.ID == id }) {
			t.Errorf("ledger %d, which named node %d's bookie, is gone:%s", id, first.id, describeLedgers(after.Ledgers))
		}
	}
	var ledgersDone, entriesDone, failures float64
	var perNode []string
	for _, jn := range nodes {
		if !jn.killed {
			m := &mqttNode{admin: jn.admin}
			l, e := m.metric(t, "quire_journal_rereplicated_ledgers_total"), m.metric(t, "quire_journal_rereplicated_entries_total")
			ledgersDone, entriesDone = ledgersDone+l, entriesDone+e
			failures += m.metric(t, "quire_journal_rereplication_failures_total")
			perNode = append(perNode, fmt.Sprintf("node %d: %v/%v", jn.id, l, e))
		}
	}
	t.Logf("re-replicated %v ledgers, %v entries (%v failures) on the live nodes (%s); %d ledgers in all",
		ledgersDone, entriesDone, failures, strings.Join(perNode, ", "), len(after.Ledgers))
	if ledgersDone == 0 || entriesDone == 0 {
		t.Errorf("quire_journal_rereplicated_ledgers_total %v, quire_journal_rereplicated_entries_total %v on the live nodes, want > 0", ledgersDone, entriesDone)
	}
	if t.Failed() {
		t.FailNow()
	}

	// Lose a second bookie of the same ensemble (3 of the 5 meta voters
	// remain), then restart node 1: it rebuilds its sessions by reading
	// its shards back from the bookies.
	second.kill9(t)
	if code := pub.p.terminate(t); code != 0 {
		t.Fatalf("node 1: exit status %d after SIGTERM\n%s", code, pub.p.stderr)
	}
	pub.p = startQuire(t, pub.dir, "start", "--config", pub.cfg)
	pub.p.waitReady(t, pub.admin)
	_, ack := v5(t, pub.tcp, "rr-history", true, hist)
	if !ack.SessionPresent {
		t.Fatal("Session Present 0 after the restart")
	}
	got := hist.waitAll(t, "subscriber after two bookies lost", acked)
	t.Logf("%d acknowledged messages, %d delivered (duplicates included) after node 1's restart; %v in all",
		len(acked), got, time.Since(start).Round(time.Millisecond))
}
