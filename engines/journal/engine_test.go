package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quiremq/quire/internal/metrics"
	"github.com/quiremq/quire/journal/client"
	"github.com/quiremq/quire/meta/schema"
	"github.com/quiremq/quire/shard"
	"github.com/quiremq/quire/shard/shardtest"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func recsOf(tag string, n int) []shard.Record {
	out := make([]shard.Record, n)
	for i := range out {
		out[i] = shard.Record{Timestamp: int64(1000 + i), Key: []byte(tag), Value: fmt.Appendf(nil, "%s-%d", tag, i)}
	}
	return out
}

func readAll(t *testing.T, s shard.Shard) []shard.Record {
	t.Helper()
	low, _ := s.Watermarks()
	return shardtest.ReadAll(t, s, low)
}

// checkValues fails t unless s reads back the values of want, in order.
func checkValues(t *testing.T, s shard.Shard, want []shard.Record) {
	t.Helper()
	got := readAll(t, s)
	if len(got) != len(want) {
		t.Fatalf("read %d records, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i].Value, want[i].Value) {
			t.Fatalf("offset %d: %q, want %q", i, got[i].Value, want[i].Value)
		}
	}
}

// TestEngine runs the engine's scenarios on one meta and four bookies
// (each its own node), one after the other; BookieFailure, which kills a
// bookie, runs last.
func TestEngine(t *testing.T) {
	e := newEnv(t, 4)
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, *env)
	}{
		{"TakeoverFencesOldWriter", testTakeoverFencesOldWriter},
		{"CrashedWriterRecovered", testCrashedWriterRecovered},
		{"SettingsPersisted", testSettingsPersisted},
		{"TrimDropsLedgers", testTrimDropsLedgers},
		{"Retention", testRetention},
		{"BookieFailure", testBookieFailure},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, e) })
	}
}

// checkLedgersInLog checks that every ledger created after ledger since
// (by this test: the scenarios run one at a time) is in the shard's log or
// empty, and returns the log.
func checkLedgersInLog(t *testing.T, e *env, cl *client.Client, since uint64, log string) []uint64 {
	t.Helper()
	ctx := testCtx(t)
	rec, err := schema.Store{KV: e.kv}.Log(ctx, log)
	if err != nil {
		t.Fatal(err)
	}
	in := map[uint64]bool{}
	for _, id := range rec.Value.Ledgers {
		in[id] = true
	}
	ids, _, err := schema.List[schema.Ledger](ctx, e.kv, schema.PrefixLedgers, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ids {
		if in[l.Value.ID] || l.Value.ID <= since {
			continue
		}
		last := l.Value.LastEntry
		if l.Value.State != schema.LedgerClosed {
			if last, err = cl.Recover(ctx, l.Value.ID); err != nil {
				t.Fatal(err)
			}
		}
		if last >= 0 {
			t.Fatalf("non-empty ledger %d (last entry %d) is not in the log %v", l.Value.ID, last, rec.Value.Ledgers)
		}
	}
	return rec.Value.Ledgers
}

// A second engine (another node) opening a shard whose writer is alive
// takes the log over: it fences and recovers the writer's ledger, sees
// every acknowledged record, and continues at the next offset; the old
// writer's appends fail from then on.
func testTakeoverFencesOldWriter(t *testing.T, e *env) {
	since := e.lastLedger(t)
	ctx := testCtx(t)
	a := e.engine(Options{Quorum: Quorum{3, 2, 2}, RollEntries: 8})
	defer a.Close()
	sa, err := a.Create(ctx, "orders/0")
	if err != nil {
		t.Fatal(err)
	}
	var want []shard.Record
	for i := range 20 {
		b := recsOf(fmt.Sprintf("a%d", i), 3)
		first, err := sa.Append(ctx, b)
		if err != nil || first != uint64(len(want)) {
			t.Fatalf("append %d: %d, %v; want offset %d", i, first, err, len(want))
		}
		want = append(want, b...)
	}
	b := e.engine(Options{Quorum: Quorum{3, 2, 2}, RollEntries: 8})
	defer b.Close()
	sb, err := b.Open(ctx, "orders/0")
	if err != nil {
		t.Fatal(err)
	}
	if low, high := sb.Watermarks(); low != 0 || high != 60 {
		t.Fatalf("new writer's watermarks (%d, %d), want (0, 60)", low, high)
	}
	if _, err := sa.Append(ctx, recsOf("late", 1)); err == nil {
		t.Fatal("the old writer still appends after a takeover")
	}
	more := recsOf("b", 5)
	if first, err := sb.Append(ctx, more); err != nil || first != 60 {
		t.Fatalf("append after takeover: %d, %v; want 60", first, err)
	}
	want = append(want, more...)
	checkValues(t, sb, want)
	checkLedgersInLog(t, e, e.client(), since, "orders/0")
}

// A writer that crashes with appends in flight loses none of the
// acknowledged ones: the next writer recovers them at their offsets,
// offsets stay dense, and unacknowledged batches are either wholly there
// or wholly absent.
func testCrashedWriterRecovered(t *testing.T, e *env) {
	since := e.lastLedger(t)
	ctx := testCtx(t)
	a := e.engine(Options{Quorum: Quorum{3, 2, 2}, RollEntries: 32})
	sa, err := a.Create(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	acked := map[uint64]string{} // first offset → batch tag
	enough := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				tag := fmt.Sprintf("w%d-%d", w, i)
				first, err := sa.Append(ctx, recsOf(tag, 1+i%3))
				if err != nil {
					return
				}
				mu.Lock()
				acked[first] = tag
				if len(acked) == 40 {
					close(enough)
				}
				mu.Unlock()
			}
		})
	}
	<-enough // then crash with appends of all four in flight
	s := sa.(*Shard)
	s.mu.Lock()
	s.w.Abandon()   // a crash: the ledger stays open, appends in flight fail,
	s.closed = true // and this process appends no more (no takeover of its own)
	s.mu.Unlock()
	wg.Wait()

	b := e.engine(Options{Quorum: Quorum{3, 2, 2}, RollEntries: 32})
	defer b.Close()
	sb, err := b.Open(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(t, sb)
	byOffset := map[uint64]shard.Record{}
	for _, r := range got {
		byOffset[r.Offset] = r
	}
	for first, tag := range acked {
		r, ok := byOffset[first]
		if !ok || string(r.Key) != tag || string(r.Value) != tag+"-0" {
			t.Fatalf("acknowledged batch %s at offset %d lost or changed: %q=%q", tag, first, r.Key, r.Value)
		}
	}
	// Batches are whole: record i of a batch follows record i-1.
	for i := 1; i < len(got); i++ {
		if bytes.HasSuffix(got[i].Value, []byte("-0")) {
			continue
		}
		if !bytes.Equal(got[i].Key, got[i-1].Key) {
			t.Fatalf("offset %d: a batch %q is torn", i, got[i].Key)
		}
	}
	if _, err := sb.Append(ctx, recsOf("after", 2)); err != nil {
		t.Fatal(err)
	}
	checkLedgersInLog(t, e, e.client(), since, "s")
}

// The replication a shard was created with is in its record: an engine
// with other defaults opens it with the same settings, and its new ledgers
// use them.
func testSettingsPersisted(t *testing.T, e *env) {
	since := e.lastLedger(t)
	ctx := testCtx(t)
	a := e.engine(Options{})
	s, err := a.CreateWith(ctx, "q", shard.Settings{SettingEnsemble: "3", SettingWriteQuorum: "3", SettingAckQuorum: "2"})
	if err != nil {
		t.Fatal(err)
	}
	if q := s.(*Shard).Quorum(); q != (Quorum{3, 3, 2}) {
		t.Fatalf("quorum %v, want 3/3/2", q)
	}
	if _, err := s.Append(ctx, recsOf("x", 1)); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b := e.engine(Options{Quorum: Quorum{1, 1, 1}, Settings: func(string) shard.Settings { return shard.Settings{SettingEnsemble: "2"} }})
	defer b.Close()
	s, err = b.Open(ctx, "q")
	if err != nil {
		t.Fatal(err)
	}
	if q := s.(*Shard).Quorum(); q != (Quorum{3, 3, 2}) {
		t.Fatalf("reopened with quorum %v, want 3/3/2", q)
	}
	if _, err := s.Append(ctx, recsOf("y", 1)); err != nil {
		t.Fatal(err)
	}
	cl := e.client()
	for _, id := range checkLedgersInLog(t, e, cl, since, "q") {
		md, err := cl.Metadata(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if md.Ensemble != 3 || md.WriteQuorum != 3 || md.AckQuorum != 2 {
			t.Fatalf("ledger %d is %d/%d/%d, want 3/3/2", id, md.Ensemble, md.WriteQuorum, md.AckQuorum)
		}
	}
	// Create uses Options.Settings.
	s2, err := b.Create(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	if q := s2.(*Shard).Quorum(); q != (Quorum{2, 1, 1}) {
		t.Fatalf("Create with Settings ensemble=2 over 1/1/1: %v", q)
	}
	for _, bad := range []shard.Settings{{SettingEnsemble: "2", SettingWriteQuorum: "3"}, {SettingAckQuorum: "0"}, {SettingEnsemble: "three"}} {
		if _, err := b.CreateWith(ctx, "bad", bad); !errors.Is(err, ErrInvalidSettings) {
			t.Errorf("CreateWith(%v) = %v, want ErrInvalidSettings", bad, err)
		}
	}
}

// Trim drops and deletes the ledgers wholly below the trim point; the
// trim point and the remaining records survive a reopen.
func testTrimDropsLedgers(t *testing.T, e *env) {
	since := e.lastLedger(t)
	ctx := testCtx(t)
	reg := metrics.NewRegistry()
	a := e.engine(Options{Quorum: Quorum{2, 2, 1}, RollEntries: 4, Registerer: reg})
	s, err := a.Create(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		if _, err := s.Append(ctx, recsOf(fmt.Sprint(i), 2)); err != nil {
			t.Fatal(err)
		}
	}
	cl := e.client()
	before := checkLedgersInLog(t, e, cl, since, "t")
	if err := s.Trim(ctx, 50); err != nil {
		t.Fatal(err)
	}
	after := checkLedgersInLog(t, e, cl, since, "t")
	// 4 entries of 2 records per ledger: records 0..47 are in the first 6.
	if len(before)-len(after) != 6 {
		t.Fatalf("log %v after Trim(50), was %v: want the first 6 ledgers dropped", after, before)
	}
	for _, id := range before[:6] {
		if _, err := cl.Metadata(ctx, id); !errors.Is(err, client.ErrNoSuchLedger) {
			t.Fatalf("dropped ledger %d: %v, want ErrNoSuchLedger", id, err)
		}
	}
	if got := testutil.ToFloat64(a.m.deleted); got != 6 {
		t.Errorf("ledgers_deleted_total %v, want 6", got)
	}
	if got := testutil.ToFloat64(a.m.appends); got != 40 {
		t.Errorf("appends_total %v, want 40", got)
	}
	if got := testutil.ToFloat64(a.m.rolled); got != 9 {
		t.Errorf("ledgers_rolled_total %v, want 9", got)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b := e.engine(Options{Quorum: Quorum{2, 2, 1}, RollEntries: 4})
	defer b.Close()
	s, err = b.Open(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	if low, high := s.Watermarks(); low != 50 || high != 80 {
		t.Fatalf("watermarks after reopen (%d, %d), want (50, 80)", low, high)
	}
	got := readAll(t, s)
	if string(got[0].Value) != "25-0" || string(got[len(got)-1].Value) != "39-1" {
		t.Fatalf("records %q .. %q after trim, want 25-0 .. 39-1", got[0].Value, got[len(got)-1].Value)
	}
	if off, err := s.OffsetForTime(ctx, 0); err != nil || off != 50 {
		t.Fatalf("OffsetForTime(0) = %d, %v; want 50", off, err)
	}
	if first, err := s.Append(ctx, recsOf("new", 1)); err != nil || first != 80 {
		t.Fatalf("append after reopen: %d, %v; want 80", first, err)
	}
}

// A bookie of the ensemble dies mid-stream: appends go on (the ledger's
// ensemble changes) and everything reads back, also through a new engine.
func testBookieFailure(t *testing.T, e *env) {
	ctx := testCtx(t)
	a := e.engine(Options{Quorum: Quorum{3, 2, 2}})
	s, err := a.Create(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	var want []shard.Record
	for i := range 60 {
		if i == 20 {
			js := s.(*Shard)
			js.mu.Lock()
			id := js.ledgers[len(js.ledgers)-1].id
			js.mu.Unlock()
			md, err := e.client().Metadata(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			e.kill(md.Fragments[0].Bookies[1])
		}
		b := recsOf(fmt.Sprint(i), 2)
		if _, err := s.Append(ctx, b); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		want = append(want, b...)
	}
	checkValues(t, s, want)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b := e.engine(Options{Quorum: Quorum{3, 2, 2}})
	defer b.Close()
	s, err = b.Open(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	checkValues(t, s, want)
}

// Retention trims the ledgers whose records are all older than
// RetentionAge, whole, and never a ledger holding a newer record.
func testRetention(t *testing.T, e *env) {
	since := e.lastLedger(t)
	ctx := testCtx(t)
	en := e.engine(Options{Quorum: Quorum{3, 2, 2}, RollEntries: 4, RetentionAge: time.Hour, RetentionInterval: time.Hour})
	defer en.Close()
	s, err := en.Create(ctx, "retained")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	old, recent := now.Add(-2*time.Hour).UnixMilli(), now.Add(-time.Minute).UnixMilli()
	// Ledgers of 4 entries: 0-3 old, 4-7 old, 8-11 old but for entry 10,
	// 12-15 and 16-17 recent.
	for i := range 18 {
		ts := old
		if i >= 12 || i == 10 {
			ts = recent
		}
		if _, err := s.Append(ctx, []shard.Record{{Timestamp: ts, Value: fmt.Appendf(nil, "%d", i)}}); err != nil {
			t.Fatal(err)
		}
	}
	en.retain(now)
	if low, high := s.Watermarks(); low != 8 || high != 18 {
		t.Fatalf("watermarks after retention (%d, %d), want (8, 18): two old ledgers dropped", low, high)
	}
	if got := checkLedgersInLog(t, e, e.client(), since, "retained"); len(got) != 3 {
		t.Fatalf("log %v after retention, want 3 ledgers", got)
	}
	en.retain(now.Add(2 * time.Hour)) // everything is old now, but the ledger being written stays
	if low, _ := s.Watermarks(); low != 16 {
		t.Fatalf("low %d after everything aged, want 16 (the ledger being written stays)", low)
	}
}

// An appended entry is read back from the cache (no bookie read) as it was
// appended, even when the appender reuses its buffers afterwards.
func TestAppendFillsCache(t *testing.T) {
	e := newEnv(t, 1)
	ctx := testCtx(t)
	en := e.engine(Options{Registerer: metrics.NewRegistry()})
	defer en.Close()
	s, err := en.Create(ctx, "cache")
	if err != nil {
		t.Fatal(err)
	}
	in := recsOf("a", 3)
	in[1].Headers = []shard.Header{{Key: "h", Value: []byte("hv")}}
	want := make([]shard.Record, len(in))
	for i, r := range in {
		want[i] = shard.Record{Offset: uint64(i), Timestamp: r.Timestamp, Key: bytes.Clone(r.Key), Value: bytes.Clone(r.Value)}
	}
	want[1].Headers = []shard.Header{{Key: "h", Value: []byte("hv")}}
	if _, err := s.Append(ctx, in); err != nil {
		t.Fatal(err)
	}
	for _, r := range in {
		clear(r.Key)
		clear(r.Value)
	}
	clear(in[1].Headers[0].Value)
	got := readAll(t, s)
	if len(got) != len(want) {
		t.Fatalf("read %d records, want %d", len(got), len(want))
	}
	for i := range want {
		if !shardtest.Equal(got[i], want[i]) {
			t.Fatalf("record %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if n := testutil.ToFloat64(en.m.entryReads); n != 0 {
		t.Fatalf("%v entries read from bookies, want 0 (the append cached its entry)", n)
	}
}
