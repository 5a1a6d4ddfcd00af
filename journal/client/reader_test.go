package client

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/journal/bookie"
)

// writeClosed appends n entries (payload(i, size)) to a new E/Qw/Qa
// ledger and closes it.
func writeClosed(t *testing.T, cl *Client, n, size, e, qw, qa int) uint64 {
	t.Helper()
	ctx := testCtx(t)
	w, err := cl.CreateLedger(ctx, e, qw, qa)
	if err != nil {
		t.Fatal(err)
	}
	var last *Future
	for i := range n {
		if last, err = w.AppendAsync(ctx, payload(i, size)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := last.Result(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	return w.ID()
}

// readAll reads ledger id from entry from to its end and checks every
// entry is payload(i, size), in order.
func readAll(t *testing.T, r *LedgerReader, from, n, size int) {
	t.Helper()
	ctx := testCtx(t)
	for i := from; i < n; i++ {
		e, data, err := r.Next(ctx)
		if err != nil || e != int64(i) || !bytes.Equal(data, payload(i, size)) {
			t.Fatalf("entry %d: read %d, %v (bytes ok: %v)", i, e, err, bytes.Equal(data, payload(i, size)))
		}
	}
	if e, _, err := r.Next(ctx); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last entry: %d, %v; want EOF", e, err)
	}
}

// wipe restarts a bookie on an empty disk: it answers NO_SUCH_LEDGER for
// everything it held (a bookie that lost its data).
func (tb *testBookie) wipe() {
	tb.kill()
	tb.opts.FS = vfs.NewMem()
	tb.opts.Cookies = &bookie.MemCookieStore{}
	tb.restart()
}

// A closed ledger is read with range reads: every entry in order, with
// its bytes, from any entry on, across chunks (entries sized so that a
// read spans several chunks of several stream messages).
func TestCatchUpRangeRead(t *testing.T) {
	c := newCluster(t, 4, "")
	cl := c.client(Options{})
	const n, size = 1000, 3000
	id := writeClosed(t, cl, n, size, 3, 2, 2)
	for _, from := range []int{0, 1, n - 1, 567} {
		r, err := cl.OpenForRead(testCtx(t), id, int64(from))
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, r, from, n, size)
		if got := r.stats.rangeEntries.Load(); got != int64(n-from) || r.stats.entryReads.Load() != 0 {
			t.Errorf("from %d: %d entries by range reads, %d one by one; want all %d by range", from, got, r.stats.entryReads.Load(), n-from)
		}
		r.Close()
	}
	// Reading past the end of a closed ledger is EOF at once.
	r, err := cl.OpenForRead(testCtx(t), id, n)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, r, n, n, size)
}

// A bookie that is down, and one that lost its data (explicit negatives
// for every entry): range reads stop at their first entry, which is read
// from another bookie of its write set, and the rest is streamed from
// another bookie. Every entry comes back.
func TestCatchUpRangeReadFallback(t *testing.T) {
	c := newCluster(t, 4, "")
	cl := c.client(Options{RequestTimeout: time.Second})
	const n, size = 1000, 100
	id := writeClosed(t, cl, n, size, 4, 2, 2)
	md, err := cl.Metadata(testCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	ens := md.Fragments[0].Bookies
	c.byID(ens[0]).kill()
	c.byID(ens[2]).wipe() // no two neighbours: every entry keeps a copy
	r, err := cl.OpenForRead(testCtx(t), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	readAll(t, r, 0, n, size)
	if r.stats.entryReads.Load() == 0 || r.stats.rangeEntries.Load() == 0 {
		t.Errorf("%d entries by range, %d one by one: the fallback was not exercised", r.stats.rangeEntries.Load(), r.stats.entryReads.Load())
	}
}

// An entry no bookie returns — one unreachable (no answer), the other
// without its data (explicit negatives): the reader waits; it neither
// skips the entry nor ends. Once the bookie is back, it reads everything.
func TestCatchUpRangeReadNeverSkips(t *testing.T) {
	c := newCluster(t, 2, "")
	cl := c.client(Options{RequestTimeout: 500 * time.Millisecond})
	const n, size = 500, 100
	id := writeClosed(t, cl, n, size, 2, 2, 2)
	md, err := cl.Metadata(testCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	a, b := c.byID(md.Fragments[0].Bookies[0]), c.byID(md.Fragments[0].Bookies[1])
	b.wipe()
	a.srv.Detach() // answers UNAVAILABLE: no answer about the data
	r, err := cl.OpenForRead(testCtx(t), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	e, _, err := r.Next(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("with no bookie returning entry 0: read %d, %v; want to wait", e, err)
	}
	a.srv.Attach(a.b)
	readAll(t, r, 0, n, size)
}

// A tailing reader of an open ledger reads a backlog with range reads and
// the tail entry by entry, and switches back to range reads when the
// writer gets ahead again; a close ends the read.
func TestTailRangeAndMachine(t *testing.T) {
	c := newCluster(t, 3, "")
	cl := c.client(Options{})
	ctx := testCtx(t)
	w, err := cl.CreateLedger(ctx, 3, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64
	appendN := func(from, n int) {
		var last *Future
		for i := from; i < from+n; i++ {
			if last, err = w.AppendAsync(ctx, payload(i, size)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := last.Result(); err != nil {
			t.Fatal(err)
		}
	}
	appendN(0, 500)
	r, err := cl.OpenForRead(ctx, w.ID(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	read := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			e, data, err := r.Next(ctx)
			if err != nil || e != int64(i) || !bytes.Equal(data, payload(i, size)) {
				t.Fatalf("entry %d: read %d, %v", i, e, err)
			}
		}
	}
	read(0, 490) // the LAC lags the last append by one until the writer sends it
	if r.stats.ranges.Load() == 0 {
		t.Fatal("the backlog was not read with range reads")
	}
	// A slow tail: entry by entry.
	for i := 500; i < 510; i++ {
		appendN(i, 1)
	}
	read(490, 509)
	ranges := r.stats.ranges.Load()
	// The writer gets ahead again.
	appendN(510, 600)
	read(509, 1100)
	if r.stats.ranges.Load() == ranges {
		t.Error("a new backlog was not read with range reads")
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	readAll(t, r, 1100, 1110, size)
}
