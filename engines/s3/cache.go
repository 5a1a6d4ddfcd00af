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
}

type cached struct {
	key  string
	recs []shard.Record
	size int64
}

func newObjectCache(capacity int64) *objectCache {
	return &objectCache{capacity: capacity, lru: list.New(), byKey: map[string]*list.Element{}}
}

func (c *objectCache) get(key string) ([]shard.Record, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byKey[key]
	if !ok {
		return nil, false
	}
	c.lru.MoveToFront(el)
	return el.Value.(*cached).recs, true
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
