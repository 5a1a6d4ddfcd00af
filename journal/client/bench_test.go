package client

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"
)

// BenchmarkAppend: pipelined appends of 1 KiB entries to an E=3 Qw=2 Qa=2
// ledger on 3 in-process bookies served over gRPC on loopback, with meta
// in process. "disk" puts the bookies on the real disk (b.TempDir, one
// device shared by all three, fdatasync per group commit); "mem" on
// in-memory file systems (the client, gRPC and bookie CPU cost alone).
// Reports entries/s, MB/s and the p50/p99 add latency (AppendAsync to
// acknowledgement) with up to inflight appends outstanding.
//
//	go test -run '^$' -bench BenchmarkAppend -benchtime 20000x ./journal/client
func BenchmarkAppend(b *testing.B) {
	for _, fs := range []string{"disk", "mem"} {
		for _, inflight := range []int{256, 2048} {
			b.Run(fmt.Sprintf("%s/inflight=%d", fs, inflight), func(b *testing.B) {
				dir := ""
				if fs == "disk" {
					dir = b.TempDir()
				}
				benchAppend(b, dir, inflight, 1024)
			})
		}
	}
}

func benchAppend(b *testing.B, dataDir string, inflight, size int) {
	c := newCluster(b, 3, dataDir)
	cl := c.client(Options{MaxInflight: inflight})
	ctx := context.Background()
	w, err := cl.CreateLedger(ctx, 3, 2, 2)
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i)
	}
	type sent struct {
		f  *Future
		at time.Time
	}
	ch := make(chan sent, inflight)
	lat := make([]time.Duration, 0, b.N)
	done := make(chan error, 1)
	go func() {
		for s := range ch {
			if _, err := s.f.Result(); err != nil {
				done <- err
				return
			}
			lat = append(lat, time.Since(s.at))
		}
		done <- nil
	}()
	b.SetBytes(int64(size))
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		at := time.Now()
		f, err := w.AppendAsync(ctx, data)
		if err != nil {
			b.Fatal(err)
		}
		ch <- sent{f, at}
	}
	close(ch)
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	el := time.Since(start)
	b.StopTimer()
	if err := w.Close(ctx); err != nil {
		b.Fatal(err)
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(b.N)/el.Seconds(), "entries/s")
	b.ReportMetric(float64(b.N*size)/el.Seconds()/1e6, "MB/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// BenchmarkCatchUpRead: reading a closed ledger of 1 KiB entries
// (E=3 Qw=2 Qa=2, 3 bookies) from entry 0 with LedgerReader, which reads
// a closed ledger with range reads (ReadEntries streams, every bookie
// serving the entries whose write set it heads). "mem" puts the bookies
// on in-memory file systems, "disk" on the real disk (b.TempDir; the
// entries were just written, so mostly from the page cache). The ledger
// is written first, untimed; its entries may still be being applied to
// the bookies' entry logs when the read starts, as in a catch-up right
// after a burst.
//
//	go test -run '^$' -bench BenchmarkCatchUpRead -benchtime 100000x ./journal/client
func BenchmarkCatchUpRead(b *testing.B) {
	for _, fs := range []string{"mem", "disk"} {
		b.Run(fs, func(b *testing.B) {
			dir := ""
			if fs == "disk" {
				dir = b.TempDir()
			}
			benchCatchUp(b, dir)
		})
	}
}

func benchCatchUp(b *testing.B, dataDir string) {
	const size = 1024
	c := newCluster(b, 3, dataDir)
	cl := c.client(Options{})
	ctx := context.Background()
	w, err := cl.CreateLedger(ctx, 3, 2, 2)
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, size)
	var last *Future
	for range b.N {
		if last, err = w.AppendAsync(ctx, data); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := last.Result(); err != nil {
		b.Fatal(err)
	}
	if err := w.Close(ctx); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	b.ResetTimer()
	start, cpu := time.Now(), processCPU()
	r, err := cl.OpenForRead(ctx, w.ID(), 0)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	for i := range b.N {
		if e, _, err := r.Next(ctx); err != nil || e != int64(i) {
			b.Fatalf("read %d: %d, %v", i, e, err)
		}
	}
	el, cpu := time.Since(start), processCPU()-cpu
	b.ReportMetric(float64(b.N)/el.Seconds(), "entries/s")
	// CPU of the whole process (client and bookies) per entry: on a busy
	// machine the wall-clock rate says more about the neighbours.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/entry")
}

// processCPU is the user+system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
