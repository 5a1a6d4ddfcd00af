package ledger

import "testing"

// TestFencingReadsDefect1 replays the TLA+ spec's defect 1 (README of
// Vanlightly/bookkeeper-tlaplus): a bookie's fencing request is delayed,
// a recovery read reaches it first, and the old writer's add reaches it
// after the read. With non-fencing reads the bookie would say NoSuchEntry,
// recovery would close at -1, and then accept the add, giving the writer
// its ack quorum for entry 0 beyond the closed ledger. Recovery reads
// fence, so the late add is refused and the writer never acknowledges it.
func TestFencingReadsDefect1(t *testing.T) {
	type bookie struct {
		fenced  bool
		entries map[int64]string
	}
	bk := map[BookieID]*bookie{"b1": {entries: map[int64]string{}}, "b2": {entries: map[int64]string{}}}
	md := Metadata{ID: 1, Ensemble: 2, WriteQuorum: 2, AckQuorum: 2, State: StateOpen, LastEntry: -1, Version: 1,
		Fragments: []Fragment{{0, []BookieID{"b1", "b2"}}}}
	w, _ := NewWriter(md, nil)
	_, adds, _ := w.Add([]byte("x0"))
	if len(adds) != 2 {
		t.Fatalf("adds %v", adds)
	}
	addAt := func(b BookieID) Status { // the writer's add of entry 0 lands on b
		if bk[b].fenced {
			return StatusFenced
		}
		bk[b].entries[0] = "x0"
		return StatusOK
	}
	st1 := addAt("b1") // the add reaches b1 before any fencing

	rec, _, _ := NewRecovery(md, RecoveryOptions{ReadAhead: 1})
	md.State, md.Version = StateInRecovery, 2
	effs := rec.CASDone(CASResult{OK: true, Version: 2})
	if len(effs) != 2 {
		t.Fatalf("fencing: %v", effs)
	}
	bk["b1"].fenced = true // b1's fencing ReadLAC lands; b2's is delayed
	effs = rec.LACResult("b1", StatusOK, -1)
	var readB2 ReadEntry
	for _, e := range effs {
		if r, ok := e.(ReadEntry); ok && r.Bookie == "b2" {
			readB2 = r
		}
	}
	if readB2.Bookie == "" || !readB2.Fence {
		t.Fatalf("recovery read of b2 must fence: %v", effs)
	}
	// The read reaches b2 before its fencing ReadLAC and before the add.
	bk["b2"].fenced = bk["b2"].fenced || readB2.Fence
	effs = rec.ReadResult("b2", 0, StatusNoSuchEntry, nil)
	if len(effs) != 1 || effs[0].(CASMetadata).New.LastEntry != -1 {
		t.Fatalf("want close at -1 after (Qw-Qa)+1 = 1 negative: %v", effs)
	}
	// Now the old writer's add reaches b2, and both answers reach the writer.
	st2 := addAt("b2")
	out := append(w.AddResult("b1", 0, st1), w.AddResult("b2", 0, st2)...)
	for _, e := range out {
		if a, ok := e.(Acked); ok {
			t.Fatalf("writer acknowledged %v beyond the recovered last entry -1", a)
		}
	}
	if st2 != StatusFenced {
		t.Fatalf("late add answered %v, want fenced", st2)
	}
}

// TestFenceCoveredBruteForce checks FenceCovered against the TLA+ spec's
// affirmative definition, per write set: every Qa-subset of every write
// set contains a fenced bookie.
func TestFenceCoveredBruteForce(t *testing.T) {
	ens := []BookieID{"a", "b", "c", "d", "e"}
	for e := 1; e <= len(ens); e++ {
		for qw := 1; qw <= e; qw++ {
			for qa := 1; qa <= qw; qa++ {
				for mask := 0; mask < 1<<e; mask++ {
					fenced := func(b BookieID) bool {
						for i := range e {
							if ens[i] == b {
								return mask&(1<<i) != 0
							}
						}
						return false
					}
					want := true
					for i := range e {
						ws := WriteSet(ens[:e], qw, int64(i))
						// some Qa-subset of ws entirely unfenced?
						for sub := 0; sub < 1<<qw; sub++ {
							n, allUnfenced := 0, true
							for j := range qw {
								if sub&(1<<j) != 0 {
									n++
									allUnfenced = allUnfenced && !fenced(ws[j])
								}
							}
							if n == qa && allUnfenced {
								want = false
							}
						}
					}
					if got := FenceCovered(ens[:e], qw, qa, fenced); got != want {
						t.Fatalf("E=%d Qw=%d Qa=%d fenced=%05b: got %v want %v", e, qw, qa, mask, got, want)
					}
				}
			}
		}
	}
}
