package faulttest

import (
	"slices"
	"testing"
	"time"
)

// The schedule depends on the seed only, starts with every kind of fault
// once, never has more than maxDown bookies faulty at once (a killed one
// counts until 2 s after its restart) and ends before the length.
func TestPlan(t *testing.T) {
	for seed := range uint64(200) {
		const n, maxDown, length = 5, 2, 20 * time.Second
		p := plan(seed, n, maxDown, length)
		if !slices.Equal(p, plan(seed, n, maxDown, length)) {
			t.Fatalf("seed %d: two schedules", seed)
		}
		if len(p) < int(numFaultKinds) {
			t.Fatalf("seed %d: %d faults", seed, len(p))
		}
		var kinds []faultKind
		for _, f := range p[:numFaultKinds] {
			kinds = append(kinds, f.kind)
		}
		slices.Sort(kinds)
		if !slices.Equal(kinds, []faultKind{faultKill9, faultStop, faultBlackhole, faultReset, faultWriter}) {
			t.Fatalf("seed %d: first faults %v, want every kind once", seed, p[:numFaultKinds])
		}
		for i, f := range p {
			if f.at >= length || (i > 0 && f.at <= p[i-1].at) {
				t.Fatalf("seed %d: fault %d at %v", seed, i, f.at)
			}
			if f.kind == faultWriter {
				continue
			}
			down := map[int]bool{}
			for _, g := range p[:i+1] {
				end := g.at + g.dur
				if g.kind == faultKill9 {
					end += 2 * time.Second
				}
				if g.kind != faultWriter && g.at <= f.at && end > f.at {
					if down[g.bookie] && g.bookie == f.bookie && g != f {
						t.Fatalf("seed %d: %v while b%d is still faulty", seed, f, g.bookie)
					}
					down[g.bookie] = true
				}
			}
			if len(down) > maxDown {
				t.Fatalf("seed %d: %d bookies faulty at %v", seed, len(down), f.at)
			}
		}
	}
}
