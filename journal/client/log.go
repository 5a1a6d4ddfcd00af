package client

import (
	"context"
	"errors"
	"fmt"
	"io"
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
	nl := schema.Log{Shard: lw.shard, Ledgers: append(append([]uint64(nil), lw.log.Ledgers...), w.ID())}
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
	f    *Future
	base int64
}

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
	return LogFuture{f: f, base: lw.base}, nil
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

// LogReader reads a shard's log from an offset on, across ledger
// boundaries, tailing the last ledger and waiting for the log to grow.
// Not safe for concurrent use.
type LogReader struct {
	c     *Client
	shard string
	idx   int   // index in the log of the ledger being read
	base  int64 // offset of its entry 0
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
		md := lr.r.Metadata()
		lr.r.Close()
		lr.r = nil
		lr.base += md.LastEntry + 1
		lr.idx++
	}
}

// open opens the ledger holding lr.from, waiting for the log to grow.
func (lr *LogReader) open(ctx context.Context) error {
	tick := time.NewTicker(10 * lr.c.opts.TickInterval)
	defer tick.Stop()
	for {
		rec, err := lr.c.store.Log(ctx, lr.shard)
		if err != nil && !errors.Is(err, meta.ErrNotFound) {
			return err
		}
		ids := rec.Value.Ledgers
		for lr.idx < len(ids) {
			md, err := lr.c.Metadata(ctx, ids[lr.idx])
			if err != nil {
				return err
			}
			if md.State == ledger.StateClosed && lr.base+md.LastEntry < lr.from {
				lr.base += md.LastEntry + 1 // wholly before from
				lr.idx++
				continue
			}
			r, err := lr.c.OpenForRead(ctx, ids[lr.idx], lr.from-lr.base)
			if err != nil {
				return err
			}
			lr.r = r
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}
