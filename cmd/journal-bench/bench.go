package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quiremq/quire/internal/hist"
	"github.com/quiremq/quire/journal/client"
)

// result is the summary of a run; its JSON is the --json line.
type result struct {
	Mode        string  `json:"mode"`
	Bookies     int     `json:"bookies"`
	Ensemble    int     `json:"ensemble"`
	WriteQuorum int     `json:"write_quorum"`
	AckQuorum   int     `json:"ack_quorum"`
	EntrySize   int     `json:"entry_size"`
	Writers     int     `json:"writers"`
	Inflight    int     `json:"inflight"`
	Ledgers     int     `json:"ledgers"`
	Rate        float64 `json:"rate,omitempty"` // --rate: appends/s asked for
	WarmupS     float64 `json:"warmup_s"`       // --warmup: appends issued before it are left out of every figure
	DurationS   float64 `json:"duration_s"`     // of the measured write phase, to the last acknowledgement

	Entries       int64   `json:"entries"`        // acknowledged appends (measured)
	WarmupEntries int64   `json:"warmup_entries"` // acknowledged appends of the warm-up (read back in read modes)
	EntriesPerSec float64 `json:"entries_per_sec"`
	MBPerSec      float64 `json:"mb_per_sec"` // acknowledged payload, 1e6 bytes
	P50Ms         float64 `json:"p50_ms"`     // add latency: AppendAsync to acknowledgement
	P99Ms         float64 `json:"p99_ms"`
	P999Ms        float64 `json:"p999_ms"`
	MaxMs         float64 `json:"max_ms"`

	// CPU (user+system) of this process — writers, readers and any
	// in-process bookies and meta — per acknowledged append and per entry
	// read: on a shared machine a steadier figure than the rates.
	CPUUsPerEntry float64 `json:"cpu_us_per_entry"`
	// Go heap allocation of this process per acknowledged append, and GC
	// cycles per 100,000 appends, during the write phase: on 2 cores a GC
	// cycle's mark phase takes one of them, so fewer cycles mean fewer
	// stretches of half the CPU.
	AllocBytesPerEntry float64 `json:"alloc_bytes_per_entry"`
	GCCyclesPer100k    float64 `json:"gc_cycles_per_100k"`
	ReadCPUUsPerEntry  float64 `json:"read_cpu_us_per_entry,omitempty"`

	BytesPerSync   float64  `json:"bytes_per_sync"`   // the bookies' journal bytes per fdatasync
	AddsPerRequest *float64 `json:"adds_per_request"` // adds per AddEntries message the bookies received (batching)
	// In-process bookies: p99 of their journal fdatasyncs and of their
	// group latency (a group's first add queued to its acknowledgement),
	// from Prometheus buckets (a factor of 2 apart, interpolated).
	// --rate: p99 of how late appends were handed to the client
	// (AppendAsync returned) after their scheduled time: the pacer's own
	// lag (a writer goroutine not scheduled, or AppendAsync blocked on
	// --inflight), which the add latency includes.
	PacerLagP99Ms    *float64 `json:"pacer_lag_p99_ms,omitempty"`
	BookieSyncP99Ms  *float64 `json:"bookie_sync_p99_ms,omitempty"`
	BookieGroupP99Ms *float64 `json:"bookie_group_p99_ms,omitempty"`
	BookieAddP99Ms   *float64 `json:"bookie_add_p99_ms,omitempty"` // an add handed to a bookie to its acknowledgement
	// The add latency stage by stage (stages.go): pacer, admit, mailbox,
	// send, stream, answer, order, caller; and the measured appends whose
	// stages the client did not all observe (left out of stages).
	Stages              []stageSummary `json:"stages,omitempty"`
	StagesUnobserved    uint64         `json:"stages_unobserved"`
	DiskCeilingMBPerSec *float64       `json:"disk_ceiling_mb_per_sec"`
	DiskEfficiency      *float64       `json:"disk_efficiency"`
	ReadEntries         int64          `json:"read_entries,omitempty"`
	ReadDurationS       float64        `json:"read_duration_s,omitempty"`
	ReadEntriesPerSec   float64        `json:"read_entries_per_sec,omitempty"`
	ReadMBPerSec        float64        `json:"read_mb_per_sec,omitempty"`
	TailP50Ms           *float64       `json:"tail_p50_ms,omitempty"` // tail mode: append to read
	TailP99Ms           *float64       `json:"tail_p99_ms,omitempty"`
	ReadVerifiedEntries int64          `json:"read_verified_entries,omitempty"`
	ReadMatchesWrites   *bool          `json:"read_matches_writes,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (r *result) print(w io.Writer, asJSON bool) error {
	fmt.Fprintf(w, "summary: mode=%s E=%d Qw=%d Qa=%d entry=%dB writers=%d inflight=%d ledgers=%d bookies=%d\n",
		r.Mode, r.Ensemble, r.WriteQuorum, r.AckQuorum, r.EntrySize, r.Writers, r.Inflight, r.Ledgers, r.Bookies)
	fmt.Fprintf(w, "  write: %d entries in %.2fs: %.0f entries/s, %.1f MB/s; add latency p50 %.2f ms, p99 %.2f ms, p999 %.2f ms, max %.2f ms; %.1f CPU-µs/entry\n",
		r.Entries, r.DurationS, r.EntriesPerSec, r.MBPerSec, r.P50Ms, r.P99Ms, r.P999Ms, r.MaxMs, r.CPUUsPerEntry)
	fmt.Fprintf(w, "  heap: %.0f bytes allocated per entry, %.1f GC cycles per 100k entries\n", r.AllocBytesPerEntry, r.GCCyclesPer100k)
	if r.PacerLagP99Ms != nil {
		fmt.Fprintf(w, "  pacer: appends handed to the client p99 %.2f ms after their scheduled time\n", *r.PacerLagP99Ms)
	}
	if r.BookieSyncP99Ms != nil && r.BookieGroupP99Ms != nil && r.BookieAddP99Ms != nil {
		fmt.Fprintf(w, "  bookies: journal fdatasync p99 %.2f ms, group (first add queued to ack) p99 %.2f ms, add (handed to the bookie to ack) p99 %.2f ms\n",
			*r.BookieSyncP99Ms, *r.BookieGroupP99Ms, *r.BookieAddP99Ms)
	}
	printStages(w, r.Stages)
	if r.DiskCeilingMBPerSec != nil {
		fmt.Fprintf(w, "  disk: %.0f journal bytes per fdatasync; raw write+fdatasync ceiling %.1f MB/s; efficiency %.2f (acked MB/s x Qw / ceiling)\n",
			r.BytesPerSync, *r.DiskCeilingMBPerSec, *r.DiskEfficiency)
	}
	if r.ReadMatchesWrites != nil {
		fmt.Fprintf(w, "  read: %d entries in %.2fs: %.0f entries/s, %.1f MB/s; %.1f CPU-µs/entry; every entry read back as written: %v\n",
			r.ReadEntries, r.ReadDurationS, r.ReadEntriesPerSec, r.ReadMBPerSec, r.ReadCPUUsPerEntry, *r.ReadMatchesWrites)
	}
	if r.TailP50Ms != nil {
		fmt.Fprintf(w, "  tail: append to read p50 %.2f ms, p99 %.2f ms\n", *r.TailP50Ms, *r.TailP99Ms)
	}
	if !asJSON {
		return nil
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// addStats collects acknowledged appends: totals and the current second.
type addStats struct {
	mu        sync.Mutex
	total     hist.Histogram
	lag       hist.Histogram // --rate: AppendAsync returned minus scheduled time
	interval  hist.Histogram
	stages    stageStats
	entries   int64
	warm      int64 // acknowledged warm-up appends
	ivEntries int64
}

// record adds one acknowledged append that took d to the current second
// and, if measured (issued after the warm-up), to the totals; stages are
// its stages (traceStages), if ok.
func (s *addStats) record(d time.Duration, measured bool, stages [nStages]time.Duration, ok bool) {
	s.mu.Lock()
	if measured {
		s.total.Record(d)
		s.entries++
		if ok {
			s.stages.record(stages, d)
		} else {
			s.stages.missed++
		}
	} else {
		s.warm++
	}
	s.interval.Record(d)
	s.ivEntries++
	s.mu.Unlock()
}

func (s *addStats) recordLag(d time.Duration) {
	s.mu.Lock()
	s.lag.Record(d)
	s.mu.Unlock()
}

// takeInterval returns the current second's count and histogram and
// starts the next.
func (s *addStats) takeInterval() (int64, hist.Histogram) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, h := s.ivEntries, s.interval
	s.ivEntries, s.interval = 0, hist.Histogram{}
	return n, h
}

// readStats collects entries read back.
type readStats struct {
	entries  atomic.Int64
	ivStart  atomic.Int64 // entries at the start of the current second
	mu       sync.Mutex
	tail     hist.Histogram // tail mode: append to read
	recordAt bool
}

func bench(ctx context.Context, c *config, out io.Writer) (*result, error) {
	cl, err := startCluster(ctx, c)
	if err != nil {
		return nil, err
	}
	defer cl.stop()
	perLedger := (c.writers + c.ledgers - 1) / c.ledgers
	jc, err := client.New(client.Options{
		Meta: cl.meta, Directory: client.NewStaticDirectory(cl.infos...),
		MaxInflight: c.inflight * perLedger,
		Logger:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return nil, err
	}
	defer jc.Close()
	res := &result{Mode: c.mode, Bookies: len(cl.infos), Ensemble: c.ensemble, WriteQuorum: c.writeQuorum,
		AckQuorum: c.ackQuorum, EntrySize: c.entrySize, Writers: c.writers, Inflight: c.inflight, Ledgers: c.ledgers, Rate: c.rate}

	lws := make([]*client.LedgerWriter, c.ledgers)
	for i := range lws {
		if lws[i], err = jc.CreateLedger(ctx, c.ensemble, c.writeQuorum, c.ackQuorum); err != nil {
			return nil, fmt.Errorf("create ledger: %w", err)
		}
	}
	fill := filler(c.entrySize)

	// Tail mode: one reader per ledger follows it from entry 0.
	rs := &readStats{recordAt: c.mode == "tail"}
	var readers []*ledgerCheck
	var readWG sync.WaitGroup
	var readStart time.Time
	startReaders := func() {
		readStart = time.Now()
		for i, lw := range lws {
			lc := &ledgerCheck{id: lw.ID(), index: uint32(i), size: c.entrySize, fill: fill, ledgers: uint32(c.ledgers), next: map[uint32]uint64{}}
			readers = append(readers, lc)
			readWG.Go(func() { lc.err = lc.read(ctx, jc, rs) })
		}
	}
	if c.mode == "tail" {
		startReaders()
	}

	// Dirty data of earlier runs (or of this one's setup) written back
	// under the measured appends would slow their syncs by an amount that
	// depends on what ran before: the first of two identical runs after a
	// --raw-disk run measured p99 31-44 ms at 88,000/s, the second 9-10 ms.
	settle()

	var st addStats
	progressDone := make(chan struct{})
	stopProgress := progress(c, out, &st, rs, progressDone)
	acked := make([]uint64, c.writers)
	errs := make([]error, c.writers)
	start := time.Now()
	from := start.Add(c.warmup) // the measured phase: appends issued from here on
	deadline := from.Add(c.duration)
	var wg sync.WaitGroup
	for w := range c.writers {
		wg.Go(func() {
			var interval time.Duration // between one writer's appends under --rate
			if c.rate > 0 {
				interval = time.Duration(float64(time.Second) * float64(c.writers) / c.rate)
			}
			acked[w], errs[w] = write(ctx, lws[w%c.ledgers], uint32(w), uint32(w%c.ledgers), c.entrySize, c.inflight, fill, start, from, interval, deadline, &st)
		})
	}
	time.Sleep(time.Until(from))
	cpu, heap := processCPU(), readHeapStats()
	syncsBefore, syncErr := cl.syncStats(ctx)
	wg.Wait()
	elapsed, writeCPU, heapAfter := time.Since(from), processCPU()-cpu, readHeapStats()
	if err := errors.Join(append(errs, syncErr)...); err != nil {
		stopProgress()
		return nil, err
	}
	syncsAfter, err := cl.syncStats(ctx)
	if err != nil {
		stopProgress()
		return nil, err
	}
	for _, lw := range lws {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := lw.Close(cctx)
		cancel()
		if err != nil {
			stopProgress()
			return nil, fmt.Errorf("close ledger %d: %w", lw.ID(), err)
		}
	}
	res.WarmupS, res.DurationS = c.warmup.Seconds(), elapsed.Seconds()
	res.Entries, res.WarmupEntries = st.entries, st.warm
	res.EntriesPerSec = float64(st.entries) / elapsed.Seconds()
	res.MBPerSec = float64(st.entries) * float64(c.entrySize) / elapsed.Seconds() / 1e6
	res.P50Ms, res.P99Ms, res.P999Ms = ms(st.total.Quantile(0.5)), ms(st.total.Quantile(0.99)), ms(st.total.Quantile(0.999))
	res.MaxMs = ms(st.total.Quantile(1))
	if c.rate > 0 {
		lag := ms(st.lag.Quantile(0.99))
		res.PacerLagP99Ms = &lag
	}
	res.Stages, res.StagesUnobserved = st.stages.summary(), st.stages.missed
	if st.entries > 0 {
		res.CPUUsPerEntry = float64(writeCPU.Microseconds()) / float64(st.entries)
		res.AllocBytesPerEntry = float64(heapAfter.allocBytes-heap.allocBytes) / float64(st.entries)
		res.GCCyclesPer100k = float64(heapAfter.gcCycles-heap.gcCycles) * 1e5 / float64(st.entries)
	}
	res.BytesPerSync = syncsAfter.sub(syncsBefore).bytesPerSync()
	res.AddsPerRequest = syncsAfter.sub(syncsBefore).addsPerRequest()
	res.BookieSyncP99Ms = syncsAfter.sub(syncsBefore).syncTime.quantileMs(0.99)
	res.BookieGroupP99Ms = syncsAfter.sub(syncsBefore).groupTime.quantileMs(0.99)
	res.BookieAddP99Ms = syncsAfter.sub(syncsBefore).addTime.quantileMs(0.99)

	stopReadProfile := func() error { return nil }
	if c.mode == "catchup" {
		if stopReadProfile, err = startCPUProfile(c.readProfile); err != nil {
			stopProgress()
			return nil, err
		}
		cpu = processCPU()
		startReaders()
	}
	if c.mode != "write" {
		readWG.Wait()
		readEl, readCPU := time.Since(readStart), processCPU()-cpu
		if err := stopReadProfile(); err != nil {
			stopProgress()
			return nil, err
		}
		if c.mode == "tail" {
			readEl = max(readEl, elapsed) // the readers started with the writers
		}
		stopProgress()
		if err := checkReads(readers, acked, c.ledgers); err != nil {
			return nil, err
		}
		ok := true
		res.ReadMatchesWrites = &ok
		res.ReadEntries = rs.entries.Load()
		res.ReadVerifiedEntries = res.ReadEntries
		res.ReadDurationS = readEl.Seconds()
		res.ReadEntriesPerSec = float64(res.ReadEntries) / readEl.Seconds()
		res.ReadMBPerSec = float64(res.ReadEntries) * float64(c.entrySize) / readEl.Seconds() / 1e6
		if res.ReadEntries > 0 {
			res.ReadCPUUsPerEntry = float64(readCPU.Microseconds()) / float64(res.ReadEntries) // tail mode: writes included
		}
		if c.mode == "tail" {
			p50, p99 := ms(rs.tail.Quantile(0.5)), ms(rs.tail.Quantile(0.99))
			res.TailP50Ms, res.TailP99Ms = &p50, &p99
		}
	} else {
		stopProgress()
	}

	if c.rawDisk {
		if res.BytesPerSync <= 0 {
			return nil, errors.New("--raw-disk: the bookies reported no journal syncs during the run")
		}
		settle() // the bookies' entry logs still being written back
		bps, err := rawCeiling(cl.dir, int(res.BytesPerSync), 5*time.Second)
		if err != nil {
			return nil, fmt.Errorf("--raw-disk: %w", err)
		}
		ceil := bps / 1e6
		eff := res.MBPerSec * float64(c.writeQuorum) / ceil
		res.DiskCeilingMBPerSec, res.DiskEfficiency = &ceil, &eff
	}
	return res, nil
}

// progress prints a line every second until the returned func is called.
func progress(c *config, out io.Writer, st *addStats, rs *readStats, done chan struct{}) func() {
	stop := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		start := time.Now()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			n, h := st.takeInterval()
			read := rs.entries.Load()
			readIv := read - rs.ivStart.Swap(read)
			if c.quiet {
				continue
			}
			line := fmt.Sprintf("%5.0fs  write %8d entries/s %7.1f MB/s  p50 %6.2f ms  p99 %6.2f ms  p999 %6.2f ms",
				time.Since(start).Seconds(), n, float64(n*int64(c.entrySize))/1e6,
				ms(h.Quantile(0.5)), ms(h.Quantile(0.99)), ms(h.Quantile(0.999)))
			if c.mode != "write" {
				line += fmt.Sprintf("  read %8d entries/s %7.1f MB/s", readIv, float64(readIv*int64(c.entrySize))/1e6)
			}
			fmt.Fprintln(out, line)
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(stop); <-done })
	}
}

// heapStats are the process's cumulative heap allocation and GC cycles.
type heapStats struct{ allocBytes, gcCycles uint64 }

func readHeapStats() heapStats {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	var h heapStats
	if s[0].Value.Kind() == metrics.KindUint64 {
		h.allocBytes = s[0].Value.Uint64()
	}
	if s[1].Value.Kind() == metrics.KindUint64 {
		h.gcCycles = s[1].Value.Uint64()
	}
	return h
}

// processCPU is the user+system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// write appends to lw until deadline, keeping up to inflight appends in
// flight, and returns how many were acknowledged. With interval > 0 the
// appends are paced: append i is due at start + i·interval, and its
// latency counts from then.
// write appends until deadline, from start (at interval under --rate);
// appends issued before from are warm-up: acknowledged and counted in
// acked (they are read back), left out of st's totals.
func write(ctx context.Context, lw *client.LedgerWriter, writer, ledger uint32, size, inflight int, fill []byte, start, from time.Time, interval time.Duration, deadline time.Time, st *addStats) (uint64, error) {
	type sent struct {
		f          *client.Future
		at, called time.Time // scheduled, AppendAsync called
	}
	pending := make(chan sent, inflight)
	var acked uint64
	errc := make(chan error, 1)
	go func() {
		var first error
		for s := range pending {
			if _, err := s.f.Result(); err != nil {
				if first == nil {
					first = fmt.Errorf("writer %d: append: %w", writer, err)
				}
				continue
			}
			seen := time.Now()
			stages, ok := traceStages(s.at, s.called, s.f.Trace(), seen)
			st.record(seen.Sub(s.at), !s.at.Before(from), stages, ok)
			acked++
		}
		errc <- first
	}()
	var err error
	for seq := uint64(0); time.Now().Before(deadline); seq++ {
		if err = ctx.Err(); err != nil {
			break
		}
		at := time.Now()
		if interval > 0 {
			at = start.Add(time.Duration(seq) * interval)
			if !at.Before(deadline) {
				break
			}
			time.Sleep(time.Until(at))
		}
		var f *client.Future
		data := makePayload(header{writer: writer, ledger: ledger, seq: seq, at: at.UnixNano()}, size, fill)
		called := time.Now()
		if f, err = lw.AppendAsync(ctx, data); err != nil {
			err = fmt.Errorf("writer %d: append: %w", writer, err)
			break
		}
		if interval > 0 && !at.Before(from) {
			st.recordLag(time.Since(at))
		}
		pending <- sent{f, at, called}
	}
	close(pending)
	return acked, errors.Join(err, <-errc)
}

// ledgerCheck reads one ledger from entry 0 to its end and checks what it
// reads: ledger index, each writer's seqs in order with no gap, filler.
type ledgerCheck struct {
	id      uint64
	index   uint32
	ledgers uint32
	size    int
	fill    []byte
	next    map[uint32]uint64 // writer → next seq expected
	entries int64
	err     error
}

func (lc *ledgerCheck) read(ctx context.Context, jc *client.Client, rs *readStats) error {
	r, err := jc.OpenForRead(ctx, lc.id, 0)
	if err != nil {
		return err
	}
	defer r.Close()
	for want := int64(0); ; want++ {
		e, data, err := r.Next(ctx)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("ledger %d: read entry %d: %w", lc.id, want, err)
		}
		if e != want {
			return fmt.Errorf("ledger %d: read entry %d, want %d", lc.id, e, want)
		}
		h, err := parsePayload(data, lc.size, lc.fill)
		if err != nil {
			return fmt.Errorf("ledger %d entry %d: %w", lc.id, e, err)
		}
		if h.ledger != lc.index || h.writer%lc.ledgers != lc.index {
			return fmt.Errorf("ledger %d entry %d: written by writer %d to ledger #%d, read from ledger #%d", lc.id, e, h.writer, h.ledger, lc.index)
		}
		if h.seq != lc.next[h.writer] {
			return fmt.Errorf("ledger %d entry %d: writer %d seq %d, want seq %d (lost, repeated or reordered)", lc.id, e, h.writer, h.seq, lc.next[h.writer])
		}
		lc.next[h.writer]++
		lc.entries++
		rs.entries.Add(1)
		if rs.recordAt {
			d := time.Since(time.Unix(0, h.at))
			rs.mu.Lock()
			rs.tail.Record(d)
			rs.mu.Unlock()
		}
	}
}

// checkReads reports a reader's error, or a writer whose acknowledged
// appends were not all read back.
func checkReads(readers []*ledgerCheck, acked []uint64, ledgers int) error {
	var errs []error
	for _, lc := range readers {
		errs = append(errs, lc.err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for w, n := range acked {
		lc := readers[w%ledgers]
		if got := lc.next[uint32(w)]; got != n {
			return fmt.Errorf("writer %d: %d appends acknowledged, %d read back from ledger %d", w, n, got, lc.id)
		}
	}
	return nil
}
