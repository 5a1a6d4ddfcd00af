package file

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
)

// retentionCheckInterval is how often an open shard checks its retention
// limits when no roll triggered a check.
const retentionCheckInterval = time.Minute

// Encode buffers come from a pool shared by all shards, so that an idle
// shard holds none; buffers above maxPooledBuffer are left to the GC.
const maxPooledBuffer = 16 << 20

var bufPool = sync.Pool{New: func() any { return new([]byte) }}

// committer owns a shard's active segment file. Only the shard's committer
// goroutine (run) touches it, after open and until close.
type committer struct {
	s        *Shard
	active   *segment
	wf       vfs.File   // the active segment, opened for writing
	owner    *segReader // the committer's reference to the active segment's reader
	wpos     int64      // bytes written to the active segment
	next     uint64     // next offset to assign
	ib       indexBuilder
	pend     []indexEntry
	spare    []*request
	dirty    bool  // written but not fdatasynced
	unsynced int64 // bytes written since the last fdatasync
	sealed   bool
	failErr  error
	closeErr error

	syncTimer  *time.Timer // SyncInterval policy
	timerArmed bool
}

// run is the shard's committer goroutine: it takes every queued request,
// writes all queued appends with one write and one fdatasync (batch policy),
// publishes them and answers the appenders; then repeats.
func (s *Shard) run() {
	defer close(s.done)
	c := &s.c
	var retentionTick <-chan time.Time
	// The interval policy's timer is armed by the first unsynced write, so
	// that idle shards cost no wake-ups.
	c.syncTimer = time.NewTimer(time.Hour)
	c.syncTimer.Stop()
	defer c.syncTimer.Stop()
	if s.e.opts.RetentionBytes > 0 || s.e.opts.RetentionAge > 0 {
		t := time.NewTicker(retentionCheckInterval)
		defer t.Stop()
		retentionTick = t.C
	}
	for {
		select {
		case <-s.wake:
			c.drain()
		case <-c.syncTimer.C:
			c.timerArmed = false
			if c.dirty && c.failErr == nil {
				c.sync()
			}
		case <-retentionTick:
			if err := s.enforceRetention(); err != nil {
				s.log.Warn("file: retention", "shard", s.name, "err", err)
			}
		case <-s.stop:
			c.drain()
			if c.dirty && c.failErr == nil {
				if err := c.sync(); err != nil {
					c.closeErr = err
				}
			}
			return
		}
	}
}

// drain processes queued requests until the queue is empty.
func (c *committer) drain() {
	s := c.s
	for {
		s.qmu.Lock()
		reqs := s.queue
		if len(reqs) == 0 {
			s.qmu.Unlock()
			return
		}
		s.queue = c.spare[:0]
		s.qmu.Unlock()
		for i := 0; i < len(reqs); {
			j := i
			for j < len(reqs) && !reqs[j].seal {
				j++
			}
			if j > i {
				c.commit(reqs[i:j])
			}
			if j < len(reqs) {
				c.seal(reqs[j])
				j++
			}
			i = j
		}
		clear(reqs)
		c.spare = reqs[:0]
	}
}

func answer(reqs []*request, err error) {
	for _, r := range reqs {
		r.err = err
		r.done <- struct{}{}
	}
}

// commit writes reqs as one group (rolling the active segment first if it
// is full or old).
func (c *committer) commit(reqs []*request) {
	s := c.s
	if c.failErr != nil {
		answer(reqs, c.failErr)
		return
	}
	if c.sealed {
		answer(reqs, fmt.Errorf("file: %q: %w", s.name, shard.ErrSealed))
		return
	}
	if c.needRoll() {
		if err := c.roll(); err != nil {
			answer(reqs, c.fail(err))
			return
		}
		// Retention only ever deletes sealed segments, so a roll is when
		// there may be something new to delete.
		if err := s.enforceRetention(); err != nil {
			s.log.Warn("file: retention", "shard", s.name, "err", err)
		}
	}
	bp := bufPool.Get().(*[]byte)
	buf := (*bp)[:0]
	pend := c.pend[:0]
	ib := c.ib
	next := c.next
	var payload, nrecs int
	for _, req := range reqs {
		req.first = next
		for i := range req.recs {
			r := &req.recs[i]
			ts := r.Timestamp
			if ts == 0 {
				ts = req.now
			}
			pend = ib.add(pend, next, c.wpos+int64(len(buf)), ts)
			buf = appendRecord(buf, r, next, ts)
			next++
			payload += r.Size()
		}
		nrecs += len(req.recs)
	}
	n := len(buf)
	_, err := c.wf.WriteAt(buf, c.wpos)
	if cap(buf) <= maxPooledBuffer {
		*bp = buf[:0]
		bufPool.Put(bp)
	}
	c.pend = pend[:0]
	s.e.m.writes.Inc()
	if err != nil {
		answer(reqs, c.fail(fmt.Errorf("write %s: %w", c.active.path, err)))
		return
	}
	c.dirty = true
	c.unsynced += int64(n)
	switch s.e.opts.Sync {
	case SyncBatch:
		if err := c.sync(); err != nil {
			answer(reqs, err)
			return
		}
	case SyncInterval:
		if !c.timerArmed {
			c.syncTimer.Reset(s.e.opts.SyncInterval)
			c.timerArmed = true
		}
	}
	c.wpos += int64(n)
	c.next = next
	c.ib = ib
	a := c.active
	s.mu.Lock()
	a.size = c.wpos
	a.end = next
	a.maxTs = ib.maxTs
	a.index = append(a.index, pend...)
	s.high = next
	if len(s.waiters) > 0 {
		s.wakeWaiters(false)
	}
	s.mu.Unlock()
	m := s.e.m
	m.appends.Add(float64(len(reqs)))
	m.records.Add(float64(nrecs))
	m.bytes.Add(float64(payload))
	answer(reqs, nil)
}

// sync fdatasyncs the active segment; a failure fails the shard.
func (c *committer) sync() error {
	s := c.s
	start := time.Now()
	err := c.wf.SyncData()
	m := s.e.m
	m.fsyncs.Inc()
	m.fsyncSeconds.Observe(time.Since(start).Seconds())
	m.syncBytes.Observe(float64(c.unsynced))
	s.e.syncs.Add(1)
	s.e.syncedBytes.Add(c.unsynced)
	if err != nil {
		return c.fail(fmt.Errorf("fdatasync %s: %w", c.active.path, err))
	}
	c.dirty = false
	c.unsynced = 0
	return nil
}

// fail puts the shard in the failed state: after a failed write or fsync the
// file's contents are unknown, so no further write is attempted until the
// shard is reopened (and recovered). It returns the error appends get.
func (c *committer) fail(err error) error {
	s := c.s
	if c.failErr != nil {
		return c.failErr
	}
	ferr := fmt.Errorf("file: %q: %w: %w", s.name, shard.ErrFailed, err)
	c.failErr = ferr
	s.mu.Lock()
	s.failErr = ferr
	s.mu.Unlock()
	s.qmu.Lock()
	if s.qerr == nil || !isClosed(s.qerr) {
		s.qerr = ferr
	}
	s.qmu.Unlock()
	s.e.m.failedShards.Inc()
	s.log.Error("file: shard failed; writes refused until it is reopened", "shard", s.name, "err", err)
	return ferr
}

func isClosed(err error) bool { return err == shard.ErrClosed }

// needRoll reports whether the active segment must be sealed before the
// next group.
func (c *committer) needRoll() bool {
	if c.wpos <= segHeaderSize {
		return false
	}
	o := &c.s.e.opts
	if c.wpos >= o.SegmentBytes {
		return true
	}
	return o.SegmentAge > 0 && o.Now().UnixMilli()-c.active.created >= o.SegmentAge.Milliseconds()
}

// roll seals the active segment (sync, persist its index) and starts a new
// one at the next offset.
func (c *committer) roll() error {
	s := c.s
	if c.dirty {
		if err := c.sync(); err != nil {
			return err
		}
	}
	old := c.active
	sum := segSummary{base: old.base, end: old.end, size: old.size, maxTs: old.maxTs}
	entries := old.index
	if err := vfs.WriteFileAtomic(s.e.fs, old.idxPath, encodeIndex(sum, entries)); err != nil {
		// Not fatal: a missing or damaged index is rebuilt by a scan.
		s.log.Warn("file: write segment index", "shard", s.name, "file", old.idxPath, "err", err)
	}
	seg, f, err := s.createSegment(c.next, s.e.opts.Now().UnixMilli())
	if err != nil {
		return err
	}
	old.rmu.Lock()
	c.owner.idx = entries
	old.rmu.Unlock()
	old.sealed.Store(true)
	s.mu.Lock()
	old.index = nil
	s.segs = append(slices.Clip(s.segs), seg)
	s.mu.Unlock()
	s.e.cache.touch(old)
	s.e.cache.release(c.owner)
	c.active, c.wf, c.owner = seg, f, seg.reader
	c.wpos = segHeaderSize
	c.ib = newIndexBuilder(s.e.opts.IndexIntervalBytes)
	s.e.m.rolled.Inc()
	if s.e.off != nil {
		s.e.off.poke()
	}
	return nil
}

// seal makes the shard read-only after everything before it.
func (c *committer) seal(req *request) {
	s := c.s
	if c.failErr != nil {
		answer([]*request{req}, c.failErr)
		return
	}
	if c.sealed {
		answer([]*request{req}, nil)
		return
	}
	if c.dirty {
		if err := c.sync(); err != nil {
			answer([]*request{req}, err)
			return
		}
	}
	if err := vfs.WriteFileAtomic(s.e.fs, s.e.fs.PathJoin(s.dir, sealFile), encodeSeal()); err != nil {
		answer([]*request{req}, fmt.Errorf("file: %q: persist seal: %w", s.name, err))
		return
	}
	c.sealed = true
	s.mu.Lock()
	s.sealed = true
	s.wakeWaiters(true)
	s.mu.Unlock()
	s.qmu.Lock()
	if s.qerr == nil {
		s.qerr = fmt.Errorf("file: %q: %w", s.name, shard.ErrSealed)
	}
	s.qmu.Unlock()
	answer([]*request{req}, nil)
}

// releaseActive drops the committer's reference to the active segment's
// file (closing it once no reader holds it). Called after run returned.
func (c *committer) releaseActive() {
	if c.owner != nil {
		c.s.e.cache.release(c.owner)
		c.owner = nil
	}
}

// createSegment creates, syncs and returns an empty segment starting at base.
func (s *Shard) createSegment(base uint64, created int64) (*segment, vfs.File, error) {
	fs := s.e.fs
	path := fs.PathJoin(s.dir, segFileName(base))
	f, err := fs.Create(path, vfs.CategoryShard)
	if err != nil {
		return nil, nil, fmt.Errorf("create %s: %w", path, err)
	}
	fail := func(err error) (*segment, vfs.File, error) {
		f.Close()
		return nil, nil, err
	}
	if _, err := f.WriteAt(segHeader{base: base, created: created}.encode(), 0); err != nil {
		return fail(fmt.Errorf("write %s: %w", path, err))
	}
	if err := f.SyncData(); err != nil {
		return fail(fmt.Errorf("fdatasync %s: %w", path, err))
	}
	if err := vfs.SyncDir(fs, s.dir); err != nil {
		return fail(fmt.Errorf("sync directory %s: %w", s.dir, err))
	}
	seg := s.newSegment(base)
	seg.created = created
	seg.end = base
	seg.size = segHeaderSize
	seg.maxTs = minTs
	seg.reader = &segReader{seg: seg, f: f, refs: 1}
	return seg, f, nil
}

func (s *Shard) newSegment(base uint64) *segment {
	return &segment{
		base:    base,
		path:    s.e.fs.PathJoin(s.dir, segFileName(base)),
		idxPath: s.e.fs.PathJoin(s.dir, idxFileName(base)),
		maxTs:   minTs,
	}
}
