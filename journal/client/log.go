package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/quiremq/quire/journal/ledger"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
)

// ErrLogConflict is returned when another writer changed a shard's log
// (another leader took the shard over): this writer must stop.
var ErrLogConflict = errors.New("journal/client: the log was changed by another writer")

// LogOptions configure a LogWriter.
type LogOptions struct {
	// Ensemble, WriteQuorum and AckQuorum of each new ledger (E, Qw, Qa).
	Ensemble, WriteQuorum, AckQuorum int
	// RollEntries and RollBytes roll over to a new ledger once the current
	// one holds this many entries or payload bytes (0: no limit); RollAge
	// once it is this old.
	RollEntries int64
	RollBytes   int64
	RollAge     time.Duration
}

// LogWriter appends to a shard's log: the ordered ledgers of
// schema.Log, with offsets dense across them (offset = entries of the
// earlier ledgers + entry id). OpenLogWriter takes the log over; rollover
// creates a ledger, CAS-appends it to the log, then closes the old one,
// and only then appends to the new one, so every offset acknowledged is
// final. Safe for concurrent use.
type LogWriter struct {
	c     *Client
	shard string
	o     LogOptions

	mu      sync.Mutex
	logVer  uint64
	log     schema.Log
	cur     *LedgerWriter
	base    int64 // offset of cur's entry 0
	n       int64 // appends handed to cur
	bytes   int64
	created time.Time
	err     error // sticky: the writer is unusable
}

// OpenLogWriter takes shard's log over as its new writer (DESIGN.md,
// "Journal", logs): it fences and recovers the last two ledgers of the log
// (a rollover that crashed between CAS-append and close leaves two open),
// creates a new ledger and CAS-appends it against the version it read,
// before accepting appends. ErrLogConflict if another writer changed the
// log meanwhile.
func (c *Client) OpenLogWriter(ctx context.Context, shard string, o LogOptions) (*LogWriter, error) {
	rec, err := c.store.Log(ctx, shard)
	if errors.Is(err, meta.ErrNotFound) {
		rec, err = schema.Record[schema.Log]{Value: schema.Log{Shard: shard}}, nil
	}
	if err != nil {
		return nil, err
	}
	ids := rec.Value.Ledgers
	for i := max(0, len(ids)-2); i < len(ids); i++ {
		if _, err := c.Recover(ctx, ids[i]); err != nil {
			return nil, fmt.Errorf("journal/client: log %s: recovering ledger %d: %w", shard, ids[i], err)
		}
	}
	base, err := c.logEnd(ctx, ids)
	if err != nil {
		return nil, err
	}
	base += rec.Value.Trimmed
	lw := &LogWriter{c: c, shard: shard, o: o, logVer: rec.Version, log: rec.Value}
	if err := lw.startLedger(ctx, base); err != nil {
		return nil, err
	}
	return lw, nil
}

// logEnd returns the number of entries in the closed ledgers ids.
func (c *Client) logEnd(ctx context.Context, ids []uint64) (int64, error) {
	var n int64
	for _, id := range ids {
		md, err := c.Metadata(ctx, id)
		if err != nil {
			return 0, err
		}
		if md.State != ledger.StateClosed {
			return 0, fmt.Errorf("journal/client: ledger %d of the log is %s, want CLOSED", id, md.State)
		}
		n += md.LastEntry + 1
	}
	return n, nil
}

// startLedger creates a ledger and CAS-appends it to the log.
func (lw *LogWriter) startLedger(ctx context.Context, base int64) error {
	w, err := lw.c.CreateLedger(ctx, lw.o.Ensemble, lw.o.WriteQuorum, lw.o.AckQuorum)
	if err != nil {
		return err
	}
	nl := schema.Log{Shard: lw.shard, Ledgers: append(append([]uint64(nil), lw.log.Ledgers...), w.ID()), Trimmed: lw.log.Trimmed}
	v, err := schema.CAS(ctx, lw.c.store.KV, schema.LogKey(lw.shard), lw.logVer, nl)
	if err != nil {
		w.Close(ctx) // empty and in no log: harmless
		if errors.Is(err, meta.ErrVersionMismatch) {
			err = fmt.Errorf("%w: %s", ErrLogConflict, lw.shard)
		}
		return err
	}
	lw.logVer, lw.log = v, nl
	lw.cur, lw.base, lw.n, lw.bytes, lw.created = w, base, 0, 0, time.Now()
	return nil
}

// LogFuture is the outcome of one LogWriter.AppendAsync.
type LogFuture struct {
	f      *Future
	base   int64
	ledger uint64
}

// Ledger returns the id of the ledger the record was appended to.
func (f LogFuture) Ledger() uint64 { return f.ledger }

// Entry waits and returns the record's entry id in its ledger.
func (f LogFuture) Entry() (int64, error) { return f.f.Result() }

// Result waits and returns the record's offset in the log.
func (f LogFuture) Result() (int64, error) {
	e, err := f.f.Result()
	if err != nil {
		return -1, err
	}
	return f.base + e, nil
}

// Append appends data and waits for its offset.
func (lw *LogWriter) Append(ctx context.Context, data []byte) (int64, error) {
	f, err := lw.AppendAsync(ctx, data)
	if err != nil {
		return -1, err
	}
	return f.Result()
}

// AppendAsync appends data (pipelined), rolling over first if a limit is
// reached.
func (lw *LogWriter) AppendAsync(ctx context.Context, data []byte) (LogFuture, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if lw.err != nil {
		return LogFuture{}, lw.err
	}
	if lw.due() {
		if err := lw.roll(ctx); err != nil {
			lw.err = err
			return LogFuture{}, err
		}
	}
	f, err := lw.cur.AppendAsync(ctx, data)
	if err != nil {
		return LogFuture{}, err
	}
	lw.n++
	lw.bytes += int64(len(data))
	return LogFuture{f: f, base: lw.base, ledger: lw.cur.ID()}, nil
}

func (lw *LogWriter) due() bool {
	o := lw.o
	return lw.n > 0 && ((o.RollEntries > 0 && lw.n >= o.RollEntries) || (o.RollBytes > 0 && lw.bytes >= o.RollBytes) ||
		(o.RollAge > 0 && time.Since(lw.created) >= o.RollAge))
}

// roll: create the next ledger and CAS-append it, then close the old one
// (waiting for its appends), and only then write to the new one.
func (lw *LogWriter) roll(ctx context.Context) error {
	old, oldBase := lw.cur, lw.base
	if err := lw.startLedger(ctx, -1); err != nil {
		return err
	}
	if err := old.Close(ctx); err != nil {
		return fmt.Errorf("journal/client: log %s: closing ledger %d: %w", lw.shard, old.ID(), err)
	}
	lw.base = oldBase + old.LAC() + 1
	return nil
}

// Ledger returns the id of the ledger being written.
func (lw *LogWriter) Ledger() uint64 {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return lw.cur.ID()
}

// Close closes the current ledger; the log stays as it is.
func (lw *LogWriter) Close(ctx context.Context) error {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if lw.err == nil {
		lw.err = ErrClosed
	}
	return lw.cur.Close(ctx)
}

// Abandon drops the writer as a crash would (tests, a leader that lost
// its lease): the current ledger stays OPEN for the next writer to
// recover.
func (lw *LogWriter) Abandon() {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	lw.err = ErrAbandoned
	lw.cur.Abandon()
}

// DropFirst removes the first n ledgers from the log (retention): it
// CAS-writes the shorter list, adding their entries to Log.Trimmed so that
// offsets stay put, and then deletes each ledger (DeleteLedger). Only
// closed ledgers before the one being written may go; ErrLogConflict if
// another writer changed the log.
func (lw *LogWriter) DropFirst(ctx context.Context, n int) error {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if lw.err != nil {
		return lw.err
	}
	if n >= len(lw.log.Ledgers) {
		return fmt.Errorf("journal/client: log %s: cannot drop %d of %d ledgers (the last is being written)", lw.shard, n, len(lw.log.Ledgers))
	}
	v, nl, err := lw.c.dropFirst(ctx, lw.shard, lw.logVer, lw.log, n)
	if err != nil {
		return err
	}
	lw.logVer, lw.log = v, nl
	return nil
}

// DropLogLedgers is DropFirst for a log no writer of this client holds:
// it drops ids, which must be the first ledgers of the log and closed
// (ErrLogConflict if the log no longer starts with them).
func (c *Client) DropLogLedgers(ctx context.Context, shard string, ids []uint64) error {
	rec, err := c.store.Log(ctx, shard)
	if err != nil {
		return err
	}
	if len(ids) > len(rec.Value.Ledgers) || !slices.Equal(rec.Value.Ledgers[:len(ids)], ids) {
		return fmt.Errorf("%w: %s no longer starts with ledgers %v", ErrLogConflict, shard, ids)
	}
	_, _, err = c.dropFirst(ctx, shard, rec.Version, rec.Value, len(ids))
	return err
}

func (c *Client) dropFirst(ctx context.Context, shard string, ver uint64, log schema.Log, n int) (uint64, schema.Log, error) {
	if n <= 0 {
		return ver, log, nil
	}
	if n > len(log.Ledgers) {
		return 0, log, fmt.Errorf("journal/client: log %s: cannot drop %d of %d ledgers", shard, n, len(log.Ledgers))
	}
	drop := log.Ledgers[:n]
	entries, err := c.logEnd(ctx, drop) // fails unless every one is CLOSED
	if err != nil {
		return 0, log, err
	}
	nl := schema.Log{Shard: shard, Ledgers: append([]uint64(nil), log.Ledgers[n:]...), Trimmed: log.Trimmed + entries}
	v, err := schema.CAS(ctx, c.store.KV, schema.LogKey(shard), ver, nl)
	if errors.Is(err, meta.ErrVersionMismatch) {
		return 0, log, fmt.Errorf("%w: %s", ErrLogConflict, shard)
	}
	if err != nil {
		return 0, log, err
	}
	for _, id := range drop {
		if err := c.DeleteLedger(ctx, id); err != nil {
			// Out of the log already: what is left is garbage, not data.
			c.log.Warn("journal/client: deleting a ledger dropped from its log", "shard", shard, "ledger", id, "err", err)
		}
	}
	return v, nl, nil
}

// DeleteLog deletes every ledger of shard's log and then the log. No
// writer may hold the log.
func (c *Client) DeleteLog(ctx context.Context, shard string) error {
	rec, err := c.store.Log(ctx, shard)
	if errors.Is(err, meta.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := c.store.KV.Delete(ctx, schema.LogKey(shard), meta.IfVersion(rec.Version)); err != nil {
		if errors.Is(err, meta.ErrVersionMismatch) {
			err = fmt.Errorf("%w: %s", ErrLogConflict, shard)
		}
		return err
	}
	var errs []error
	for _, id := range rec.Value.Ledgers {
		errs = append(errs, c.DeleteLedger(ctx, id))
	}
	return errors.Join(errs...)
}

// DeleteLedger deletes ledger id's entries from every bookie that ever
// held a fragment of it, then its metadata. A ledger already gone is not
// an error. The caller makes sure no one reads or writes it any more.
func (c *Client) DeleteLedger(ctx context.Context, id uint64) error {
	md, err := c.Metadata(ctx, id)
	if errors.Is(err, ErrNoSuchLedger) {
		return nil
	}
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, f := range md.Fragments {
		for _, b := range f.Bookies {
			if seen[b] {
				continue
			}
			seen[b] = true
			cc, err := c.bookie(b)
			if err == nil {
				rctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
				err = cc.DeleteLedger(rctx, id)
				cancel()
			}
			if err != nil && statusOf(err) != ledger.StatusNoSuchEntry {
				// A bookie that is down keeps the entries until it is
				// compacted; the metadata goes anyway.
				c.log.Warn("journal/client: deleting ledger on bookie", "ledger", id, "bookie", b, "err", err)
			}
		}
	}
	if _, err := c.store.KV.Delete(ctx, schema.LedgerKey(id)); err != nil && !errors.Is(err, meta.ErrNotFound) {
		return err
	}
	return nil
}

// ReadLedgerEntry reads one entry of the ledger md describes from the
// first bookie of its write set that has it. Unlike ReadEntry it takes
// the metadata from the caller (who bounds entry by what was
// acknowledged), so a reader of many entries reads meta once.
func (c *Client) ReadLedgerEntry(ctx context.Context, md *ledger.Metadata, entry int64) ([]byte, error) {
	var errs []error
	for _, b := range ledger.ReadOrder(md, entry, nil) {
		data, err := c.readEntry(ctx, b, md.ID, entry, false)
		if err == nil {
			return data, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", b, err))
	}
	return nil, fmt.Errorf("journal/client: ledger %d entry %d: %w", md.ID, entry, errors.Join(errs...))
}

// ErrTrimmed is returned by a LogReader asked for an offset retention
// removed.
var ErrTrimmed = errors.New("journal/client: offset removed by retention")

// LogReader reads a shard's log from an offset on, across ledger
// boundaries, tailing the last ledger and waiting for the log to grow.
// Not safe for concurrent use.
type LogReader struct {
	c     *Client
	shard string
	base  int64 // offset of the current ledger's entry 0
	from  int64 // next offset to return
	r     *LedgerReader
}

// OpenLogReader opens shard's log for reading from offset from.
func (c *Client) OpenLogReader(ctx context.Context, shard string, from int64) (*LogReader, error) {
	return &LogReader{c: c, shard: shard, from: from}, nil
}

// Close ends the reads in flight.
func (lr *LogReader) Close() error {
	if lr.r != nil {
		lr.r.Close()
	}
	return nil
}

// Next returns the record at the next offset, waiting for it if need be.
func (lr *LogReader) Next(ctx context.Context) (int64, []byte, error) {
	for {
		if lr.r == nil {
			if err := lr.open(ctx); err != nil {
				return -1, nil, err
			}
		}
		e, data, err := lr.r.Next(ctx)
		if err == nil {
			off := lr.base + e
			lr.from = off + 1
			return off, data, nil
		}
		if !errors.Is(err, io.EOF) {
			return -1, nil, err
		}
		lr.r.Close()
		lr.r = nil
	}
}

// open opens the ledger holding lr.from, waiting for the log to grow. It
// walks the log from its start each time (retention may have shortened
// it; Log.Trimmed keeps the offsets).
func (lr *LogReader) open(ctx context.Context) error {
	tick := time.NewTicker(10 * lr.c.opts.TickInterval)
	defer tick.Stop()
	for {
		rec, err := lr.c.store.Log(ctx, lr.shard)
		if err != nil && !errors.Is(err, meta.ErrNotFound) {
			return err
		}
		if lr.from < rec.Value.Trimmed {
			return fmt.Errorf("%w: log %s offset %d (retention removed up to %d)", ErrTrimmed, lr.shard, lr.from, rec.Value.Trimmed)
		}
		base := rec.Value.Trimmed
		for _, id := range rec.Value.Ledgers {
			md, err := lr.c.Metadata(ctx, id)
			if err != nil {
				return err
			}
			if md.State == ledger.StateClosed && base+md.LastEntry < lr.from {
				base += md.LastEntry + 1 // wholly before from
				continue
			}
			r, err := lr.c.OpenForRead(ctx, id, lr.from-base)
			if err != nil {
				return err
			}
			lr.r, lr.base = r, base
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}
