package faulttest

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/quiremq/quire/journal/client"
	"github.com/quiremq/quire/journal/ledger"
)

// TestRereplicateAfterKill: five `quire bookie` processes, E=3 Qw=2
// Qa=2. A bookie of the writing ledger's ensemble is killed -9 for good;
// the writer changes ensemble and goes on, then closes the log. An
// auditor that no longer sees the dead bookie re-replicates every ledger
// that names it, and the checker then finds every entry on at least Qa
// live bookies of its write set, with the dead bookie never restarted
// (before re-replication, the entries it held have one live copy and
// checkCopies fails).
func TestRereplicateAfterKill(t *testing.T) {
	s := seed(t)
	rng := rand.New(rand.NewPCG(s, 6))
	r := newRig(t, 5, writerConfig{Shard: "rereplicate/0", E: 3, Qw: 2, Qa: 2,
		Rate: 500, Inflight: 256, AddTimeout: 2 * time.Second, ReqTimeout: 2 * time.Second})
	r.startWriter()
	r.waitAcks(300, 60*time.Second)
	md, ens, victim, b := r.pickVictim(rng)
	b.kill9()
	r.phase("killed %s of ledger %d's ensemble %v", b.name, md.ID, ens)
	r.waitAcks(300, 30*time.Second)
	if err := r.writer.finish(t, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	r.phase("writer %d closed the log", r.writer.gen)

	var live []client.BookieInfo
	for _, bp := range r.bookies {
		if bp.addr != victim {
			live = append(live, client.BookieInfo{ID: bp.addr, Addr: bp.addr, Node: bp.name})
		}
	}
	cl, err := client.New(client.Options{Meta: r.kv, Directory: client.NewStaticDirectory(live...),
		RequestTimeout: 5 * time.Second, DialOptions: []grpc.DialOption{backoffDial()}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	res, err := cl.NewAuditor(0, nil).Check(ctx)
	if err != nil {
		t.Fatalf("audit: %v (%+v)", err, res)
	}
	r.phase("audit: %+v", res)
	if res.Rereplicated == 0 || res.Entries == 0 || !slices.Equal(res.Lost, []string{victim}) {
		t.Fatalf("audit re-replicated nothing: %+v", res)
	}
	log, err := r.cl.Metadata(ctx, md.ID)
	if err != nil {
		t.Fatal(err)
	}
	if log.State != ledger.StateClosed || slices.ContainsFunc(log.Fragments, func(f ledger.Fragment) bool { return slices.Contains(f.Bookies, victim) }) {
		t.Fatalf("ledger %d after the audit: %s", md.ID, log)
	}
	for _, bp := range r.bookies {
		if bp.addr != victim {
			bp.checkAlive()
		}
	}
	c := &checker{t: t, cl: r.cl, kv: r.kv, shard: r.cfg.Shard, bookies: r.direct}
	end := c.check(r.h)
	r.phase("history checked with %s still dead: %d records", b.name, end)
}
