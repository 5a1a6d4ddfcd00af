package faulttest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/quiremq/quire/journal/bookie"
	"github.com/quiremq/quire/journal/bookie/bookierpc"
	"github.com/quiremq/quire/journal/client"
	"github.com/quiremq/quire/journal/ledger"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
)

// key names one append: the writer generation (process) and its sequence
// number. The writers of a log run one after another, so (gen, seq) in
// lexicographic order is the order the appends were invoked in.
type key struct{ gen, seq int64 }

func (k key) less(o key) bool { return k.gen < o.gen || k.gen == o.gen && k.seq < o.seq }

func (k key) String() string { return fmt.Sprintf("g%d/s%d", k.gen, k.seq) }

type ack struct {
	offset, entry int64
	ledger        uint64
	at            time.Time // when the test read the ack line
}

// history is every append the writers invoked and what became of it:
// acknowledged (with its offset), failed (ambiguous), or neither (unknown:
// the writer died). Times are when the test read the line.
type history struct {
	mu       sync.Mutex
	invoked  map[key]time.Time
	acked    map[key]ack
	failed   map[key]string
	opened   []time.Time // takeovers done
	closed   map[int64]bool
	badLines []string
}

func newHistory() *history {
	return &history{invoked: map[key]time.Time{}, acked: map[key]ack{}, failed: map[key]string{}, closed: map[int64]bool{}}
}

// read applies a writer's event lines until EOF.
func (h *history) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		h.apply(sc.Text(), time.Now())
	}
}

func (h *history) apply(line string, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	kind, n, rest, err := parseLine(line)
	if err != nil {
		h.badLines = append(h.badLines, err.Error())
		return
	}
	switch kind {
	case "O":
		h.opened = append(h.opened, now)
	case "I":
		h.invoked[key{n[0], n[1]}] = now
	case "A":
		k := key{n[0], n[1]}
		if _, dup := h.acked[k]; dup {
			h.badLines = append(h.badLines, fmt.Sprintf("%v acknowledged twice", k))
		}
		h.acked[k] = ack{offset: n[2], ledger: uint64(n[3]), entry: n[4], at: now}
	case "F":
		h.failed[key{n[0], n[1]}] = rest
	case "C":
		h.closed[n[0]] = true
	}
}

// counts returns how many appends were invoked, acknowledged and failed.
func (h *history) counts() (invoked, acked, failed int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.invoked), len(h.acked), len(h.failed)
}

// lastAck returns the ledger of the latest acknowledged append.
func (h *history) lastAck() (key, ack) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var lk key
	var la ack
	for k, a := range h.acked {
		if lk.less(k) {
			lk, la = k, a
		}
	}
	return lk, la
}

// waitAcks waits until n more appends than now are acknowledged; false
// if they are not within d.
func (h *history) waitAcks(n int, d time.Duration) (int, bool) {
	_, from, _ := h.counts()
	deadline := time.Now().Add(d)
	for {
		_, a, _ := h.counts()
		if a >= from+n {
			return a - from, true
		}
		if time.Now().After(deadline) {
			return a - from, false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stall measures the write stall after a fault at at: the time to the
// first acknowledgement of an append invoked after at, and the longest
// gap between consecutive acknowledgements from the last one before at
// to the first one after at+window.
func (h *history) stall(at time.Time, window time.Duration) (first, maxGap time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var times []time.Time
	first = -1
	for k, a := range h.acked {
		times = append(times, a.at)
		if inv := h.invoked[k]; !inv.Before(at) {
			if d := a.at.Sub(at); first < 0 || d < first {
				first = d
			}
		}
	}
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	for i := 1; i < len(times); i++ {
		if times[i].Before(at) && i+1 < len(times) && times[i+1].Before(at) {
			continue // entirely before at
		}
		if times[i-1].After(at.Add(window)) {
			break
		}
		maxGap = max(maxGap, times[i].Sub(times[i-1]))
	}
	return first, maxGap
}

// checker reads a log back and checks DESIGN.md's journal invariants
// against the history.
type checker struct {
	t       testing.TB
	cl      *client.Client
	kv      meta.KV
	shard   string
	bookies map[string]*bookierpc.Client // id (real address) → direct client
	// skipCopies leaves out the (slow) read of every copy: for the
	// checker's own tests, which change the history, not the copies.
	skipCopies bool
}

// check takes the log over one last time (fence + recovery of its last
// ledgers, as a new leader would) and closes it, then checks:
//
//   - every ledger of the log is CLOSED, and every acknowledged append's
//     ledger is in the log, with a last entry ≥ the acknowledged entry
//     (the closed ledger's last entry ≥ every acknowledged entry);
//   - reading the log through OpenLogReader from offset 0 returns dense
//     offsets up to the log's end, each record one the writers invoked,
//     byte for byte, in strictly increasing invocation order (read order =
//     write order, and no append twice);
//   - every acknowledged append is at the offset it was acknowledged with,
//     unchanged (no acknowledged entry lost or changed);
//   - every copy of every entry on the bookies of its write set is the
//     same record, on at least Qa of them (no two values at one offset);
//   - every ledger in meta that is not in the log is empty (every
//     non-empty ledger is in its log), after recovering open ones.
//
// It returns the log's length.
func (c *checker) check(h *history) int64 {
	t := c.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, l := range h.badLines {
		t.Errorf("writer output: %s", l)
	}
	var lw *client.LogWriter
	var err error
	for lw == nil {
		if lw, err = c.cl.OpenLogWriter(ctx, c.shard, client.LogOptions{Ensemble: 3, WriteQuorum: 2, AckQuorum: 2}); err != nil {
			if ctx.Err() != nil {
				t.Fatalf("final takeover: %v", err)
			}
			t.Logf("final takeover: %v (retrying)", err)
			time.Sleep(100 * time.Millisecond)
		}
	}
	if err := lw.Close(ctx); err != nil {
		t.Fatalf("final close: %v", err)
	}

	rec, err := schema.Store{KV: c.kv}.Log(ctx, c.shard)
	if err != nil {
		t.Fatal(err)
	}
	type span struct {
		base int64
		md   ledger.Metadata
	}
	spans := map[uint64]span{}
	end := rec.Value.Trimmed
	for _, id := range rec.Value.Ledgers {
		md, err := c.cl.Metadata(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if md.State != ledger.StateClosed {
			t.Fatalf("ledger %d of the log is %s after the final takeover", id, md.State)
		}
		spans[id] = span{end, md}
		end += md.LastEntry + 1
	}
	for k, a := range h.acked {
		s, ok := spans[a.ledger]
		switch {
		case !ok:
			t.Errorf("%v acknowledged in ledger %d, which is not in the log %v", k, a.ledger, rec.Value.Ledgers)
		case s.md.LastEntry < a.entry:
			t.Errorf("%v acknowledged as entry %d of ledger %d, whose closed last entry is %d", k, a.entry, a.ledger, s.md.LastEntry)
		case s.base+a.entry != a.offset:
			t.Errorf("%v acknowledged at offset %d = entry %d of ledger %d, which starts at offset %d", k, a.offset, a.entry, a.ledger, s.base)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	r, err := c.cl.OpenLogReader(ctx, c.shard, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	at := make([]key, 0, end)
	prev := key{gen: -1}
	for off := int64(0); off < end; off++ {
		got, data, err := r.Next(ctx)
		if err != nil {
			t.Fatalf("read offset %d of %d: %v", off, end, err)
		}
		if got != off {
			t.Fatalf("read offset %d, want %d (dense offsets)", got, off)
		}
		k, ok := parsePayload(data)
		if !ok {
			t.Fatalf("offset %d holds %.40q, no record of a writer", off, data)
		}
		if _, inv := h.invoked[k]; !inv {
			t.Fatalf("offset %d holds %v, which was never invoked", off, k)
		}
		if !bytes.Equal(data, payload(k.gen, k.seq)) {
			t.Fatalf("offset %d holds %v with different bytes", off, k)
		}
		if !prev.less(k) {
			t.Fatalf("offset %d holds %v after %v (read order = write order, each once)", off, k, prev)
		}
		prev = k
		at = append(at, k)
	}
	for k, a := range h.acked {
		if a.offset >= end {
			t.Errorf("acknowledged %v at offset %d lost: the log ends at %d", k, a.offset, end)
		} else if at[a.offset] != k {
			t.Errorf("acknowledged %v at offset %d, which holds %v", k, a.offset, at[a.offset])
		}
	}
	// A reader at the end waits for more (the log is open-ended).
	wctx, wcancel := context.WithTimeout(ctx, 50*time.Millisecond)
	if off, _, err := r.Next(wctx); err == nil {
		t.Errorf("read offset %d past the end %d", off, end)
	}
	wcancel()

	changes := 0
	for _, sp := range spans {
		changes += len(sp.md.Fragments) - 1
	}
	c.t.Logf("log read back: %d records in %d ledgers, %d ensemble changes", end, len(rec.Value.Ledgers), changes)
	for _, id := range rec.Value.Ledgers {
		if !c.skipCopies {
			md, want := spans[id].md, map[int64]key{}
			for e := int64(0); e <= md.LastEntry; e++ {
				want[e] = at[spans[id].base-rec.Value.Trimmed+e]
			}
			c.checkCopies(ctx, md, want)
		}
	}
	c.checkOrphans(ctx)
	return end
}

// checkCopies reads the entries of md in want from every bookie of their
// write sets: each copy must be the record the log returned at that
// entry, on at least Qa bookies.
func (c *checker) checkCopies(ctx context.Context, md ledger.Metadata, want map[int64]key) {
	t := c.t
	entries := make(chan int64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for range 8 {
		wg.Go(func() {
			for e := range entries {
				exp := payload(want[e].gen, want[e].seq)
				copies := 0
				for _, b := range md.WriteSetOf(e) {
					bc := c.bookies[string(b)]
					if bc == nil {
						mu.Lock()
						errs = append(errs, fmt.Errorf("ledger %d entry %d: unknown bookie %s", md.ID, e, b))
						mu.Unlock()
						continue
					}
					rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
					got, err := bc.ReadEntry(rctx, md.ID, uint64(e), false)
					cancel()
					var ferr error
					switch {
					case err == nil && bytes.Equal(got, exp):
						copies++
					case err == nil:
						ferr = fmt.Errorf("ledger %d entry %d: bookie %s holds %.30q, the log returned %v", md.ID, e, b, got, want[e])
					case !errors.Is(err, bookie.ErrNoSuchEntry):
						ferr = fmt.Errorf("ledger %d entry %d: bookie %s: %w", md.ID, e, b, err)
					}
					if ferr != nil {
						mu.Lock()
						errs = append(errs, ferr)
						mu.Unlock()
					}
				}
				if copies < md.AckQuorum {
					mu.Lock()
					errs = append(errs, fmt.Errorf("ledger %d entry %d: %d copies in write set %v, want >= Qa = %d", md.ID, e, copies, md.WriteSetOf(e), md.AckQuorum))
					mu.Unlock()
				}
			}
		})
	}
	for e := range want {
		entries <- e
	}
	close(entries)
	wg.Wait()
	for i, err := range errs {
		if i == 10 {
			t.Errorf("... and %d more", len(errs)-10)
			break
		}
		t.Error(err)
	}
}

// checkOrphans: every ledger in meta that is in no log is empty once
// recovered (a writer that died between creating a ledger and appending it
// to the log leaves it OPEN and empty).
func (c *checker) checkOrphans(ctx context.Context) {
	t := c.t
	logs, _, err := schema.List[schema.Log](ctx, c.kv, schema.PrefixLogs, false)
	if err != nil {
		t.Fatal(err)
	}
	inLog := map[uint64]bool{}
	for _, l := range logs {
		for _, id := range l.Value.Ledgers {
			inLog[id] = true
		}
	}
	all, _, err := schema.List[schema.Ledger](ctx, c.kv, schema.PrefixLedgers, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range all {
		id := r.Value.ID
		if inLog[id] {
			continue
		}
		last := r.Value.LastEntry
		if r.Value.State != schema.LedgerClosed {
			if last, err = c.cl.Recover(ctx, id); err != nil {
				t.Errorf("recovering ledger %d (in no log): %v", id, err)
				continue
			}
		}
		if last >= 0 {
			t.Errorf("ledger %d is not in the log but holds entries 0..%d", id, last)
		}
	}
}

// clone returns a deep copy (for the checker's own tests).
func (h *history) clone() *history {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := newHistory()
	maps.Copy(c.invoked, h.invoked)
	maps.Copy(c.acked, h.acked)
	maps.Copy(c.failed, h.failed)
	maps.Copy(c.closed, h.closed)
	c.opened = slices.Clone(h.opened)
	return c
}
