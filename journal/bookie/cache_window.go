package bookie

import "sync"

// entryLogCacheWindow is how much of the most recently written entry-log
// data (all logs together, newest first) stays in the page cache once
// synced; what lies further behind the head is dropped at a checkpoint.
//
// Dropping synced pages keeps the page cache from growing with logs that
// are written once and read rarely, and lets the kernel recycle their
// pages for new writes (cheaper than finding fresh ones). But the entries
// a catch-up reader reads are mostly recent, and each log page holds
// records of several ledgers and stride classes, read by as many streams:
// dropped at once, every catch-up read of data written seconds earlier
// went to the disk. journal-bench --mode catchup (10 s of writes, about
// 370 MB per bookie at E3/Qw2, read back from entry 0) fits in the window.
const entryLogCacheWindow = 512 << 20

// logCache tracks the synced entry-log data still cached, oldest log
// first, and drops what falls out of the window.
type logCache struct {
	mu     sync.Mutex
	window int64
	logs   []cachedLog
	// drop drops the cached pages of [off, off+n) of log id.
	drop func(id uint64, off, n int64)
}

type cachedLog struct {
	id      uint64
	dropped int64 // the prefix whose pages were dropped
	synced  int64 // the prefix known to be synced
}

// synced records that log id is synced up to size (logs are passed in the
// order they were written: a new id is the newest) and drops the synced
// pages that lie more than the window behind the newest synced byte.
func (c *logCache) synced(id uint64, size int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := len(c.logs) - 1
	for i >= 0 && c.logs[i].id != id {
		i--
	}
	if i < 0 {
		c.logs = append(c.logs, cachedLog{id: id})
		i = len(c.logs) - 1
	}
	c.logs[i].synced = max(c.logs[i].synced, size)
	keep := c.window
	for i := len(c.logs) - 1; i >= 0; i-- {
		l := &c.logs[i]
		if l.synced <= keep {
			keep -= l.synced
			continue
		}
		if end := l.synced - keep; end > l.dropped {
			c.drop(l.id, l.dropped, end-l.dropped)
			l.dropped = end
		}
		keep = 0
	}
	// Logs dropped entirely, older than the newest, are done with.
	n := 0
	for k, l := range c.logs {
		if l.dropped < l.synced || k == len(c.logs)-1 {
			c.logs[n] = l
			n++
		}
	}
	c.logs = c.logs[:n]
}

// forget stops tracking log id (removed).
func (c *logCache) forget(id uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, l := range c.logs {
		if l.id == id {
			c.logs = append(c.logs[:k], c.logs[k+1:]...)
			return
		}
	}
}
