package client

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/quiremq/quire/journal/ledger"
)

// A log rolls over by entry count and offsets stay dense across ledgers;
// a tailing reader crosses the boundaries. The writer then crashes with
// appends in flight; a new writer takes the log over (recovers the last
// ledgers, appends a new one) and continues at the recovered end; the
// old writer is fenced. Reading the whole log back: every acknowledged
// offset holds its bytes, offsets are dense, and every non-empty ledger is
// in the log.
func TestLogRolloverTakeover(t *testing.T) {
	c := newCluster(t, 3, "")
	cl := c.client(Options{})
	ctx := testCtx(t)
	const shard = "orders/0"
	opts := LogOptions{Ensemble: 3, WriteQuorum: 2, AckQuorum: 2, RollEntries: 500}
	lw, err := cl.OpenLogWriter(ctx, shard, opts)
	if err != nil {
		t.Fatal(err)
	}
	tail, err := cl.OpenLogReader(ctx, shard, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer tail.Close()

	var mu sync.Mutex
	acked := map[int64][]byte{} // offset → data
	attempted := map[string]bool{}
	var wg sync.WaitGroup
	appendN := func(w *LogWriter, from, n int) {
		for i := from; i < from+n; i++ {
			data := payload(i, 64)
			mu.Lock()
			attempted[string(data)] = true
			mu.Unlock()
			f, err := w.AppendAsync(ctx, data)
			if err != nil {
				return
			}
			wg.Go(func() {
				off, err := f.Result()
				if err != nil {
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if _, dup := acked[off]; dup {
					t.Errorf("offset %d acknowledged twice", off)
				}
				acked[off] = data
			})
		}
	}
	appendN(lw, 0, 1800)
	wg.Wait()
	for off := range int64(1800) {
		if !bytes.Equal(acked[off], payload(int(off), 64)) {
			t.Fatalf("offset %d: %.12q, want record %d (dense offsets in append order)", off, acked[off], off)
		}
	}
	for off := range int64(1800) {
		got, data, err := tail.Next(ctx)
		if err != nil || got != off || !bytes.Equal(data, acked[off]) {
			t.Fatalf("tail at %d: offset %d, %v", off, got, err)
		}
	}
	// Crash with appends in flight.
	appendN(lw, 1800, 300)
	lw.Abandon()
	wg.Wait()

	lw2, err := cl.OpenLogWriter(ctx, shard, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lw.Append(ctx, []byte("old")); err == nil {
		t.Fatal("old log writer still appends")
	}
	appendN(lw2, 5000, 700)
	wg.Wait()
	if err := lw2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	rec, err := cl.store.Log(ctx, shard)
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Value.Ledgers) < 6 {
		t.Fatalf("log %v: expected rollovers", rec.Value.Ledgers)
	}
	end, err := cl.logEnd(ctx, rec.Value.Ledgers)
	if err != nil {
		t.Fatal(err)
	}
	// The tail continues across the takeover; a fresh reader agrees.
	r, err := cl.OpenLogReader(ctx, shard, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for off := int64(0); off < end; off++ {
		got, data, err := r.Next(ctx)
		if err != nil || got != off {
			t.Fatalf("read at %d: offset %d, %v", off, got, err)
		}
		if a, ok := acked[off]; ok && !bytes.Equal(a, data) {
			t.Fatalf("acknowledged offset %d changed", off)
		}
		if !attempted[string(data)] {
			t.Fatalf("offset %d holds %.12q, never appended", off, data)
		}
		if off >= 1800 {
			tg, tdata, err := tail.Next(ctx)
			if err != nil || tg != off || !bytes.Equal(tdata, data) {
				t.Fatalf("tail at %d: %d, %v", off, tg, err)
			}
		}
	}
	for off := range acked {
		if off >= end {
			t.Fatalf("acknowledged offset %d lost (log ends at %d)", off, end)
		}
	}
	// Every ledger the client created is in the log (none orphaned non-empty).
	ids, err := cl.store.Ledger(ctx, rec.Value.Ledgers[len(rec.Value.Ledgers)-1])
	if err != nil {
		t.Fatal(err)
	}
	for id := uint64(1); id <= ids.Value.ID; id++ {
		md, err := cl.Metadata(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		in := false
		for _, x := range rec.Value.Ledgers {
			in = in || x == id
		}
		if !in && md.LastEntry >= 0 {
			t.Fatalf("non-empty ledger %d is not in the log", id)
		}
	}
	// A reader at the end waits (the log is open-ended).
	wctx, cancel := contextWithTimeout(100 * time.Millisecond)
	defer cancel()
	if _, _, err := r.Next(wctx); !errors.Is(err, wctx.Err()) || err == nil {
		t.Fatalf("read past the end: %v", err)
	}
	t.Logf("log %v, %d records, %d acknowledged", rec.Value.Ledgers, end, len(acked))
}

// Retention drops whole ledgers from the front of a log: they leave the
// log (Log.Trimmed counts their entries, so offsets stay put) and are
// deleted from meta and their bookies; reads below the trim point fail
// with ErrTrimmed, reads above it and a new writer's offsets are
// unchanged; the ledger being written cannot be dropped.
func TestLogRetention(t *testing.T) {
	c := newCluster(t, 3, "")
	cl := c.client(Options{})
	ctx := testCtx(t)
	const shard = "retained/0"
	opts := LogOptions{Ensemble: 3, WriteQuorum: 2, AckQuorum: 2, RollEntries: 10}
	lw, err := cl.OpenLogWriter(ctx, shard, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 55 {
		if off, err := lw.Append(ctx, payload(i, 32)); err != nil || off != int64(i) {
			t.Fatalf("append %d: offset %d, %v", i, off, err)
		}
	}
	rec, err := cl.store.Log(ctx, shard)
	if err != nil {
		t.Fatal(err)
	}
	all := rec.Value.Ledgers
	if len(all) != 6 {
		t.Fatalf("log %v, want 6 ledgers of 10 entries", all)
	}
	if err := lw.DropFirst(ctx, len(all)); err == nil {
		t.Fatal("DropFirst dropped the ledger being written")
	}
	if err := lw.DropFirst(ctx, 2); err != nil {
		t.Fatal(err)
	}
	rec, err = cl.store.Log(ctx, shard)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Value.Trimmed != 20 || len(rec.Value.Ledgers) != 4 || rec.Value.Ledgers[0] != all[2] {
		t.Fatalf("log after dropping 2: %+v", rec.Value)
	}
	for _, id := range all[:2] {
		if _, err := cl.Metadata(ctx, id); !errors.Is(err, ErrNoSuchLedger) {
			t.Fatalf("dropped ledger %d: %v, want ErrNoSuchLedger", id, err)
		}
		for _, b := range c.bookies {
			if _, err := cl.readEntry(ctx, b.info.ID, id, 0, false); statusOf(err) != ledger.StatusNoSuchEntry {
				t.Fatalf("bookie %s still answers for dropped ledger %d: %v", b.info.ID, id, err)
			}
		}
	}
	r, err := cl.OpenLogReader(ctx, shard, 5)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Next(ctx); !errors.Is(err, ErrTrimmed) {
		t.Fatalf("read below the trim point: %v, want ErrTrimmed", err)
	}
	r.Close()
	// The writer goes on at its offsets; a new writer continues after them.
	if off, err := lw.Append(ctx, payload(55, 32)); err != nil || off != 55 {
		t.Fatalf("append after retention: %d, %v", off, err)
	}
	lw.Abandon()
	lw2, err := cl.OpenLogWriter(ctx, shard, opts)
	if err != nil {
		t.Fatal(err)
	}
	if off, err := lw2.Append(ctx, payload(56, 32)); err != nil || off != 56 {
		t.Fatalf("new writer after retention: offset %d, %v; want 56", off, err)
	}
	r, err = cl.OpenLogReader(ctx, shard, 20)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for want := int64(20); want <= 56; want++ {
		off, data, err := r.Next(ctx)
		if err != nil || off != want || !bytes.Equal(data, payload(int(want), 32)) {
			t.Fatalf("read at %d: offset %d %.10q, %v", want, off, data, err)
		}
	}
	if err := lw2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// Without a writer: the ids must still head the log.
	if err := cl.DropLogLedgers(ctx, shard, all[:1]); !errors.Is(err, ErrLogConflict) {
		t.Fatalf("DropLogLedgers of ledgers no longer in the log: %v, want ErrLogConflict", err)
	}
	if err := cl.DropLogLedgers(ctx, shard, all[2:3]); err != nil {
		t.Fatal(err)
	}
	if rec, err = cl.store.Log(ctx, shard); err != nil || rec.Value.Trimmed != 30 {
		t.Fatalf("log after dropping a third ledger: %+v, %v", rec.Value, err)
	}
	if err := cl.DeleteLog(ctx, shard); err != nil {
		t.Fatal(err)
	}
	for _, id := range rec.Value.Ledgers {
		if _, err := cl.Metadata(ctx, id); !errors.Is(err, ErrNoSuchLedger) {
			t.Fatalf("ledger %d of a deleted log: %v", id, err)
		}
	}
}
