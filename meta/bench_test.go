package meta

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Benchmarks of the meta store over gRPC on loopback with the production
// transport and real Pebble stores on disk (all voters share one disk):
//
//	go test -run '^$' -bench 'CAS|Read' -benchtime 3s ./meta
//
// Each reports ops/s and p50/p99 latency per operation. api=client is the
// gRPC Client (the workers share 8 Clients, as several processes sharing a
// meta would): concurrent requests ride the Client's Batch streams.
// api=server calls the leader's Server in process (no gRPC: the cost of
// Raft and the store).

func benchCluster(b *testing.B, nodes int) (*testCluster, []*Client) {
	c := newTestCluster(b, nodes, grpcTransport, os.Getenv("META_BENCH_MEM") == "", func(o *Options) {
		o.HeartbeatTimeout, o.ElectionTimeout, o.LeaderLeaseTimeout = time.Second, time.Second, 500*time.Millisecond
		o.SnapshotInterval, o.SnapshotThreshold, o.TrailingLogs = 30*time.Second, 8192, 10240
	})
	c.leader()
	// A few client connections shared by the workers, as several processes
	// sharing a meta would.
	clients := make([]*Client, 8)
	for i := range clients {
		clients[i] = c.client()
	}
	return c, clients
}

// runConcurrent runs b.N operations on workers goroutines and reports
// throughput and latency percentiles.
func runConcurrent(b *testing.B, workers int, op func(worker, i int) error) {
	var next atomic.Int64
	lat := make([][]time.Duration, workers)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	b.ResetTimer()
	cpu0 := cpuTime()
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				if next.Add(1) > int64(b.N) {
					return
				}
				t0 := time.Now()
				if err := op(w, i); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	if err := firstErr.Load(); err != nil {
		b.Fatal(err)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[int(float64(len(all)-1)*p)].Microseconds()) / 1000
	}
	b.ReportMetric(float64(b.N)/el.Seconds(), "ops/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
	// CPU time of the whole process (clients, servers, Raft) per op: on a
	// shared machine ops/s depends on the neighbours, this does not much.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/op")
}

// benchKVs returns the KVs the workers share: gRPC Clients, or the
// leader's in-process Server (no gRPC: the cost of Raft and the store).
func benchKVs(c *testCluster, cl []*Client, api string) []KV {
	kvs := make([]KV, len(cl))
	for i := range cl {
		kvs[i] = cl[i]
		if api == "server" {
			kvs[i] = c.nodes[c.leader()].srv
		}
	}
	return kvs
}

var (
	benchAPIs    = []string{"client", "server"}
	benchWorkers = []int{1, 64, 256}
)

func BenchmarkCAS(b *testing.B) {
	for _, api := range benchAPIs {
		for _, nodes := range []int{1, 3} {
			for _, workers := range benchWorkers {
				b.Run(fmt.Sprintf("api=%s/nodes=%d/clients=%d", api, nodes, workers), func(b *testing.B) {
					benchCAS(b, api, nodes, workers)
				})
			}
		}
	}
}

func benchCAS(b *testing.B, api string, nodes, workers int) {
	c, cl := benchCluster(b, nodes)
	clients := benchKVs(c, cl, api)
	ctx := context.Background()
	// Each worker owns a key and CASes it forward: every CAS
	// is a real conditional write that succeeds.
	versions := make([]uint64, workers)
	for w := range workers {
		kv, err := clients[w%len(clients)].Put(ctx, fmt.Sprintf("bench/%d", w), []byte("0"), IfVersion(0))
		if err != nil {
			b.Fatal(err)
		}
		versions[w] = kv.Version
	}
	val := make([]byte, 100)
	runConcurrent(b, workers, func(w, i int) error {
		key := fmt.Sprintf("bench/%d", w)
		kv, err := clients[w%len(clients)].Put(ctx, key, val, IfVersion(versions[w]))
		if errors.Is(err, ErrAmbiguous) || errors.Is(err, ErrVersionMismatch) {
			// A leader change under load: re-read and go on.
			kv, err = clients[w%len(clients)].Get(ctx, key)
		}
		if err != nil {
			return err
		}
		versions[w] = kv.Version
		return nil
	})
}

func BenchmarkRead(b *testing.B) {
	for _, api := range benchAPIs {
		for _, nodes := range []int{1, 3} {
			for _, stale := range []bool{false, true} {
				name := "linearizable"
				if stale {
					name = "stale"
				}
				for _, workers := range benchWorkers {
					b.Run(fmt.Sprintf("api=%s/nodes=%d/%s/clients=%d", api, nodes, name, workers), func(b *testing.B) {
						benchRead(b, api, nodes, stale, workers)
					})
				}
			}
		}
	}
}

func benchRead(b *testing.B, api string, nodes int, stale bool, workers int) {
	c, cl := benchCluster(b, nodes)
	clients := benchKVs(c, cl, api)
	ctx := context.Background()
	const keys = 1000
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := w; k < keys; {
				_, err := clients[w%len(clients)].Put(ctx, fmt.Sprintf("bench/%d", k), make([]byte, 100))
				switch {
				case errors.Is(err, ErrAmbiguous): // a leader change: a plain put may be repeated
				case err != nil:
					errs <- err
					return
				default:
					k += 64
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	c.converge()
	var opts []ReadOption
	if stale {
		opts = append(opts, Stale())
	}
	runConcurrent(b, workers, func(w, i int) error {
		_, err := clients[w%len(clients)].Get(ctx, fmt.Sprintf("bench/%d", (w*7919+i)%keys), opts...)
		return err
	})
}

// cpuTime is the user+system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
