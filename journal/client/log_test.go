package client

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"
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
