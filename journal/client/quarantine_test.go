package client

import (
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quiremq/quire/internal/vfs"
)

// TestQuarantineFailedBookie: a bookie whose journal fsync fails answers
// STATUS_FAILED; the writer replaces it, and the client then places new
// ledgers on the other bookies (without quarantine, the rotating
// placement would put it in three of every four ensembles), unless it is
// needed: an ensemble of all four still gets it.
func TestQuarantineFailedBookie(t *testing.T) {
	c := newCluster(t, 3, "")
	var armed atomic.Bool
	fs := vfs.InjectFS(vfs.NewMem(), vfs.InjectorFunc(func(op vfs.Op) error {
		if armed.Load() && strings.HasSuffix(op.Path, ".jnl") && (op.Kind == vfs.OpFileSyncData || op.Kind == vfs.OpFileSync) {
			return vfs.ErrInjected
		}
		return nil
	}))
	bad := startBookie(t, fs, "/b", "n3")
	c.bookies = append(c.bookies, bad)
	c.liveExcept()
	cl := c.client(Options{RequestTimeout: time.Second, AddTimeout: 2 * time.Second})
	ctx := testCtx(t)

	// A ledger on the failing bookie: its first add fails there, the
	// writer changes ensemble and every append is acknowledged.
	var w *LedgerWriter
	for w == nil {
		lw, err := cl.CreateLedger(ctx, 3, 2, 2)
		if err != nil {
			t.Fatal(err)
		}
		md, err := cl.Metadata(ctx, lw.ID())
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(md.Fragments[0].Bookies, bad.info.ID) {
			w = lw
		} else if err := lw.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	armed.Store(true)
	h := newHistory()
	for i, err := range appendAll(t, w, h, 50, 10) {
		if err != nil {
			t.Fatal(i, err)
		}
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if !cl.quarantined(bad.info.ID) {
		t.Fatalf("bookie %s answered STATUS_FAILED but is not quarantined", bad.info.ID)
	}
	for range 8 {
		if placedOn(t, cl, bad.info.ID) {
			t.Fatal("a new ledger placed on the quarantined bookie")
		}
	}
	lw, err := cl.CreateLedger(ctx, 4, 2, 2)
	if err != nil {
		t.Fatalf("an ensemble of four with one quarantined: %v", err)
	}
	lw.Abandon()

	// A client without quarantine keeps placing ledgers on it.
	plain := c.client(Options{QuarantineTime: -1})
	placed := 0
	for range 8 {
		if placedOn(t, plain, bad.info.ID) {
			placed++
		}
	}
	if placed == 0 {
		t.Fatal("the control client never placed a ledger on the failing bookie")
	}
	cl.quarantineOnFailure("elsewhere:1", errors.New("connection refused"))
	if cl.quarantined("elsewhere:1") {
		t.Fatal("quarantined without STATUS_FAILED")
	}
}

// placedOn creates (and abandons) an E3/Qw2/Qa2 ledger with cl and reports
// whether its ensemble holds bookie.
func placedOn(t *testing.T, cl *Client, bookie string) bool {
	t.Helper()
	ctx := testCtx(t)
	lw, err := cl.CreateLedger(ctx, 3, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer lw.Abandon()
	md, err := cl.Metadata(ctx, lw.ID())
	if err != nil {
		t.Fatal(err)
	}
	return slices.Contains(md.Fragments[0].Bookies, bookie)
}
