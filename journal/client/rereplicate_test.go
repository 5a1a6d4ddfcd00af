package client

import (
	"bytes"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/quiremq/quire/journal/ledger"
)

// liveExcept sets the directory to every bookie of c but those named.
func (c *cluster) liveExcept(ids ...string) {
	var infos []BookieInfo
	for _, tb := range c.bookies {
		if !slices.Contains(ids, tb.info.ID) {
			infos = append(infos, tb.info)
		}
	}
	c.dir.Set(infos...)
}

// checkCopies fails t unless every entry 0..last of ledger md is held,
// with the content h acknowledged, by every bookie of its write set.
func checkCopies(t *testing.T, cl *Client, md ledger.Metadata, last int64, h *history) {
	t.Helper()
	ctx := testCtx(t)
	for e := int64(0); e <= last; e++ {
		for _, b := range md.WriteSetOf(e) {
			got, err := cl.readEntry(ctx, b, md.ID, e, false)
			if err != nil || !bytes.Equal(got, h.attempted[e]) {
				t.Fatalf("entry %d on %s (write set %v of %s): %q, %v", e, b, md.WriteSetOf(e), md, got, err)
			}
		}
	}
}

// TestAuditorRereplicatesLostBookie: a closed ledger E=3 Qw=2 Qa=2 on four
// bookies loses one for good. Within the grace period nothing happens;
// after it the auditor copies the lost bookie's entries to the fourth
// bookie and swaps it into the metadata, so that every entry is again on
// Qw live bookies — and survives the loss of a second bookie of the old
// ensemble, which without re-replication would take the last copy of
// the entries the two shared.
func TestAuditorRereplicatesLostBookie(t *testing.T) {
	c := newCluster(t, 4, "")
	cl := c.client(Options{RequestTimeout: 2 * time.Second})
	ctx := testCtx(t)
	w, err := cl.CreateLedger(ctx, 3, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	h := newHistory()
	const n = 500
	for i, err := range appendAll(t, w, h, n, 100) {
		if err != nil {
			t.Fatal(i, err)
		}
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	md, err := cl.Metadata(ctx, w.ID())
	if err != nil {
		t.Fatal(err)
	}
	ens := md.Fragments[0].Bookies
	dead := ens[1]
	c.byID(dead).kill()
	c.liveExcept(dead)

	now := time.Now()
	a := cl.NewAuditor(time.Minute, nil)
	a.now = func() time.Time { return now }
	res, err := a.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.UnderReplicated != 1 || len(res.Lost) != 0 || res.Rereplicated != 0 {
		t.Fatalf("within the grace period: %+v", res)
	}
	now = now.Add(time.Minute)
	res, err = a.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Rereplicated != 1 || !slices.Equal(res.Lost, []string{dead}) {
		t.Fatalf("after the grace period: %+v", res)
	}
	// Entries whose write set held the lost bookie: two of every three.
	if want := n * 2 / 3; res.Entries < want-1 || res.Entries > want+1 {
		t.Fatalf("copied %d entries, want about %d", res.Entries, want)
	}
	after, err := cl.Metadata(ctx, w.ID())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range after.Fragments {
		if slices.Contains(f.Bookies, dead) {
			t.Fatalf("the lost bookie is still named: %s", after)
		}
	}
	if after.State != ledger.StateClosed || after.LastEntry != n-1 {
		t.Fatalf("state or last entry changed: %s", after)
	}
	checkCopies(t, cl, after, n-1, h)

	// Nothing left to do.
	if res, err := a.Check(ctx); err != nil || res.UnderReplicated != 0 || res.Rereplicated != 0 {
		t.Fatalf("second audit: %+v, %v", res, err)
	}

	// A second bookie of the old ensemble goes: every entry is still read.
	second := ens[2]
	c.byID(second).kill()
	c.liveExcept(dead, second)
	r, err := cl.OpenForRead(ctx, w.ID(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for e := int64(0); e < n; e++ {
		got, data, err := r.Next(ctx)
		if err != nil || got != e || !bytes.Equal(data, h.attempted[e]) {
			t.Fatalf("after a second loss, entry %d: got %d, %v", e, got, err)
		}
	}
}

// TestRereplicateRefusesOpenLedgerAndMissingCopy: an open ledger is left
// to its writer (ErrNotClosed), and a closed ledger whose entry has no
// live copy fails with ErrNoLiveCopy and leaves the metadata alone.
func TestRereplicateRefusesOpenLedgerAndMissingCopy(t *testing.T) {
	c := newCluster(t, 4, "")
	cl := c.client(Options{RequestTimeout: time.Second})
	ctx := testCtx(t)
	w, err := cl.CreateLedger(ctx, 3, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	h := newHistory()
	for i, err := range appendAll(t, w, h, 30, 10) {
		if err != nil {
			t.Fatal(i, err)
		}
	}
	md, err := cl.Metadata(ctx, w.ID())
	if err != nil {
		t.Fatal(err)
	}
	ens := md.Fragments[0].Bookies
	lostOne := func(b string) bool { return b == ens[0] }
	if _, err := cl.Rereplicate(ctx, w.ID(), lostOne); !errors.Is(err, ErrNotClosed) {
		t.Fatalf("open ledger: %v, want ErrNotClosed", err)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	closed, err := cl.Metadata(ctx, w.ID())
	if err != nil {
		t.Fatal(err)
	}
	// Two bookies of the ensemble gone: the entries they shared (those
	// with both in their write set) have no copy left.
	c.byID(ens[0]).kill()
	c.byID(ens[1]).kill()
	c.liveExcept(ens[0], ens[1])
	lostTwo := func(b string) bool { return b == ens[0] || b == ens[1] }
	if _, err := cl.Rereplicate(ctx, w.ID(), lostTwo); !errors.Is(err, ErrNoLiveCopy) {
		t.Fatalf("no live copy: %v, want ErrNoLiveCopy", err)
	}
	after, err := cl.Metadata(ctx, w.ID())
	if err != nil {
		t.Fatal(err)
	}
	if after.State != ledger.StateClosed || after.String() != closed.String() {
		t.Fatalf("metadata changed by a failed re-replication: %s, was %s", after, closed)
	}
}
