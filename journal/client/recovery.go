package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/quiremq/quire/journal/bookie/bookierpc"
	"github.com/quiremq/quire/journal/ledger"
	"github.com/quiremq/quire/meta"
)

// Recover closes ledger id after its writer is gone (or to take it over):
// it runs the ledger.Recovery state machine — CAS IN_RECOVERY, fence the
// last fragment's bookies, read with fence from max(highest LAC, first
// entry of the last fragment − 1) + 1, write recovered entries back to Qa
// bookies (replacing a bookie that fails a write-back by a live one on
// another node, the new fragment written with the close), CAS CLOSED —
// and returns the ledger's last entry. A closed
// ledger returns its last entry at once. When the recovery aborts (an
// unknown answer where a negative was needed, too few bookies) it returns
// an error matching ErrRecoveryAborted; nothing unsafe was done and
// Recover may be called again.
func (c *Client) Recover(ctx context.Context, id uint64) (int64, error) {
	rec, err := c.store.Ledger(ctx, id)
	if errors.Is(err, meta.ErrNotFound) {
		return -1, fmt.Errorf("%w: %d", ErrNoSuchLedger, id)
	}
	if err != nil {
		return -1, err
	}
	md := ToMetadata(rec)
	// Bookies that may replace one that fails a write-back (without the
	// directory, recovery goes on without: a write-back that cannot reach
	// Qa then aborts).
	var avail []string
	if live, err := c.live(ctx); err == nil {
		avail = c.healthyFirst(replacements(live, md.Fragments[len(md.Fragments)-1].Bookies, ""))
	}
	m, effs, err := ledger.NewRecovery(md, ledger.RecoveryOptions{ReadAhead: 16, Available: avail})
	if err != nil {
		return -1, err
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rv := &recovery{c: c, id: id, createdAt: rec.Value.CreatedAt, m: m, ctx: rctx,
		box: newMailbox[revent](), links: map[string]*link{}}
	defer func() {
		for _, l := range rv.links {
			l.abort()
		}
	}()
	rv.exec(effs)
	tick := time.NewTicker(c.opts.TickInterval)
	defer tick.Stop()
	var evs []revent
	var results []linkResult
	for rv.outcome == nil {
		select {
		case <-ctx.Done():
			return -1, ctx.Err()
		case <-tick.C:
			now := time.Now()
			for b, l := range rv.links {
				if l.stuck(now, c.opts.AddTimeout) {
					l.abort() // its adds come back failed: unknown
					delete(rv.links, b)
				}
			}
			continue
		case <-rv.box.notify:
		}
		evs = rv.box.take(evs)
		for _, ev := range evs {
			if rv.outcome != nil {
				break
			}
			switch ev := ev.(type) {
			case rRead:
				rv.exec(m.ReadResult(ev.bookie, ev.entry, ev.st, ev.data))
			case rLAC:
				rv.exec(m.LACResult(ev.bookie, ev.st, ev.lac))
			case evLink:
				results = ev.l.take(results)
				l := rv.links[ev.l.bookie] // recovery never drops a link in this loop
				for _, r := range results {
					if l != nil {
						l.answered(time.Now())
					}
					c.quarantineOnFailure(ev.l.bookie, r.err)
					rv.exec(m.AddResult(ev.l.bookie, r.entry, statusOf(r.err)))
				}
				clear(results)
			case evCAS:
				rv.exec(m.CASDone(ev.res))
			case error:
				return -1, ev
			}
		}
		clear(evs)
	}
	switch o := rv.outcome.(type) {
	case ledger.Recovered:
		c.log.Info("journal/client: ledger recovered", "ledger", id, "last_entry", o.LastEntry)
		return o.LastEntry, nil
	case ledger.Aborted:
		return -1, fmt.Errorf("%w: ledger %d: %s", ErrRecoveryAborted, id, o.Reason)
	}
	panic("unreachable")
}

// OpenForRecovery recovers ledger id (Recover) and opens the closed
// ledger for reading from entry 0.
func (c *Client) OpenForRecovery(ctx context.Context, id uint64) (*LedgerReader, error) {
	if _, err := c.Recover(ctx, id); err != nil {
		return nil, err
	}
	return c.OpenForRead(ctx, id, 0)
}

type recovery struct {
	c         *Client
	id        uint64
	createdAt time.Time
	m         *ledger.Recovery
	ctx       context.Context
	box       *mailbox[revent]
	links     map[string]*link
	outcome   ledger.Effect
}

func (rv *recovery) exec(effs []ledger.Effect) {
	for _, eff := range effs {
		switch e := eff.(type) {
		case ledger.CASMetadata:
			go func() {
				res, err := rv.c.cas(rv.ctx, e, rv.createdAt)
				if err != nil {
					rv.box.push(err)
					return
				}
				rv.box.push(evCAS{res: res})
			}()
		case ledger.ReadLAC:
			go func() {
				lac, err := rv.c.readLAC(rv.ctx, e.Bookie, rv.id, e.Fence)
				rv.box.push(rLAC{bookie: e.Bookie, st: statusOf(err), lac: lac})
			}()
		case ledger.ReadEntry:
			go func() {
				data, err := rv.c.readEntry(rv.ctx, e.Bookie, rv.id, e.Entry, e.Fence)
				rv.box.push(rRead{bookie: e.Bookie, entry: e.Entry, st: statusOf(err), data: data})
			}()
		case ledger.SendAdd:
			l := rv.links[e.Bookie]
			if l == nil {
				l = newLink(rv.c, e.Bookie, func(l *link) { rv.box.push(evLink{l}) })
				rv.links[e.Bookie] = l
			}
			l.send(bookierpc.Add{Ledger: rv.id, Entry: uint64(e.Entry), LAC: e.LAC, Payload: e.Data, Recovery: true}, time.Now())
		case ledger.Recovered, ledger.Aborted:
			rv.outcome = e
		default:
			panic(fmt.Sprintf("journal/client: recovery: unexpected effect %v", eff))
		}
	}
}
