package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/journal/bookie/bookierpc"
	"github.com/quiremq/quire/journal/ledger"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
)

// Re-replication. A ledger whose bookie is lost for good keeps fewer
// copies of the entries that bookie held: Qa−1 of an entry acknowledged by
// Qa bookies, and a second loss can take the last one (Kafka's 2013 loss
// after its in-sync replicas shrank). Rereplicate restores them, as
// BookKeeper's autorecovery does: for every fragment of a closed ledger
// whose ensemble names a lost bookie, it picks a live bookie on a node the
// fragment does not use, copies to it every entry of the fragment whose
// write set held the lost bookie (read from the other bookies of that
// write set, written as recovery adds and synced), and only then CASes the
// metadata with the replacement in the lost bookie's place. Each copy is
// announced in meta first (schema.RereplicaKey, under a lease kept alive
// until the CAS), so that the replacement's garbage collection (a node's
// [bookie] gc_interval) keeps entries of a closed ledger that does not
// name it yet. A crash or an error before the CAS leaves the metadata as
// it was; the copies made are then leftovers that collection deletes
// once the lease is gone. A CAS that finds the ledger changed starts over
// from the new metadata.
//
// Of an OPEN ledger only the fragments before the last are
// re-replicated: their entries were all acknowledged before the ensemble
// change that ended them, and the last fragment is the writer's (its own
// ensemble change replaces a failed bookie there once it writes again,
// and recovery closes a ledger whose writer is gone). The writer's next
// CAS then finds the metadata changed while OPEN and adopts it
// (ledger.Writer.CASDone) before it retries. A ledger in recovery is left
// alone (ErrNotFinal) until it is closed.
//
// The Auditor decides which bookies are lost: those the directory has not
// listed as live for a grace period (a restarting bookie is not lost).

// ErrNotFinal is returned by Rereplicate for a ledger in recovery: its
// fragments are not final until the recovery closes it.
var ErrNotFinal = errors.New("journal/client: ledger in recovery")

// ErrNoLiveCopy is returned by Rereplicate when no live bookie of an
// entry's write set holds it: the entry cannot be copied (it was lost, or
// its bookies are down at the moment).
var ErrNoLiveCopy = errors.New("journal/client: no live copy of an entry")

// Rereplicate restores the copies that closed ledger id kept on the
// bookies lost reports, and returns the number of entries copied. It
// does nothing (0, nil) when no fragment names a lost bookie.
func (c *Client) Rereplicate(ctx context.Context, id uint64, lost func(bookie string) bool) (int, error) {
	r, err := c.rereplicate(ctx, id, lost, nil, nil)
	return r.copied, err
}

// rereplication is what one rereplicate call did.
type rereplication struct {
	copied   int // entries copied, by every attempt
	restored int // entries copied by the attempt whose CAS changed the metadata
	changed  bool
}

// rereplicate is Rereplicate with the live bookies read already (nil:
// read them when a fragment needs a replacement), announcing its copies
// under claim (nil: a claim of its own per attempt). It reports whether its
// own CAS changed the metadata: when several nodes' auditors take the same
// ledger at once, each copies, one CAS wins, and the others find nothing
// left to do when they look again.
func (c *Client) rereplicate(ctx context.Context, id uint64, lost func(bookie string) bool, live []BookieInfo, claim *replicaClaim) (rereplication, error) {
	var r rereplication
	for attempt := 0; ; attempt++ {
		rec, err := c.store.Ledger(ctx, id)
		if errors.Is(err, meta.ErrNotFound) {
			return r, fmt.Errorf("%w: %d", ErrNoSuchLedger, id)
		}
		if err != nil {
			return r, err
		}
		md := ToMetadata(rec)
		final := finalFragments(&md)
		if final == 0 && md.State == ledger.StateInRecovery {
			return r, fmt.Errorf("%w: ledger %d is %s", ErrNotFinal, id, md.State)
		}
		if !names(md.Fragments[:final], lost) {
			return r, nil
		}
		if live == nil {
			if live, err = c.live(ctx); err != nil {
				return r, err
			}
		}
		cl := claim
		if cl == nil {
			if cl, err = c.claimReplicas(ctx); err != nil {
				return r, err
			}
		}
		n, err := c.rereplicateOnce(cl.ctx, rec, md, final, live, lost, cl)
		r.copied += n
		if claim == nil {
			cl.release()
		}
		if errors.Is(err, meta.ErrVersionMismatch) && attempt < 3 {
			continue // changed meanwhile (deleted, or re-replicated elsewhere): look again
		}
		if err == nil {
			r.restored, r.changed = n, true
		}
		return r, err
	}
}

// finalFragments is how many of md's fragments, from the first, hold
// final entries: all of a closed ledger; of an open one all but the last
// (its writer's), whose entries were acknowledged before the ensemble
// change that ended them; none of a ledger in recovery.
func finalFragments(md *ledger.Metadata) int {
	switch md.State {
	case ledger.StateClosed:
		return len(md.Fragments)
	case ledger.StateOpen:
		return len(md.Fragments) - 1
	}
	return 0
}

// names reports whether a fragment of fs names a bookie pred holds for.
func names(fs []ledger.Fragment, pred func(string) bool) bool {
	return slices.ContainsFunc(fs, func(f ledger.Fragment) bool { return slices.ContainsFunc(f.Bookies, pred) })
}

// rereplicateOnce copies the final fragments' entries held by lost
// bookies to replacements, each announced first under cl, and CASes the
// metadata (meta.ErrVersionMismatch when it changed meanwhile).
func (c *Client) rereplicateOnce(ctx context.Context, rec schema.Record[schema.Ledger], md ledger.Metadata, final int, live []BookieInfo, lost func(string) bool, cl *replicaClaim) (int, error) {
	id, copied := md.ID, 0
	next := md.Clone()
	for fi := range final {
		f := &next.Fragments[fi]
		first, last := f.FirstEntry, md.LastEntry
		if fi+1 < len(next.Fragments) {
			last = next.Fragments[fi+1].FirstEntry - 1
		}
		for j, b := range f.Bookies {
			if !lost(b) {
				continue
			}
			cands := slices.DeleteFunc(replacements(c.healthy(live), f.Bookies, b), lost)
			if len(cands) == 0 {
				return copied, fmt.Errorf("%w: no live bookie on another node to replace %s in ledger %d", ErrNotEnoughBookies, b, id)
			}
			r := cands[(int(id)+fi+j)%len(cands)]
			if err := cl.announce(ctx, id, r); err != nil {
				return copied, err
			}
			n, err := c.copyFragment(ctx, &md, fi, j, first, last, r, lost)
			copied += n
			if err != nil {
				return copied, fmt.Errorf("journal/client: re-replicating ledger %d fragment %d from %s to %s: %w", id, fi, b, r, err)
			}
			c.log.Info("journal/client: fragment re-replicated", "ledger", id, "fragment", fi, "lost", b, "replacement", r, "entries", n)
			f.Bookies[j] = r
		}
	}
	if err := cl.held(); err != nil {
		return copied, err // the copies may be collected: no CAS
	}
	_, err := c.store.CASLedger(ctx, md.Version, FromMetadata(next, rec.Value.CreatedAt))
	if errors.Is(err, meta.ErrVersionMismatch) {
		return copied, err
	}
	if err != nil {
		return copied, fmt.Errorf("journal/client: re-replicating ledger %d: metadata: %w", id, err)
	}
	return copied, nil
}

// rereplicaTTL is the lease of a re-replication's announcements
// (schema.RereplicaKey), kept alive every third of it while the copies
// run.
const rereplicaTTL = 30 * time.Second

// replicaClaim announces, in meta under one lease, the bookies a
// re-replication copies entries to before its CAS names them, so that
// their garbage collection does not take the copies for leftovers of a
// ledger they no longer serve. Losing the lease (meta unreachable for its
// TTL) cancels ctx and fails held: the CAS must not follow.
type replicaClaim struct {
	c      *Client
	lease  meta.LeaseID
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	lost   atomic.Bool
}

func (c *Client) claimReplicas(ctx context.Context) (*replicaClaim, error) {
	lease, err := c.store.KV.Grant(ctx, rereplicaTTL)
	if err != nil {
		return nil, fmt.Errorf("journal/client: re-replication lease: %w", err)
	}
	cl := &replicaClaim{c: c, lease: lease, done: make(chan struct{})}
	cl.ctx, cl.cancel = context.WithCancel(ctx)
	go func() {
		defer close(cl.done)
		t := time.NewTicker(rereplicaTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-cl.ctx.Done():
				return
			case <-t.C:
			}
			if _, err := c.store.KV.KeepAlive(cl.ctx, lease); err != nil && cl.ctx.Err() == nil {
				cl.lost.Store(true)
				cl.cancel()
				return
			}
		}
	}()
	return cl, nil
}

// announce records that id's entries are being copied to bookie.
func (cl *replicaClaim) announce(ctx context.Context, id uint64, bookie string) error {
	if _, err := cl.c.store.KV.Put(ctx, schema.RereplicaKey(id, bookie), nil, meta.WithLease(cl.lease)); err != nil {
		return fmt.Errorf("journal/client: announcing the copy of ledger %d to %s: %w", id, bookie, err)
	}
	return nil
}

// held fails once the lease was lost.
func (cl *replicaClaim) held() error {
	if cl.lost.Load() {
		return errors.New("journal/client: re-replication lease lost (meta unreachable): not recording the copies")
	}
	return nil
}

// release stops the keep-alive and revokes the lease, which deletes the
// announcements (expiry does it if the revoke fails).
func (cl *replicaClaim) release() {
	cl.cancel()
	<-cl.done
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = cl.c.store.KV.Revoke(ctx, cl.lease)
}

// copyFragment copies to bookie to every entry of fragment fi of md (its
// entries first..last) whose write set holds the fragment's bookie at
// index j, read from the other members of the write set that lost does
// not report; it returns once the copies are synced (or one failed).
func (c *Client) copyFragment(ctx context.Context, md *ledger.Metadata, fi, j int, first, last int64, to string, lost func(string) bool) (int, error) {
	if last < first {
		return 0, nil
	}
	cc, err := c.bookie(to)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		addErr error
	)
	st, err := cc.AddStream(ctx, func(r bookierpc.AddResult) {
		if r.Err != nil {
			mu.Lock()
			addErr = errors.Join(addErr, fmt.Errorf("entry %d: %w", r.Entry, r.Err))
			mu.Unlock()
		}
		wg.Done()
	})
	if err != nil {
		return 0, err
	}
	defer st.Close()
	copied := 0
	add := func(e int64, p []byte) error {
		wg.Add(1)
		if err := st.Add(bookierpc.Add{Ledger: md.ID, Entry: uint64(e), LAC: last, Payload: p, Recovery: true}); err != nil {
			wg.Done()
			return err
		}
		copied++
		return nil
	}
	ens := md.Fragments[fi].Bookies
	E, Qw := int64(md.Ensemble), md.WriteQuorum
	var copyErr error
	// The entries whose write set holds index j are those of the Qw residue
	// classes e mod E = j−k (k < Qw: j is the k-th of the set); each class
	// is read with a strided range read from a member of its write set.
	for k := range Qw {
		res := ((int64(j)-int64(k))%E + E) % E
		from := first + ((res-first%E)%E+E)%E
		var srcs []string
		for m := range Qw {
			if s := ens[(res+int64(m))%E]; m != k && !lost(s) {
				srcs = append(srcs, s)
			}
		}
		got := func(e int64, p []byte) {
			if e == from && copyErr == nil {
				if copyErr = add(e, p); copyErr == nil {
					from += E
				}
			}
		}
		for from <= last && copyErr == nil {
			for _, s := range srcs {
				for from <= last && copyErr == nil {
					before := from
					_ = c.readRange(ctx, s, md.ID, from, min(last, from+E*(rereplicateChunk-1)), E, got)
					if from == before {
						break // a hole or an error here: the next source
					}
				}
			}
			if from > last || copyErr != nil {
				break
			}
			// No source's range read passes this entry (holes where
			// another holds it, streams cut): read it alone.
			var p []byte
			for _, s := range srcs {
				if b, err := c.readEntry(ctx, s, md.ID, from, false); err == nil {
					p = b
					break
				}
			}
			if p == nil {
				copyErr = fmt.Errorf("%w: ledger %d entry %d (sources %v)", ErrNoLiveCopy, md.ID, from, srcs)
				break
			}
			if copyErr = add(from, p); copyErr == nil {
				from += E
			}
		}
		if copyErr != nil {
			break
		}
	}
	wg.Wait()
	return copied, errors.Join(copyErr, addErr)
}

// rereplicateChunk is how many entries one range read of a copy asks
// for: a range read is bounded as a whole by Options.RequestTimeout.
const rereplicateChunk = 4096

// Auditor finds ledgers that keep copies on lost bookies and re-replicates
// them (Rereplicate). A bookie is lost once the directory
// has not listed it as live for Grace, measured from the first Check that
// missed it. Every node has an auditor, but Run audits only while it holds
// schema.KeyAuditor (one auditor at a time, as BookKeeper elects one), so
// that the ledgers are not all listed, and a lost bookie's entries copied,
// once per node. Auditors that run Check at once anyway stay correct: the
// metadata CAS makes each ledger's re-replication happen once, and a
// loser's copies are left unreferenced.
type Auditor struct {
	c     *Client
	grace time.Duration
	now   func() time.Time

	mu      sync.Mutex
	missing absences // since the first Check that missed each

	underReplicated prometheus.Gauge
	copied          prometheus.Counter
	rereplicated    prometheus.Counter
	failures        prometheus.Counter
}

// AuditResult is what one Check found and did.
type AuditResult struct {
	Ledgers         int      // ledgers in meta
	UnderReplicated int      // ledgers that name a bookie missing from the directory
	Lost            []string // bookies missing for Grace or longer
	Rereplicated    int      // ledgers whose lost copies this auditor restored (its CAS changed the metadata)
	Entries         int      // entries copied for those ledgers
	Waiting         int      // ledgers naming a lost bookie where Rereplicate may not replace it (an open ledger's last fragment, a ledger in recovery)
}

// NewAuditor returns an auditor over c that counts a bookie lost after
// grace; reg (may be nil) receives quire_journal_underreplicated_ledgers,
// quire_journal_rereplicated_ledgers_total,
// quire_journal_rereplicated_entries_total and
// quire_journal_rereplication_failures_total.
func (c *Client) NewAuditor(grace time.Duration, reg prometheus.Registerer) *Auditor {
	a := &Auditor{c: c, grace: grace, now: time.Now,
		underReplicated: prometheus.NewGauge(prometheus.GaugeOpts{Name: "quire_journal_underreplicated_ledgers",
			Help: "Ledgers whose metadata names a bookie that is not live, at the last audit."}),
		rereplicated: prometheus.NewCounter(prometheus.CounterOpts{Name: "quire_journal_rereplicated_ledgers_total",
			Help: "Ledgers whose copies on lost bookies this node's auditor restored on others (counted by the node whose metadata change took effect)."}),
		copied: prometheus.NewCounter(prometheus.CounterOpts{Name: "quire_journal_rereplicated_entries_total",
			Help: "Entries copied to replacement bookies by the re-replications counted in quire_journal_rereplicated_ledgers_total."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "quire_journal_rereplication_failures_total",
			Help: "Ledger re-replications that failed (retried at the next audit)."}),
	}
	if reg != nil {
		for _, col := range []prometheus.Collector{a.underReplicated, a.rereplicated, a.copied, a.failures} {
			_ = reg.Register(col)
		}
	}
	return a
}

// Check runs one audit: it lists the live bookies and every ledger, and
// re-replicates the ledgers that name a lost bookie in a final fragment. Errors of
// single ledgers are joined into the error; the others go on.
func (a *Auditor) Check(ctx context.Context) (AuditResult, error) {
	var res AuditResult
	live, err := a.c.live(ctx)
	if err != nil {
		return res, err
	}
	isLive := map[string]bool{}
	for _, b := range live {
		isLive[b.ID] = true
	}
	recs, _, err := schema.List[schema.Ledger](ctx, a.c.store.KV, schema.PrefixLedgers, false)
	if err != nil {
		return res, err
	}
	res.Ledgers = len(recs)
	var named []string // bookies named by a ledger and not live
	for _, r := range recs {
		for _, f := range r.Value.Fragments {
			for _, b := range f.Bookies {
				if !isLive[b] && !slices.Contains(named, b) {
					named = append(named, b)
				}
			}
		}
	}
	a.mu.Lock()
	res.Lost = a.missing.observe(named, a.now(), a.grace)
	a.mu.Unlock()
	lost := func(b string) bool { return slices.Contains(res.Lost, b) }
	var errs []error
	// One claim announces the pass's copies (its lease revoked at the
	// end), not a lease, a keep-alive and a revoke per ledger.
	var claim *replicaClaim
	var claimErr error
	defer func() {
		if claim != nil {
			claim.release()
		}
	}()
	notLive := func(b string) bool { return !isLive[b] }
	for _, r := range recs {
		md := ToMetadata(r)
		if !names(md.Fragments, notLive) {
			continue
		}
		res.UnderReplicated++
		final := finalFragments(&md)
		if names(md.Fragments[final:], lost) {
			res.Waiting++ // the writer's fragment (its ensemble change, or recovery), or a ledger in recovery
		}
		if !names(md.Fragments[:final], lost) {
			continue
		}
		if claimErr != nil {
			continue // meta unreachable: the next audit tries again
		}
		if claim == nil || claim.ctx.Err() != nil { // none yet, or its lease was lost
			if claim != nil {
				claim.release()
			}
			if claim, claimErr = a.c.claimReplicas(ctx); claimErr != nil {
				a.failures.Inc()
				errs = append(errs, claimErr)
				continue
			}
		}
		r, err := a.c.rereplicate(ctx, md.ID, lost, live, claim) // the live bookies listed once per audit
		if err != nil {
			if errors.Is(err, ErrNoSuchLedger) {
				continue // deleted meanwhile
			}
			a.failures.Inc()
			errs = append(errs, err)
			continue
		}
		if !r.changed {
			continue // another node's auditor got there first
		}
		res.Rereplicated++
		res.Entries += r.restored
		a.rereplicated.Inc()
		a.copied.Add(float64(r.restored))
	}
	a.underReplicated.Set(float64(res.UnderReplicated - res.Rereplicated))
	return res, errors.Join(errs...)
}

// Run calls Check every interval until ctx ends, logging what it did,
// while it holds schema.KeyAuditor (taken under a lease of a few
// intervals, and released when ctx ends); owner (the node's id) is the
// key's value, for operators.
func (a *Auditor) Run(ctx context.Context, every time.Duration, owner string) {
	t := time.NewTicker(every)
	defer t.Stop()
	var el election
	defer el.resign(a.c.store.KV)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !el.lead(ctx, a.c.store.KV, max(3*every, 10*time.Second), owner) {
			a.mu.Lock()
			clear(a.missing) // should this node lead later, its grace starts then
			a.mu.Unlock()
			continue
		}
		res, err := a.Check(ctx)
		if err != nil && ctx.Err() == nil {
			a.c.log.Warn("journal/client: audit: re-replication failed", "err", err, "lost", res.Lost)
		}
		if res.Rereplicated > 0 || res.Waiting > 0 {
			a.c.log.Info("journal/client: audit", "ledgers", res.Ledgers, "under_replicated", res.UnderReplicated,
				"lost", res.Lost, "rereplicated", res.Rereplicated, "entries", res.Entries, "waiting_open", res.Waiting)
		}
	}
}

// election holds schema.KeyAuditor for one auditor.
type election struct {
	lease meta.LeaseID // kept alive while held or tried for
}

// lead reports whether el holds the key after one turn: it keeps its
// lease alive, and holds the key if the key is attached to that lease or,
// absent, can be put under it (a holder's key goes with its lease, ttl
// after its node stopped renewing it). The key is read rather than
// remembered, so that a put of unknown outcome that took effect is found.
func (el *election) lead(ctx context.Context, kv meta.KV, ttl time.Duration, owner string) bool {
	if el.lease != 0 {
		if _, err := kv.KeepAlive(ctx, el.lease); err != nil {
			if !errors.Is(err, meta.ErrLeaseNotFound) {
				return false // meta unreachable: no audit this turn
			}
			el.lease = 0
		}
	}
	if el.lease != 0 {
		cur, err := kv.Get(ctx, schema.KeyAuditor)
		switch {
		case err == nil:
			return cur.Lease == el.lease
		case !errors.Is(err, meta.ErrNotFound):
			return false
		}
	} else {
		lease, err := kv.Grant(ctx, ttl)
		if err != nil {
			return false
		}
		el.lease = lease
	}
	_, err := kv.Put(ctx, schema.KeyAuditor, []byte(owner), meta.IfVersion(0), meta.WithLease(el.lease))
	return err == nil
}

// resign revokes el's lease, which deletes the key if it held it: another
// node's auditor takes over at its next turn instead of after the TTL.
func (el *election) resign(kv meta.KV) {
	if el.lease == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = kv.Revoke(ctx, el.lease)
}

// absences remembers since when each bookie has been missing from the
// live list: the Auditor's grace period, a writer's ReplaceMissingAfter.
type absences map[string]time.Time

// observe records that the bookies of missing are absent at now, forgets
// every other one (live again, or no longer named), and returns, sorted,
// those absent for d or longer.
func (a *absences) observe(missing []string, now time.Time, d time.Duration) []string {
	if *a == nil {
		*a = absences{}
	}
	for b := range *a {
		if !slices.Contains(missing, b) {
			delete(*a, b)
		}
	}
	var long []string
	for _, b := range missing {
		since, ok := (*a)[b]
		if !ok {
			since = now
			(*a)[b] = now
		}
		if now.Sub(since) >= d {
			long = append(long, b)
		}
	}
	slices.Sort(long)
	return long
}
