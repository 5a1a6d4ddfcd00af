package journal

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/quiremq/quire/journal/ledger"
	"github.com/quiremq/quire/shard"
)

// TestRereplicateAfter: with RereplicateAfter set, an engine's auditor
// restores the copies a shard's ledgers kept on a bookie that died (the
// closed ones at once, the open one once its writer closed it), so that
// the shard still reads back whole after a second bookie of the same
// ensemble dies (E3/Qw2/Qa2 on five bookies: without re-replication,
// entries on both dead bookies would be gone).
func TestRereplicateAfter(t *testing.T) {
	e := newEnv(t, 5)
	ctx := testCtx(t)
	// Another node's engine, which audits (the writer's does not).
	aud := e.engine(Options{Quorum: Quorum{3, 2, 2}, RereplicateAfter: 100 * time.Millisecond, AuditInterval: 20 * time.Millisecond})
	defer aud.Close()
	en := e.engine(Options{Quorum: Quorum{3, 2, 2}, RollEntries: 10})
	s, err := en.Create(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	var want []shard.Record
	appendN := func(from, n int) {
		for i := from; i < from+n; i++ {
			b := recsOf(fmt.Sprint(i), 2)
			if _, err := s.Append(ctx, b); err != nil {
				t.Fatalf("append %d: %v", i, err)
			}
			want = append(want, b...)
		}
	}
	appendN(0, 45)
	js := s.(*Shard)
	ledgers := func() []uint64 {
		js.mu.Lock()
		defer js.mu.Unlock()
		var ids []uint64
		for _, l := range js.ledgers {
			ids = append(ids, l.id)
		}
		return ids
	}
	cl := e.client()
	md, err := cl.Metadata(ctx, ledgers()[0])
	if err != nil {
		t.Fatal(err)
	}
	ens := md.Fragments[0].Bookies
	first := ens[0]
	e.kill(first)
	// The writer changes the open ledger's ensemble and rolls on; its
	// close leaves the last ledger naming the dead bookie in a fragment.
	appendN(45, 20)
	ids := ledgers()
	if err := en.Close(); err != nil {
		t.Fatal(err)
	}

	// Every ledger stops naming the dead bookie.
	deadline := time.Now().Add(20 * time.Second)
	for _, id := range ids {
		for {
			md, err := cl.Metadata(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if md.State == ledger.StateClosed && !slices.ContainsFunc(md.Fragments, func(f ledger.Fragment) bool { return slices.Contains(f.Bookies, first) }) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("ledger %d still names the dead bookie %s: %s", id, first, md)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	e.kill(ens[1])
	// A new engine reads the shard from the bookies alone.
	b := e.engine(Options{Quorum: Quorum{3, 2, 2}})
	defer b.Close()
	s2, err := b.Open(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	checkValues(t, s2, want) // after two bookie losses
}
