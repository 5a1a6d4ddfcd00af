package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quiremq/quire/journal/ledger"
)

// LedgerReader reads a ledger without fencing it: entries in order up to
// the LAC of an open ledger (tailing it by polling the LAC of the last
// fragment's bookies and re-reading the metadata, so a close ends the
// tail) or to the last entry of a closed one. It is not safe for
// concurrent use.
//
// It reads in two ways. A backlog — the entries of a closed ledger, or at
// least RangeMinEntries entries up to an open ledger's LAC — is read with
// range reads (see rangeFetch): chunks of entries fetched ahead with
// ReadEntries streams, every bookie of the ensemble serving the entries
// whose write set it heads. The entries past the backlog, a tail that
// grows a few entries at a time, are read with the ledger.Reader state
// machine, one ReadEntry per entry, run inside Next.
type LedgerReader struct {
	c      *Client
	id     uint64
	md     ledger.Metadata
	m      *ledger.Reader // nil while rng reads a backlog
	gen    int            // the machine's generation: answers to an older one are dropped
	rng    *rangeFetch
	box    *mailbox[revent]
	ctx    context.Context
	cancel context.CancelFunc
	ready  []ledger.Deliver
	ticks  int
	mdBusy bool
	lac    int64
	stats  readerStats
}

type revent interface{}

type (
	rRead struct {
		gen    int
		bookie string
		entry  int64
		st     ledger.Status
		data   []byte
	}
	rLAC struct {
		gen    int
		bookie string
		st     ledger.Status
		lac    int64
	}
	rMeta struct {
		md  ledger.Metadata
		err error
	}
)

// ReaderWindow is how many entries a reader reads ahead, one ReadEntry
// each, while it tails.
const ReaderWindow = 64

// RangeMinEntries is the backlog of an open ledger (entries up to the LAC
// not yet read) from which a reader reads with range reads instead of
// entry by entry.
const RangeMinEntries = 2 * ReaderWindow

// OpenForRead opens ledger id for reading from entry from on, without
// fencing it: an open ledger keeps its writer.
func (c *Client) OpenForRead(ctx context.Context, id uint64, from int64) (*LedgerReader, error) {
	md, err := c.Metadata(ctx, id)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	r := &LedgerReader{c: c, id: id, md: md, box: newMailbox[revent](), ctx: rctx, cancel: cancel, lac: -1}
	if md.State == ledger.StateClosed && from <= md.LastEntry {
		r.rng = newRangeFetch(r, from, md.LastEntry)
		return r, nil
	}
	r.startMachine(from)
	if md.State != ledger.StateClosed {
		r.exec(r.m.Tick()) // learn the LAC now rather than a tick later
	}
	return r, nil
}

// startMachine reads on from entry from with the state machine.
func (r *LedgerReader) startMachine(from int64) {
	r.gen++
	m, effs := ledger.NewReader(r.md, from, r.lac, ReaderWindow)
	r.m = m
	r.exec(effs)
}

// maybeRange switches to range reads when the machine has delivered
// everything it holds and at least RangeMinEntries entries up to the LAC
// (or the last entry) are waiting.
func (r *LedgerReader) maybeRange() {
	if r.m == nil || len(r.ready) > 0 {
		return
	}
	next, last := r.m.Next(), ledger.Readable(&r.md, r.lac)
	if last-next+1 < RangeMinEntries && !(r.md.State == ledger.StateClosed && next <= last) {
		return
	}
	r.m = nil
	r.gen++ // the machine's reads in flight are dropped when they answer
	r.rng = newRangeFetch(r, next, last)
}

// Metadata returns the metadata the reader holds.
func (r *LedgerReader) Metadata() ledger.Metadata { return r.md.Clone() }

// LAC returns the highest LAC the reader has learnt (−1: none).
func (r *LedgerReader) LAC() int64 { return r.lac }

// Close cancels the reads in flight.
func (r *LedgerReader) Close() error { r.cancel(); return nil }

// done reports whether a closed ledger has been read to its end.
func (r *LedgerReader) done() bool {
	return r.m != nil && r.m.Done()
}

// Next returns the next entry in order. It waits for the writer (tails)
// while the ledger is open, and returns io.EOF after the last entry of a
// closed ledger.
func (r *LedgerReader) Next(ctx context.Context) (int64, []byte, error) {
	if r.rng != nil {
		e, data, ok, err := r.rng.next(ctx)
		if err != nil || ok {
			return e, data, err
		}
		// The backlog is read: on from the entry after it.
		next := r.rng.last + 1
		r.rng = nil
		r.startMachine(next)
	}
	tick := time.NewTicker(r.c.opts.TickInterval)
	defer tick.Stop()
	var evs []revent
	for {
		if len(r.ready) > 0 {
			d := r.ready[0]
			r.ready = r.ready[1:]
			return d.Entry, d.Data, nil
		}
		if r.done() {
			return -1, nil, io.EOF
		}
		if r.maybeRange(); r.rng != nil {
			return r.Next(ctx)
		}
		select {
		case <-ctx.Done():
			return -1, nil, ctx.Err()
		case <-r.ctx.Done():
			return -1, nil, ErrClosed
		case <-tick.C:
			r.exec(r.m.Tick())
			r.ticks++
			if r.md.State != ledger.StateClosed && !r.mdBusy && r.ticks%10 == 0 {
				r.mdBusy = true
				go func() {
					md, err := r.c.Metadata(r.ctx, r.id)
					r.box.push(rMeta{md: md, err: err})
				}()
			}
		case <-r.box.notify:
		}
		evs = r.box.take(evs)
		for _, ev := range evs {
			switch ev := ev.(type) {
			case rRead:
				if ev.gen == r.gen {
					r.exec(r.m.ReadResult(ev.bookie, ev.entry, ev.st, ev.data))
				}
			case rLAC:
				if ev.st == ledger.StatusOK && ev.lac > r.lac {
					r.lac = ev.lac
				}
				if ev.gen == r.gen {
					r.exec(r.m.LACResult(ev.bookie, ev.st, ev.lac))
				}
			case rMeta:
				r.mdBusy = false
				if ev.err == nil && ev.md.Version != r.md.Version {
					r.md = ev.md
					r.exec(r.m.SetMetadata(ev.md))
				}
			}
		}
		clear(evs)
	}
}

func (r *LedgerReader) exec(effs []ledger.Effect) {
	gen := r.gen
	for _, eff := range effs {
		switch e := eff.(type) {
		case ledger.ReadEntry:
			go func() {
				data, err := r.c.readEntry(r.ctx, e.Bookie, r.id, e.Entry, false)
				r.box.push(rRead{gen: gen, bookie: e.Bookie, entry: e.Entry, st: statusOf(err), data: data})
			}()
		case ledger.ReadLAC:
			go func() {
				lac, err := r.c.readLAC(r.ctx, e.Bookie, r.id, false)
				r.box.push(rLAC{gen: gen, bookie: e.Bookie, st: statusOf(err), lac: lac})
			}()
		case ledger.Deliver:
			r.ready = append(r.ready, e)
		default:
			panic(fmt.Sprintf("journal/client: reader: unexpected effect %v", eff))
		}
	}
}

// ReadEntry reads one entry of ledger id (any entry a bookie of its
// write set returns; the caller bounds it by the LAC or last entry).
func (c *Client) ReadEntry(ctx context.Context, id uint64, entry int64) ([]byte, error) {
	md, err := c.Metadata(ctx, id)
	if err != nil {
		return nil, err
	}
	return c.ReadLedgerEntry(ctx, &md, entry)
}

func (c *Client) readEntry(ctx context.Context, bookie string, id uint64, entry int64, fence bool) ([]byte, error) {
	cc, err := c.bookie(bookie)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	defer cancel()
	return cc.ReadEntry(ctx, id, uint64(entry), fence)
}

func (c *Client) readLAC(ctx context.Context, bookie string, id uint64, fence bool) (int64, error) {
	cc, err := c.bookie(bookie)
	if err != nil {
		return -1, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	defer cancel()
	return cc.ReadLAC(ctx, id, fence)
}

// Range reads. A rangeFetch reads entries [first, last] of a ledger —
// entries known to be there: up to the LAC, or a closed ledger's last —
// in chunks of about rangeChunkBytes, up to rangeAhead chunks ahead of
// the reader. A chunk lies in one fragment; it is read by E concurrent
// ReadEntries streams, one per residue class e mod E, each asking the
// bookie that heads that class's write set (the entries whose copy it
// holds first) for every E-th entry, so every bookie of the ensemble
// serves its share with sequential reads of its entry logs.
//
// Where a stream stops — an explicit NO_SUCH_ENTRY at an entry, an error,
// a timeout — that entry is read on its own from the other bookies of its
// write set (ReadEntry, as the state machine would), then the stream
// resumes after it: from the same bookie after a hole, from the next of
// the write set after an error. An entry every bookie failed to return is
// retried after a tick, never skipped: up to the LAC it must exist, and a
// timeout is never taken for a negative.
const (
	rangeChunkBytes = 2 << 20
	rangeAhead      = 3
	rangeMaxChunk   = 16384 // entries
)

type rangeFetch struct {
	c      *Client
	md     ledger.Metadata
	first  int64
	last   int64
	ctx    context.Context // ends with the reader
	chunks chan *rangeChunk
	cur    *rangeChunk
	pos    int64 // next entry of cur to return
	// Bytes and entries of the chunks read so far: the entry size that
	// sizes the next chunks.
	readBytes, readEntries atomic.Int64
	stats                  *readerStats
}

// readerStats count how a reader's entries were read (tests).
type readerStats struct {
	rangeEntries atomic.Int64 // by ReadEntries streams
	entryReads   atomic.Int64 // one by one where a stream stopped
	ranges       atomic.Int64 // backlogs read with range reads
}

type rangeChunk struct {
	first, last int64
	data        [][]byte // entry first+i
	done        chan struct{}
	err         error // only when the reader was closed
}

func newRangeFetch(r *LedgerReader, first, last int64) *rangeFetch {
	f := &rangeFetch{c: r.c, md: r.md.Clone(), first: first, last: last, ctx: r.ctx, chunks: make(chan *rangeChunk, rangeAhead-1), stats: &r.stats}
	r.stats.ranges.Add(1)
	go f.produce()
	return f
}

// next returns the next entry of the range; ok is false once the range
// has been returned entirely.
func (f *rangeFetch) next(ctx context.Context) (e int64, data []byte, ok bool, err error) {
	for {
		if f.cur != nil {
			select {
			case <-f.cur.done:
			case <-ctx.Done():
				return -1, nil, false, ctx.Err()
			}
			if f.cur.err != nil {
				return -1, nil, false, f.cur.err
			}
			if f.pos <= f.cur.last {
				i := f.pos - f.cur.first
				data, f.cur.data[i] = f.cur.data[i], nil
				f.pos++
				return f.pos - 1, data, true, nil
			}
			f.cur = nil
		}
		select {
		case ch, open := <-f.chunks:
			if !open {
				if f.ctx.Err() != nil {
					return -1, nil, false, ErrClosed
				}
				return -1, nil, false, nil
			}
			f.cur, f.pos = ch, ch.first
		case <-ctx.Done():
			return -1, nil, false, ctx.Err()
		}
	}
}

// produce cuts the range into chunks and starts reading each, at most
// rangeAhead ahead of next.
func (f *rangeFetch) produce() {
	defer close(f.chunks)
	for start := f.first; start <= f.last; {
		// Until a chunk has been read the entry size is unknown (up to
		// 64 MiB): one entry per bookie.
		n := int64(f.md.Ensemble)
		if be, en := f.readBytes.Load(), f.readEntries.Load(); en > 0 && be > 0 {
			n = min(max(rangeChunkBytes*en/be, int64(f.md.Ensemble)), rangeMaxChunk)
		}
		end := min(start+n-1, f.last)
		if fr := f.md.FragmentOf(start); fr+1 < len(f.md.Fragments) {
			end = min(end, f.md.Fragments[fr+1].FirstEntry-1)
		}
		ch := &rangeChunk{first: start, last: end, data: make([][]byte, end-start+1), done: make(chan struct{})}
		go f.fetch(ch)
		select {
		case f.chunks <- ch:
		case <-f.ctx.Done():
			return
		}
		start = end + 1
	}
}

// fetch reads a chunk: one stream per residue class of the ensemble.
func (f *rangeFetch) fetch(ch *rangeChunk) {
	defer close(ch.done)
	stride := int64(f.md.Ensemble)
	var wg sync.WaitGroup
	errs := make([]error, min(stride, ch.last-ch.first+1))
	for k := range errs {
		wg.Go(func() { errs[k] = f.fetchClass(ch, ch.first+int64(k), stride) })
	}
	wg.Wait()
	if ch.err = errors.Join(errs...); ch.err == nil {
		var bytes int64
		for _, d := range ch.data {
			bytes += int64(len(d))
		}
		f.readBytes.Add(bytes)
		f.readEntries.Add(int64(len(ch.data)))
	}
}

// fetchClass reads the entries pos, pos+stride, ... up to ch.last, which
// share one write set. It returns only once they are all read, or with
// ErrClosed when the reader is closed.
func (f *rangeFetch) fetchClass(ch *rangeChunk, pos, stride int64) error {
	ws := f.md.WriteSetOf(pos)
	for i := 0; ; i++ {
		b := ws[i%len(ws)] // after a stop, the next bookie of the write set
		err := f.c.readRange(f.ctx, b, f.md.ID, pos, ch.last, stride, func(e int64, p []byte) {
			ch.data[e-ch.first] = p
			pos = e + stride
			f.stats.rangeEntries.Add(1)
		})
		if f.ctx.Err() != nil {
			return ErrClosed
		}
		if err == nil || pos > ch.last {
			return nil
		}
		// The stream stopped at pos: a hole in b's copy (an explicit
		// negative), a failure or no answer. Read that entry on its own
		// from the write set, b last, then stream the rest from the next
		// bookie.
		got := false
		for _, ob := range ledger.ReadOrder(&f.md, pos, func(x ledger.BookieID) bool { return x == b }) {
			if data, err := f.c.readEntry(f.ctx, ob, f.md.ID, pos, false); err == nil {
				ch.data[pos-ch.first] = data
				pos += stride
				got = true
				f.stats.entryReads.Add(1)
				break
			}
		}
		if pos > ch.last {
			return nil
		}
		if !got {
			// No bookie returned it. It is there (up to the LAC it must
			// be); try again after a tick.
			select {
			case <-f.ctx.Done():
				return ErrClosed
			case <-time.After(f.c.opts.TickInterval):
			}
		}
	}
}

// readRange runs one ReadEntries stream, bounded as a whole by
// RequestTimeout (a chunk is small enough to read well within it).
func (c *Client) readRange(ctx context.Context, bookie string, id uint64, first, last, stride int64, fn func(int64, []byte)) error {
	cc, err := c.bookie(bookie)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	defer cancel()
	return cc.ReadEntries(ctx, id, uint64(first), uint64(last), uint64(stride), func(e uint64, p []byte) error {
		fn(int64(e), p)
		return nil
	})
}
