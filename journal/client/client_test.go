package client

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/quiremq/quire/journal/ledger"
	"github.com/quiremq/quire/meta/schema"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// appendAll appends n entries pipelined (all in flight up to MaxInflight)
// and records every outcome in h; after is called once acked entries
// reach at (-1: never).
func appendAll(t *testing.T, w *LedgerWriter, h *history, n, size int) []error {
	t.Helper()
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		data := payload(i, size)
		f, err := w.AppendAsync(ctx, data)
		if err != nil {
			errs[i] = err
			continue
		}
		wg.Go(func() { errs[i] = h.record(f, data) })
	}
	wg.Wait()
	return errs
}

// Create, append thousands of entries pipelined while a reader tails the
// open ledger, close; the tailing reader sees every entry in order and
// then EOF; the invariants hold.
func TestAppendTailClose(t *testing.T) {
	c := newCluster(t, 3, "")
	cl := c.client(Options{})
	ctx := testCtx(t)
	w, err := cl.CreateLedger(ctx, 3, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	md, _ := cl.Metadata(ctx, w.ID())
	if md.State != ledger.StateOpen || len(md.Fragments) != 1 || len(md.Fragments[0].Bookies) != 3 {
		t.Fatalf("metadata after create: %s", md)
	}
	const n = 3000
	r, err := cl.OpenForRead(ctx, w.ID(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tailed := make(chan error, 1)
	go func() {
		for i := range n {
			e, data, err := r.Next(ctx)
			if err != nil {
				tailed <- err
				return
			}
			if e != int64(i) || string(data) != string(payload(i, 100)) {
				tailed <- errors.New("tail: wrong entry")
				return
			}
		}
		tailed <- nil
	}()
	h := newHistory()
	for i, err := range appendAll(t, w, h, n, 100) {
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	if w.LAC() != n-1 {
		t.Fatalf("LAC %d, want %d", w.LAC(), n-1)
	}
	// The writer is idle now: the tail gets the last entries through the
	// explicit LAC, before any close.
	select {
	case err := <-tailed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("tailing reader did not reach the last entry of an idle open ledger")
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Append(ctx, []byte("late")); err == nil {
		t.Fatal("append after close succeeded")
	}
	if _, _, err := r.Next(ctx); !errors.Is(err, io.EOF) {
		t.Fatalf("tail after close: %v, want EOF", err)
	}
	if last := checkInvariants(t, cl, w.ID(), h); last != n-1 {
		t.Fatalf("last entry %d, want %d", last, n-1)
	}
	// Synchronous appends on a second ledger number densely from 0.
	w2, err := cl.CreateLedger(ctx, 3, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if e, err := w2.Append(ctx, payload(i, 10)); err != nil || e != int64(i) {
			t.Fatalf("append %d: %d, %v", i, e, err)
		}
	}
	if err := w2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if md, _ := cl.Metadata(ctx, w2.ID()); md.State != ledger.StateClosed || md.LastEntry != 4 {
		t.Fatalf("closed metadata %s", md)
	}
}

// Ensembles never put two copies on one node; too few nodes is an error.
func TestEnsemblePlacement(t *testing.T) {
	live := []BookieInfo{{ID: "a", Node: "n1"}, {ID: "b", Node: "n1"}, {ID: "c", Node: "n2"}, {ID: "d", Node: "n3"}}
	for start := range 8 {
		ens, err := pickEnsemble(live, 3, start)
		if err != nil {
			t.Fatal(err)
		}
		nodes := map[string]bool{}
		for _, b := range ens {
			if nodes[b.Node] {
				t.Fatalf("start %d: two bookies of node %s in %v", start, b.Node, ens)
			}
			nodes[b.Node] = true
		}
	}
	if _, err := pickEnsemble(live, 4, 0); !errors.Is(err, ErrNotEnoughBookies) {
		t.Fatalf("4 of 3 nodes: %v", err)
	}
	// A replacement never lands on a node of the rest of the ensemble.
	if got := replacements(live, []string{"a", "c", "d"}, "c"); len(got) != 0 {
		t.Fatalf("replacements for c: %v (b shares a's node)", got)
	}
	if got := replacements(live, []string{"b", "c", "d"}, "b"); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("replacements for b: %v", got)
	}

	c := newCluster(t, 2, "")
	cl := c.client(Options{})
	if _, err := cl.CreateLedger(testCtx(t), 3, 2, 2); !errors.Is(err, ErrNotEnoughBookies) {
		t.Fatalf("E=3 on 2 bookies: %v", err)
	}
	if _, err := cl.CreateLedger(testCtx(t), 2, 3, 2); !errors.Is(err, ledger.ErrInvalid) {
		t.Fatalf("Qw > E: %v", err)
	}
}

// MetaDirectory lists the live nodes with the bookie role, by address.
func TestMetaDirectory(t *testing.T) {
	kv := newMeta(t)
	ctx := testCtx(t)
	var regs []*schema.Registration
	for i, n := range []schema.Node{
		{ID: 1, Addr: "10.0.0.1:1228", Roles: []string{"meta", "bookie", "broker"}},
		{ID: 2, Addr: "10.0.0.2:1228", Roles: []string{"broker"}},
		{ID: 3, Addr: "10.0.0.3:1228", Roles: []string{"bookie"}},
	} {
		r, err := schema.Register(ctx, kv, n, time.Minute, quiet)
		if err != nil {
			t.Fatal(i, err)
		}
		regs = append(regs, r)
	}
	// Node 4 registered once and is down (no live key).
	if _, err := schema.Put(ctx, kv, schema.NodeKey(4), schema.Node{ID: 4, Addr: "10.0.0.4:1228", Roles: []string{"bookie"}}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, r := range regs {
			r.Close(ctx)
		}
	}()
	got, err := MetaDirectory{Store: schema.Store{KV: kv}}.Bookies(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []BookieInfo{{ID: "10.0.0.1:1228", Addr: "10.0.0.1:1228", Node: "node:1"}, {ID: "10.0.0.3:1228", Addr: "10.0.0.3:1228", Node: "node:3"}}
	if !slices.Equal(got, want) {
		t.Fatalf("bookies %v, want %v", got, want)
	}
}

// schema.Ledger ↔ ledger.Metadata round-trips.
func TestConvert(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	l := schema.Ledger{ID: 7, Ensemble: 3, WriteQuorum: 2, AckQuorum: 2, State: schema.LedgerRecovering, LastEntry: -1,
		Fragments: []schema.Fragment{{FirstEntry: 0, Bookies: []string{"a", "b", "c"}}, {FirstEntry: 10, Bookies: []string{"a", "d", "c"}}}, CreatedAt: at}
	md := ToMetadata(schema.Record[schema.Ledger]{Value: l, Version: 42})
	if md.Version != 42 || md.State != ledger.StateInRecovery || md.Validate() != nil || md.Fragments[1].Bookies[1] != "d" {
		t.Fatalf("ToMetadata: %+v", md)
	}
	back := FromMetadata(md, at)
	if back.ID != l.ID || back.State != l.State || !back.CreatedAt.Equal(at) || len(back.Fragments) != 2 || back.Fragments[1].FirstEntry != 10 || back.Validate() != nil {
		t.Fatalf("FromMetadata: %+v", back)
	}
}

// A bookie of the ensemble dies mid-stream: the writer replaces it (new
// fragment from LAC+1, CAS in meta), resends, and every append succeeds;
// every acknowledged entry is readable with the dead bookie gone.
func TestBookieFailureEnsembleChange(t *testing.T) {
	c := newCluster(t, 4, "")
	// AddTimeout generous: a loaded -race run must not stop the writer
	// before the kill this test is about.
	cl := c.client(Options{AddTimeout: 10 * time.Second})
	ctx := testCtx(t)
	w, err := cl.CreateLedger(ctx, 3, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	md, _ := cl.Metadata(ctx, w.ID())
	victim := c.byID(md.Fragments[0].Bookies[1])
	const n = 4000
	h := newHistory()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		if i == n/3 {
			// Kill while many adds are in flight.
			waitLAC(t, w, int64(n/4))
			victim.kill()
		}
		data := payload(i, 256)
		f, err := w.AppendAsync(ctx, data)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { errs[i] = h.record(f, data) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("append %d failed across an ensemble change: %v", i, err)
		}
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	md, _ = cl.Metadata(ctx, w.ID())
	if len(md.Fragments) < 2 || slices.Contains(md.Fragments[len(md.Fragments)-1].Bookies, victim.info.ID) {
		t.Fatalf("no ensemble change away from %s: %s", victim.info.ID, md)
	}
	if last := checkInvariants(t, cl, w.ID(), h); last != n-1 {
		t.Fatalf("last entry %d, want %d", last, n-1)
	}
}

// The writer "crashes" (abandoned mid-stream, adds in flight, no close):
// recovery by another client closes the ledger with last entry ≥ every
// acknowledged entry; readers see exactly the acknowledged prefix plus
// possibly recovered unacknowledged entries, with their bytes.
func TestWriterCrashRecovery(t *testing.T) {
	for _, q := range [][3]int{{3, 2, 2}, {3, 3, 2}, {5, 3, 2}} {
		t.Run("", func(t *testing.T) {
			c := newCluster(t, 5, "")
			cl := c.client(Options{})
			ctx := testCtx(t)
			w, err := cl.CreateLedger(ctx, q[0], q[1], q[2])
			if err != nil {
				t.Fatal(err)
			}
			h := newHistory()
			var wg sync.WaitGroup
			for i := range 3000 {
				if i == 2000 {
					waitLAC(t, w, 1000)
					w.Abandon()
				}
				data := payload(i, 200)
				f, err := w.AppendAsync(ctx, data)
				if err != nil {
					break
				}
				wg.Go(func() { h.record(f, data) })
			}
			wg.Wait()
			cl2 := c.client(Options{})
			start := time.Now()
			r, err := cl2.OpenForRecovery(ctx, w.ID())
			t.Logf("recovery took %v", time.Since(start))
			if err != nil {
				t.Fatal(err)
			}
			r.Close()
			last := checkInvariants(t, cl2, w.ID(), h)
			t.Logf("E/Qw/Qa %v: acked up to %d, recovered last entry %d", q, h.maxAcked, last)
			// Recovering a closed ledger changes nothing.
			if again, err := cl2.Recover(ctx, w.ID()); err != nil || again != last {
				t.Fatalf("second recovery: %d, %v (want %d)", again, err, last)
			}
		})
	}
}

// Fencing: recovery runs while the old writer is alive and appending;
// afterwards the old writer's appends and close fail with ErrFenced, and
// no entry it had acknowledged is past the recovered last entry.
func TestFencingOldWriter(t *testing.T) {
	c := newCluster(t, 3, "")
	cl := c.client(Options{})
	ctx := testCtx(t)
	w, err := cl.CreateLedger(ctx, 3, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	h := newHistory()
	stop := make(chan struct{})
	appErr := make(chan error, 1)
	go func() {
		var wg sync.WaitGroup
		defer wg.Wait()
		for i := 0; ; i++ {
			data := payload(i, 300)
			f, err := w.AppendAsync(ctx, data)
			if err != nil {
				appErr <- err
				return
			}
			wg.Go(func() {
				if err := h.record(f, data); err != nil {
					select {
					case appErr <- err:
					default:
					}
				}
			})
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	waitLAC(t, w, 500)
	cl2 := c.client(Options{})
	last, err := cl2.Recover(ctx, w.ID())
	if err != nil {
		t.Fatal(err)
	}
	var aerr error
	select {
	case aerr = <-appErr:
	case <-time.After(30 * time.Second):
		t.Fatal("old writer kept appending after recovery")
	}
	close(stop)
	if !errors.Is(aerr, ErrFenced) {
		t.Fatalf("old writer's append after recovery: %v, want ErrFenced", aerr)
	}
	if _, err := w.Append(ctx, []byte("after")); !errors.Is(err, ErrFenced) {
		t.Fatalf("append after fencing: %v", err)
	}
	if err := w.Close(ctx); !errors.Is(err, ErrFenced) {
		t.Fatalf("close after fencing: %v", err)
	}
	time.Sleep(50 * time.Millisecond) // let the recorders finish
	if got := checkInvariants(t, cl2, w.ID(), h); got != last {
		t.Fatalf("last %d vs %d", got, last)
	}
	t.Logf("acked up to %d, recovered last entry %d", h.maxAcked, last)
}

// Recovery with too few reachable bookies aborts with a clear error,
// changes nothing unsafe, and succeeds once they are back.
func TestRecoveryAbortRetry(t *testing.T) {
	c := newCluster(t, 3, "")
	cl := c.client(Options{RequestTimeout: time.Second})
	ctx := testCtx(t)
	w, err := cl.CreateLedger(ctx, 3, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	h := newHistory()
	for i, err := range appendAll(t, w, h, 200, 64) {
		if err != nil {
			t.Fatal(i, err)
		}
	}
	w.Abandon()
	md, _ := cl.Metadata(ctx, w.ID())
	down := []*testBookie{c.byID(md.Fragments[0].Bookies[0]), c.byID(md.Fragments[0].Bookies[1])}
	for _, b := range down {
		b.kill()
	}
	cl2 := c.client(Options{RequestTimeout: time.Second})
	if _, err := cl2.Recover(ctx, w.ID()); !errors.Is(err, ErrRecoveryAborted) {
		t.Fatalf("recovery with 1 of 3 bookies: %v, want ErrRecoveryAborted", err)
	}
	if md, _ := cl.Metadata(ctx, w.ID()); md.State == ledger.StateClosed {
		t.Fatalf("aborted recovery closed the ledger: %s", md)
	}
	for _, b := range down {
		b.restart()
	}
	var last int64
	for attempt := 0; ; attempt++ {
		last, err = cl2.Recover(ctx, w.ID())
		if err == nil {
			break
		}
		if !errors.Is(err, ErrRecoveryAborted) || attempt > 50 {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if last != 199 {
		t.Fatalf("recovered last entry %d, want 199", last)
	}
	checkInvariants(t, cl2, w.ID(), h)
}

// waitLAC waits until w's LAC reaches lac, failing the test after a minute
// (a writer that stopped never gets there).
func waitLAC(t *testing.T, w *LedgerWriter, lac int64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for w.LAC() < lac {
		if time.Now().After(deadline) {
			t.Fatalf("LAC %d after a minute, want %d", w.LAC(), lac)
		}
		time.Sleep(time.Millisecond)
	}
}

// With Qw = Qa no write-back may fail, so a bookie of the ensemble that is
// gone would make every recovery abort; instead recovery replaces it by a
// live bookie, as the writer would (ensemble change during recovery,
// written with the close). E=3 Qw=2 Qa=2 on four bookies; the bookie
// killed is in the write set of the last entry, which recovery always
// writes back: every add carries a LAC below its own entry, and the
// writer's clock never ticks, so it sends no explicit LAC.
func TestRecoveryReplacesDeadBookie(t *testing.T) {
	c := newCluster(t, 4, "")
	cl := c.client(Options{RequestTimeout: time.Second, TickInterval: time.Hour})
	ctx := testCtx(t)
	w, err := cl.CreateLedger(ctx, 3, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	h := newHistory()
	const n = 100
	for i, err := range appendAll(t, w, h, n, 64) {
		if err != nil {
			t.Fatal(i, err)
		}
	}
	w.Abandon()
	md, err := cl.Metadata(ctx, w.ID())
	if err != nil {
		t.Fatal(err)
	}
	dead := md.WriteSetOf(n - 1)[1]
	c.byID(dead).kill()

	cl2 := c.client(Options{RequestTimeout: time.Second, AddTimeout: 5 * time.Second})
	last, err := cl2.Recover(ctx, w.ID())
	if err != nil {
		t.Fatalf("recovery with one bookie of the ensemble dead: %v", err)
	}
	if last != n-1 {
		t.Fatalf("recovered last entry %d, want %d", last, n-1)
	}
	md, err = cl2.Metadata(ctx, w.ID())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("closed: %s", md)
	if final := md.Fragments[len(md.Fragments)-1].Bookies; slices.Contains(final, dead) {
		t.Fatalf("the dead bookie %s is still in the last fragment: %s", dead, md)
	}
	// Recovery started after the highest LAC the bookies had heard of
	// (DESIGN.md: max(highest LAC, first entry of the fragment - 1)) and
	// wrote back from there, into the last fragment: every entry from its
	// first on is on Qa live bookies of its write set in the closed
	// metadata, so it survives the loss of the dead bookie for good. An
	// entry below it was acknowledged by Qa bookies of its write set
	// before the kill and is not written again: it is on Qa of them but the
	// dead one. (Whether the adds carried a LAC the bookies kept is up to
	// timing, so the last fragment may start anywhere from 0 to n-1.)
	from := md.Fragments[len(md.Fragments)-1].FirstEntry
	for e := int64(0); e <= last; e++ {
		held, dropped := 0, 0
		for _, b := range md.WriteSetOf(e) {
			if b == dead {
				dropped++
				continue
			}
			if got, err := cl2.readEntry(ctx, b, w.ID(), e, false); err == nil && bytes.Equal(got, h.attempted[e]) {
				held++
			}
		}
		want := md.AckQuorum
		if e < from {
			want -= dropped
		}
		if held < want {
			t.Fatalf("entry %d (last fragment from %d) on %d live bookies of its write set %v, want %d", e, from, held, md.WriteSetOf(e), want)
		}
	}
	checkInvariants(t, cl2, w.ID(), h)
}
