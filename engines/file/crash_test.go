package file

import (
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
)

var long = flag.Bool("long", false, "run many more crash iterations")

// crashValue is the deterministic value of record id (non-empty only if the
// id says so), so that any record read back can be checked byte for byte.
func crashValue(id string, size int) []byte {
	h := fnv.New64a()
	h.Write([]byte(id))
	x := h.Sum64()
	b := make([]byte, size)
	for i := range b {
		x = x*6364136223846793005 + 1442695040888963407
		b[i] = byte(x >> 56)
	}
	return b
}

// crashRecord builds record seq of writer w in round r.
func crashRecord(r, w, seq, size int) shard.Record {
	id := fmt.Sprintf("r%d/w%d/%d/%d", r, w, seq, size)
	return shard.Record{Timestamp: int64(seq + 1), Key: []byte(id), Value: crashValue(id, size)}
}

// crashModel is what the test knows about a shard while appenders, trims
// and seals run.
type crashModel struct {
	mu            sync.Mutex
	submitted     map[string]bool   // record ids handed to Append (acknowledged or not)
	acked         map[string]uint64 // acknowledged records and their offsets
	trimAcked     uint64            // largest trim point acknowledged
	trimMax       uint64            // largest trim point submitted
	sealSubmitted bool
	sealAcked     bool
}

type crashSnapshot struct {
	acked     map[string]uint64
	trimAcked uint64
	sealAcked bool
}

func (m *crashModel) snapshot() crashSnapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	acked := make(map[string]uint64, len(m.acked))
	for k, v := range m.acked {
		acked[k] = v
	}
	return crashSnapshot{acked: acked, trimAcked: m.trimAcked, sealAcked: m.sealAcked}
}

// verifyCrash checks a shard recovered after a crash against the model: every
// record acknowledged before the crash (snap) is intact at its offset when
// durable is set; every record present was submitted, at the offset it was
// acknowledged at if it was, and in its writer's order; offsets are dense;
// trim and seal are as acknowledged. It returns the recovered records.
func verifyCrash(t *testing.T, s *Shard, m *crashModel, snap crashSnapshot, durable bool) []shard.Record {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	low, high := s.Watermarks()
	if low < snap.trimAcked {
		t.Fatalf("low %d below the acknowledged trim point %d", low, snap.trimAcked)
	}
	if low > max(m.trimMax, 0) && low != 0 {
		t.Fatalf("low %d above every submitted trim point (max %d)", low, m.trimMax)
	}
	recs := readAll(t, s)
	seen := map[string]bool{}
	lastSeq := map[string]int{}
	for _, r := range recs {
		id := string(r.Key)
		if !m.submitted[id] {
			t.Fatalf("offset %d holds %q, which was never submitted", r.Offset, id)
		}
		if seen[id] {
			t.Fatalf("record %q appears twice", id)
		}
		seen[id] = true
		var rd, w, seq, size int
		if _, err := fmt.Sscanf(id, "r%d/w%d/%d/%d", &rd, &w, &seq, &size); err != nil {
			t.Fatalf("bad id %q", id)
		}
		want := crashRecord(rd, w, seq, size)
		if string(r.Value) != string(want.Value) || r.Timestamp != want.Timestamp {
			t.Fatalf("record %q at offset %d has wrong contents", id, r.Offset)
		}
		if off, ok := m.acked[id]; ok && off != r.Offset {
			t.Fatalf("record %q acknowledged at offset %d, found at %d", id, off, r.Offset)
		}
		wk := fmt.Sprintf("r%d/w%d", rd, w)
		if prev, ok := lastSeq[wk]; ok && seq <= prev {
			t.Fatalf("writer %s: record %d at offset %d after record %d", wk, seq, r.Offset, prev)
		}
		lastSeq[wk] = seq
	}
	if durable {
		for id, off := range snap.acked {
			if off < low {
				continue
			}
			if off >= high || string(recs[off-low].Key) != id {
				t.Fatalf("acknowledged record %q at offset %d lost (low %d, high %d)", id, off, low, high)
			}
		}
	}
	if snap.sealAcked && !s.Sealed() {
		t.Fatal("acknowledged seal lost")
	}
	if s.Sealed() && !m.sealSubmitted {
		t.Fatal("shard sealed but Seal was never called")
	}
	return recs
}

// TestCrashRandom crashes a shard at random moments under concurrent
// appenders (and trims and seals), keeping a random share of the unsynced
// data, then recovers it and checks it against the model; each iteration
// crashes and recovers several times in a row.
func TestCrashRandom(t *testing.T) {
	iters := 200
	if testing.Short() {
		iters = 40
	}
	if *long {
		iters = 3000
	}
	start := time.Now()
	for i := range iters {
		crashIteration(t, uint64(i))
		if t.Failed() {
			t.Fatalf("seed %d failed", i)
		}
	}
	t.Logf("%d crash iterations in %v", iters, time.Since(start))
}

func crashIteration(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	o := Options{
		SegmentBytes:       int64(1024 + rng.IntN(16<<10)),
		IndexIntervalBytes: []int{64, 512, 4096}[rng.IntN(3)],
		SyncInterval:       time.Millisecond,
	}
	switch p := rng.IntN(10); {
	case p < 7:
		o.Sync = SyncBatch
	case p < 9:
		o.Sync = SyncInterval
	default:
		o.Sync = SyncNone
	}
	durable := o.Sync == SyncBatch
	mem := vfs.NewCrashableMem()
	e := openEngine(t, mem, "/d", o)
	s := mustCreate(t, e, "c")
	m := &crashModel{submitted: map[string]bool{}, acked: map[string]uint64{}}
	for round := range 3 {
		var stop atomic.Bool
		var acks atomic.Int64
		var wg sync.WaitGroup
		writers := 1 + rng.IntN(6)
		maxSize := []int{0, 100, 1500, 5000}[rng.IntN(4)]
		for w := range writers {
			wrng := rand.New(rand.NewPCG(seed, uint64(round*100+w)))
			wg.Add(1)
			go func() {
				defer wg.Done()
				for seq := 0; !stop.Load(); {
					n := 1 + wrng.IntN(4)
					b := make([]shard.Record, n)
					m.mu.Lock()
					for k := range b {
						b[k] = crashRecord(round, w, seq, wrng.IntN(maxSize+1))
						m.submitted[string(b[k].Key)] = true
						seq++
					}
					m.mu.Unlock()
					first, err := s.Append(bg, b)
					if err != nil {
						if !errors.Is(err, shard.ErrSealed) && !errors.Is(err, shard.ErrClosed) {
							t.Errorf("seed %d: Append: %v", seed, err)
						}
						return
					}
					m.mu.Lock()
					for k := range b {
						m.acked[string(b[k].Key)] = first + uint64(k)
					}
					m.mu.Unlock()
					acks.Add(1)
				}
			}()
		}
		// Trims and a seal race with the appenders.
		wg.Add(1)
		trims := rng.IntN(3) == 0
		seal := rng.IntN(5) == 0
		sealAfter := int64(rng.IntN(100))
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if trims {
					_, high := s.Watermarks()
					low, _ := s.Watermarks()
					if high > low {
						at := low + uint64(rand.IntN(int(high-low)+1))
						m.mu.Lock()
						m.trimMax = max(m.trimMax, at)
						m.mu.Unlock()
						if err := s.Trim(bg, at); err == nil {
							m.mu.Lock()
							m.trimAcked = max(m.trimAcked, at)
							m.mu.Unlock()
						} else if !errors.Is(err, shard.ErrClosed) {
							t.Errorf("seed %d: Trim: %v", seed, err)
							return
						}
					}
				}
				if seal && acks.Load() >= sealAfter {
					seal = false
					m.mu.Lock()
					m.sealSubmitted = true
					m.mu.Unlock()
					if err := s.Seal(bg); err == nil {
						m.mu.Lock()
						m.sealAcked = true
						m.mu.Unlock()
					} else if !errors.Is(err, shard.ErrClosed) {
						t.Errorf("seed %d: Seal: %v", seed, err)
						return
					}
				}
				time.Sleep(50 * time.Microsecond)
			}
		}()
		target := int64(rng.IntN(150))
		for acks.Load() < target && !m.sealedAcked() {
			time.Sleep(20 * time.Microsecond)
		}
		snap := m.snapshot()
		crashed := mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(101), RNG: rng})
		stop.Store(true)
		e.Close() // appenders blocked on the old engine fail with ErrClosed
		wg.Wait()

		mem = crashed
		e = openEngine(t, mem, "/d", o)
		if names, err := e.List(bg); err != nil || len(names) != 1 {
			t.Fatalf("seed %d round %d: List = %v, %v", seed, round, names, err)
		}
		var err error
		sh, err := e.Open(bg, "c")
		if err != nil {
			t.Fatalf("seed %d round %d: open after crash: %v", seed, round, err)
		}
		s = sh.(*Shard)
		recs := verifyCrash(t, s, m, snap, durable)
		// What recovery kept is durable now: the next crash must keep it.
		m.mu.Lock()
		m.acked = map[string]uint64{}
		for _, r := range recs {
			m.acked[string(r.Key)] = r.Offset
		}
		m.trimAcked, _ = s.Watermarks()
		m.trimMax = max(m.trimMax, m.trimAcked)
		m.sealAcked = s.Sealed()
		m.sealSubmitted = m.sealAcked
		m.mu.Unlock()
		if !s.Sealed() {
			_, high := s.Watermarks()
			r := crashRecord(round, 99, 0, 10)
			m.mu.Lock()
			m.submitted[string(r.Key)] = true
			m.mu.Unlock()
			first, err := s.Append(bg, []shard.Record{r})
			if err != nil || first != high {
				t.Fatalf("seed %d round %d: append after recovery = %d, %v; want %d", seed, round, first, err, high)
			}
			m.mu.Lock()
			m.acked[string(r.Key)] = first
			m.mu.Unlock()
		}
	}
	e.Close()
}

func (m *crashModel) sealedAcked() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sealAcked
}

// TestCrashAtEveryOp runs a fixed scenario — appends across several rolls,
// a trim, creating and deleting a second shard, a seal — and crashes it at
// every file-system operation in turn (so inside every roll, index write,
// trim, seal, create and delete), checking each crashed state.
func TestCrashAtEveryOp(t *testing.T) {
	type state struct {
		recs                     []shard.Record // submitted records of "a", in offset order
		acked                    int            // how many of recs are acknowledged
		trimAcked, trimSubmitted uint64
		sealAcked, sealSubmitted bool
		bCreated, bCreateStarted bool
		bDeleted, bDeleteStarted bool
		aCreated                 bool
	}
	scenario := func(fs vfs.FS, st *state, mu *sync.Mutex) {
		set := func(f func()) { mu.Lock(); f(); mu.Unlock() }
		e := openEngine(t, fs, "/d", Options{SegmentBytes: 1024, IndexIntervalBytes: 256})
		s := mustCreate(t, e, "a")
		set(func() { st.aCreated = true })
		app := func(i int) {
			b := []shard.Record{rec(2*i, 150+i*40), rec(2*i+1, 10)}
			set(func() { st.recs = append(st.recs, b...) })
			mustAppend(t, s, b...)
			set(func() { st.acked += len(b) })
		}
		for i := range 10 {
			app(i)
		}
		set(func() { st.trimSubmitted = 7 })
		if err := s.Trim(bg, 7); err != nil {
			t.Fatal(err)
		}
		set(func() { st.trimAcked = 7 })
		for i := 10; i < 13; i++ {
			app(i)
		}
		set(func() { st.bCreateStarted = true })
		b := mustCreate(t, e, "b")
		set(func() { st.bCreated = true })
		mustAppend(t, b, rec(1, 10))
		set(func() { st.bDeleteStarted = true })
		if err := e.Delete(bg, "b"); err != nil {
			t.Fatal(err)
		}
		set(func() { st.bDeleted = true; st.sealSubmitted = true })
		if err := s.Seal(bg); err != nil {
			t.Fatal(err)
		}
		set(func() { st.sealAcked = true })
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
	}

	// Count the operations of one run.
	var ops atomic.Int64
	var mu sync.Mutex
	scenario(vfs.InjectFS(vfs.NewCrashableMem(), vfs.InjectorFunc(func(vfs.Op) error { ops.Add(1); return nil })), &state{}, &mu)
	total := int(ops.Load())
	t.Logf("scenario performs %d file-system operations", total)

	rng := rand.New(rand.NewPCG(42, 42))
	for k := range total {
		mem := vfs.NewCrashableMem()
		var st state
		var snap state
		var crashed *vfs.MemFS
		pct := []int{0, 100, rng.IntN(101)}[k%3]
		crng := rand.New(rand.NewPCG(uint64(k), 7))
		var n atomic.Int64
		fs := vfs.InjectFS(mem, vfs.InjectorFunc(func(op vfs.Op) error {
			if int(n.Add(1)-1) == k {
				mu.Lock()
				snap = st
				snap.recs = append([]shard.Record(nil), st.recs...)
				mu.Unlock()
				crashed = mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: crng})
			}
			return nil
		}))
		scenario(fs, &st, &mu)
		if crashed == nil {
			t.Fatalf("op %d: no crash (scenario is not deterministic?)", k)
		}
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("crash at op %d of %d (keep %d%% unsynced): %s", k, total, pct, fmt.Sprintf(format, args...))
		}
		e, err := Open(Options{FS: crashed, Dir: "/d", Logger: quietLogger})
		if err != nil {
			fail("open engine: %v", err)
		}
		names, _ := e.List(bg)
		hasA, hasB := false, false
		for _, nm := range names {
			hasA = hasA || nm == "a"
			hasB = hasB || nm == "b"
		}
		if snap.aCreated && !hasA {
			fail("created shard a lost")
		}
		if snap.bCreated && !snap.bDeleteStarted && !hasB {
			fail("created shard b lost")
		}
		if snap.bDeleted && hasB {
			fail("deleted shard b is back")
		}
		if !snap.bCreateStarted && hasB {
			fail("shard b exists before it was created")
		}
		if hasB {
			if _, err := e.Open(bg, "b"); err != nil {
				fail("open b: %v", err)
			}
		}
		if !hasA {
			e.Close()
			continue
		}
		sh, err := e.Open(bg, "a")
		if err != nil {
			fail("open a: %v", err)
		}
		s := sh.(*Shard)
		low, high := s.Watermarks()
		if low < snap.trimAcked || low > snap.trimSubmitted && low != 0 {
			fail("low %d, trim acknowledged %d, submitted %d", low, snap.trimAcked, snap.trimSubmitted)
		}
		if int(high) < snap.acked || int(high) > len(st.recs) {
			fail("high %d, acknowledged %d, submitted %d", high, snap.acked, len(st.recs))
		}
		var want []shard.Record
		for i := low; i < high; i++ {
			want = append(want, withOffset(st.recs[i], i))
		}
		checkSame(t, readAll(t, s), want)
		if snap.sealAcked && !s.Sealed() || s.Sealed() && !snap.sealSubmitted {
			fail("sealed %v, seal acknowledged %v, submitted %v", s.Sealed(), snap.sealAcked, snap.sealSubmitted)
		}
		if !s.Sealed() {
			if off := mustAppend(t, s, rec(999, 10)); off != high {
				fail("append after recovery at %d, want %d", off, high)
			}
		}
		if off, err := s.OffsetForTime(bg, 0); err != nil || off != low {
			fail("OffsetForTime(0) = %d, %v; want %d", off, err, low)
		}
		e.Close()
	}
}

var _ = sort.Ints
