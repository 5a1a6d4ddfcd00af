package bookie

import (
	"cmp"
	"slices"
	"sync"
)

// pendingIndex holds the adds whose journal sync completed but which are
// not yet in the entry logs and index (reads find them here), per ledger
// in journal order. The applier applies in journal order, so it removes
// the oldest add of a ledger: adding and removing cost no map operation
// per entry, and a ledger written in entry order is searched by bisection.
type pendingIndex map[uint64]*pendingLedger

type pendingLedger struct {
	ents   []pendingEntry // journal order; ents[:head] are applied (cleared)
	head   int
	sorted bool // entry ids strictly increase along ents[head:]
}

// freePendingLedgers are emptied pendingLedgers (arrays up to
// maxFreePendingCap entries) for ledgers that get pending adds again.
var freePendingLedgers = sync.Pool{New: func() any { return &pendingLedger{sorted: true} }}

const maxFreePendingCap = 64 << 10

type pendingEntry struct {
	entry, seq uint64
	payload    []byte
}

// add records a synced add; seq identifies it (it only grows).
func (p pendingIndex) add(ledger, entry, seq uint64, payload []byte) {
	pl := p[ledger]
	if pl == nil {
		pl = freePendingLedgers.Get().(*pendingLedger)
		p[ledger] = pl
	}
	if n := len(pl.ents); n > pl.head && pl.ents[n-1].entry >= entry {
		pl.sorted = false
	}
	pl.ents = append(pl.ents, pendingEntry{entry: entry, seq: seq, payload: payload})
}

// get returns the payload of the latest pending add of entry.
func (p pendingIndex) get(ledger, entry uint64) ([]byte, bool) {
	pl := p[ledger]
	if pl == nil {
		return nil, false
	}
	live := pl.ents[pl.head:]
	if pl.sorted {
		i, ok := slices.BinarySearchFunc(live, entry, func(e pendingEntry, t uint64) int { return cmp.Compare(e.entry, t) })
		if !ok {
			return nil, false
		}
		return live[i].payload, true
	}
	for i := len(live) - 1; i >= 0; i-- {
		if live[i].entry == entry {
			return live[i].payload, true
		}
	}
	return nil, false
}

// applied removes the add seq of ledger, now in the entry logs and index.
func (p pendingIndex) applied(ledger, seq uint64) {
	pl := p[ledger]
	if pl == nil {
		return
	}
	if pl.head < len(pl.ents) && pl.ents[pl.head].seq == seq {
		pl.ents[pl.head] = pendingEntry{}
		pl.head++
	} else if i := slices.IndexFunc(pl.ents[pl.head:], func(e pendingEntry) bool { return e.seq == seq }); i >= 0 {
		// Not the oldest, which journal order rules out; kept correct.
		pl.ents = slices.Delete(pl.ents, pl.head+i, pl.head+i+1)
	}
	switch live := len(pl.ents) - pl.head; {
	case live == 0:
		delete(p, ledger)
		// At a moderate rate a ledger's pending adds empty at every
		// apply: keep its array for the next ledger that gets one rather
		// than grow a new one each time.
		clear(pl.ents)
		pl.ents, pl.head, pl.sorted = pl.ents[:0], 0, true
		if cap(pl.ents) <= maxFreePendingCap {
			freePendingLedgers.Put(pl)
		}
	case pl.head >= 64 && pl.head >= live:
		// Move the live adds to the front, so ents does not grow forever.
		n := copy(pl.ents, pl.ents[pl.head:])
		clear(pl.ents[n:])
		pl.ents, pl.head = pl.ents[:n], 0
	}
}
