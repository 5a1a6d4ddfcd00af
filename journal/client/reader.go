package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/quiremq/quire/journal/ledger"
)

// LedgerReader reads a ledger without fencing it: entries in order up to
// the LAC of an open ledger (tailing it by polling the LAC of the last
// fragment's bookies and re-reading the metadata, so a close ends the
// tail) or to the last entry of a closed one. It runs the ledger.Reader
// state machine inside Next; it is not safe for concurrent use.
type LedgerReader struct {
	c      *Client
	id     uint64
	md     ledger.Metadata
	m      *ledger.Reader
	box    *mailbox[revent]
	ctx    context.Context
	cancel context.CancelFunc
	ready  []ledger.Deliver
	ticks  int
	mdBusy bool
	lac    int64
}

type revent interface{}

type (
	rRead struct {
		bookie string
		entry  int64
		st     ledger.Status
		data   []byte
	}
	rLAC struct {
		bookie string
		st     ledger.Status
		lac    int64
	}
	rMeta struct {
		md  ledger.Metadata
		err error
	}
)

// ReaderWindow is how many entries a reader reads ahead.
const ReaderWindow = 64

// OpenForRead opens ledger id for reading from entry from on, without
// fencing it: an open ledger keeps its writer.
func (c *Client) OpenForRead(ctx context.Context, id uint64, from int64) (*LedgerReader, error) {
	md, err := c.Metadata(ctx, id)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	r := &LedgerReader{c: c, id: id, md: md, box: newMailbox[revent](), ctx: rctx, cancel: cancel, lac: -1}
	m, effs := ledger.NewReader(md, from, -1, ReaderWindow)
	r.m = m
	r.exec(effs)
	if md.State != ledger.StateClosed {
		r.exec(m.Tick()) // learn the LAC now rather than a tick later
	}
	return r, nil
}

// Metadata returns the metadata the reader holds.
func (r *LedgerReader) Metadata() ledger.Metadata { return r.md.Clone() }

// LAC returns the highest LAC the reader has learnt (−1: none).
func (r *LedgerReader) LAC() int64 { return r.lac }

// Close cancels the reads in flight.
func (r *LedgerReader) Close() error { r.cancel(); return nil }

// Next returns the next entry in order. It waits for the writer (tails)
// while the ledger is open, and returns io.EOF after the last entry of a
// closed ledger.
func (r *LedgerReader) Next(ctx context.Context) (int64, []byte, error) {
	tick := time.NewTicker(r.c.opts.TickInterval)
	defer tick.Stop()
	var evs []revent
	for {
		if len(r.ready) > 0 {
			d := r.ready[0]
			r.ready = r.ready[1:]
			return d.Entry, d.Data, nil
		}
		if r.m.Done() {
			return -1, nil, io.EOF
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
				r.exec(r.m.ReadResult(ev.bookie, ev.entry, ev.st, ev.data))
			case rLAC:
				if ev.st == ledger.StatusOK && ev.lac > r.lac {
					r.lac = ev.lac
				}
				r.exec(r.m.LACResult(ev.bookie, ev.st, ev.lac))
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
	for _, eff := range effs {
		switch e := eff.(type) {
		case ledger.ReadEntry:
			go func() {
				data, err := r.c.readEntry(r.ctx, e.Bookie, r.id, e.Entry, false)
				r.box.push(rRead{bookie: e.Bookie, entry: e.Entry, st: statusOf(err), data: data})
			}()
		case ledger.ReadLAC:
			go func() {
				lac, err := r.c.readLAC(r.ctx, e.Bookie, r.id, false)
				r.box.push(rLAC{bookie: e.Bookie, st: statusOf(err), lac: lac})
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
	var errs []error
	for _, b := range ledger.ReadOrder(&md, entry, nil) {
		data, err := c.readEntry(ctx, b, id, entry, false)
		if err == nil {
			return data, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", b, err))
	}
	return nil, errors.Join(errs...)
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
