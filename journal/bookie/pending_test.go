package bookie

import (
	"math/rand/v2"
	"testing"
)

// TestPendingIndex checks pendingIndex against a map of the latest add of
// each entry, over random adds (in and out of entry order, with rewrites)
// removed in journal order, as the completer and applier use it.
func TestPendingIndex(t *testing.T) {
	type key struct{ ledger, entry uint64 }
	type rec struct {
		key
		seq uint64
	}
	rng := rand.New(rand.NewPCG(1, 2))
	p := pendingIndex{}
	latest := map[key]uint64{} // seq of the latest pending add of each entry
	var queue []rec            // journal order, not yet applied
	next := map[uint64]uint64{}
	var seq uint64
	payload := func(s uint64) []byte { return []byte{byte(s), byte(s >> 8), byte(s >> 16)} }
	for step := 0; step < 20000; step++ {
		if rng.IntN(3) > 0 || len(queue) == 0 {
			l := uint64(rng.IntN(4))
			e := next[l]
			switch rng.IntN(8) {
			case 0: // a rewrite of an earlier entry
				if e > 0 {
					e = uint64(rng.IntN(int(e)))
				}
			default:
				next[l]++
			}
			seq++
			p.add(l, e, seq, payload(seq))
			latest[key{l, e}] = seq
			queue = append(queue, rec{key{l, e}, seq})
		} else {
			n := 1 + rng.IntN(len(queue))
			for _, r := range queue[:n] {
				p.applied(r.ledger, r.seq)
				if latest[r.key] == r.seq {
					delete(latest, r.key)
				}
			}
			queue = queue[n:]
		}
		for l := uint64(0); l < 4; l++ {
			// Every entry now and then, the newest ones otherwise.
			from := uint64(0)
			if step%500 != 0 && next[l] > 40 {
				from = next[l] - 40
			}
			for e := from; e <= next[l]; e++ {
				got, ok := p.get(l, e)
				want, wantOK := latest[key{l, e}]
				if ok != wantOK || (ok && string(got) != string(payload(want))) {
					t.Fatalf("step %d: get(%d, %d) = %v, %v; want seq %d, %v", step, l, e, got, ok, want, wantOK)
				}
			}
		}
	}
	for _, r := range queue {
		p.applied(r.ledger, r.seq)
	}
	if len(p) != 0 {
		t.Fatalf("%d ledgers left after every add was applied", len(p))
	}
}
