package node

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/quiremq/quire/internal/node/adminapi"
	"github.com/quiremq/quire/meta/schema"
)

// TestAdminLedgers: GET /api/v1/ledgers lists the journal ledgers with the
// bookies they name that meta does not list as live; under_replicated
// keeps only those.
func TestAdminLedgers(t *testing.T) {
	n := startNode(t, testConfig(t.TempDir()), nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	api := adminapi.NewClient("http://" + n.AdminAddr().String())
	var live []string
	for {
		all, err := api.Ledgers(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		if live = all.LiveBookies; len(live) == 1 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("live bookies %v, want this node's", live)
		}
		time.Sleep(50 * time.Millisecond)
	}
	st := schema.Store{KV: n.Meta()}
	healthy, err := st.CreateLedger(ctx, schema.Ledger{Ensemble: 1, WriteQuorum: 1, AckQuorum: 1,
		Fragments: []schema.Fragment{{FirstEntry: 0, Bookies: live}}})
	if err != nil {
		t.Fatal(err)
	}
	short, err := st.CreateLedger(ctx, schema.Ledger{Ensemble: 2, WriteQuorum: 2, AckQuorum: 2,
		Fragments: []schema.Fragment{{FirstEntry: 0, Bookies: []string{live[0], "127.0.0.1:1"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if all, err := api.Ledgers(ctx, false); err != nil || all.Auditor != "" {
		t.Fatalf("auditor %q, %v; want none (this node runs no journal engine)", all.Auditor, err)
	}
	if _, err := n.Meta().Put(ctx, schema.KeyAuditor, []byte("7")); err != nil {
		t.Fatal(err)
	}
	all, err := api.Ledgers(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if all.Auditor != "7" {
		t.Fatalf("auditor %q, want 7 (the key's value)", all.Auditor)
	}
	ids := func(l adminapi.LedgerList) []uint64 {
		var out []uint64
		for _, x := range l.Ledgers {
			out = append(out, x.ID)
		}
		return out
	}
	if got := ids(all); !slices.Equal(got, []uint64{healthy.Value.ID, short.Value.ID}) {
		t.Fatalf("ledgers %v, want %d and %d", got, healthy.Value.ID, short.Value.ID)
	}
	under, err := api.Ledgers(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(under.Ledgers) != 1 || under.Ledgers[0].ID != short.Value.ID || !slices.Equal(under.Ledgers[0].Missing, []string{"127.0.0.1:1"}) ||
		under.Ledgers[0].State != "OPEN" || under.Ledgers[0].Ensemble != 2 || len(under.Ledgers[0].Fragments) != 1 {
		t.Fatalf("under-replicated: %+v", under.Ledgers)
	}
	if _, err := api.Do(ctx, "GET", "/api/v1/ledgers?under_replicated=maybe", nil); err == nil {
		t.Fatal("a bad under_replicated value was accepted")
	}
}
