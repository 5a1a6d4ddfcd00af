package file

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
)

// rangeStore records the ranged GETs of segment objects and fails the
// first GET of the ranges in failOnce.
type rangeStore struct {
	objstore.Store
	mu       sync.Mutex
	gets     map[rangeKey]int
	failOnce map[rangeKey]bool
}

type rangeKey struct {
	key    string
	off, n int64
}

func (r *rangeStore) Get(ctx context.Context, key string, off, n int64) ([]byte, error) {
	if strings.HasSuffix(key, segExt) {
		k := rangeKey{key, off, n}
		r.mu.Lock()
		r.gets[k]++
		fail := r.failOnce[k]
		delete(r.failOnce, k)
		r.mu.Unlock()
		if fail {
			return nil, errors.New("injected GET failure")
		}
	}
	return r.Store.Get(ctx, key, off, n)
}

func (r *rangeStore) reset(failOnce ...rangeKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gets = map[rangeKey]int{}
	r.failOnce = map[rangeKey]bool{}
	for _, k := range failOnce {
		r.failOnce[k] = true
	}
}

// readSmallChunks reads the shard from low in reads of at most maxBytes.
func readSmallChunks(t *testing.T, s *Shard, maxBytes int) []shard.Record {
	t.Helper()
	low, high := s.Watermarks()
	var out []shard.Record
	for next := low; next < high; {
		recs, err := s.Read(bg, next, shard.Limits{MaxBytes: maxBytes})
		if err != nil {
			t.Fatalf("Read(%d): %v", next, err)
		}
		if len(recs) == 0 {
			t.Fatalf("Read(%d) returned nothing below high %d", next, high)
		}
		out = append(out, recs...)
		next = recs[len(recs)-1].Offset + 1
	}
	return out
}

// TestOffloadRemoteRanges: a sequential catch-up read of offloaded
// segments GETs each aligned range of each object once (the read-ahead and
// the prefetch of the next segment's first range are used, not fetched
// again), a failed read-ahead GET is fetched again on demand, and the
// read-ahead budget is all returned once the readers are closed.
func TestOffloadRemoteRanges(t *testing.T) {
	const rangeBytes = 4 << 10
	rs := &rangeStore{Store: objstore.NewMem()}
	rs.reset()
	o := offloadOpts(rs, 0)
	o.SegmentBytes = 64 << 10
	o.Offload.BlockBytes = 512
	o.Offload.CacheBytes = 1 << 20
	e := openEngine(t, vfs.NewMem(), "/d", o)
	e.off.cache.rangeBytes = rangeBytes
	s := mustCreate(t, e, "a")
	var want []shard.Record
	for len(s.segs) < 4 {
		want = append(want, appendN(t, s, len(want), 1, 200)...)
	}
	e.off.pass(bg)
	sealed := s.segs[:len(s.segs)-1]
	var ranges []rangeKey // every aligned range of every offloaded segment
	for _, seg := range sealed {
		r := seg.remote.Load()
		if r == nil {
			t.Fatalf("segment %d not offloaded", seg.base)
		}
		for off := int64(0); off < r.Size; off += rangeBytes {
			ranges = append(ranges, rangeKey{r.Key, off, min(rangeBytes, r.Size-off)})
		}
	}
	check := func(retried rangeKey) {
		t.Helper()
		rs.mu.Lock()
		defer rs.mu.Unlock()
		for _, k := range ranges {
			n := rs.gets[k]
			if k.off == 0 && k.n != rangeBytes {
				n += rs.gets[rangeKey{k.key, 0, rangeBytes}] // prefetched: a range's length is not known yet
			}
			want := 1
			if k == retried {
				want = 2
			}
			if n != want {
				t.Errorf("range %s@%d+%d fetched %d times, want %d", k.key, k.off, k.n, n, want)
			}
		}
		for k, n := range rs.gets {
			if k.off%rangeBytes != 0 {
				t.Errorf("unaligned GET %s@%d+%d (%d times)", k.key, k.off, k.n, n)
			}
		}
	}
	// 4 KiB limits make 16 KiB reads (the engine's smallest chunk): four
	// ranges each, and the reads overlap where the next starts at an index
	// entry before the last record returned.
	checkSame(t, readSmallChunks(t, s, 4<<10), want)
	check(rangeKey{})

	// Fresh readers; the first GET of a read-ahead range fails.
	closeReaders(e, sealed)
	failed := ranges[5]
	rs.reset(failed)
	checkSame(t, readSmallChunks(t, s, 4<<10), want)
	check(failed)

	closeReaders(e, sealed)
	// Deleting an object forgets its prefetched range: a later object of
	// the key must not be served from it.
	c := e.off.cache
	c.prefetch(rs, ranges[len(ranges)-1].key)
	c.drop(ranges[len(ranges)-1].key)
	if g := c.adopt(ranges[len(ranges)-1].key, 0); g != nil {
		t.Fatal("a prefetched range outlived the deletion of its object")
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		e.off.cache.aheadMu.Lock()
		held := e.off.cache.aheadBytes
		e.off.cache.aheadMu.Unlock()
		e.off.cache.preMu.Lock()
		pre := len(e.off.cache.pre)
		e.off.cache.preMu.Unlock()
		if held == 0 && pre == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes of read-ahead budget still held and %d prefetched ranges after the readers closed", held, pre)
		}
		time.Sleep(time.Millisecond)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
}

// closeReaders closes the open readers of segs.
func closeReaders(e *Engine, segs []*segment) {
	for _, seg := range segs {
		e.cache.evict(seg, false)
	}
}
