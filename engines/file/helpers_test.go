package file

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
	"github.com/quiremq/quire/shard/shardtest"
)

var bg = context.Background()

// openEngine opens an engine on fs at dir with quiet logs.
func openEngine(t testing.TB, fs vfs.FS, dir string, o Options) *Engine {
	t.Helper()
	o.FS, o.Dir = fs, dir
	if o.Logger == nil {
		o.Logger = quietLogger
	}
	e, err := Open(o)
	if err != nil {
		t.Fatalf("Open engine: %v", err)
	}
	return e
}

func mustCreate(t testing.TB, e *Engine, name string) *Shard {
	t.Helper()
	s, err := e.Create(bg, name)
	if err != nil {
		t.Fatalf("Create(%q): %v", name, err)
	}
	return s.(*Shard)
}

func mustOpen(t testing.TB, e *Engine, name string) *Shard {
	t.Helper()
	s, err := e.Open(bg, name)
	if err != nil {
		t.Fatalf("Open(%q): %v", name, err)
	}
	return s.(*Shard)
}

func mustAppend(t testing.TB, s shard.Shard, recs ...shard.Record) uint64 {
	t.Helper()
	first, err := s.Append(bg, recs)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	return first
}

// readAll reads [low, high) and checks that offsets are dense.
func readAll(t testing.TB, s shard.Shard) []shard.Record {
	t.Helper()
	low, high := s.Watermarks()
	var out []shard.Record
	for next := low; next < high; {
		recs, err := s.Read(bg, next, shard.Limits{MaxRecords: 1000})
		if err != nil {
			t.Fatalf("Read(%d): %v", next, err)
		}
		if len(recs) == 0 {
			t.Fatalf("Read(%d) returned nothing below high %d", next, high)
		}
		for _, r := range recs {
			if r.Offset != next {
				t.Fatalf("Read: got offset %d, want %d", r.Offset, next)
			}
			next++
		}
		out = append(out, recs...)
	}
	return out
}

// value returns a deterministic value for record id of length n, never
// containing a zero byte (so that damage tests can tell zeroed pages from
// data).
func value(id, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(1 + (id*31+i*7)%251)
	}
	return b
}

func rec(id, n int) shard.Record {
	return shard.Record{Timestamp: int64(1000 + id), Key: fmt.Appendf(nil, "k%d", id), Value: value(id, n)}
}

func checkSame(t testing.TB, got, want []shard.Record) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d records, want %d", len(got), len(want))
	}
	for i := range got {
		if !shardtest.Equal(got[i], want[i]) {
			t.Fatalf("record %d: got off=%d ts=%d key=%q, want off=%d ts=%d key=%q", i,
				got[i].Offset, got[i].Timestamp, got[i].Key, want[i].Offset, want[i].Timestamp, want[i].Key)
		}
	}
}

func withOffset(r shard.Record, off uint64) shard.Record {
	r.Offset = off
	return r
}

func sortU64(x []uint64) []uint64 {
	for i := 1; i < len(x); i++ {
		for j := i; j > 0 && x[j] < x[j-1]; j-- {
			x[j], x[j-1] = x[j-1], x[j]
		}
	}
	return x
}

// fakeClock is an injectable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.UnixMilli(1_700_000_000_000)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func isCorrupt(err error) (*shard.CorruptError, bool) {
	var ce *shard.CorruptError
	ok := errors.As(err, &ce) && errors.Is(err, shard.ErrCorrupt)
	return ce, ok
}
