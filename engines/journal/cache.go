package journal

import (
	"slices"
	"sync"

	"github.com/quiremq/quire/shard"
)

// entryCache keeps recently appended and read entries, decoded, up to a
// byte budget (oldest first out). Readers tailing a shard find what was
// just appended here without a bookie round trip.
type entryCache struct {
	mu    sync.Mutex
	max   int
	bytes int
	m     map[entryKey]cachedEntry
	order []entryKey
}

type entryKey struct {
	ledger uint64
	entry  int64
}

type cachedEntry struct {
	h    entryHeader
	recs []shard.Record
	size int
}

func newEntryCache(max int) *entryCache {
	return &entryCache{max: max, m: map[entryKey]cachedEntry{}}
}

func (c *entryCache) get(ledger uint64, entry int64) (entryHeader, []shard.Record, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ce, ok := c.m[entryKey{ledger, entry}]
	return ce.h, ce.recs, ok
}

func (c *entryCache) put(ledger uint64, entry int64, h entryHeader, recs []shard.Record, size int) {
	if size > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	k := entryKey{ledger, entry}
	if _, ok := c.m[k]; ok {
		return
	}
	for c.bytes+size > c.max && len(c.order) > 0 {
		old := c.order[0]
		c.order = c.order[1:]
		if ce, ok := c.m[old]; ok {
			c.bytes -= ce.size
			delete(c.m, old)
		}
	}
	c.m[k] = cachedEntry{h, recs, size}
	c.order = append(c.order, k)
	c.bytes += size
}

func (c *entryCache) dropLedger(ledger uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, ce := range c.m {
		if k.ledger == ledger {
			c.bytes -= ce.size
			delete(c.m, k)
		}
	}
	// The eviction order must forget them too, or it grows with every Trim.
	c.order = slices.DeleteFunc(c.order, func(k entryKey) bool { return k.ledger == ledger })
}

func (c *entryCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.m)
	c.order, c.bytes = nil, 0
}
