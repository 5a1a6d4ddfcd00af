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
// its entries (deleted while the bookie was down) is deleted from the
// bookie by the second garbage-collection pass that finds it missing; a
// ledger meta still has is kept.
func TestNodeBookieGC(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.Bookie.GCInterval = 0 // the passes are run by the test
	n := startNode(t, cfg, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	addr := n.GRPCAddr().String()
	cl, err := client.New(client.Options{Meta: n.Meta(), Directory: client.NewStaticDirectory(client.BookieInfo{ID: addr, Addr: addr, Node: "n"})})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
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
	c := n.bookie
	b := c.bookie
	suspects, err := c.gcPass(ctx, b, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !suspects[gone] || suspects[kept] || !slices.Contains(b.Ledgers(), gone) {
		t.Fatalf("first pass: suspects %v, ledgers %v; want %d suspected and kept for now", suspects, b.Ledgers(), gone)
	}
	if _, err := c.gcPass(ctx, b, suspects); err != nil {
		t.Fatal(err)
	}
	if got := b.Ledgers(); slices.Contains(got, gone) || !slices.Contains(got, kept) {
		t.Fatalf("after the second pass the bookie holds %v; want %d deleted, %d kept", got, gone, kept)
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
	addr := n.GRPCAddr().String()
	cl, err := client.New(client.Options{Meta: n.Meta(), Directory: client.NewStaticDirectory(client.BookieInfo{ID: addr, Addr: addr, Node: "n"})})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
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
