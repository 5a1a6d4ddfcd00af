package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quiremq/quire/journal/bookie/bookierpc"
	"github.com/quiremq/quire/journal/ledger"
	"github.com/quiremq/quire/meta/schema"
)

// ErrAbandoned fails the appends still pending when a writer is
// abandoned. Like ErrFenced it is ambiguous: a recovery may keep them.
var ErrAbandoned = errors.New("journal/client: writer abandoned")

// Future is the outcome of one AppendAsync.
type Future struct {
	done  chan struct{}
	entry int64
	err   error
	data  []byte // the append's data until the loop takes it (evAdd)
	crc   uint32 // CRC-32C of the data: once per entry, not per copy
	trace trace  // appended set by AppendAsync, the rest by the loop
}

// Trace returns when the append passed each stage on its way through the
// client (AddTrace); valid once Done is closed.
func (f *Future) Trace() AddTrace {
	<-f.done
	return f.trace.export()
}

// Done is closed once the append is acknowledged or failed.
func (f *Future) Done() <-chan struct{} { return f.done }

// Result returns the entry id and nil once the entry is acknowledged (on
// Qa bookies, with every lower entry), or the error it failed with (an
// ambiguous outcome: ErrFenced, ErrAbandoned, ledger.ErrStopped). It
// blocks until Done.
func (f *Future) Result() (int64, error) {
	<-f.done
	return f.entry, f.err
}

// Wait is Result bounded by ctx.
func (f *Future) Wait(ctx context.Context) (int64, error) {
	select {
	case <-f.done:
		return f.entry, f.err
	case <-ctx.Done():
		return -1, ctx.Err()
	}
}

// LedgerWriter appends to a ledger this client created. Appends are
// pipelined: any number up to Options.MaxInflight are in flight at once,
// and they are acknowledged in entry order. One goroutine (the event
// loop) runs the ledger.Writer state machine; Append and AppendAsync hand
// it entries, per-bookie links hand it answers, a ticker drives explicit
// LACs and add timeouts, and CAS goroutines hand it metadata outcomes.
// Safe for concurrent use; entries of concurrent appends are ordered as
// the loop receives them.
type LedgerWriter struct {
	c         *Client
	id        uint64
	createdAt time.Time
	box       *mailbox[wevent]
	sem       chan struct{}
	ctx       context.Context // ends when the loop ends
	cancel    context.CancelFunc
	exited    chan struct{}
	lac       atomic.Int64

	// Loop-owned.
	m          *ledger.Writer
	links      map[string]*link
	futs       []*Future // futures of entries lac+1 .., in entry order
	base       int64     // entry of futs[0]
	live       []BookieInfo
	missing    absences  // ensemble bookies the live list missed (Options.ReplaceMissingAfter)
	stalled    time.Time // since when the machine lacks a replacement
	refreshing bool
	ticks      int
	stopErr    error
	closers    []chan error
	done       bool
	results    []linkResult // reused by take
	qa         int32        // the ack quorum, for traces
	stages     *stageMetrics

	endOnce sync.Once
	endErr  error // why the loop ended (nil after Close)
}

type wevent interface{}

type (
	// evAdd carries the data in the Future: one pointer, so putting it
	// in the mailbox's interface does not allocate.
	evAdd struct{ fut *Future }
	// evLink: the link has answers queued (link.take).
	evLink    struct{ l *link }
	evCAS     struct{ res ledger.CASResult }
	evClose   struct{ reply chan error }
	evAbandon struct{ reply chan struct{} }
	evLive    struct {
		live []BookieInfo
		err  error
	}
)

func (c *Client) newWriter(rec schema.Record[schema.Ledger], live []BookieInfo) (*LedgerWriter, error) {
	md := ToMetadata(rec)
	ens := md.Fragments[len(md.Fragments)-1].Bookies
	m, err := ledger.NewWriter(md, c.healthyFirst(replacements(live, ens, "")))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &LedgerWriter{c: c, id: md.ID, createdAt: rec.Value.CreatedAt, box: newMailbox[wevent](),
		sem: make(chan struct{}, c.opts.MaxInflight), ctx: ctx, cancel: cancel, exited: make(chan struct{}),
		m: m, links: map[string]*link{}, live: live, qa: int32(md.AckQuorum), stages: c.stages}
	w.lac.Store(-1)
	go w.loop()
	return w, nil
}

// ID returns the ledger id.
func (w *LedgerWriter) ID() uint64 { return w.id }

// LAC returns the last add confirmed: every entry up to it is acknowledged.
func (w *LedgerWriter) LAC() int64 { return w.lac.Load() }

// Append appends data as the next entry and waits until it is
// acknowledged. The writer owns data from the call on (it is resent on
// ensemble changes): do not modify it.
func (w *LedgerWriter) Append(ctx context.Context, data []byte) (int64, error) {
	f, err := w.AppendAsync(ctx, data)
	if err != nil {
		return -1, err
	}
	return f.Wait(ctx)
}

// AppendAsync queues data as the next entry and returns its Future. It
// blocks only while MaxInflight appends are unacknowledged. The writer
// owns data from the call on.
func (w *LedgerWriter) AppendAsync(ctx context.Context, data []byte) (*Future, error) {
	select {
	case w.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-w.exited:
		return nil, w.exitErr()
	}
	f := &Future{done: make(chan struct{}), entry: -1, data: data, crc: bookierpc.CRC32C(data), trace: trace{appended: nanotime()}}
	if !w.box.push(evAdd{f}) {
		<-w.sem
		return nil, w.exitErr()
	}
	return f, nil
}

func (w *LedgerWriter) exitErr() error {
	if w.endErr != nil {
		return w.endErr
	}
	return ErrClosed
}

// Close waits for every pending append, then closes the ledger in meta
// (state CLOSED, last entry = LAC) and ends the writer. It returns the
// error the writer stopped with if it could not close (ErrFenced when the
// ledger was recovered by someone else).
func (w *LedgerWriter) Close(ctx context.Context) error {
	reply := make(chan error, 1)
	if !w.box.push(evClose{reply: reply}) {
		return w.exitErr()
	}
	select {
	case err := <-reply:
		return err
	case <-w.exited:
		select {
		case err := <-reply: // answered, then the loop ended: select may pick either
			return err
		default:
			return w.exitErr()
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Abandon ends the writer at once without closing the ledger, as a crash
// would: links are cut, pending appends fail with ErrAbandoned (they may
// or may not survive a recovery) and the ledger stays OPEN until someone
// recovers it.
func (w *LedgerWriter) Abandon() {
	w.box.push(evAbandon{reply: make(chan struct{})})
	<-w.exited
}

func (w *LedgerWriter) loop() {
	tick := time.NewTicker(w.c.opts.TickInterval)
	defer tick.Stop()
	var evs []wevent
	for !w.done {
		select {
		case <-w.box.notify:
		case <-tick.C:
			w.tick(time.Now())
		}
		evs = w.box.take(evs)
		now := time.Now()
		for i, ev := range evs {
			evs[i] = nil
			if w.done {
				w.drop(ev)
				continue
			}
			w.handle(ev, now)
		}
	}
	// Fail whatever arrives after the end.
	w.cancel()
	for _, l := range w.links {
		l.abort()
	}
	for _, ev := range w.box.close() {
		w.drop(ev)
	}
	close(w.exited)
}

// drop answers an event that arrived after the loop ended.
func (w *LedgerWriter) drop(ev wevent) {
	switch ev := ev.(type) {
	case evAdd:
		ev.fut.err = w.exitErr()
		close(ev.fut.done)
	case evClose:
		ev.reply <- w.exitErr()
	case evAbandon:
		close(ev.reply)
	}
}

func (w *LedgerWriter) handle(ev wevent, now time.Time) {
	switch ev := ev.(type) {
	case evAdd:
		if w.stopErr != nil {
			w.fail(ev.fut, w.stopErr)
			return
		}
		data := ev.fut.data
		ev.fut.data = nil
		e, effs, err := w.m.Add(data)
		if err != nil {
			w.fail(ev.fut, err)
			return
		}
		if len(w.futs) == 0 {
			w.base = e
		}
		ev.fut.entry = e
		ev.fut.trace.taken = stamp(now)
		w.futs = append(w.futs, ev.fut)
		w.exec(effs, now)
	case evLink:
		b := ev.l.bookie
		w.results = ev.l.take(w.results)
		for _, r := range w.results {
			st := statusOf(r.err)
			if st == ledger.StatusOK {
				w.traceAck(r, now)
			}
			if l := w.links[b]; l != nil {
				l.answered(now)
				if st == ledger.StatusUnknown {
					w.c.quarantineOnFailure(b, r.err)
					w.c.log.Warn("journal/client: add failed, replacing bookie", "ledger", w.id, "bookie", b, "entry", r.entry, "err", r.err)
					l.abort()
					delete(w.links, b)
				}
			}
			w.exec(w.m.AddResult(b, r.entry, st), now)
			if w.done {
				break
			}
		}
		clear(w.results)
	case evCAS:
		w.exec(w.m.CASDone(ev.res), now)
		w.exec(w.setAvailable(), now)
	case evLive:
		w.refreshing = false
		if ev.err != nil {
			return // keep the last list
		}
		w.live = ev.live
		w.exec(w.setAvailable(), now)
		w.replaceMissing(now)
	case evClose:
		if w.stopErr != nil {
			ev.reply <- w.stopErr
			w.finish(w.stopErr)
			return
		}
		effs, err := w.m.Close()
		if err != nil {
			ev.reply <- err
			return
		}
		w.closers = append(w.closers, ev.reply)
		w.exec(effs, now)
	case evAbandon:
		w.stopErr = ErrAbandoned
		w.exec(w.m.Stop(ErrAbandoned), now)
		w.finish(ErrAbandoned)
		close(ev.reply)
	}
}

// traceAck counts an acknowledgement towards its pending entry's ack
// quorum; the one that completes it stamps the entry's trace.
func (w *LedgerWriter) traceAck(r linkResult, now time.Time) {
	i := r.entry - w.base
	if i < 0 || i >= int64(len(w.futs)) || w.futs[i] == nil {
		return
	}
	t := &w.futs[i].trace
	if t.acks++; t.acks == w.qa {
		t.sent, t.answered, t.quorum = r.sent, r.answered, stamp(now)
	}
}

func (w *LedgerWriter) setAvailable() []ledger.Effect {
	md := w.m.Metadata()
	return w.m.SetAvailable(w.c.healthyFirst(replacements(w.live, md.Fragments[len(md.Fragments)-1].Bookies, "")))
}

func (w *LedgerWriter) fail(f *Future, err error) {
	f.err = err
	close(f.done)
	<-w.sem
}

// finish ends the loop: links are closed gracefully after a close (every
// add was answered) and cut otherwise.
func (w *LedgerWriter) finish(err error) {
	w.endOnce.Do(func() { w.endErr = err })
	w.done = true
	for id, l := range w.links {
		if err == nil {
			l.close()
		} else {
			l.abort()
		}
		delete(w.links, id)
	}
}

func (w *LedgerWriter) tick(now time.Time) {
	w.exec(w.m.Tick(), now)
	// No replacement for a failed bookie (every other live one failed
	// this writer before): give up after AddTimeout rather than stall
	// forever; the owner takes over with a new ledger.
	switch {
	case !w.m.Stalled():
		w.stalled = time.Time{}
	case w.stalled.IsZero():
		w.stalled = now
	case now.Sub(w.stalled) > w.c.opts.AddTimeout:
		w.c.log.Warn("journal/client: no bookie to replace a failed one, stopping the writer", "ledger", w.id, "waited", now.Sub(w.stalled))
		w.exec(w.m.Stop(fmt.Errorf("%w: no bookie to replace a failed one within %v", ledger.ErrStopped, w.c.opts.AddTimeout)), now)
	}
	for id, l := range w.links {
		if !l.stuck(now, w.c.opts.AddTimeout) || w.done {
			continue
		}
		// The link redials its bookie on its own; after AddTimeout without
		// an answer the bookie is failed and replaced. When there is no
		// replacement, failing it would only stall the writer: the link
		// keeps reconnecting for another AddTimeout instead (a bookie that
		// restarts at the same id kept its data, so what it acks counts),
		// and the writer stops if it neither answered nor became
		// replaceable by then.
		if !w.m.CanReplace() {
			if !l.stuck(now, 2*w.c.opts.AddTimeout) {
				if !l.waiting {
					l.waiting = true
					w.c.log.Warn("journal/client: add timed out and no bookie to replace it, still reconnecting", "ledger", w.id, "bookie", id, "timeout", w.c.opts.AddTimeout)
				}
				continue
			}
			w.c.log.Warn("journal/client: bookie unreachable and no bookie to replace it, stopping the writer", "ledger", w.id, "bookie", id, "waited", 2*w.c.opts.AddTimeout)
			w.exec(w.m.Stop(fmt.Errorf("%w: bookie %s unreachable and no bookie to replace it within %v", ledger.ErrStopped, id, 2*w.c.opts.AddTimeout)), now)
			continue
		}
		w.c.log.Warn("journal/client: add timed out, replacing bookie", "ledger", w.id, "bookie", id, "timeout", w.c.opts.AddTimeout)
		l.abort()
		delete(w.links, id)
		w.exec(w.m.BookieFailed(id), now)
	}
	// Refresh the live bookies about once a second (replacement choices).
	w.ticks++
	if !w.refreshing && w.ticks%max(1, int(time.Second/w.c.opts.TickInterval)) == 0 {
		w.refreshing = true
		go func() {
			ctx, cancel := context.WithTimeout(w.ctx, w.c.opts.RequestTimeout)
			defer cancel()
			live, err := w.c.live(ctx)
			w.box.push(evLive{live: live, err: err})
		}()
	}
}

// replaceMissing fails the bookies of the current ensemble that the live
// list has missed for Options.ReplaceMissingAfter (when one can be
// replaced): the ensemble change ends the fragment that names them, and
// the auditor re-replicates it, as it does a fragment a failed add ended.
func (w *LedgerWriter) replaceMissing(now time.Time) {
	after := w.c.opts.ReplaceMissingAfter
	if after <= 0 || w.done {
		return
	}
	md := w.m.Metadata()
	var gone []string
	for _, b := range md.Fragments[len(md.Fragments)-1].Bookies {
		if !slices.ContainsFunc(w.live, func(i BookieInfo) bool { return i.ID == b }) {
			gone = append(gone, b)
		}
	}
	for _, b := range w.missing.observe(gone, now, after) {
		if !w.m.CanReplace() {
			return
		}
		w.c.log.Warn("journal/client: bookie missing from the live list, replacing it", "ledger", w.id, "bookie", b, "missing_for", now.Sub(w.missing[b]).Round(time.Second))
		if l := w.links[b]; l != nil {
			l.abort()
			delete(w.links, b)
		}
		w.exec(w.m.BookieFailed(b), now)
	}
}

// crcOf returns the CRC-32C of a pending entry's data, computed when it
// was appended, or 0 (computed when sent) for an entry not pending.
func (w *LedgerWriter) crcOf(e int64) uint32 {
	if i := e - w.base; i >= 0 && i < int64(len(w.futs)) && w.futs[i] != nil {
		return w.futs[i].crc
	}
	return 0
}

func (w *LedgerWriter) linkTo(b string) *link {
	l := w.links[b]
	if l == nil {
		l = newLink(w.c, b, func(l *link) { w.box.push(evLink{l}) })
		w.links[b] = l
	}
	return l
}

func (w *LedgerWriter) exec(effs []ledger.Effect, now time.Time) {
	for _, eff := range effs {
		switch e := eff.(type) {
		case ledger.SendAdd:
			w.linkTo(e.Bookie).send(bookierpc.Add{Ledger: w.id, Entry: uint64(e.Entry), LAC: e.LAC, Payload: e.Data,
				CRC32C: w.crcOf(e.Entry), Recovery: e.Recovery}, now)
		case ledger.WriteLAC:
			go func() {
				cc, err := w.c.bookie(e.Bookie)
				if err != nil {
					return
				}
				ctx, cancel := context.WithTimeout(w.ctx, w.c.opts.RequestTimeout)
				defer cancel()
				cc.WriteLAC(ctx, w.id, e.LAC) // best effort
			}()
		case ledger.CASMetadata:
			go func() {
				res, err := w.c.cas(w.ctx, e, w.createdAt)
				if err == nil {
					w.box.push(evCAS{res: res})
				}
			}()
			if e.New.State == ledger.StateOpen {
				w.c.log.Info("journal/client: ensemble change", "ledger", w.id, "metadata", e.New.String())
			}
		case ledger.Acked:
			acked := stamp(now)
			for x := e.From; x <= e.UpTo; x++ {
				f := w.futs[x-w.base]
				w.futs[x-w.base] = nil
				f.trace.acked = acked
				if w.stages != nil && x%stageSample == 0 {
					w.stages.observe(&f.trace)
				}
				close(f.done)
				<-w.sem
			}
			w.futs = w.futs[e.UpTo-w.base+1:]
			w.base = e.UpTo + 1
			w.lac.Store(e.UpTo)
		case ledger.FailAdds:
			for x := e.From; x <= e.To; x++ {
				if i := x - w.base; i >= 0 && i < int64(len(w.futs)) && w.futs[i] != nil {
					w.fail(w.futs[i], e.Err)
					w.futs[i] = nil
				}
			}
			w.futs, w.base = nil, e.To+1
		case ledger.Closed:
			for _, r := range w.closers {
				r <- nil
			}
			w.closers = nil
			w.finish(nil)
		case ledger.Stopped:
			if w.stopErr == nil {
				w.stopErr = e.Err
			}
			for _, r := range w.closers {
				r <- e.Err
			}
			w.closers = nil
			if e.Err != ErrAbandoned {
				w.c.log.Warn("journal/client: writer stopped", "ledger", w.id, "err", e.Err)
			}
			// Links stay until Close/Abandon, which ends the loop.
			for id, l := range w.links {
				l.abort()
				delete(w.links, id)
			}
		default:
			panic(fmt.Sprintf("journal/client: writer: unexpected effect %v", eff))
		}
	}
}
