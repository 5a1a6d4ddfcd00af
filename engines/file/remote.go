package file

import (
	"container/list"
	"context"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/quiremq/quire/engines/objstore"
)

// segFile is what a segment reader reads: a local file or an offloaded
// segment in the object store.
type segFile interface {
	io.ReaderAt
	io.Closer
}

// remoteRangeBytes is the size of the ranged GETs of large reads of
// offloaded segments (ranges are aligned to it), and remoteAhead how many
// ranges past the one being read a sequential reader keeps in flight.
const (
	remoteRangeBytes = 8 << 20
	remoteAhead      = 2
)

// remoteFile reads an offloaded segment with range GETs. Reads of at least
// a block (catch-up reads ask for megabytes) are served from aligned ranges
// of remoteRangeBytes that it fetches, and it keeps the next remoteAhead
// ranges in flight (read-ahead) so a sequential reader overlaps its
// decoding with the next GETs; when the reader reaches the object's last
// range it prefetches the first range of the next segment's object. Smaller
// reads go through the engine's block cache. Records are checked by their
// CRCs when decoded; nothing here checks the bytes again.
type remoteFile struct {
	st    objstore.Store
	key   string
	size  int64
	next  string // object of the following segment (base = this End), "" if unknown
	cache *blockCache

	mu         sync.Mutex
	win        []*rangeGet // ranges held or in flight, by offset
	prefetched bool        // the next object's first range was asked for
}

// rangeGet is one ranged GET in flight or done.
type rangeGet struct {
	key    string
	off, n int64
	budget int64 // read-ahead budget held until dropped (0 for a range fetched on demand)
	done   chan struct{}
	data   []byte
	err    error
}

func (c *blockCache) startGet(st objstore.Store, key string, off, n, budget int64) *rangeGet {
	g := &rangeGet{key: key, off: off, n: n, budget: budget, done: make(chan struct{})}
	go func() {
		g.data, g.err = st.Get(context.Background(), key, off, n)
		close(g.done)
	}()
	return g
}

// release returns a range's budget once its GET is done.
func (c *blockCache) release(g *rangeGet) {
	if g.budget == 0 {
		return
	}
	select {
	case <-g.done:
		c.releaseAhead(g.budget)
	default:
		go func() { <-g.done; c.releaseAhead(g.budget) }()
	}
}

func (f *remoteFile) Close() error {
	f.mu.Lock()
	win := f.win
	f.win = nil
	f.mu.Unlock()
	for _, g := range win {
		f.cache.release(g)
	}
	return nil
}

// rangeLen is the length of the range at off.
func (f *remoteFile) rangeLen(off int64) int64 { return min(f.cache.rangeBytes, f.size-off) }

// ranges returns the ranges covering [off, end), fetching those not held
// (adopting one the engine prefetched), and starts the read-ahead of the
// ranges after them. Held ranges outside the window are dropped.
func (f *remoteFile) ranges(off, end int64) []*rangeGet {
	rb := f.cache.rangeBytes
	first := off / rb * rb
	last := (end - 1) / rb * rb
	aheadEnd := min(last+(remoteAhead+1)*rb, f.size)
	f.mu.Lock()
	defer f.mu.Unlock()
	keep := f.win[:0]
	for _, g := range f.win {
		if g.off >= first && g.off < aheadEnd {
			keep = append(keep, g)
		} else {
			f.cache.release(g)
		}
	}
	clear(f.win[len(keep):])
	f.win = keep
	var out []*rangeGet
	for pos := first; pos < aheadEnd; pos += rb {
		g := f.held(pos)
		switch {
		case g != nil:
		case pos <= last:
			if g = f.cache.adopt(f.key, pos); g == nil {
				g = f.cache.startGet(f.st, f.key, pos, f.rangeLen(pos), 0)
			}
			f.win = append(f.win, g)
		default:
			if g = f.cache.adopt(f.key, pos); g == nil && f.cache.reserve(f.rangeLen(pos)) {
				g = f.cache.startGet(f.st, f.key, pos, f.rangeLen(pos), f.rangeLen(pos))
			}
			if g == nil {
				return out // no budget: the next range is fetched when read
			}
			f.win = append(f.win, g)
		}
		if pos <= last {
			out = append(out, g)
		}
	}
	if aheadEnd == f.size && f.next != "" && !f.prefetched {
		// Once per open file: a failed prefetch (the next segment is
		// still local, the usual case for the newest offloaded one)
		// is not retried on every read of this one's tail.
		f.prefetched = true
		f.cache.prefetch(f.st, f.next)
	}
	return out
}

// held returns the held range at off, if any.
func (f *remoteFile) held(off int64) *rangeGet {
	for _, g := range f.win {
		if g.off == off {
			return g
		}
	}
	return nil
}

// refetch fetches a range whose GET failed once more and holds the new
// one in its place.
func (f *remoteFile) refetch(g *rangeGet) *rangeGet {
	ng := &rangeGet{key: f.key, off: g.off, n: f.rangeLen(g.off), done: make(chan struct{})}
	ng.data, ng.err = f.st.Get(context.Background(), f.key, ng.off, ng.n)
	close(ng.done)
	f.mu.Lock()
	defer f.mu.Unlock()
	if i := slices.Index(f.win, g); i >= 0 {
		f.cache.release(g)
		if ng.err == nil {
			f.win[i] = ng
		} else {
			f.win = slices.Delete(f.win, i, i+1)
		}
	}
	return ng
}

// large serves a read of want >= one block at off from the ranges covering
// it. A range whose GET failed is fetched once more (a read-ahead or a
// prefetch may have failed for a reason gone since).
func (f *remoteFile) large(p []byte, off, want int64) (int, error) {
	n := 0
	for _, g := range f.ranges(off, off+want) {
		<-g.done
		if g.err != nil {
			if g = f.refetch(g); g.err != nil {
				return f.result(n, len(p), g.err)
			}
		}
		pos := off + int64(n)
		if pos < g.off || pos-g.off >= int64(len(g.data)) {
			break // a short range: the object is shorter than recorded
		}
		n += copy(p[n:want], g.data[pos-g.off:])
	}
	if int64(n) < want {
		return f.result(n, len(p), io.ErrUnexpectedEOF)
	}
	return f.result(n, len(p), nil)
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
	blockSize  int64
	capacity   int   // blocks
	rangeBytes int64 // remoteRangeBytes (tests make it smaller)

	aheadMu     sync.Mutex
	aheadBytes  int64 // read-ahead buffers held or in flight
	aheadBudget int64

	mu     sync.Mutex
	lru    list.List // of *cachedBlock, most recent first
	blocks map[blockID]*list.Element

	// pre holds the first ranges of the objects that sequential readers
	// will read next, oldest first (at most maxPrefetched): a reader that
	// opens the object adopts its range, the others expire.
	preMu sync.Mutex
	pre   []*rangeGet
}

// maxPrefetched bounds the ranges prefetched for objects not opened yet.
const maxPrefetched = 4

type blockID struct {
	key string
	n   int64
}

type cachedBlock struct {
	id   blockID
	data []byte
}

func newBlockCache(blockSize int64, capacityBytes int64) *blockCache {
	return &blockCache{blockSize: blockSize, capacity: int(max(capacityBytes/blockSize, 1)), rangeBytes: remoteRangeBytes, aheadBudget: capacityBytes, blocks: map[blockID]*list.Element{}}
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

// prefetch starts fetching the first range of object key unless it is
// held already or the read-ahead budget is spent. A missing object (the
// next segment is not offloaded) costs one failed GET; a failed prefetch
// is forgotten when it ends.
func (c *blockCache) prefetch(st objstore.Store, key string) {
	c.preMu.Lock()
	defer c.preMu.Unlock()
	for _, g := range c.pre {
		if g.key == key {
			return
		}
	}
	if len(c.pre) == maxPrefetched {
		c.release(c.pre[0])
		c.pre = slices.Delete(c.pre, 0, 1)
	}
	if !c.takeAhead(c.rangeBytes) {
		return
	}
	g := c.startGet(st, key, 0, c.rangeBytes, c.rangeBytes)
	c.pre = append(c.pre, g)
	go func() {
		<-g.done
		if g.err != nil {
			c.preMu.Lock()
			defer c.preMu.Unlock()
			if i := slices.Index(c.pre, g); i >= 0 {
				c.pre = slices.Delete(c.pre, i, i+1)
				c.release(g)
			}
		}
	}()
}

// reserve takes n bytes of the read-ahead budget, giving up the oldest
// prefetched range not adopted yet if that makes room: a reader's own
// read-ahead comes first.
func (c *blockCache) reserve(n int64) bool {
	if c.takeAhead(n) {
		return true
	}
	c.preMu.Lock()
	var g *rangeGet
	if len(c.pre) > 0 {
		g = c.pre[0]
		c.pre = slices.Delete(c.pre, 0, 1)
	}
	c.preMu.Unlock()
	if g == nil {
		return false
	}
	select {
	case <-g.done:
	default:
		c.release(g) // released when its GET ends
		return false
	}
	c.release(g)
	return c.takeAhead(n)
}

// adopt hands over the prefetched range of key at off, if any.
func (c *blockCache) adopt(key string, off int64) *rangeGet {
	c.preMu.Lock()
	defer c.preMu.Unlock()
	for i, g := range c.pre {
		if g.key == key && g.off == off {
			c.pre = slices.Delete(c.pre, i, i+1)
			select {
			case <-g.done:
				if g.err != nil {
					c.release(g)
					return nil
				}
			default:
			}
			return g
		}
	}
	return nil
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
	if g := c.adopt(key, 0); g != nil {
		c.release(g)
	}
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
