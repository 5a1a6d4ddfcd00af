package ledger

import (
	"flag"
	"fmt"
	"math/rand"
	"slices"
	"testing"
	"time"
)

var simSeeds = flag.Int("sim.seeds", 5000, "seeds TestSimulation runs")

// TestSimulation runs a writer and then a recovery against simulated
// bookies and a simulated meta store, all in memory and deterministic per
// seed: messages are delivered in random order, dropped before or after
// the bookie acts (the sender sees a timeout), bookies go down, the writer
// crashes or — worse — is partitioned and keeps writing while the recovery
// runs. Aborted recoveries are retried; the last attempt runs without
// faults and must close the ledger. The invariants are DESIGN.md's
// ("Journal"):
//
//   - no acknowledged entry is lost or changed: every entry the writer
//     acknowledged is ≤ the closed ledger's last entry and is held, with
//     its data, by at least Qa bookies of its write set in the closed
//     metadata (so any reader finds it);
//   - the closed ledger's last entry ≥ every acknowledged entry, including
//     those acknowledged by a partitioned writer after recovery started;
//   - no two values at one offset on any bookie;
//   - every entry up to the last entry is readable (Qa copies);
//   - a recovery that aborts leaves the ledger unclosed.
func TestSimulation(t *testing.T) {
	n := *simSeeds
	if testing.Short() {
		n = 300
	}
	start := time.Now()
	stats := map[string]int{}
	for seed := range int64(n) {
		if err := simulate(seed, stats); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
	}
	t.Logf("%d seeds in %v: %v", n, time.Since(start), stats)
}

type simBookie struct {
	entries map[int64]string
	fenced  bool
	lac     int64
	down    bool
}

type simMsg struct {
	writer bool    // to or from the writer
	at     float64 // delivery time (timed scheduling)
	run    func()
}

type sim struct {
	rng     *rand.Rand
	queue   []simMsg
	bookies map[BookieID]*simBookie
	stored  Metadata
	drop    float64 // chance a message is lost
	lag     bool    // the writer's messages are slow: they land late
	writer  bool    // messages sent now are the writer's
	timed   bool    // deliver by random, heavy-tailed delays instead of uniformly at random
	now     float64
}

func (s *sim) send(f func()) {
	d := s.rng.ExpFloat64()
	if s.rng.Intn(8) == 0 {
		d *= 30 // a message stuck in a slow connection
	}
	if s.lag && s.writer {
		d *= 3
	}
	s.queue = append(s.queue, simMsg{writer: s.writer, at: s.now + d, run: f})
}

// deliverOne delivers a random queued message (with lag, preferring those
// that are not the writer's).
func (s *sim) deliverOne() {
	i := s.rng.Intn(len(s.queue))
	if s.timed {
		for j, m := range s.queue {
			if m.at < s.queue[i].at {
				i = j
			}
		}
		s.now = s.queue[i].at
	} else {
		for try := 0; s.lag && s.queue[i].writer && try < 4; try++ {
			i = s.rng.Intn(len(s.queue))
		}
	}
	m := s.queue[i]
	s.queue = slices.Delete(s.queue, i, i+1)
	s.writer = m.writer
	m.run()
}

// request models one request to bookie b: act runs at the bookie (unless
// the bookie is down or the request is lost) and returns the reply, which
// reply receives — or StatusUnknown if the reply is lost.
func (s *sim) request(b BookieID, act func(*simBookie) (Status, int64, string), reply func(Status, int64, string)) {
	s.send(func() { // the reply keeps the request's tag
		bk := s.bookies[b]
		if bk.down || s.rng.Float64() < s.drop {
			s.send(func() { reply(StatusUnknown, -1, "") })
			return
		}
		st, n, d := act(bk)
		if s.rng.Float64() < s.drop {
			st, n, d = StatusUnknown, -1, ""
		}
		s.send(func() { reply(st, n, d) })
	})
}

func (s *sim) cas(c CASMetadata, done func(CASResult)) {
	s.send(func() {
		var r CASResult
		if s.stored.Version == c.Expected {
			s.stored = c.New.Clone()
			s.stored.Version = c.Expected + 1
			r = CASResult{OK: true, Version: s.stored.Version}
		} else {
			r = CASResult{Current: s.stored.Clone()}
		}
		s.send(func() { done(r) })
	})
}

func simulate(seed int64, stats map[string]int) error {
	rng := rand.New(rand.NewSource(seed))
	e := 1 + rng.Intn(4)
	qw := 1 + rng.Intn(e)
	qa := 1 + rng.Intn(qw)
	nb := e + 1 + rng.Intn(3)
	s := &sim{rng: rng, bookies: map[BookieID]*simBookie{}, drop: []float64{0, 0.02, 0.1, 0.3}[rng.Intn(4)], timed: rng.Intn(2) == 0}
	var pool []BookieID
	for i := range nb {
		b := fmt.Sprintf("b%d", i+1)
		pool = append(pool, b)
		s.bookies[b] = &simBookie{entries: map[int64]string{}, lac: -1}
	}
	s.stored = Metadata{ID: 1, Ensemble: e, WriteQuorum: qw, AckQuorum: qa, State: StateOpen, LastEntry: -1, Version: 1,
		Fragments: []Fragment{{FirstEntry: 0, Bookies: slices.Clone(pool[:e])}}}
	cfg := fmt.Sprintf("E=%d Qw=%d Qa=%d bookies=%d drop=%v", e, qw, qa, nb, s.drop)

	w, err := NewWriter(s.stored, pool)
	if err != nil {
		return err
	}
	var (
		data        = map[int64]string{}
		writerAcked = int64(-1)
		writerAlive = true
		violation   error
	)
	var runWriter func([]Effect)
	runWriter = func(effs []Effect) {
		for _, ef := range effs {
			switch ef := ef.(type) {
			case SendAdd:
				ef.Data = slices.Clone(ef.Data)
				s.request(ef.Bookie, func(bk *simBookie) (Status, int64, string) {
					if bk.fenced {
						return StatusFenced, -1, ""
					}
					if old, ok := bk.entries[ef.Entry]; ok && old != string(ef.Data) {
						violation = fmt.Errorf("bookie %s: entry %d overwritten %q -> %q", ef.Bookie, ef.Entry, old, ef.Data)
					}
					bk.entries[ef.Entry] = string(ef.Data)
					bk.lac = max(bk.lac, ef.LAC)
					return StatusOK, -1, ""
				}, func(st Status, _ int64, _ string) {
					if writerAlive {
						runWriter(w.AddResult(ef.Bookie, ef.Entry, st))
					}
				})
			case WriteLAC:
				s.request(ef.Bookie, func(bk *simBookie) (Status, int64, string) {
					bk.lac = max(bk.lac, ef.LAC)
					return StatusOK, -1, ""
				}, func(Status, int64, string) {})
			case CASMetadata:
				s.cas(ef, func(r CASResult) {
					if writerAlive {
						runWriter(w.CASDone(r))
					}
				})
			case Acked:
				if ef.From != writerAcked+1 {
					violation = fmt.Errorf("acked %d..%d after %d", ef.From, ef.UpTo, writerAcked)
				}
				writerAcked = ef.UpTo
			case FailAdds, Stopped, Closed:
			default:
				violation = fmt.Errorf("writer effect %v", ef)
			}
		}
	}
	writerStep := func() {
		s.writer = true
		switch r := rng.Intn(10); {
		case r < 5:
			x := w.Next()
			d := fmt.Sprintf("%d-%d", x, rng.Intn(1000))
			if _, effs, err := w.Add([]byte(d)); err == nil {
				data[x] = d
				runWriter(effs)
			}
		case r < 6:
			runWriter(w.Tick())
		case r < 7:
			runWriter(w.BookieFailed(pool[rng.Intn(nb)]))
		}
	}

	// Phase 1: the writer alone.
	for range rng.Intn(60) {
		if len(s.queue) > 0 && rng.Intn(3) > 0 {
			s.deliverOne()
		} else {
			writerStep()
		}
	}
	// Phase 2: the writer crashes (its answers are lost; its requests may
	// still arrive) or is partitioned and keeps going.
	partitioned := rng.Intn(2) == 0
	writerAlive = partitioned
	s.lag = rng.Intn(2) == 0
	if partitioned {
		stats["partitioned"]++
	}

	var (
		recovered = false
		last      int64
	)
	for attempt := 0; attempt < 4 && !recovered; attempt++ {
		final := attempt == 3
		if final {
			s.drop = 0
			for _, bk := range s.bookies {
				bk.down = false
			}
		} else {
			for _, bk := range s.bookies {
				bk.down = rng.Intn(8) == 0
			}
		}
		before := s.stored.Clone()
		opts := RecoveryOptions{ReadAhead: 1 + rng.Intn(4)}
		if rng.Intn(2) == 0 {
			opts.Available = pool // write-backs that fail replace bookies
		}
		rec, effs, err := NewRecovery(s.stored, opts)
		if err != nil {
			return fmt.Errorf("%s: %v", cfg, err)
		}
		var outcome Effect
		var runRec func([]Effect)
		runRec = func(effs []Effect) {
			for _, ef := range effs {
				switch ef := ef.(type) {
				case CASMetadata:
					s.cas(ef, func(r CASResult) { runRec(rec.CASDone(r)) })
				case ReadLAC:
					s.request(ef.Bookie, func(bk *simBookie) (Status, int64, string) {
						bk.fenced = bk.fenced || ef.Fence
						return StatusOK, bk.lac, ""
					}, func(st Status, lac int64, _ string) { runRec(rec.LACResult(ef.Bookie, st, lac)) })
				case ReadEntry:
					s.request(ef.Bookie, func(bk *simBookie) (Status, int64, string) {
						bk.fenced = bk.fenced || ef.Fence
						if d, ok := bk.entries[ef.Entry]; ok {
							return StatusOK, -1, d
						}
						return StatusNoSuchEntry, -1, ""
					}, func(st Status, _ int64, d string) { runRec(rec.ReadResult(ef.Bookie, ef.Entry, st, []byte(d))) })
				case SendAdd:
					if !ef.Recovery {
						violation = fmt.Errorf("recovery add without the recovery flag")
					}
					ef.Data = slices.Clone(ef.Data)
					s.request(ef.Bookie, func(bk *simBookie) (Status, int64, string) {
						if old, ok := bk.entries[ef.Entry]; ok && old != string(ef.Data) {
							violation = fmt.Errorf("bookie %s: recovery overwrote entry %d %q -> %q", ef.Bookie, ef.Entry, old, ef.Data)
						}
						bk.entries[ef.Entry] = string(ef.Data)
						return StatusOK, -1, ""
					}, func(st Status, _ int64, _ string) { runRec(rec.AddResult(ef.Bookie, ef.Entry, st)) })
				case Recovered, Aborted:
					if outcome != nil {
						violation = fmt.Errorf("two outcomes: %v, %v", outcome, ef)
					}
					outcome = ef
				default:
					violation = fmt.Errorf("recovery effect %v", ef)
				}
			}
		}
		s.writer = false
		runRec(effs)
		for (len(s.queue) > 0 || (partitioned && outcome == nil)) && violation == nil {
			if partitioned && writerAlive && rng.Intn(4) == 0 {
				writerStep()
				continue
			}
			if len(s.queue) == 0 {
				break
			}
			s.deliverOne()
		}
		if violation != nil {
			return fmt.Errorf("%s: %v", cfg, violation)
		}
		switch o := outcome.(type) {
		case Recovered:
			recovered, last = true, o.LastEntry
			if s.stored.State != StateClosed || s.stored.LastEntry != last {
				return fmt.Errorf("%s: recovered %d but meta says %s", cfg, last, s.stored)
			}
			stats["recovered"]++
		case Aborted:
			stats["aborted"]++
			if s.stored.State == StateClosed && before.State != StateClosed {
				return fmt.Errorf("%s: aborted (%s) yet the ledger was closed: %s", cfg, o.Reason, s.stored)
			}
			if final {
				return fmt.Errorf("%s: fault-free recovery aborted: %s", cfg, o.Reason)
			}
		default:
			return fmt.Errorf("%s: recovery ended without an outcome (%s)", cfg, rec)
		}
	}
	// A partitioned writer keeps trying after the close: nothing it does may
	// be acknowledged past the last entry.
	if partitioned {
		for i := 0; i < 200 && writerAlive; i++ {
			if len(s.queue) > 0 && rng.Intn(3) > 0 {
				s.deliverOne()
			} else {
				writerStep()
			}
		}
		for len(s.queue) > 0 {
			s.deliverOne()
		}
	}
	if violation != nil {
		return fmt.Errorf("%s: %v", cfg, violation)
	}
	if writerAcked > last {
		return fmt.Errorf("%s: writer acknowledged up to %d, ledger closed at %d", cfg, writerAcked, last)
	}
	md := s.stored
	for x := int64(0); x <= last; x++ {
		n := 0
		for _, b := range md.WriteSetOf(x) {
			if d, ok := s.bookies[b].entries[x]; ok && d == data[x] {
				n++
			}
		}
		if n < qa {
			return fmt.Errorf("%s: entry %d (last %d, acked %d) on %d bookies of %v, want %d; md %s", cfg, x, last, writerAcked, n, md.WriteSetOf(x), qa, md)
		}
	}
	for b, bk := range s.bookies {
		for x, d := range bk.entries {
			if d != data[x] {
				return fmt.Errorf("%s: bookie %s holds %q at %d, written %q", cfg, b, d, x, data[x])
			}
		}
	}
	stats[fmt.Sprintf("acked>=0:%v", writerAcked >= 0)]++
	return nil
}
