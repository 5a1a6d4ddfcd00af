package node

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/quiremq/quire/internal/config"
	"github.com/quiremq/quire/journal/bookie"
	"github.com/quiremq/quire/journal/client"
	"github.com/quiremq/quire/meta/schema"
)

// TestNodeBookieGC: a ledger whose record left meta while the bookie kept
// its entries (deleted while the bookie was down), and a closed ledger
// whose metadata no longer names this bookie, are deleted from the bookie
// by the second garbage-collection pass that finds them so; a ledger that
// names it, one being re-replicated to it (announced in meta) and an open
// one are kept.
func TestNodeBookieGC(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.Bookie.GCInterval = 0 // the passes are run by the test
	n := startNode(t, cfg, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl := ledgerClient(t, n)
	var ids []uint64
	for range 2 {
		w, err := cl.CreateLedger(ctx, 1, 1, 1)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if _, err := w.Append(ctx, []byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(ctx); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, w.ID())
	}
	gone, kept := ids[0], ids[1]
	if _, err := n.Meta().Delete(ctx, schema.LedgerKey(gone)); err != nil {
		t.Fatal(err)
	}
	// Three more ledgers whose metadata no longer names this bookie (as
	// after a re-replication replaced it): a closed one (a leftover), a
	// closed one being copied back here (announced), and an open one.
	st := schema.Store{KV: n.Meta()}
	moved := func(closeIt bool) uint64 {
		w, err := cl.CreateLedger(ctx, 1, 1, 1)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Append(ctx, []byte("x")); err != nil {
			t.Fatal(err)
		}
		if closeIt {
			err = w.Close(ctx)
		} else {
			w.Abandon()
		}
		if err != nil {
			t.Fatal(err)
		}
		rec, err := st.Ledger(ctx, w.ID())
		if err != nil {
			t.Fatal(err)
		}
		l := rec.Value
		l.Fragments = []schema.Fragment{{FirstEntry: 0, Bookies: []string{"127.0.0.1:1"}}}
		if _, err := st.CASLedger(ctx, rec.Version, l); err != nil {
			t.Fatal(err)
		}
		return w.ID()
	}
	leftover, copying, open := moved(true), moved(true), moved(false)
	if _, err := n.Meta().Put(ctx, schema.RereplicaKey(copying, n.bookie.opts.BookieID), nil); err != nil {
		t.Fatal(err)
	}
	c := n.bookie
	b := c.bookie
	suspects, err := c.gcPass(ctx, b, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !suspects[gone] || !suspects[leftover] || len(suspects) != 2 || !slices.Contains(b.Ledgers(), gone) {
		t.Fatalf("first pass: suspects %v, ledgers %v; want %d and %d suspected and kept for now", suspects, b.Ledgers(), gone, leftover)
	}
	if _, err := c.gcPass(ctx, b, suspects); err != nil {
		t.Fatal(err)
	}
	got := b.Ledgers()
	for _, id := range []uint64{kept, copying, open} {
		if !slices.Contains(got, id) {
			t.Fatalf("after the second pass the bookie holds %v; %d was deleted (kept %d, copying %d, open %d)", got, id, kept, copying, open)
		}
	}
	if slices.Contains(got, gone) || slices.Contains(got, leftover) {
		t.Fatalf("after the second pass the bookie holds %v; want %d and %d deleted", got, gone, leftover)
	}
	if _, err := b.ReadEntry(gone, 0, false); !errors.Is(err, bookie.ErrNoSuchEntry) && !errors.Is(err, bookie.ErrNoSuchLedger) {
		t.Fatalf("read of the deleted ledger: %v", err)
	}
	if got, err := b.ReadEntry(kept, 4, false); err != nil || !slices.Equal(got, []byte{4}) {
		t.Fatalf("read of the kept ledger: %v, %v", got, err)
	}
}

// TestNodeBookieGCLoop: with bookie.gc_interval set, the node runs the
// passes itself.
func TestNodeBookieGCLoop(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.Bookie.GCInterval = config.Duration(50 * time.Millisecond)
	n := startNode(t, cfg, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl := ledgerClient(t, n)
	w, err := cl.CreateLedger(ctx, 1, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Append(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	b := n.bookie.bookie
	time.Sleep(200 * time.Millisecond) // passes run while meta has it: kept
	if !slices.Contains(b.Ledgers(), w.ID()) {
		t.Fatalf("ledger %d deleted while meta has it", w.ID())
	}
	if _, err := n.Meta().Delete(ctx, schema.LedgerKey(w.ID())); err != nil {
		t.Fatal(err)
	}
	for slices.Contains(b.Ledgers(), w.ID()) {
		if ctx.Err() != nil {
			t.Fatalf("ledger %d still on the bookie", w.ID())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ledgerClient is a ledger client over n's meta and its bookie alone
// (closed at cleanup).
func ledgerClient(t *testing.T, n *Node) *client.Client {
	t.Helper()
	addr := n.GRPCAddr().String()
	cl, err := client.New(client.Options{Meta: n.Meta(), Directory: client.NewStaticDirectory(client.BookieInfo{ID: n.bookie.opts.BookieID, Addr: addr, Node: "n"})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}
