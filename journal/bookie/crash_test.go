package bookie

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/quiremq/quire/internal/vfs"
)

func testutilCounter(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

var long = flag.Bool("long", false, "run the crash tests with many more crash points")

// crashModel records what the workload submitted and what the bookie
// acknowledged. Each ledger is written by one worker in entry order, and a
// bookie acknowledges adds in submission order, so a ledger's acknowledged
// entries are always a prefix 0..acked-1 of its submitted ones.
type crashModel struct {
	mu           sync.Mutex
	acked        map[uint64]uint64 // ledger → entries acknowledged (a prefix)
	submitted    map[uint64]uint64 // ledger → entries submitted
	lacAcked     map[uint64]int64  // highest acknowledged LAC (piggybacked or explicit)
	fenceAcked   map[uint64]bool
	delSubmitted map[uint64]bool
	delAcked     map[uint64]bool
	ackCount     int
	onAck        func(count int)
	err          error
}

func newCrashModel() *crashModel {
	return &crashModel{
		acked: map[uint64]uint64{}, submitted: map[uint64]uint64{}, lacAcked: map[uint64]int64{},
		fenceAcked: map[uint64]bool{}, delSubmitted: map[uint64]bool{}, delAcked: map[uint64]bool{},
	}
}

func (m *crashModel) snapshot() *crashModel {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := newCrashModel()
	for k, v := range m.acked {
		c.acked[k] = v
	}
	for k, v := range m.submitted {
		c.submitted[k] = v
	}
	for k, v := range m.lacAcked {
		c.lacAcked[k] = v
	}
	for k, v := range m.fenceAcked {
		c.fenceAcked[k] = v
	}
	for k, v := range m.delSubmitted {
		c.delSubmitted[k] = v
	}
	for k, v := range m.delAcked {
		c.delAcked[k] = v
	}
	return c
}

// crashPoint is a crash clone with the model before it (what must be
// there) and after it (what may be there).
type crashPoint struct {
	name      string
	fs        *vfs.MemFS
	pre, post *crashModel
}

// crashWorkload runs concurrent adds (many in flight), LAC writes, fences
// and deletes against b until the model counts target acknowledged adds,
// taking crash clones of mem along the way.
type crashWorkload struct {
	t       testing.TB
	b       *Bookie
	mem     *vfs.MemFS
	model   *crashModel
	gen     uint64 // ledger ids of this workload start at gen<<32
	rng     *rand.Rand
	rngMu   sync.Mutex
	pointMu sync.Mutex
	points  []crashPoint
	maxPts  int
	// forced, set by the epilogue, takes crash points beyond maxPts: at
	// the first two passes of every hook point.
	forced map[string]int
}

func (w *crashWorkload) crash(name string) {
	w.pointMu.Lock()
	defer w.pointMu.Unlock()
	if w.forced != nil {
		if w.forced[name] >= 2 {
			return
		}
		w.forced[name]++
	} else if len(w.points) >= w.maxPts {
		return
	}
	w.rngMu.Lock()
	pct := w.rng.IntN(101)
	seed := w.rng.Uint64()
	w.rngMu.Unlock()
	pre := w.model.snapshot()
	clone := w.mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: rand.New(rand.NewPCG(seed, 7))})
	post := w.model.snapshot()
	w.points = append(w.points, crashPoint{name: fmt.Sprintf("%s/unsynced=%d%%", name, pct), fs: clone, pre: pre, post: post})
}

func (w *crashWorkload) run(workers, target int) {
	m := w.model
	stop := make(chan struct{})
	crashKick := make(chan string, 1)
	nextCrash := atomic.Int64{}
	w.rngMu.Lock() // checkpoint hooks draw from rng concurrently
	nextCrash.Store(int64(10 + w.rng.IntN(40)))
	w.rngMu.Unlock()
	m.mu.Lock()
	m.onAck = func(count int) {
		if int64(count) >= nextCrash.Load() {
			nextCrash.Store(int64(count) + int64(5+count%53))
			select {
			case crashKick <- fmt.Sprintf("ack-%d", count):
			default:
			}
		}
		if count == target {
			close(stop)
		}
	}
	m.mu.Unlock()
	var crasher sync.WaitGroup
	crasher.Add(1)
	go func() {
		defer crasher.Done()
		for {
			select {
			case name := <-crashKick:
				w.crash(name)
			case <-stop:
				return
			}
		}
	}()
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			w.worker(uint64(i), stop)
		}(i)
	}
	wg.Wait()
	crasher.Wait()
}

func (w *crashWorkload) worker(id uint64, stop chan struct{}) {
	m, b := w.model, w.b
	w.rngMu.Lock()
	rng := rand.New(rand.NewPCG(w.rng.Uint64(), id))
	w.rngMu.Unlock()
	window := make(chan struct{}, 16)
	next := uint64(0)
	newLedger := func() uint64 {
		next++
		return w.gen<<32 | id<<20 | next
	}
	ledgers := []uint64{newLedger(), newLedger(), newLedger()}
	fenced := map[uint64]bool{}
	fail := func(err error) {
		m.mu.Lock()
		if m.err == nil {
			m.err = err
		}
		m.mu.Unlock()
	}
	defer func() { // wait for the adds in flight
		for i := 0; i < cap(window); i++ {
			window <- struct{}{}
		}
	}()
	for {
		select {
		case <-stop:
			return
		default:
		}
		k := rng.IntN(len(ledgers))
		l := ledgers[k]
		switch r := rng.IntN(1000); {
		case r < 920: // add
			window <- struct{}{}
			m.mu.Lock()
			e := m.submitted[l]
			m.submitted[l] = e + 1
			m.mu.Unlock()
			lac := int64(e) - 1
			b.AddEntry(l, e, lac, payloadFor(l, e), fenced[l], func(err error) {
				defer func() { <-window }()
				if err != nil {
					fail(fmt.Errorf("add %d/%d: %w", l, e, err))
					return
				}
				m.mu.Lock()
				if m.acked[l] != e {
					m.err = fmt.Errorf("ledger %d: entry %d acknowledged after %d", l, e, m.acked[l])
				}
				m.acked[l] = e + 1
				if old, ok := m.lacAcked[l]; !ok || lac > old {
					m.lacAcked[l] = lac
				}
				m.ackCount++
				count, onAck := m.ackCount, m.onAck
				m.mu.Unlock()
				onAck(count)
			})
		case r < 950: // explicit LAC
			m.mu.Lock()
			lac := int64(m.acked[l]) - 1
			m.mu.Unlock()
			if err := b.WriteLAC(l, lac); err != nil {
				fail(err)
				return
			}
			m.mu.Lock()
			if old, ok := m.lacAcked[l]; !ok || lac > old {
				m.lacAcked[l] = lac
			}
			m.mu.Unlock()
		case r < 970: // fence; later adds of this worker are recovery adds
			if _, err := b.Fence(l); err != nil {
				fail(err)
				return
			}
			fenced[l] = true
			m.mu.Lock()
			m.fenceAcked[l] = true
			m.mu.Unlock()
		case r < 990: // delete, replace by a new ledger
			for i := 0; i < cap(window); i++ { // no add of l in flight
				window <- struct{}{}
			}
			for i := 0; i < cap(window); i++ {
				<-window
			}
			m.mu.Lock()
			m.delSubmitted[l] = true
			m.mu.Unlock()
			if err := b.DeleteLedger(l); err != nil {
				fail(err)
				return
			}
			m.mu.Lock()
			m.delAcked[l] = true
			m.mu.Unlock()
			ledgers[k] = newLedger()
		default:
			ledgers = append(ledgers, newLedger())
			if len(ledgers) > 6 {
				ledgers = ledgers[1:]
			}
		}
	}
}

// epilogue deletes the workload's live ledgers in two halves and after
// each runs a checkpoint and a reclaim, taking a crash point at every hook
// they pass (the first two passes of each).
func (w *crashWorkload) epilogue(rng *rand.Rand) {
	w.t.Helper()
	m := w.model
	m.mu.Lock()
	var live []uint64
	for l := range m.submitted {
		if !m.delSubmitted[l] {
			live = append(live, l)
		}
	}
	m.mu.Unlock()
	slices.Sort(live)
	rng.Shuffle(len(live), func(i, j int) { live[i], live[j] = live[j], live[i] })
	w.pointMu.Lock()
	w.forced = map[string]int{}
	w.pointMu.Unlock()
	for _, half := range [][]uint64{live[:len(live)/2], live[len(live)/2:]} {
		for _, l := range half {
			m.mu.Lock()
			m.delSubmitted[l] = true
			m.mu.Unlock()
			if err := w.b.DeleteLedger(l); err != nil {
				w.t.Fatalf("epilogue: delete %d: %v", l, err)
			}
			m.mu.Lock()
			m.delAcked[l] = true
			m.mu.Unlock()
		}
		if err := w.b.checkpoint(); err != nil {
			w.t.Fatalf("epilogue: checkpoint: %v", err)
		}
		if err := w.b.reclaim(); err != nil {
			w.t.Fatalf("epilogue: reclaim: %v", err)
		}
	}
}

// verify checks a bookie reopened on a crash clone against the models of
// the workloads it went through.
func verifyCrash(t testing.TB, b *Bookie, name string, models ...[2]*crashModel) {
	t.Helper()
	for _, pp := range models {
		pre, post := pp[0], pp[1]
		// Every acknowledged add is there with its bytes.
		for l, n := range pre.acked {
			if post.delSubmitted[l] {
				continue
			}
			for e := uint64(0); e < n; e++ {
				got, err := b.ReadEntry(l, e, false)
				if err != nil || !bytes.Equal(got, payloadFor(l, e)) {
					t.Fatalf("%s: acknowledged entry %d/%d: %v (got %d bytes)", name, l, e, err, len(got))
				}
			}
		}
		// Unacknowledged adds are absent or intact, never corrupt.
		for l, n := range post.submitted {
			for e := pre.acked[l]; e <= n; e++ {
				got, err := b.ReadEntry(l, e, false)
				if err == nil && !bytes.Equal(got, payloadFor(l, e)) {
					t.Fatalf("%s: unacknowledged entry %d/%d has wrong bytes", name, l, e)
				}
				if err != nil && !errors.Is(err, ErrNoSuchEntry) {
					t.Fatalf("%s: unacknowledged entry %d/%d: %v", name, l, e, err)
				}
			}
		}
		// Acknowledged deletes hold.
		for l := range pre.delAcked {
			if _, err := b.ReadLAC(l, false); !errors.Is(err, ErrNoSuchLedger) {
				t.Fatalf("%s: deleted ledger %d: ReadLAC %v", name, l, err)
			}
			if _, err := b.ReadEntry(l, 0, false); !errors.Is(err, ErrNoSuchEntry) {
				t.Fatalf("%s: deleted ledger %d: ReadEntry %v", name, l, err)
			}
		}
		// Acknowledged LACs hold.
		for l, lac := range pre.lacAcked {
			if post.delSubmitted[l] || lac < 0 {
				continue
			}
			got, err := b.ReadLAC(l, false)
			if err != nil || got < lac {
				t.Fatalf("%s: ledger %d: LAC %d, %v; acknowledged %d", name, l, got, err, lac)
			}
		}
		// Acknowledged fences hold.
		for l := range pre.fenceAcked {
			if post.delSubmitted[l] {
				continue
			}
			if err := addSync(b, l, 1<<40, -1, payloadFor(l, 1<<40), false); !errors.Is(err, ErrLedgerFenced) {
				t.Fatalf("%s: fenced ledger %d accepted a non-recovery add: %v", name, l, err)
			}
		}
	}
}

func crashOptions(fs vfs.FS, cookies CookieStore) Options {
	o := testOptions(fs, cookies)
	o.CheckpointInterval = 3 * time.Millisecond
	o.CompactionThreshold = 0.6
	o.EntryLogSize = 24 << 10
	return o
}

// TestCrash crashes a loaded bookie at hundreds of points (concurrent adds,
// LAC writes, fences and deletes; inside checkpoints and compactions) with
// a random share of unsynced data surviving, reopens on each crash clone
// and checks the journal invariants of DESIGN.md ("no acknowledged entry is
// lost or changed"), acknowledged fences, LACs and deletes; then keeps
// working on some clones and crashes them again.
func TestCrash(t *testing.T) {
	rounds, perRound, target := 6, 40, 1500
	if raceEnabled {
		rounds, perRound, target = 2, 25, 800
	}
	if *long {
		rounds, perRound, target = 40, 60, 4000
	}
	if testing.Short() {
		rounds = 1
	}
	total := 0
	kinds := map[string]int{}
	for round := 0; round < rounds; round++ {
		seed := uint64(round)*7919 + uint64(time.Now().UnixNano()%1000)
		t.Run(fmt.Sprintf("round=%d/seed=%d", round, seed), func(t *testing.T) {
			total += crashRound(t, seed, perRound, target, kinds)
		})
	}
	t.Logf("%d crash points verified; points by kind: %v", total, kinds)
	// The epilogue of every round reaches all of these; a zero means the
	// maintenance path changed and the test no longer covers it.
	for _, k := range []string{"checkpoint", "compaction", "reclaim", "compactions", "deleted-logs"} {
		if kinds[k] == 0 {
			t.Errorf("no crash point or event of kind %q: %v", k, kinds)
		}
	}
}

func crashRound(t *testing.T, seed uint64, perRound, target int, kinds map[string]int) int {
	rng := rand.New(rand.NewPCG(seed, 1))
	mem := vfs.NewCrashableMem()
	cookies := &MemCookieStore{}
	w := &crashWorkload{t: t, mem: mem, model: newCrashModel(), gen: 1, rng: rng, maxPts: perRound}
	o := crashOptions(mem, cookies)
	hookRNG := rand.New(rand.NewPCG(seed, 3))
	var hookMu sync.Mutex
	o.testHook = func(point string) {
		hookMu.Lock()
		odds := 3
		if strings.HasPrefix(point, "compaction") {
			odds = 12
		}
		w.pointMu.Lock()
		forced := w.forced != nil // the epilogue takes every hook
		w.pointMu.Unlock()
		take := forced || hookRNG.IntN(odds) == 0
		hookMu.Unlock()
		if take {
			w.crash(point)
		}
	}
	b := mustOpen(t, o)
	w.b = b
	w.run(4, target)
	if err := w.model.err; err != nil {
		t.Fatal(err)
	}
	// Whether the timed maintenance loop checkpointed or compacted while
	// the workload ran depends on the machine's speed. The epilogue makes
	// it certain: it deletes half the live ledgers, then the rest, and
	// after each half runs a checkpoint and a reclaim itself, crashing at
	// every hook they pass (compaction of sparse logs, deletion of empty
	// ones).
	w.epilogue(rng)
	kinds["compactions"] += int(testutilCounter(b.m.compactions))
	kinds["deleted-logs"] += int(testutilCounter(b.m.deletedLogs))
	kinds["checkpoints"] += int(testutilCounter(b.m.checkpoints))
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range w.points {
		kind, _, _ := strings.Cut(p.name, ":")
		kind, _, _ = strings.Cut(kind, "-")
		kinds[kind]++
	}
	verified := 0
	for i, p := range w.points {
		o := crashOptions(p.fs, cookies)
		c, err := Open(o)
		if err != nil {
			t.Fatalf("crash point %d (%s): reopen: %v", i, p.name, err)
		}
		verifyCrash(t, c, p.name, [2]*crashModel{p.pre, p.post})
		verified++
		// Keep working on some clones and crash again: recovery must be
		// repeatable, and the first crash's facts must survive the second.
		if i%10 == 3 {
			w2 := &crashWorkload{t: t, mem: p.fs, model: newCrashModel(), gen: 2, rng: rng, maxPts: 3, b: c}
			w2.run(3, 300)
			if err := w2.model.err; err != nil {
				t.Fatal(err)
			}
			for j, p2 := range w2.points {
				c2, err := Open(crashOptions(p2.fs, cookies))
				if err != nil {
					t.Fatalf("second crash %d of point %d: reopen: %v", j, i, err)
				}
				verifyCrash(t, c2, p.name+" then "+p2.name, [2]*crashModel{p.pre, p.post}, [2]*crashModel{p2.pre, p2.post})
				verified++
				if err := c2.Close(); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if len(w.points) < perRound/2 {
		t.Fatalf("only %d crash points taken", len(w.points))
	}
	return verified
}
