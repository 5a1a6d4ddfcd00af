package file

import (
	"container/list"
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/quiremq/quire/engines/objstore"
)

// segFile is what a segment reader reads: a local file or an offloaded
// segment in the object store.
type segFile interface {
	io.ReaderAt
	io.Closer
}

// remoteFile reads an offloaded segment with range GETs. Reads of at least
// a block go straight to the store (catch-up reads ask for megabytes), and
// each starts a GET of the same length that follows it (read-ahead), so a
// sequential reader overlaps its decoding with the next GET; smaller reads
// go through the engine's block cache.
type remoteFile struct {
	st    objstore.Store
	key   string
	size  int64
	cache *blockCache

	mu    sync.Mutex
	ahead *readAhead // the GET following the last large read, if any
}

// readAhead is one GET in flight or done.
type readAhead struct {
	off, n int64
	done   chan struct{}
	data   []byte
	err    error
}

func (f *remoteFile) Close() error {
	f.mu.Lock()
	ra := f.ahead
	f.ahead = nil
	f.mu.Unlock()
	if ra != nil {
		go func() { <-ra.done; f.cache.releaseAhead(ra.n) }()
	}
	return nil
}

// large serves a read of want >= one block at off: from the read-ahead if
// it covers it, else with its own GET; then starts the next read-ahead.
func (f *remoteFile) large(p []byte, off, want int64) (int, error) {
	f.mu.Lock()
	ra := f.ahead
	if ra != nil && ra.off == off && ra.n >= want {
		f.ahead = nil
	} else {
		ra = nil
	}
	f.mu.Unlock()
	var b []byte
	var err error
	if ra != nil {
		<-ra.done
		f.cache.releaseAhead(ra.n)
		b, err = ra.data, ra.err
	}
	if ra == nil || err != nil {
		b, err = f.st.Get(context.Background(), f.key, off, want)
	}
	n := copy(p, b)
	if err == nil && off+want < f.size {
		f.startAhead(off+want, min(want, f.size-off-want))
	}
	return f.result(n, len(p), err)
}

// startAhead starts a read-ahead GET when the engine's read-ahead budget
// allows and none is pending.
func (f *remoteFile) startAhead(off, n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ahead != nil || !f.cache.takeAhead(n) {
		return
	}
	ra := &readAhead{off: off, n: n, done: make(chan struct{})}
	f.ahead = ra
	go func() {
		ra.data, ra.err = f.st.Get(context.Background(), f.key, off, n)
		close(ra.done)
	}()
}

// ReadAt implements io.ReaderAt.
func (f *remoteFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= f.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), f.size-off)
	ctx := context.Background()
	bs := f.cache.blockSize
	if want >= bs {
		return f.large(p, off, want)
	}
	n := 0
	for int64(n) < want {
		pos := off + int64(n)
		blk := pos / bs
		b, err := f.cache.get(ctx, f, blk)
		if err != nil {
			return n, err
		}
		k := copy(p[n:want], b[pos-blk*bs:])
		if k == 0 {
			return n, io.ErrUnexpectedEOF
		}
		n += k
	}
	return f.result(n, len(p), nil)
}

func (f *remoteFile) result(n, want int, err error) (int, error) {
	if err != nil {
		return n, fmt.Errorf("file: read offloaded segment %q: %w", f.key, err)
	}
	if n < want {
		return n, io.EOF
	}
	return n, nil
}

// blockCache is an engine-wide LRU of recently read blocks of offloaded
// segments.
type blockCache struct {
	blockSize int64
	capacity  int // blocks

	aheadMu     sync.Mutex
	aheadBytes  int64 // read-ahead buffers held or in flight
	aheadBudget int64

	mu     sync.Mutex
	lru    list.List // of *cachedBlock, most recent first
	blocks map[blockID]*list.Element
}

type blockID struct {
	key string
	n   int64
}

type cachedBlock struct {
	id   blockID
	data []byte
}

func newBlockCache(blockSize int64, capacityBytes int64) *blockCache {
	return &blockCache{blockSize: blockSize, capacity: int(max(capacityBytes/blockSize, 1)), aheadBudget: capacityBytes, blocks: map[blockID]*list.Element{}}
}

// takeAhead reserves n bytes of the read-ahead budget (as large as the
// block cache's).
func (c *blockCache) takeAhead(n int64) bool {
	c.aheadMu.Lock()
	defer c.aheadMu.Unlock()
	if c.aheadBytes+n > c.aheadBudget {
		return false
	}
	c.aheadBytes += n
	return true
}

func (c *blockCache) releaseAhead(n int64) {
	c.aheadMu.Lock()
	c.aheadBytes -= n
	c.aheadMu.Unlock()
}

// get returns block n of f (shorter at the object's end).
func (c *blockCache) get(ctx context.Context, f *remoteFile, n int64) ([]byte, error) {
	id := blockID{f.key, n}
	c.mu.Lock()
	if el, ok := c.blocks[id]; ok {
		c.lru.MoveToFront(el)
		b := el.Value.(*cachedBlock).data
		c.mu.Unlock()
		return b, nil
	}
	c.mu.Unlock()
	b, err := f.st.Get(ctx, f.key, n*c.blockSize, min(c.blockSize, f.size-n*c.blockSize))
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.blocks[id]; !ok {
		c.blocks[id] = c.lru.PushFront(&cachedBlock{id: id, data: b})
		for c.lru.Len() > c.capacity {
			back := c.lru.Back()
			c.lru.Remove(back)
			delete(c.blocks, back.Value.(*cachedBlock).id)
		}
	}
	return b, nil
}

// drop forgets the cached blocks of an object (deleted by trim or
// retention; a later object of the same key must not be served stale data).
func (c *blockCache) drop(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for el := c.lru.Front(); el != nil; {
		next := el.Next()
		if cb := el.Value.(*cachedBlock); cb.id.key == key {
			c.lru.Remove(el)
			delete(c.blocks, cb.id)
		}
		el = next
	}
}
