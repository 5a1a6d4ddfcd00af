package client

import (
	"errors"
	"testing"
	"time"

	"github.com/quiremq/quire/journal/ledger"
)

// A writer that cannot replace a bookie that stopped answering (every
// bookie outside the ensemble failed it before) keeps reconnecting to it
// for another AddTimeout, then gives up instead of stalling forever: pending and later appends fail with ledger.ErrStopped
// (ambiguous) and Close returns it, so that the owner (a LogWriter, a
// shard leader) can take the log over with a new ledger. Found by
// journal/faulttest: transient faults of the 5 bookies one after another
// left a writer with no replacement, and its log rollover hung in Close.
func TestWriterGivesUpWithoutReplacement(t *testing.T) {
	c := newCluster(t, 4, "")
	cl := c.client(Options{AddTimeout: 2 * time.Second})
	ctx := testCtx(t)
	w, err := cl.CreateLedger(ctx, 3, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Append(ctx, []byte("a")); err != nil {
		t.Fatal(err)
	}
	md, _ := cl.Metadata(ctx, w.ID())
	first := c.byID(md.Fragments[0].Bookies[0])
	// The first failure is replaced by the fourth bookie (entry 2's write
	// set holds it: its add times out); the failed one comes back.
	first.kill()
	for range 2 {
		if _, err := w.Append(ctx, []byte("b")); err != nil {
			t.Fatal(err)
		}
	}
	if md, _ := cl.Metadata(ctx, w.ID()); len(md.Fragments) < 2 {
		t.Fatalf("no ensemble change after the first kill: %s", md)
	}
	first.restart()
	// A second failure: the only bookie outside the ensemble failed this
	// writer before.
	md, _ = cl.Metadata(ctx, w.ID())
	second := c.byID(md.Fragments[len(md.Fragments)-1].Bookies[1])
	second.kill()
	var f *Future
	for range 6 { // some go to the dead bookie
		if f, err = w.AppendAsync(ctx, []byte("c")); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-f.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("append still pending 20s after the writer ran out of replacements")
	}
	if _, err := f.Result(); !errors.Is(err, ledger.ErrStopped) {
		t.Fatalf("append without a replacement: %v, want ledger.ErrStopped", err)
	}
	if err := w.Close(ctx); !errors.Is(err, ledger.ErrStopped) {
		t.Fatalf("Close: %v, want ledger.ErrStopped", err)
	}
	second.restart()
	if _, err := cl.Recover(ctx, w.ID()); err != nil {
		t.Fatal(err)
	}
}
