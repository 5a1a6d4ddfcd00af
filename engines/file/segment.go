package file

import (
	"container/list"
	"errors"
	"io"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/quiremq/quire/internal/vfs"
)

// segment is one file of a shard's log, holding the records
// [base, end). The last segment of a shard is active (appended to); the
// others are sealed and immutable.
type segment struct {
	base    uint64
	path    string // segment file
	idxPath string // index file (sealed segments)
	created int64  // unix ms, from the header (active segment)

	// For the active segment these are guarded by Shard.mu and describe the
	// published (acknowledged) prefix; once sealed they never change.
	end   uint64
	size  int64 // bytes, including the header
	maxTs int64
	index []indexEntry // active segment only; a sealed segment's index lives in its reader

	sealed atomic.Bool // not the active segment: its reader lives in the LRU
	// remote is set once the segment is read from the object store (its
	// local copy is deleted or being deleted).
	remote atomic.Pointer[RemoteSegment]

	rmu     sync.Mutex
	reader  *segReader // open handle, nil if none
	gone    bool       // deleted or its shard closed: never reopen
	lruElem *list.Element
}

// segReader is an open segment file plus (for sealed segments) its index.
type segReader struct {
	seg     *segment
	f       segFile
	idx     []indexEntry
	refs    int  // guarded by seg.rmu
	dropped bool // guarded by seg.rmu: close when refs reaches 0
}

var errSegmentGone = errors.New("file: segment deleted")

// readerCache bounds the number of open sealed-segment files across an
// engine (LRU). Active segments' files are owned by their shard and are not
// counted.
type readerCache struct {
	capacity int

	mu  sync.Mutex
	lru list.List // of *segment, most recently used first
}

// acquire returns an open reader of seg with a reference the caller must
// release. open opens the segment's file (local or remote); load builds a
// sealed segment's index when the reader is opened.
func (c *readerCache) acquire(seg *segment, open func() (segFile, error), load func(segFile) ([]indexEntry, error)) (*segReader, error) {
	seg.rmu.Lock()
	r := seg.reader
	opened := false
	if r == nil {
		if seg.gone {
			seg.rmu.Unlock()
			return nil, errSegmentGone
		}
		f, err := open()
		if err != nil {
			seg.rmu.Unlock()
			if vfs.IsNotExist(err) {
				return nil, errSegmentGone
			}
			return nil, err
		}
		idx, err := load(f)
		if err != nil {
			f.Close()
			seg.rmu.Unlock()
			return nil, err
		}
		r = &segReader{seg: seg, f: f, idx: idx}
		seg.reader = r
		opened = true
	}
	r.refs++
	seg.rmu.Unlock()
	if opened || seg.sealed.Load() {
		c.touch(seg)
	}
	return r, nil
}

// release drops a reference taken by acquire.
func (c *readerCache) release(r *segReader) {
	seg := r.seg
	seg.rmu.Lock()
	r.refs--
	closeIt := r.refs == 0 && r.dropped
	seg.rmu.Unlock()
	if closeIt {
		r.f.Close()
	}
}

// touch inserts seg into the LRU (or moves it to the front) and closes the
// least recently used readers beyond capacity.
func (c *readerCache) touch(seg *segment) {
	var victims []*segment
	seg.rmu.Lock() // orders touch with remove: a removed segment never re-enters
	if seg.gone {
		seg.rmu.Unlock()
		return
	}
	c.mu.Lock()
	if seg.lruElem == nil {
		seg.lruElem = c.lru.PushFront(seg)
	} else {
		c.lru.MoveToFront(seg.lruElem)
	}
	for c.lru.Len() > c.capacity {
		back := c.lru.Back()
		v := back.Value.(*segment)
		c.lru.Remove(back)
		v.lruElem = nil
		victims = append(victims, v)
	}
	c.mu.Unlock()
	seg.rmu.Unlock()
	for _, v := range victims {
		c.evict(v, false)
	}
}

// evict closes seg's reader (once unreferenced); gone also prevents any
// later reopen.
func (c *readerCache) evict(seg *segment, gone bool) {
	seg.rmu.Lock()
	if gone {
		seg.gone = true
	}
	r := seg.reader
	seg.reader = nil
	closeIt := false
	if r != nil {
		r.dropped = true
		closeIt = r.refs == 0
	}
	seg.rmu.Unlock()
	if closeIt {
		r.f.Close()
	}
}

// remove takes seg out of the cache for good (deleted, or its shard closed).
func (c *readerCache) remove(seg *segment) {
	c.evict(seg, true)
	c.mu.Lock()
	if seg.lruElem != nil {
		c.lru.Remove(seg.lruElem)
		seg.lruElem = nil
	}
	c.mu.Unlock()
}

// lookup returns the position to start reading from to find offset off: the
// last index entry at or below off, or the first record.
func lookup(entries []indexEntry, off uint64) int64 {
	i := sort.Search(len(entries), func(i int) bool { return entries[i].off > off })
	if i == 0 {
		return segHeaderSize
	}
	return entries[i-1].pos
}

// lookupTime returns the position of the last index entry before which every
// record has a timestamp < ts: scanning from there finds the first record
// with a timestamp >= ts.
func lookupTime(entries []indexEntry, ts int64) int64 {
	i := sort.Search(len(entries), func(i int) bool { return entries[i].maxTsBefore >= ts })
	if i == 0 {
		return segHeaderSize
	}
	return entries[i-1].pos
}

// recordIter walks the records of a segment file from a position up to a
// limit, reading in chunks.
type recordIter struct {
	r     io.ReaderAt
	pos   int64 // file position of the next record
	limit int64 // end of the bytes to read
	chunk int
	fresh bool // allocate a new buffer per refill (records alias it)

	buf    []byte
	bufPos int64 // file position of buf[0]
}

// next returns the bytes of the record at it.pos (valid until the next call
// unless fresh), its position and status. At the limit it returns io.EOF.
// For a bad record, b holds what is available at the position and info.size
// the claimed length if known.
func (it *recordIter) next() (b []byte, pos int64, info recInfo, st recStatus, err error) {
	pos = it.pos
	if pos >= it.limit {
		return nil, pos, recInfo{}, recOK, io.EOF
	}
	if err := it.fill(pos, recPrefix); err != nil {
		return nil, pos, recInfo{}, recOK, err
	}
	avail := it.buf[pos-it.bufPos:]
	n, st := recordLen(avail)
	if st == recBadLen || st == recShort {
		return avail, pos, recInfo{}, st, nil
	}
	if pos+int64(n) > it.limit {
		return avail, pos, recInfo{size: n}, recShort, nil
	}
	if err := it.fill(pos, n); err != nil {
		return nil, pos, recInfo{}, recOK, err
	}
	b = it.buf[pos-it.bufPos : pos-it.bufPos+int64(n)]
	info, st = checkRecord(b)
	if st == recOK {
		it.pos = pos + int64(n)
	}
	return b, pos, info, st, nil
}

// fill makes buf hold at least n bytes from pos (fewer at the limit).
func (it *recordIter) fill(pos int64, n int) error {
	want := min(int64(n), it.limit-pos)
	if pos >= it.bufPos && pos+want <= it.bufPos+int64(len(it.buf)) {
		return nil
	}
	size := min(int64(max(n, it.chunk)), it.limit-pos)
	var nb []byte
	if !it.fresh && int64(cap(it.buf)) >= size {
		nb = it.buf[:size]
	} else {
		nb = make([]byte, size)
	}
	k, err := it.r.ReadAt(nb, pos)
	if int64(k) < size {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	it.buf, it.bufPos = nb, pos
	return nil
}
