package main

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/quiremq/quire/journal/client"
)

// With --bookie-addrs the bench's ledgers take ids from 2^62 on: those
// bookies may serve a cluster whose meta numbers its ledgers from 1, and
// the bench's adds must never land in one of them.
func TestExternalBookiesLedgerIDs(t *testing.T) {
	dir := t.TempDir()
	c := &config{}
	lb, info, err := startBookie(c, filepath.Join(dir, "b"), "b")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { lb.gs.Stop(); lb.b.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl, err := startCluster(ctx, &config{dataDir: dir, bookieAddrs: []string{info.Addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.stop()
	lc, err := client.New(client.Options{Meta: cl.meta, Directory: client.NewStaticDirectory(cl.infos...), Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	w, err := lc.CreateLedger(ctx, 1, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abandon()
	if w.ID() <= externalLedgerBase {
		t.Fatalf("ledger id %d, want above %d", w.ID(), uint64(externalLedgerBase))
	}
}
