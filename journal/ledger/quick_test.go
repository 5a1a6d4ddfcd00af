package ledger

import (
	"fmt"
	"math/rand"
	"slices"
	"testing"
	"testing/quick"
)

// TestWriterQuick drives a Writer with random interleavings of adds, bookie
// answers (ok, timeout, fenced), bookie failures, metadata CASes (won, lost
// to a version bump, lost to a recovery), ticks, new bookies and close, and
// checks every effect against a naive model that recomputes everything
// from the full history (STYLE.md item 7; etcd-io/raft quorum/quick_test.go):
//
//   - acknowledgements form a prefix: each Acked starts at LAC+1, so the
//     LAC is monotonic and never passes the last add;
//   - an entry is acknowledged only when Qa distinct bookies of its write
//     set, in the fragment of the committed metadata that holds it, stored
//     it with the right data;
//   - every add goes to a bookie of the entry's write set (Qw distinct
//     bookies) in the committed metadata, with the entry's data and a LAC
//     no higher than the writer's;
//   - ensemble changes start at LAC+1, replace only failed bookies, and
//     never pick a failed one or one already in the ensemble;
//   - without failures the LAC is exactly the naive LAC (the longest prefix
//     with Qa acks each); with failures never above it;
//   - FailAdds covers exactly the unacknowledged adds; nothing after the
//     writer stops or closes; a close records the LAC.
func TestWriterQuick(t *testing.T) {
	f := func(seed int64) bool {
		if err := writerModelRun(seed, 300); err != nil {
			t.Logf("seed %d: %v", seed, err)
			return false
		}
		return true
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 2000}); err != nil {
		t.Fatal(err)
	}
}

type sentAdd struct {
	b BookieID
	e int64
}

func writerModelRun(seed int64, steps int) (err error) {
	rng := rand.New(rand.NewSource(seed))
	e := 1 + rng.Intn(5)
	qw := 1 + rng.Intn(e)
	qa := 1 + rng.Intn(qw)
	var pool []BookieID
	for i := range e + 2 + rng.Intn(4) {
		pool = append(pool, fmt.Sprintf("b%d", i+1))
	}
	avail := pool[:e+rng.Intn(len(pool)-e+1)]
	stored := Metadata{ID: 7, Ensemble: e, WriteQuorum: qw, AckQuorum: qa, State: StateOpen, LastEntry: -1, Version: 1,
		Fragments: []Fragment{{FirstEntry: 0, Bookies: slices.Clone(pool[:e])}}}
	w, err := NewWriter(stored, avail)
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf("E=%d Qw=%d Qa=%d", e, qw, qa)
	var (
		data      = map[int64]string{}
		stores    = map[BookieID]map[int64]string{} // what each bookie holds
		okFrom    = map[int64]map[BookieID]bool{}   // model: OK answers per entry
		inflight  []sentAdd
		cas       *CASMetadata
		lac       = int64(-1)
		next      = int64(0)
		failed    = map[BookieID]bool{}
		anyFail   bool
		ended     bool
		closeAsks bool
	)
	naiveLAC := func() int64 {
		n := int64(-1)
		for x := int64(0); x < next; x++ {
			c := 0
			for _, b := range stored.WriteSetOf(x) {
				if okFrom[x][b] {
					c++
				}
			}
			if c < qa {
				break
			}
			n = x
		}
		return n
	}
	apply := func(effs []Effect) error {
		for _, ef := range effs {
			if ended {
				return fmt.Errorf("%s: effect %v after the writer ended", cfg, ef)
			}
			switch ef := ef.(type) {
			case SendAdd:
				ws := stored.WriteSetOf(ef.Entry)
				if hasDuplicate(ws) || len(ws) != qw {
					return fmt.Errorf("%s: write set %v", cfg, ws)
				}
				if cas != nil || !slices.Contains(ws, ef.Bookie) || string(ef.Data) != data[ef.Entry] || ef.LAC > lac || ef.Recovery {
					return fmt.Errorf("%s: bad send %v (write set %v, lac %d, cas in flight %v)", cfg, ef, ws, lac, cas != nil)
				}
				inflight = append(inflight, sentAdd{ef.Bookie, ef.Entry})
			case Acked:
				if ef.From != lac+1 || ef.UpTo < ef.From || ef.UpTo >= next {
					return fmt.Errorf("%s: acked %d..%d with lac %d next %d", cfg, ef.From, ef.UpTo, lac, next)
				}
				if cas != nil {
					return fmt.Errorf("%s: acked during a CAS", cfg)
				}
				for x := ef.From; x <= ef.UpTo; x++ {
					n := 0
					for _, b := range stored.WriteSetOf(x) {
						if stores[b][x] == data[x] && okFrom[x][b] {
							n++
						}
					}
					if n < qa {
						return fmt.Errorf("%s: entry %d acknowledged with %d acks from its write set %v", cfg, x, n, stored.WriteSetOf(x))
					}
				}
				lac = ef.UpTo
			case CASMetadata:
				if cas != nil {
					return fmt.Errorf("%s: two CASes in flight", cfg)
				}
				if err := ef.New.Validate(); err != nil {
					return fmt.Errorf("%s: CAS of invalid metadata: %v", cfg, err)
				}
				c := ef
				cas = &c
				if ef.New.State == StateClosed {
					if ef.New.LastEntry != lac || lac != next-1 {
						return fmt.Errorf("%s: close with last %d, lac %d, next %d", cfg, ef.New.LastEntry, lac, next)
					}
					continue
				}
				old := stored.Fragments[len(stored.Fragments)-1]
				nf := ef.New.Fragments[len(ef.New.Fragments)-1]
				if nf.FirstEntry != lac+1 {
					return fmt.Errorf("%s: new fragment at %d, lac %d", cfg, nf.FirstEntry, lac)
				}
				for i, b := range nf.Bookies {
					if b != old.Bookies[i] && (failed[b] || slices.Contains(old.Bookies, b) || !failed[old.Bookies[i]]) {
						return fmt.Errorf("%s: bad replacement %s for %s", cfg, b, old.Bookies[i])
					}
				}
			case FailAdds:
				if ef.From != lac+1 || ef.To != next-1 {
					return fmt.Errorf("%s: fail-adds %d..%d, lac %d next %d", cfg, ef.From, ef.To, lac, next)
				}
			case Stopped:
				ended = true
			case Closed:
				if ef.LastEntry != lac {
					return fmt.Errorf("%s: closed at %d, lac %d", cfg, ef.LastEntry, lac)
				}
				ended = true
			case WriteLAC:
				if ef.LAC != lac {
					return fmt.Errorf("%s: explicit lac %d, lac %d", cfg, ef.LAC, lac)
				}
			default:
				return fmt.Errorf("%s: unexpected effect %v", cfg, ef)
			}
		}
		if w.LAC() != lac {
			return fmt.Errorf("%s: writer LAC %d, effects say %d", cfg, w.LAC(), lac)
		}
		if nl := naiveLAC(); lac > nl || (!anyFail && cas == nil && !ended && lac != nl) {
			return fmt.Errorf("%s: lac %d, naive lac %d (failures %v)", cfg, lac, nl, anyFail)
		}
		return nil
	}
	for step := 0; step < steps && !ended; step++ {
		var effs []Effect
		switch r := rng.Intn(100); {
		case r < 25:
			d := fmt.Sprintf("d%d", next)
			x, ef, err := w.Add([]byte(d))
			if err != nil {
				if !closeAsks {
					return fmt.Errorf("%s: add: %v", cfg, err)
				}
				continue
			}
			if x != next {
				return fmt.Errorf("%s: add got entry %d, want %d", cfg, x, next)
			}
			data[x] = d
			next++
			effs = ef
		case r < 75 && len(inflight) > 0:
			i := rng.Intn(len(inflight))
			s := inflight[i]
			inflight = slices.Delete(inflight, i, i+1)
			switch q := rng.Intn(100); {
			case q < 90:
				if stores[s.b] == nil {
					stores[s.b] = map[int64]string{}
				}
				stores[s.b][s.e] = data[s.e]
				if okFrom[s.e] == nil {
					okFrom[s.e] = map[BookieID]bool{}
				}
				okFrom[s.e][s.b] = true
				effs = w.AddResult(s.b, s.e, StatusOK)
			case q < 98:
				anyFail, failed[s.b] = true, true
				effs = w.AddResult(s.b, s.e, StatusUnknown)
			default:
				anyFail = true
				effs = w.AddResult(s.b, s.e, StatusFenced)
			}
		case r < 78:
			b := pool[rng.Intn(len(pool))]
			ens := stored.Fragments[len(stored.Fragments)-1].Bookies
			if cas != nil && cas.New.State == StateOpen {
				ens = cas.New.Fragments[len(cas.New.Fragments)-1].Bookies
			}
			if slices.Contains(ens, b) {
				anyFail, failed[b] = true, true
			}
			effs = w.BookieFailed(b)
		case r < 90 && cas != nil:
			c := *cas
			cas = nil
			switch q := rng.Intn(100); {
			case q < 85:
				stored = c.New.Clone()
				stored.Version = c.Expected + 1
				effs = w.CASDone(CASResult{OK: true, Version: stored.Version})
			case q < 95:
				stored.Version++
				effs = w.CASDone(CASResult{Current: stored.Clone()})
			default:
				anyFail = true
				stored.Version++
				stored.State = StateInRecovery
				effs = w.CASDone(CASResult{Current: stored.Clone()})
			}
		case r < 94:
			effs = w.Tick()
		case r < 97:
			avail = pool[:min(len(pool), len(avail)+1)]
			effs = w.SetAvailable(avail)
		case r < 98:
			if ef, err := w.Close(); err == nil {
				closeAsks, effs = true, ef
			}
		}
		if err := apply(effs); err != nil {
			return fmt.Errorf("step %d: %w", step, err)
		}
	}
	return nil
}

// TestInWriteSetQuick checks the allocation-free InWriteSet against
// WriteSetOf for random fragments, quorums, entries and bookies.
func TestInWriteSetQuick(t *testing.T) {
	f := func(seed int64) bool {
		rng := rand.New(rand.NewSource(seed))
		e := 1 + rng.Intn(6)
		md := Metadata{Ensemble: e, WriteQuorum: 1 + rng.Intn(e)}
		pool := []BookieID{"b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8"}
		for first := int64(0); len(md.Fragments) < 1+rng.Intn(3); first += 1 + rng.Int63n(10) {
			rng.Shuffle(len(pool), func(i, j int) { pool[i], pool[j] = pool[j], pool[i] })
			md.Fragments = append(md.Fragments, Fragment{FirstEntry: first, Bookies: slices.Clone(pool[:e])})
		}
		for range 50 {
			x, b := rng.Int63n(40), pool[rng.Intn(len(pool))]
			if md.InWriteSet(x, b) != slices.Contains(md.WriteSetOf(x), b) {
				t.Logf("entry %d bookie %s: InWriteSet %v, write set %v (md %s)", x, b, md.InWriteSet(x, b), md.WriteSetOf(x), md)
				return false
			}
		}
		return true
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 2000}); err != nil {
		t.Fatal(err)
	}
}
