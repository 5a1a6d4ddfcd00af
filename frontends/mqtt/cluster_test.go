package mqtt

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/quiremq/quire/frontends/mqtt/store"
	"github.com/quiremq/quire/frontends/pubsub"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
)

func TestFilterSet(t *testing.T) {
	fs := NewFilterSet([]string{"a/+/c", "b/#", "$SYS/x"})
	for topic, want := range map[string]bool{
		"a/b/c": true, "a/b/d": false, "a/c": false,
		"b": true, "b/x/y": true,
		"$SYS/x": true, "$SYS/y": false,
		"c": false,
	} {
		if got := fs.Match(topic); got != want {
			t.Errorf("Match(%q) = %v, want %v", topic, got, want)
		}
	}
	if NewFilterSet([]string{"#"}).Match("$SYS/x") {
		t.Error(`"#" matches a "$" topic`)
	}
	if NewFilterSet(nil).Match("a") {
		t.Error("the empty set matches")
	}
}

// forwardAll scans every shard of from from offset 0 with filters and
// injects what it returns into to as messages of node origin; it returns
// how many it injected.
func forwardAll(t *testing.T, from, to *Server, origin uint64, filters []string) int {
	t.Helper()
	ctx := context.Background()
	src, err := from.ClusterSource()
	if err != nil {
		t.Fatal(err)
	}
	fs := NewFilterSet(filters)
	n := 0
	for _, sm := range src.Shards() {
		recs, next, err := src.Scan(ctx, sm.Name, 0, fs, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if next != sm.High {
			t.Fatalf("scan of %s ended at %d, want its high watermark %d", sm.Name, next, sm.High)
		}
		if len(recs) > 0 {
			stored, err := to.InjectForwarded(ctx, origin, recs)
			if err != nil {
				t.Fatal(err)
			}
			if stored != len(recs) {
				t.Fatalf("stored %d of %d records", stored, len(recs))
			}
		}
		n += len(recs)
	}
	return n
}

// Messages published on one server, scanned with the other's filters and
// injected there, reach the other's subscribers with their QoS, in order,
// and set its retained message; what was injected is stored with
// HeaderOrigin and never scanned out again (no loops).
func TestClusterForwardAndInject(t *testing.T) {
	a := startBroker(t, nil, nil)
	b := startBroker(t, nil, nil)

	var got received
	sub := paho3Client(t, "tcp://"+b.tcp, "sub", func(o *paho3.ClientOptions) { o.SetOrderMatters(true) })
	ok(t, sub.Subscribe("orders/#", 1, got.handler))
	ok(t, sub.Subscribe("$share/g/fleet/+", 1, got.handler))
	if fs := b.RouteFilters(); !slices.Equal(fs, []string{"fleet/+", "orders/#"}) {
		t.Fatalf("RouteFilters = %v", fs)
	}

	pub := paho3Client(t, "tcp://"+a.tcp, "pub", nil)
	for _, p := range []string{"1", "2", "3"} {
		ok(t, pub.Publish("orders/eu", 1, false, p))
	}
	ok(t, pub.Publish("fleet/7", 1, false, "f"))
	ok(t, pub.Publish("other", 1, false, "x"))
	ok(t, pub.Publish("orders/last", 1, true, "kept"))

	if n := forwardAll(t, a.Server, b.Server, 1, b.RouteFilters()); n != 5 {
		t.Fatalf("forwarded %d messages, want 5 (not the one on \"other\")", n)
	}
	msgs := got.wait(t, 5)
	var seen []string
	for _, m := range msgs {
		seen = append(seen, m.Topic()+"="+string(m.Payload()))
		if m.Qos() != 1 {
			t.Errorf("%s delivered with QoS %d", m.Topic(), m.Qos())
		}
	}
	eu := slices.DeleteFunc(slices.Clone(seen), func(s string) bool { return !strings.HasPrefix(s, "orders/eu=") })
	if want := []string{"orders/eu=1", "orders/eu=2", "orders/eu=3"}; !slices.Equal(eu, want) {
		t.Errorf("delivered %v, want %v in order", seen, want)
	}
	for _, want := range []string{"fleet/7=f", "orders/last=kept"} {
		if !slices.Contains(seen, want) {
			t.Errorf("delivered %v, without %s", seen, want)
		}
	}
	if st := b.stored(t, "orders/eu"); !slices.Equal(st, []string{"1", "2", "3"}) {
		t.Errorf("b stores orders/eu %v", st)
	}
	var retained []string
	b.opts.Retained.Match(context.Background(), "orders/#", func(m *pubsub.Message) bool {
		retained = append(retained, m.Topic+"="+string(m.Payload))
		return true
	})
	if !slices.Equal(retained, []string{"orders/last=kept"}) {
		t.Errorf("b retains %v", retained)
	}

	// Back from b to a, with every filter: nothing, since all of b's
	// records came from a.
	if n := forwardAll(t, b.Server, a.Server, 2, []string{"#"}); n != 0 {
		t.Fatalf("forwarded %d messages back: a loop", n)
	}
	if n := got.count(); n != 5 {
		t.Errorf("subscriber got %d messages, want 5", n)
	}
}

// A batch forwarded to a session whose queue has no room for it waits
// for the client to drain (up to injectPatience) instead of overflowing
// the queue: three batches of 8 into a queue of 10, none dropped.
func TestClusterInjectWaitsForRoom(t *testing.T) {
	b := startBroker(t, nil, func(o *Options) { o.MaxQueued = 10 })
	var got received
	sub := paho3Client(t, "tcp://"+b.tcp, "sub", nil)
	ok(t, sub.Subscribe("t", 1, got.handler))
	for i := range 3 {
		var recs []shard.Record
		for j := range 8 {
			recs = append(recs, EncodeRecord(&pubsub.Message{Topic: "t", QoS: 1, Payload: []byte{byte(8*i + j)}}))
		}
		if _, err := b.InjectForwarded(context.Background(), 1, recs); err != nil {
			t.Fatal(err)
		}
	}
	got.wait(t, 24)
	if d := b.metric(t, "quire_mqtt_messages_dropped_total", nil); d != 0 {
		t.Errorf("%v messages dropped", d)
	}
}

// awaitRoom waits on a session whose queue is full until its writer takes
// from the queue, or until it goes offline, not for its patience (nor a
// poll).
func TestClusterAwaitRoomWakes(t *testing.T) {
	b := startBroker(t, nil, func(o *Options) { o.MaxQueued = 10 })
	c := &conn{}
	sess := newSession("slow")
	sess.bind(c, 0)
	fw := []forwardedMsg{{m: &pubsub.Message{Topic: "t"}, subs: []pubsub.Subscription{{Owner: sess}}}}
	for _, wake := range []struct {
		name string
		do   func()
	}{
		{"the writer takes 5", func() { sess.take(c, 100, 5, time.Now(), nil) }},
		{"the session goes offline", func() { sess.unbind(c) }},
	} {
		sess.mu.Lock()
		for len(sess.queue) < 10 {
			sess.queue = append(sess.queue, delivery{msg: &pubsub.Message{Topic: "t"}})
		}
		sess.mu.Unlock()
		done := make(chan struct{})
		go func() {
			b.awaitRoom(context.Background(), fw, time.Minute)
			close(done)
		}()
		select {
		case <-done:
			t.Fatalf("%s: awaitRoom returned with no room", wake.name)
		case <-time.After(50 * time.Millisecond):
		}
		wake.do()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: awaitRoom still waits", wake.name)
		}
	}
}

// Rescan returns the records below until that the new filters match and
// the old ones do not, and stops at until; Scan reads to the end.
func TestClusterRescan(t *testing.T) {
	a := startBroker(t, nil, nil)
	ctx := context.Background()
	// x/a and x/e hash onto the same one of startBroker's 4 shards.
	topics := []string{"x/a", "x/e"}
	if ShardName("memory", "x/a", 4) != ShardName("memory", "x/e", 4) {
		t.Fatal("x/a and x/e are in two shards")
	}
	for i := range 10 {
		if err := a.publish(ctx, &pubsub.Message{Topic: topics[i%2], QoS: 1, Payload: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	src, err := a.ClusterSource()
	if err != nil {
		t.Fatal(err)
	}
	name := ShardName("memory", "x/a", 4)
	payloads := func(recs []shard.Record) (out []string) {
		for _, r := range recs {
			out = append(out, string(r.Key)+"="+string(r.Value))
		}
		return out
	}
	recs, next, err := src.Rescan(ctx, name, 2, 7, NewFilterSet([]string{"x/#"}), NewFilterSet([]string{"x/a"}), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"x/e=3", "x/e=5"}; !slices.Equal(payloads(recs), want) || next != 7 {
		t.Fatalf("Rescan [2, 7) = %v up to %d, want %v up to 7", payloads(recs), next, want)
	}
	recs, next, err = src.Scan(ctx, name, 7, NewFilterSet([]string{"x/#"}), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"x/e=7", "x/a=8", "x/e=9"}; !slices.Equal(payloads(recs), want) || next != 10 {
		t.Fatalf("Scan from 7 = %v up to %d, want %v up to 10", payloads(recs), next, want)
	}
}

// BenchmarkInjectForwarded: batches of 64 forwarded QoS 1 records (128 B)
// stored on the memory engine and queued for one online QoS 0 subscriber,
// whose queue is taken after each batch.
//
//	go test -run '^$' -bench InjectForwarded -benchmem ./frontends/mqtt
func BenchmarkInjectForwarded(b *testing.B) {
	s := startBroker(b, nil, nil)
	c := &conn{}
	sess := newSession("sub")
	sess.bind(c, 0)
	s.tree.Subscribe(pubsub.Subscription{Client: "sub", Filter: "bench/#", Owner: sess}) // QoS 0: take settles
	recs := make([]shard.Record, 64)
	for i := range recs {
		recs[i] = EncodeRecord(&pubsub.Message{Topic: "bench/" + strconv.Itoa(i%4), QoS: 1, Publisher: "pub",
			Payload: make([]byte, 128), Time: time.Now()})
	}
	ctx := context.Background()
	var out []*delivery
	b.ResetTimer()
	for range b.N / len(recs) {
		if _, err := s.InjectForwarded(ctx, 1, recs); err != nil {
			b.Fatal(err)
		}
		out, _ = sess.take(c, 1<<20, 1<<20, time.Now(), out[:0])
	}
}

// clusterRetained returns a tweak giving a server a ClusterRetained store
// as node id, and the store.
func clusterRetained(t *testing.T, id uint64) (func(*Options), *store.Retained) {
	t.Helper()
	st, err := store.Open(store.Options{FS: vfs.NewMem(), Dir: "mqtt", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r, err := store.NewClusterRetained(st, id)
	if err != nil {
		t.Fatal(err)
	}
	return func(o *Options) { o.Retained = r }, r
}

// retainedState is r's entries as "topic=payload/origin", sorted.
func retainedState(r *store.Retained) []string {
	var out []string
	for _, e := range r.Entries() {
		out = append(out, fmt.Sprintf("%s=%s/%d", e.Msg.Topic, e.Msg.Payload, e.Origin))
	}
	slices.Sort(out)
	return out
}

// A retained message goes to a peer whatever its filters (Scan), and is
// not read again for new filters (Rescan); a peer keeps, of two sets of a
// topic, the newer (InjectForwarded, ApplyRetained), and a snapshot
// (RetainedSnapshot) brings a node with nothing to the same entries.
func TestClusterRetainedEverywhere(t *testing.T) {
	ctx := context.Background()
	tweakA, ra := clusterRetained(t, 1)
	tweakB, rb := clusterRetained(t, 2)
	tweakC, rc := clusterRetained(t, 3)
	a := startBroker(t, nil, tweakA)
	b := startBroker(t, nil, tweakB)
	c := startBroker(t, nil, tweakC)
	now := time.Now()
	for _, m := range []*pubsub.Message{
		{Topic: "r/1", Payload: []byte("one"), QoS: 1, Retain: true, Time: now},
		{Topic: "r/2", Payload: []byte("live"), QoS: 1, Time: now},
		{Topic: "r/3", Payload: []byte("three"), QoS: 1, Retain: true, Time: now},
	} {
		if err := a.publish(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if n := forwardAll(t, a.Server, b.Server, 1, nil); n != 2 {
		t.Fatalf("forwarded %d messages to a peer without filters, want the 2 retained ones", n)
	}
	if got, want := retainedState(rb), []string{"r/1=one/1", "r/3=three/1"}; !slices.Equal(got, want) {
		t.Fatalf("b retains %v, want %v", got, want)
	}
	src, err := a.ClusterSource()
	if err != nil {
		t.Fatal(err)
	}
	for _, sm := range src.Shards() {
		recs, _, err := src.Rescan(ctx, sm.Name, 0, sm.High, NewFilterSet([]string{"#"}), NewFilterSet(nil), 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if string(r.Key) != "r/2" {
				t.Errorf("Rescan for new filters returned %s, sent already", r.Key)
			}
		}
	}

	// b sets r/1 later than a; a then sets it again, with an older
	// stamp (its clock behind), and clears r/3.
	if err := b.publish(ctx, &pubsub.Message{Topic: "r/1", Payload: []byte("b-later"), QoS: 1, Retain: true, Time: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*pubsub.Message{
		{Topic: "r/1", Payload: []byte("a-older"), QoS: 1, Retain: true, Time: now.Add(time.Minute)},
		{Topic: "r/3", QoS: 1, Retain: true, Time: now.Add(time.Minute)},
	} {
		if err := a.publish(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	forwardAll(t, a.Server, b.Server, 1, nil)
	forwardAll(t, b.Server, a.Server, 2, nil)
	want := []string{"r/1=b-later/2", "r/3=/1"}
	for name, r := range map[string]*store.Retained{"a": ra, "b": rb} {
		if got := retainedState(r); !slices.Equal(got, want) {
			t.Errorf("%s retains %v, want %v", name, got, want)
		}
	}
	var got []string
	b.opts.Retained.Match(ctx, "r/#", func(m *pubsub.Message) bool { got = append(got, m.Topic+"="+string(m.Payload)); return true })
	if !slices.Equal(got, []string{"r/1=b-later"}) {
		t.Errorf("a subscription on b would get %v", got)
	}

	// c, with nothing, takes a's snapshot then b's (the same entries:
	// none newer).
	for i, from := range []*testBroker{a, b} {
		n, err := c.ApplyRetained(ctx, uint64(i+1), from.RetainedSnapshot())
		if err != nil {
			t.Fatal(err)
		}
		if wantN := []int{2, 0}[i]; n != wantN {
			t.Errorf("c took %d entries of node %d's snapshot, want %d", n, i+1, wantN)
		}
	}
	if err := c.SyncRetained(); err != nil {
		t.Fatal(err)
	}
	if got := retainedState(rc); !slices.Equal(got, want) {
		t.Errorf("c retains %v after the snapshots, want %v", got, want)
	}
}

// BenchmarkClusterScan: a serving stream's Scan of 512 non-retained QoS 1
// records (128 B, a publisher header) in one or two shards, half of them
// matching the puller's filters; per record.
//
//	go test -run '^$' -bench ClusterScan -benchmem ./frontends/mqtt
func BenchmarkClusterScan(b *testing.B) {
	s := startBroker(b, nil, nil)
	ctx := context.Background()
	const n = 512
	for i := range n {
		topic := "bench/a"
		if i%2 == 1 {
			topic = "other/a"
		}
		if err := s.publish(ctx, &pubsub.Message{Topic: topic, QoS: 1, Publisher: "pub", Payload: make([]byte, 128), Time: time.Now()}); err != nil {
			b.Fatal(err)
		}
	}
	src, err := s.ClusterSource()
	if err != nil {
		b.Fatal(err)
	}
	fs := NewFilterSet([]string{"bench/#"})
	names := map[string]bool{ShardName("memory", "bench/a", 4): true, ShardName("memory", "other/a", 4): true}
	b.ResetTimer()
	for range b.N / n {
		for name := range names {
			if _, _, err := src.Scan(ctx, name, 0, fs, n, 1<<20); err != nil {
				b.Fatal(err)
			}
		}
	}
}
