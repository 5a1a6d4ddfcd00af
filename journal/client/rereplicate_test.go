package client

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quiremq/quire/journal/ledger"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
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

// openLedger writes n entries of size bytes (recorded in h) to a new
// ledger E=3 Qw=2 Qa=2 of cl and returns its writer and metadata.
func openLedger(t *testing.T, cl *Client, h *history, n, size int) (*LedgerWriter, ledger.Metadata) {
	t.Helper()
	ctx := testCtx(t)
	w, err := cl.CreateLedger(ctx, 3, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	for i, err := range appendAll(t, w, h, n, size) {
		if err != nil {
			t.Fatal(i, err)
		}
	}
	md, err := cl.Metadata(ctx, w.ID())
	if err != nil {
		t.Fatal(err)
	}
	return w, md
}

// closedLedger is openLedger's ledger closed, and its metadata then.
func closedLedger(t *testing.T, cl *Client, h *history, n, size int) ledger.Metadata {
	t.Helper()
	ctx := testCtx(t)
	w, _ := openLedger(t, cl, h, n, size)
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	md, err := cl.Metadata(ctx, w.ID())
	if err != nil {
		t.Fatal(err)
	}
	return md
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
	h := newHistory()
	const n = 500
	md := closedLedger(t, cl, h, n, 100)
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
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watch := c.kv.Watch(wctx, schema.PrefixRereplicas, 0)
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
	after, err := cl.Metadata(ctx, md.ID)
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
	// The copy was announced for the replacement (so that its garbage
	// collection keeps it) and the announcement is gone after the CAS.
	replacement := after.Fragments[0].Bookies[1]
	key := schema.RereplicaKey(md.ID, replacement)
	var put, deleted bool
	for !deleted {
		select {
		case wr := <-watch:
			for _, ev := range wr.Events {
				if ev.KV.Key == key {
					put = put || ev.Type == meta.EventPut
					deleted = put && ev.Type == meta.EventDelete
				}
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("announcement %s: put %v, deleted %v", key, put, deleted)
		}
	}

	// Nothing left to do.
	if res, err := a.Check(ctx); err != nil || res.UnderReplicated != 0 || res.Rereplicated != 0 {
		t.Fatalf("second audit: %+v, %v", res, err)
	}

	// A second bookie of the old ensemble goes: every entry is still read.
	second := ens[2]
	c.byID(second).kill()
	c.liveExcept(dead, second)
	r, err := cl.OpenForRead(ctx, md.ID, 0)
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

// TestRereplicateOpenLedgerAndMissingCopy: an open ledger's last
// fragment is its writer's (nothing done); after an ensemble change its
// earlier fragment is re-replicated, and the writer's later close adopts
// the changed metadata. A ledger whose entry has no live copy fails with
// ErrNoLiveCopy and leaves the metadata alone.
func TestRereplicateOpenLedgerAndMissingCopy(t *testing.T) {
	c := newCluster(t, 5, "")
	cl := c.client(Options{RequestTimeout: time.Second, AddTimeout: time.Second})
	ctx := testCtx(t)
	h := newHistory()
	w, md := openLedger(t, cl, h, 100, 10)
	ens := md.Fragments[0].Bookies
	lostOne := func(b string) bool { return b == ens[0] }
	if n, err := cl.Rereplicate(ctx, w.ID(), lostOne); n != 0 || err != nil {
		t.Fatalf("open ledger, one fragment: %d, %v; want nothing done", n, err)
	}
	c.byID(ens[0]).kill()
	c.liveExcept(ens[0])
	for i, err := range appendAll(t, w, h, 100, 10) { // the ensemble changes
		if err != nil {
			t.Fatal(i, err)
		}
	}
	n, err := cl.Rereplicate(ctx, w.ID(), lostOne)
	if err != nil || n == 0 {
		t.Fatalf("open ledger after an ensemble change: %d, %v", n, err)
	}
	for i, err := range appendAll(t, w, h, 50, 10) {
		if err != nil {
			t.Fatal(i, err)
		}
	}
	if err := w.Close(ctx); err != nil {
		t.Fatalf("close after the metadata changed under the writer: %v", err)
	}
	after, err := cl.Metadata(ctx, w.ID())
	if err != nil {
		t.Fatal(err)
	}
	if after.State != ledger.StateClosed || after.LastEntry != 249 ||
		slices.ContainsFunc(after.Fragments, func(f ledger.Fragment) bool { return slices.Contains(f.Bookies, ens[0]) }) {
		t.Fatalf("after re-replication and close: %s", after)
	}
	checkCopies(t, cl, after, 249, h)
	firstDead := ens[0]

	// A second ledger, closed, loses two bookies of its ensemble: the
	// entries they shared have no copy left.
	w, err = cl.CreateLedger(ctx, 3, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	for i, err := range appendAll(t, w, newHistory(), 30, 10) {
		if err != nil {
			t.Fatal(i, err)
		}
	}
	if md, err = cl.Metadata(ctx, w.ID()); err != nil {
		t.Fatal(err)
	}
	ens = md.Fragments[0].Bookies
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	closed, err := cl.Metadata(ctx, w.ID())
	if err != nil {
		t.Fatal(err)
	}
	dead := []string{ens[0], ens[1]}
	for _, b := range dead {
		c.byID(b).kill()
	}
	c.liveExcept(append(dead, firstDead)...)
	lostTwo := func(b string) bool { return b == ens[0] || b == ens[1] }
	if _, err := cl.Rereplicate(ctx, w.ID(), lostTwo); !errors.Is(err, ErrNoLiveCopy) {
		t.Fatalf("no live copy: %v, want ErrNoLiveCopy", err)
	}
	after, err = cl.Metadata(ctx, w.ID())
	if err != nil {
		t.Fatal(err)
	}
	if after.State != ledger.StateClosed || after.String() != closed.String() {
		t.Fatalf("metadata changed by a failed re-replication: %s, was %s", after, closed)
	}
}

// TestAuditorsCountOnce: every node runs an auditor, so several may take
// the same ledger at once. Each copies, one CAS wins, and only that
// auditor counts the ledger (and its entries) as re-replicated: in all,
// each ledger counts once, and the metadata no longer names the lost
// bookie.
func TestAuditorsCountOnce(t *testing.T) {
	c := newCluster(t, 4, "")
	cl := c.client(Options{RequestTimeout: 2 * time.Second})
	ctx := testCtx(t)
	const ledgers, n = 3, 60
	var ids []uint64
	for range ledgers {
		ids = append(ids, closedLedger(t, cl, newHistory(), n, 20).ID)
	}
	md, err := cl.Metadata(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	dead := md.Fragments[0].Bookies[0]
	c.byID(dead).kill()
	c.liveExcept(dead)

	const auditors = 3
	results := make([]AuditResult, auditors)
	errs := make([]error, auditors)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range auditors {
		a := c.client(Options{RequestTimeout: 2 * time.Second}).NewAuditor(0, nil)
		wg.Go(func() {
			<-start
			results[i], errs[i] = a.Check(ctx)
		})
	}
	close(start)
	wg.Wait()
	var rereplicated, entries, naming int
	for _, id := range ids {
		md, err := cl.Metadata(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if names(md.Fragments[:1], func(b string) bool { return b == dead }) {
			t.Fatalf("ledger %d still names the lost bookie: %s", id, md)
		}
	}
	for i := range auditors {
		if errs[i] != nil {
			t.Fatalf("auditor %d: %v", i, errs[i])
		}
		rereplicated += results[i].Rereplicated
		entries += results[i].Entries
		naming = max(naming, results[i].UnderReplicated)
	}
	if rereplicated != naming || naming == 0 {
		t.Fatalf("%d ledgers counted re-replicated by %d auditors, %d named the lost bookie: %+v", rereplicated, auditors, naming, results)
	}
	// Of each ledger naming it, the entries whose write set held it: two
	// of every three.
	if want := naming * n * 2 / 3; entries < want-naming || entries > want+naming {
		t.Fatalf("%d entries counted, want about %d: %+v", entries, want, results)
	}
}

// TestAuditorElection: of two auditors running, only the one holding
// schema.KeyAuditor audits (the other never even counts a bookie
// missing); when its Run ends, it gives the key up and the other takes
// over at its next turn.
func TestAuditorElection(t *testing.T) {
	c := newCluster(t, 4, "")
	cl := c.client(Options{RequestTimeout: 2 * time.Second})
	ctx := testCtx(t)
	md := closedLedger(t, cl, newHistory(), 30, 10)
	holder := func() string {
		kv, err := c.kv.Get(ctx, schema.KeyAuditor)
		if errors.Is(err, meta.ErrNotFound) {
			return ""
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(kv.Value)
	}
	waitHolder := func(want string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); holder() != want; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("auditor key held by %q, want %q", holder(), want)
			}
		}
	}
	const every = 20 * time.Millisecond
	a1 := c.client(Options{RequestTimeout: 2 * time.Second}).NewAuditor(0, nil)
	a2 := c.client(Options{RequestTimeout: 2 * time.Second}).NewAuditor(0, nil)
	ctx1, stop1 := context.WithCancel(ctx)
	ctx2, stop2 := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop1(); stop2(); wg.Wait() }()
	wg.Go(func() { a1.Run(ctx1, every, "node-1") })
	waitHolder("node-1")
	wg.Go(func() { a2.Run(ctx2, every, "node-2") })

	dead := md.Fragments[0].Bookies[0]
	c.byID(dead).kill()
	c.liveExcept(dead)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		md, err := cl.Metadata(ctx, md.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !names(md.Fragments, func(b string) bool { return b == dead }) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not re-replicated: %s", md)
		}
	}
	time.Sleep(5 * every) // a few more turns of both
	a2.mu.Lock()
	missing := len(a2.missing)
	a2.mu.Unlock()
	if missing != 0 {
		t.Fatalf("the auditor not holding the key audited: it counts %d bookies missing", missing)
	}
	if holder() != "node-1" {
		t.Fatalf("auditor key held by %q, want node-1", holder())
	}

	stop1()
	waitHolder("node-2")
}

// TestIdleWriterReplacesMissingBookie: a writer that stopped adding keeps
// its ledger open; a bookie of its ensemble is lost. With
// ReplaceMissingAfter the writer replaces it once the live list has
// missed it that long, though no add to it failed, so the fragment naming
// it is no longer the writer's and an audit re-replicates it: after a
// second bookie of the old ensemble is lost too, every acknowledged entry
// is still read, and the writer still appends.
func TestIdleWriterReplacesMissingBookie(t *testing.T) {
	c := newCluster(t, 5, "")
	cl := c.client(Options{RequestTimeout: time.Second, ReplaceMissingAfter: 100 * time.Millisecond})
	ctx := testCtx(t)
	h := newHistory()
	const n = 60
	w, md := openLedger(t, cl, h, n, 10)
	ens := md.Fragments[0].Bookies
	dead := ens[0]
	c.byID(dead).kill()
	c.liveExcept(dead)
	isDead := func(b string) bool { return b == dead }
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if md, err = cl.Metadata(ctx, w.ID()); err != nil {
			t.Fatal(err)
		}
		if len(md.Fragments) > 1 && !slices.Contains(md.Fragments[len(md.Fragments)-1].Bookies, dead) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the idle writer did not replace the missing bookie: %s", md)
		}
	}
	if md.State != ledger.StateOpen || md.Fragments[1].FirstEntry != n {
		t.Fatalf("after the idle writer's ensemble change: %s", md)
	}
	res, err := cl.NewAuditor(0, nil).Check(ctx)
	if err != nil || res.Rereplicated != 1 || res.Waiting != 0 {
		t.Fatalf("audit: %+v, %v", res, err)
	}
	if md, err = cl.Metadata(ctx, w.ID()); err != nil || names(md.Fragments, isDead) {
		t.Fatalf("after the audit: %s, %v", md, err)
	}

	second := ens[1]
	c.byID(second).kill()
	c.liveExcept(dead, second)
	r, err := cl.OpenForRead(ctx, w.ID(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for e := int64(0); e < n; e++ {
		got, data, err := r.Next(ctx)
		if err != nil || got != e || !bytes.Equal(data, h.attempted[e]) {
			t.Fatalf("after a second loss, entry %d: got %d, %v", e, got, err)
		}
	}
	if _, err := w.Append(ctx, []byte("after")); err != nil {
		t.Fatalf("append after both losses: %v", err)
	}
}

// lostReplyKV applies a Put but answers it with an error, as a meta
// leader that lost its leadership after committing the write would.
type lostReplyKV struct {
	meta.KV
	lose bool
}

func (k *lostReplyKV) Put(ctx context.Context, key string, value []byte, opts ...meta.WriteOption) (meta.KeyValue, error) {
	kv, err := k.KV.Put(ctx, key, value, opts...)
	if err == nil && k.lose {
		k.lose = false
		return meta.KeyValue{}, errors.New("reply lost")
	}
	return kv, err
}

// TestElectionPutOfUnknownOutcome: an auditor whose put of the key took
// effect though its reply was lost finds it held at its next turn (it
// would otherwise keep the key alive under its lease and never audit,
// and nobody else could take it).
func TestElectionPutOfUnknownOutcome(t *testing.T) {
	c := newCluster(t, 3, "")
	ctx := testCtx(t)
	kv := &lostReplyKV{KV: c.kv, lose: true}
	var el election
	defer el.resign(kv)
	if el.lead(ctx, kv, 10*time.Second, "node-1") {
		t.Fatal("held after a put whose reply was lost")
	}
	if !el.lead(ctx, kv, 10*time.Second, "node-1") {
		t.Fatal("the key put under its lease is not found held at the next turn")
	}
	var other election
	defer other.resign(c.kv)
	if other.lead(ctx, c.kv, 10*time.Second, "node-2") {
		t.Fatal("a second auditor holds the key too")
	}
}

// grantCountKV counts lease grants.
type grantCountKV struct {
	meta.KV
	grants atomic.Int32
}

func (k *grantCountKV) Grant(ctx context.Context, ttl time.Duration) (meta.LeaseID, error) {
	k.grants.Add(1)
	return k.KV.Grant(ctx, ttl)
}

// TestAuditOneClaimPerPass: an audit that re-replicates several ledgers
// announces all their copies under one lease, not one per ledger.
func TestAuditOneClaimPerPass(t *testing.T) {
	c := newCluster(t, 4, "")
	cl := c.client(Options{RequestTimeout: 2 * time.Second})
	ctx := testCtx(t)
	const ledgers = 3
	var dead string
	for range ledgers {
		md := closedLedger(t, cl, newHistory(), 30, 10)
		if dead == "" {
			dead = md.Fragments[0].Bookies[0]
		}
	}
	c.byID(dead).kill()
	c.liveExcept(dead)
	kv := &grantCountKV{KV: c.kv}
	shared := c.kv
	c.kv = kv
	auditing := c.client(Options{RequestTimeout: 2 * time.Second})
	c.kv = shared
	res, err := auditing.NewAuditor(0, nil).Check(ctx)
	if err != nil || res.Rereplicated < 2 || res.Rereplicated != res.UnderReplicated {
		t.Fatalf("audit: %+v, %v; want two ledgers or more re-replicated", res, err)
	}
	if n := kv.grants.Load(); n != 1 {
		t.Fatalf("%d leases granted to re-replicate %d ledgers, want 1", n, res.Rereplicated)
	}
}
