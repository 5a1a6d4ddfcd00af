package bookie

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/quiremq/quire/internal/vfs"
)

// Index keys in Pebble. Part of the on-disk format.
//
//	'r' ledger(8 BE) first entry(8 BE) → log id(8) n(4) n×(entry(8) offset(8) length(4))   entry locations (index.go)
//	'l' ledger(8 BE)             → flags(1: bit0 fenced) lac(8)     ledger metadata
//	'u' log id(8 BE)             → size(8) n(8) n×(ledger(8) bytes(8)) live bytes per ledger
//	'c'                          → journal file(8) offset(8)       checkpoint position
//	'n'                          → next entry-log id(8)
const (
	prefixLedger = 'l'
	prefixUsage  = 'u'
)

var (
	checkpointKey = []byte{'c'}
	nextLogKey    = []byte{'n'}
)

func ledgerKey(ledger uint64) []byte {
	k := make([]byte, 9)
	k[0] = prefixLedger
	binary.BigEndian.PutUint64(k[1:], ledger)
	return k
}

func usageKey(id uint64) []byte {
	k := make([]byte, 9)
	k[0] = prefixUsage
	binary.BigEndian.PutUint64(k[1:], id)
	return k
}

// location is where an entry lives: a record of an entry log.
type location struct {
	log    uint64
	offset int64
	length uint32 // payload length
}

// ledgerMeta is the durable state of a ledger beyond its entries.
type ledgerMeta struct {
	fenced bool
	lac    int64 // max of piggybacked and explicit LACs; -1 none
}

func (m ledgerMeta) encode() []byte {
	v := make([]byte, 9)
	if m.fenced {
		v[0] = 1
	}
	binary.LittleEndian.PutUint64(v[1:], uint64(m.lac))
	return v
}

func decodeLedgerMeta(v []byte) (ledgerMeta, error) {
	if len(v) != 9 {
		return ledgerMeta{}, fmt.Errorf("%w: ledger metadata of %d bytes", ErrCorrupt, len(v))
	}
	return ledgerMeta{fenced: v[0]&1 != 0, lac: int64(binary.LittleEndian.Uint64(v[1:]))}, nil
}

// logUsage accounts an entry log: its size and the bytes of records per
// ledger (a ledger's bytes stop being live when it is deleted).
type logUsage struct {
	size int64
	live map[uint64]int64
}

func (u *logUsage) liveBytes() int64 {
	var n int64
	for _, b := range u.live {
		n += b
	}
	return n
}

func (u *logUsage) encode() []byte {
	ledgers := make([]uint64, 0, len(u.live))
	for l := range u.live {
		ledgers = append(ledgers, l)
	}
	slices.Sort(ledgers)
	v := make([]byte, 0, 16+16*len(ledgers))
	v = binary.LittleEndian.AppendUint64(v, uint64(u.size))
	v = binary.LittleEndian.AppendUint64(v, uint64(len(ledgers)))
	for _, l := range ledgers {
		v = binary.LittleEndian.AppendUint64(v, l)
		v = binary.LittleEndian.AppendUint64(v, uint64(u.live[l]))
	}
	return v
}

func decodeUsage(v []byte) (*logUsage, error) {
	if len(v) < 16 {
		return nil, fmt.Errorf("%w: entry-log usage of %d bytes", ErrCorrupt, len(v))
	}
	n := binary.LittleEndian.Uint64(v[8:])
	if uint64(len(v)-16)/16 != n || (len(v)-16)%16 != 0 {
		return nil, fmt.Errorf("%w: entry-log usage of %d bytes for %d ledgers", ErrCorrupt, len(v), n)
	}
	u := &logUsage{size: int64(binary.LittleEndian.Uint64(v)), live: make(map[uint64]int64, n)}
	for i := 0; i < int(n); i++ {
		u.live[binary.LittleEndian.Uint64(v[16+16*i:])] = int64(binary.LittleEndian.Uint64(v[24+16*i:]))
	}
	return u, nil
}

// jpos is a position in the journal: a file number and an offset in it.
type jpos struct {
	file uint64
	off  int64
}

func (p jpos) encode() []byte {
	v := make([]byte, 16)
	binary.LittleEndian.PutUint64(v, p.file)
	binary.LittleEndian.PutUint64(v[8:], uint64(p.off))
	return v
}

func decodeJpos(v []byte) (jpos, error) {
	if len(v) != 16 {
		return jpos{}, fmt.Errorf("%w: checkpoint of %d bytes", ErrCorrupt, len(v))
	}
	return jpos{file: binary.LittleEndian.Uint64(v), off: int64(binary.LittleEndian.Uint64(v[8:]))}, nil
}

// File names.
const (
	journalExt  = ".jnl"
	entryLogExt = ".log"
	ledgersDir  = "ledgers"
	indexDir    = "index"
	lockFile    = "LOCK"
)

func fileName(num uint64, ext string) string { return fmt.Sprintf("%016x%s", num, ext) }

func parseFileName(name, ext string) (uint64, bool) {
	if !strings.HasSuffix(name, ext) || len(name) != 16+len(ext) {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSuffix(name, ext), 16, 64)
	return n, err == nil
}

// listNumbered returns the numbers of the files of dir named by fileName
// with ext, ascending.
func listNumbered(fs vfs.FS, dir, ext string) ([]uint64, error) {
	names, err := fs.List(dir)
	if err != nil {
		return nil, err
	}
	var nums []uint64
	for _, n := range names {
		if num, ok := parseFileName(n, ext); ok {
			nums = append(nums, num)
		}
	}
	slices.Sort(nums)
	return nums, nil
}

// entryLog is an entry log being written.
type entryLog struct {
	id      uint64
	f       vfs.File
	size    int64
	alloc   int64 // the file's blocks are preallocated up to here
	started int64 // write-back was started (SyncTo) up to here
}

// entryLogWriteBack is how many written bytes of an entry log the applier
// lets accumulate before it starts their write-back (SyncTo: on Linux
// sync_file_range, which returns once the previous range's write-back is
// done and this one's is started). Without it a checkpoint's fsync of the
// logs flushes everything written since the last one at once (tens of MB
// at a few MB/s of adds), and the journal fdatasyncs queued behind that
// burst took 50-120 ms instead of ~1 ms: the adds' p99 went to hundreds of
// ms at a fifth of the bookie's throughput. Started as it is written, the
// log reaches the disk at the rate of the adds, and a checkpoint's fsync
// has at most this much left to write. The smaller the step, the less
// write-back a journal fdatasync can find queued ahead of it on the disk:
// at 1 MiB the bookie's sync p99 at half load was 1.2-2.4 ms (raw disk
// ~0.25 ms), at 256 KiB 0.5-1.2 ms (BenchmarkAddHalf/writers=16, four
// alternations), for four times the sync_file_range calls (~1,600/s at
// 400 MB/s: nothing next to the writes).
const entryLogWriteBack = 256 << 10

// writeBack starts the write-back of the log's written bytes once
// entryLogWriteBack of them have not been started. Advice, like
// preallocate: an error shows at the checkpoint's fsync.
func (l *entryLog) writeBack() {
	if l.size-l.started < entryLogWriteBack {
		return
	}
	if _, err := l.f.SyncTo(l.size); err == nil {
		l.started = l.size
	}
}

// entryLogPrealloc is the step in which entry logs are preallocated ahead
// of their writes: appending into preallocated blocks costs the kernel
// about half the CPU of appending blocks it must allocate, and a log left
// behind (sealed, or the active one at a restart) keeps at most this much
// unused.
const entryLogPrealloc = 8 << 20

// preallocate makes sure the next n bytes of the log are preallocated.
// It is advice: a failure shows at the write.
func (l *entryLog) preallocate(n int64) {
	if end := l.size + n; end > l.alloc {
		step := max(entryLogPrealloc, end-l.alloc)
		if l.f.Preallocate(l.alloc, step) == nil {
			l.alloc += step
		}
	}
}

// logReaders caches read handles of entry logs. A handle stays open while a
// read uses it, even if compaction removes the file meanwhile.
type logReaders struct {
	fs    vfs.FS
	dir   string
	mu    sync.Mutex
	m     map[uint64]*logReader
	cache *logCache // made on first use
}

// synced is called when log id has been synced up to size (a checkpoint's
// snapshot of it): the page cache keeps the last entryLogCacheWindow
// bytes written, and drops the synced pages behind them (logCache).
func (r *logReaders) synced(id uint64, size int64) {
	r.mu.Lock()
	if r.cache == nil {
		r.cache = &logCache{window: entryLogCacheWindow, drop: r.dropCache}
	}
	c := r.cache
	r.mu.Unlock()
	c.synced(id, size)
}

// dropCache drops the cached pages of [off, off+n) of log id, through its
// read handle or one opened for it and closed (advice: a log that cannot
// be opened, e.g. removed, is left alone).
func (r *logReaders) dropCache(id uint64, off, n int64) {
	r.mu.Lock()
	lr := r.m[id]
	if lr != nil {
		lr.refs++
	}
	r.mu.Unlock()
	if lr != nil {
		dropCache(lr.f, off, n)
		r.release(lr)
		return
	}
	f, err := r.fs.Open(r.fs.PathJoin(r.dir, fileName(id, entryLogExt)))
	if err != nil {
		return
	}
	dropCache(f, off, n)
	f.Close()
}

type logReader struct {
	f       vfs.File
	refs    int
	removed bool
}

func (r *logReaders) acquire(id uint64) (*logReader, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if lr := r.m[id]; lr != nil {
		lr.refs++
		return lr, nil
	}
	f, err := r.fs.Open(r.fs.PathJoin(r.dir, fileName(id, entryLogExt)))
	if err != nil {
		return nil, err
	}
	lr := &logReader{f: f, refs: 1}
	r.m[id] = lr
	return lr, nil
}

func (r *logReaders) release(lr *logReader) {
	r.mu.Lock()
	defer r.mu.Unlock()
	lr.refs--
	if lr.removed && lr.refs == 0 {
		lr.f.Close()
	}
}

// forget drops the handle of log id; it is closed once no read uses it.
func (r *logReaders) forget(id uint64) {
	r.mu.Lock()
	if lr := r.m[id]; lr != nil {
		delete(r.m, id)
		lr.removed = true
		if lr.refs == 0 {
			lr.f.Close()
		}
	}
	c := r.cache
	r.mu.Unlock()
	if c != nil {
		c.forget(id) // after r.mu: synced holds c.mu while it takes r.mu
	}
}

func (r *logReaders) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, lr := range r.m {
		delete(r.m, id)
		lr.removed = true
		if lr.refs == 0 {
			lr.f.Close()
		}
	}
}

func beUint64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }
func leUint64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }
func leBytes(v uint64) []byte  { return binary.LittleEndian.AppendUint64(nil, v) }
