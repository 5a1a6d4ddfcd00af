package faulttest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/quiremq/quire/journal/ledger"
)

// faultKind is one kind of fault the schedule injects.
type faultKind int

const (
	faultKill9     faultKind = iota // kill -9 a bookie; restart it on the same data dir
	faultStop                       // SIGSTOP a bookie (hung); SIGCONT
	faultBlackhole                  // drop everything between the writer and a bookie; heal
	faultReset                      // refuse/reset the writer's connections to a bookie; heal
	faultWriter                     // kill -9 the writer; a new writer takes the log over
	numFaultKinds
)

func (k faultKind) String() string {
	return [...]string{"kill -9 bookie", "SIGSTOP bookie", "blackhole writer↔bookie", "reset writer↔bookie", "kill -9 writer"}[k]
}

// fault is one planned fault: at at (from the start of the run) on
// bookie (not for faultWriter), lasting dur.
type fault struct {
	at     time.Duration
	kind   faultKind
	bookie int
	dur    time.Duration
}

func (f fault) String() string {
	if f.kind == faultWriter {
		return fmt.Sprintf("+%v %v", f.at.Round(time.Millisecond), f.kind)
	}
	return fmt.Sprintf("+%v %v b%d for %v", f.at.Round(time.Millisecond), f.kind, f.bookie, f.dur.Round(time.Millisecond))
}

// plan draws a fault schedule from seed for length: one fault every
// 0.4–1.2 s, each bookie fault lasting 0.5–2.5 s, at most maxDown bookies
// faulty at once (a restarted bookie counts 2 s longer: it takes time to
// start; a bookie fault drawn while maxDown are faulty is dropped). The first numFaultKinds faults are every kind once, in a random
// order. The schedule depends on the seed only.
func plan(seed uint64, nBookies, maxDown int, length time.Duration) []fault {
	rng := rand.New(rand.NewPCG(seed, 0x5EED))
	kinds := rng.Perm(int(numFaultKinds))
	busyUntil := make([]time.Duration, nBookies)
	var out []fault
	at := time.Second
	for at < length {
		kind := faultKind(rng.IntN(int(numFaultKinds)))
		if len(out) < len(kinds) {
			kind = faultKind(kinds[len(out)])
		}
		f := fault{at: at, kind: kind, bookie: -1}
		if kind != faultWriter {
			var free []int
			for b, until := range busyUntil {
				if until <= at {
					free = append(free, b)
				}
			}
			if nBookies-len(free) >= maxDown || len(free) == 0 {
				at += 500 * time.Millisecond // none this time: wait for one to heal
				continue
			}
			f.bookie = free[rng.IntN(len(free))]
			f.dur = time.Duration(500+rng.IntN(2000)) * time.Millisecond
			busyUntil[f.bookie] = at + f.dur
			if kind == faultKill9 {
				busyUntil[f.bookie] += 2 * time.Second
			}
		}
		out = append(out, f)
		at += time.Duration(400+rng.IntN(800)) * time.Millisecond
	}
	return out
}

// runSchedule injects the faults of sched into r as it runs, each heal at
// its time (restarts in the background: a restarted bookie is only
// faulted again once it serves), and heals everything at the end. It
// returns when each fault was injected.
func (r *rig) runSchedule(sched []fault) []time.Time {
	t := r.t
	start := time.Now()
	type heal struct {
		at time.Duration
		fn func()
	}
	var heals []heal
	var restarts sync.WaitGroup
	restarting := make([]chan struct{}, len(r.bookies))
	runHeals := func(upTo time.Duration) {
		slices.SortStableFunc(heals, func(a, b heal) int { return int(a.at - b.at) })
		for len(heals) > 0 && heals[0].at <= upTo {
			heals[0].fn()
			heals = heals[1:]
		}
	}
	sleepUntil := func(at time.Duration) {
		for {
			runHeals(time.Since(start))
			d := at - time.Since(start)
			if d <= 0 {
				return
			}
			time.Sleep(min(d, 20*time.Millisecond))
		}
	}
	var times []time.Time
	for _, f := range sched {
		sleepUntil(f.at)
		t.Logf("fault %v (late by %v)", f, (time.Since(start) - f.at).Round(time.Millisecond))
		times = append(times, time.Now())
		if f.kind == faultWriter {
			r.writer.kill9()
			r.startWriter()
			continue
		}
		b := r.bookies[f.bookie]
		if ch := restarting[f.bookie]; ch != nil {
			<-ch
		}
		end := f.at + f.dur
		switch f.kind {
		case faultKill9:
			b.kill9()
			ch := make(chan struct{})
			restarting[f.bookie] = ch
			heals = append(heals, heal{end, func() {
				restarts.Go(func() {
					defer close(ch)
					if err := b.restart(); err != nil {
						t.Errorf("restarting %s: %v", b.name, err)
					}
				})
			}})
		case faultStop:
			b.stop()
			heals = append(heals, heal{end, b.cont})
		case faultBlackhole, faultReset:
			m := proxyBlackhole
			if f.kind == faultReset {
				m = proxyReset
			}
			b.proxy.set(m)
			heals = append(heals, heal{end, func() { b.proxy.set(proxyPass) }})
		}
	}
	runHeals(1 << 62)
	restarts.Wait()
	return times
}

// The fault tests of DESIGN.md, "Journal": 5 `quire bookie` processes
// and a writer process appending to a log (E=3 Qw=2 Qa=2, rollover every
// 300 entries) while a seeded schedule kills -9, SIGSTOPs and partitions
// (blackhole and reset, through a proxy per bookie) random bookies and
// kills -9 the writer, whose successor takes the log over (fence and
// recover the last ledgers, append a new one). After the schedule, with
// every fault healed, writes must go on; then the history is checked
// against the log read back (checker.check: nothing acknowledged lost or
// changed, closed last entry ≥ every acknowledgement, read order = write
// order, one value per offset, every non-empty ledger in the log).
func TestFaults(t *testing.T) {
	length, roll := 8*time.Second, int64(300)
	if on, d := soak(t); on {
		length, roll = d, 3000 // fewer ledgers: LogReader walks the list per ledger
	}
	s := seed(t)
	sched := plan(s, 5, 2, length)
	r := newRig(t, 5, writerConfig{Shard: "faults/0", E: 3, Qw: 2, Qa: 2, RollEntries: roll,
		Rate: 500, Inflight: 256, AddTimeout: 1500 * time.Millisecond, ReqTimeout: 1500 * time.Millisecond})
	r.startWriter()
	r.waitAcks(100, 60*time.Second)
	r.phase("writing; faults start")
	times := r.runSchedule(sched)
	r.phase("every fault healed")
	// Everything healed: writes go on.
	r.waitAcks(200, 60*time.Second)
	r.finish()
	for i, f := range sched {
		first, gap := r.h.stall(times[i], time.Second)
		t.Logf("stall after %v: first ack of a later append %v after, longest gap between acks within 1s %v",
			f, first.Round(time.Millisecond), gap.Round(time.Millisecond))
	}
	_, acked, _ := r.h.counts()
	if acked < 500 {
		t.Errorf("only %d appends acknowledged", acked)
	}
	r.h.mu.Lock()
	n := len(r.h.opened)
	r.h.mu.Unlock()
	if n < 2 {
		t.Errorf("%d takeovers of the log, want one after a writer was killed", n)
	}
}

// The target of issue 5: four bookies, E=3 Qw=2 Qa=2, kill -9 one of the
// ledger's ensemble mid-run: writes continue after an ensemble change
// and nothing acknowledged is lost. The stall is the time from the kill
// to the first acknowledgement of an append invoked after it (every such
// append waits for the entries sent to the dead bookie, which need the
// ensemble change); the longest gap between acknowledgements around the
// kill is logged too. The bound is generous (the race detector, a busy
// machine); the real numbers are in the log.
func TestKillOneOfFour(t *testing.T) {
	rounds := 1
	if on, _ := soak(t); on {
		rounds = 10
	}
	s := seed(t)
	rng := rand.New(rand.NewPCG(s, 4))
	r := newRig(t, 4, writerConfig{E: 3, Qw: 2, Qa: 2,
		Rate: 500, Inflight: 256, AddTimeout: 2 * time.Second, ReqTimeout: 2 * time.Second})
	// Each round writes a log of its own with a writer of its own: a
	// writer never reuses a bookie that failed it, and with four bookies
	// a second kill would leave it no replacement.
	for round := range rounds {
		r.h, r.cfg.Shard = newHistory(), fmt.Sprintf("kill/%d", round)
		r.startWriter()
		r.waitAcks(300, 60*time.Second)
		md, ens, victim, b := r.pickVictim(rng)
		at := time.Now()
		b.kill9()
		r.waitAcks(300, 30*time.Second)
		first, gap := r.h.stall(at, 2*time.Second)
		t.Logf("round %d: killed %s of ledger %d's ensemble %v: first ack of an append invoked after the kill %v later; longest gap between acks %v",
			round, b.name, md.ID, ens, first.Round(time.Millisecond), gap.Round(time.Millisecond))
		if first < 0 || first > 5*time.Second || gap > 5*time.Second {
			t.Errorf("write stall after the kill: first ack %v, gap %v; want < 5s", first, gap)
		}
		md, err := r.cl.Metadata(context.Background(), md.ID)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(md.Fragments[len(md.Fragments)-1].Bookies, victim) {
			t.Errorf("ledger %d: no ensemble change after killing %s: %v", md.ID, b.name, md)
		}
		r.finish() // restarts the victim before it checks
	}
	// The checker would have caught a violation.
	r.mutants(t)
	r.phase("checker mutants caught")
}

// A takeover while a bookie of the ensemble is dead for good. Four
// bookies, E=3 Qw=2 Qa=2; the writer and one bookie of its ledger's
// ensemble are killed -9 at once, so the ledger's last fragment still
// holds the dead bookie. With Qw = Qa no write-back may fail: the new
// writer's recovery must replace the dead bookie by the fourth (an
// ensemble change during recovery, written with the close) rather than
// abort until the bookie returns — here it never does before the new
// writer has appended. Then the history is checked with every bookie up.
func TestTakeoverWithDeadBookie(t *testing.T) {
	s := seed(t)
	rng := rand.New(rand.NewPCG(s, 5))
	r := newRig(t, 4, writerConfig{Shard: "takeover/0", E: 3, Qw: 2, Qa: 2,
		Rate: 500, Inflight: 256, AddTimeout: 2 * time.Second, ReqTimeout: 2 * time.Second})
	r.startWriter()
	r.waitAcks(300, 60*time.Second)
	md, ens, _, b := r.pickVictim(rng)
	r.writer.kill9()
	b.kill9()
	r.phase("killed the writer and %s of ledger %d's ensemble %v", b.name, md.ID, ens)
	r.startWriter()
	r.waitAcks(300, 60*time.Second)
	r.phase("the new writer took over with %s dead", b.name)
	md, err := r.cl.Metadata(context.Background(), md.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("recovered ledger: %s", md)
	if md.State != ledger.StateClosed {
		t.Errorf("ledger %d not closed by the takeover: %s", md.ID, md)
	}
	r.finish() // restarts the victim before it checks
}

// pickVictim picks a random bookie of the last fragment of the ledger the
// last acknowledgement went to.
func (r *rig) pickVictim(rng *rand.Rand) (md ledger.Metadata, ens []ledger.BookieID, victim ledger.BookieID, b *bookieProc) {
	r.t.Helper()
	_, last := r.h.lastAck()
	md, err := r.cl.Metadata(context.Background(), last.ledger)
	if err != nil {
		r.t.Fatal(err)
	}
	ens = md.Fragments[len(md.Fragments)-1].Bookies
	victim = ens[rng.IntN(len(ens))]
	for _, x := range r.bookies {
		if x.addr == string(victim) {
			b = x
		}
	}
	return md, ens, victim, b
}
