package s3

import (
	"container/list"
	"sync"

	"github.com/quiremq/quire/shard"
)

// objectCache keeps decoded objects, least recently used out first, within
// a byte budget (the objects' encoded sizes).
type objectCache struct {
	mu       sync.Mutex
	capacity int64
	size     int64
	lru      *list.List // of *cached, most recent at the front
	byKey    map[string]*list.Element
	inflight map[string]chan struct{} // objects being fetched, closed when done
}

type cached struct {
	key  string
	recs []shard.Record
	size int64
}

func newObjectCache(capacity int64) *objectCache {
	return &objectCache{capacity: capacity, lru: list.New(), byKey: map[string]*list.Element{}, inflight: map[string]chan struct{}{}}
}

// getOrClaim returns the cached object, or a channel to wait on while
// another goroutine fetches it, or (nil, false, nil) after claiming the
// fetch for the caller, who must call done.
func (c *objectCache) getOrClaim(key string) (recs []shard.Record, ok bool, wait <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byKey[key]; ok {
		c.lru.MoveToFront(el)
		return el.Value.(*cached).recs, true, nil
	}
	if ch, ok := c.inflight[key]; ok {
		return nil, false, ch
	}
	c.inflight[key] = make(chan struct{})
	return nil, false, nil
}

// done ends a claimed fetch, caching its result when there is one.
func (c *objectCache) done(key string, recs []shard.Record, size int64) {
	if recs != nil {
		c.put(key, recs, size)
	}
	c.mu.Lock()
	ch := c.inflight[key]
	delete(c.inflight, key)
	c.mu.Unlock()
	close(ch)
}

func (c *objectCache) put(key string, recs []shard.Record, size int64) {
	if size > c.capacity {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byKey[key]; ok {
		c.lru.MoveToFront(el)
		return
	}
	c.byKey[key] = c.lru.PushFront(&cached{key: key, recs: recs, size: size})
	c.size += size
	for c.size > c.capacity {
		el := c.lru.Back()
		v := el.Value.(*cached)
		c.lru.Remove(el)
		delete(c.byKey, v.key)
		c.size -= v.size
	}
}

func (c *objectCache) drop(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byKey[key]; ok {
		c.lru.Remove(el)
		delete(c.byKey, key)
		c.size -= el.Value.(*cached).size
	}
}
