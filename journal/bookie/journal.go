package bookie

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quiremq/quire/internal/vfs"
)

// journal owns the journal files: the one being written, the next one
// (prepared in the background: recycled or zero-filled, and its directory
// entry synced) and the retired ones kept for recycling. Only the journal
// goroutine calls write; retire is called by checkpoints.
type journal struct {
	fs   vfs.FS
	dir  string
	opts *Options

	cur        *jfile
	next       chan prepared // result of the preparation of the next file
	nextNum    uint64
	buf        []byte
	rolled     atomic.Int64 // files started since the last checkpoint
	recycled   atomic.Int64 // files reused (for tests)
	zeroFilled atomic.Int64 // files zero-filled (for tests)
	m          *bookieMetrics
	onRoll     func() // called after a roll (kicks a checkpoint)
	// needCheckpoint kicks a checkpoint (ckptKicked already counts it):
	// called when the files to recycle run out.
	needCheckpoint func()

	mu   sync.Mutex // guards free, ckptPending, closing and the renames that recycle files
	cond *sync.Cond // on mu: signalled when free grows or ckptPending/closing change
	free []uint64   // retired files available for recycling, ascending
	// While a checkpoint that a roll kicked has not finished
	// (ckptKicked > ckptDone), it will retire files, so preparing the
	// next file waits for one to recycle rather than zero-fill a new one
	// (whose writes would compete with the journal's syncs).
	ckptKicked, ckptDone uint64
	closing              bool
}

// checkpointKicked records that a checkpoint was requested.
func (j *journal) checkpointKicked() {
	j.mu.Lock()
	j.ckptKicked++
	j.mu.Unlock()
}

// checkpointStarting returns the requests a checkpoint starting now
// serves; pass it to checkpointDone when it ends.
func (j *journal) checkpointStarting() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.ckptKicked
}

func (j *journal) checkpointDone(gen uint64) {
	j.mu.Lock()
	j.ckptDone = max(j.ckptDone, gen)
	j.cond.Broadcast()
	j.mu.Unlock()
}

type jfile struct {
	num  uint64
	f    vfs.File
	size int64
	off  int64
}

type prepared struct {
	f   *jfile
	err error
}

func (j *journal) path(num uint64) string { return j.fs.PathJoin(j.dir, fileName(num, journalExt)) }

// openSpareFiles is how many retired (pre-zeroed) journal files start
// keeps ready for recycling, zero-filling new ones if the checkpoint of
// Open retired fewer (always on a new bookie).
const openSpareFiles = 2

// start opens file num as the current file and prepares the next, both
// before it returns, then tops the files kept for recycling up to
// openSpareFiles, zero-filling new ones numbered after the next file.
// Open's checkpoint has just retired what it could, so none of this waits
// for another, and on a new bookie (nothing to recycle) all the
// zero-fills run in Open rather than under its first adds, where 64 MiB
// of zeros per file queued the journal's fdatasyncs behind them: the first
// rolls recycle the spares, and a later roll zero-fills only if the
// checkpoints since (each roll that takes one of the last two kicks one)
// retired none.
func (j *journal) start(num uint64) error {
	f, err := j.prepare(num, false)
	if err != nil {
		return err
	}
	next, err := j.prepare(num+1, false)
	if err != nil {
		f.f.Close()
		return err
	}
	j.cur = f
	j.nextNum = num + 2
	ch := make(chan prepared, 1)
	ch <- prepared{f: next}
	j.next = ch
	for j.opts.JournalRecycleFiles > 0 && len(j.free) < min(openSpareFiles, j.opts.JournalRecycleFiles) {
		spare, err := j.create(j.nextNum)
		if err == nil {
			err = spare.f.Close()
		}
		if err != nil {
			return err // Open fails, and closes cur and next
		}
		// Zeros, which are no valid record of any file: replay skips it.
		j.free = append(j.free, j.nextNum)
		j.nextNum++
	}
	return nil
}

func (j *journal) prepareNext() {
	num := j.nextNum
	j.nextNum++
	ch := make(chan prepared, 1)
	j.next = ch
	go func() {
		f, err := j.prepare(num, true)
		ch <- prepared{f, err}
	}()
}

// prepare makes journal file num ready to be written at offset 0: a retired
// file renamed to it (its old records carry an older file number, so they
// never pass as records of num), or a new file preallocated and
// zero-filled; at least JournalFileSize long, synced, and its directory
// entry synced. With checkpoint, when the retired files run low it kicks
// a checkpoint, and waits for it rather than zero-fill (see below).
func (j *journal) prepare(num uint64, checkpoint bool) (*jfile, error) {
	var f vfs.File
	var err error
	j.mu.Lock()
	if checkpoint && len(j.free) <= 1 && j.opts.JournalRecycleFiles > 0 && j.needCheckpoint != nil {
		// Taking the last retired file (or finding none): a checkpoint
		// retires the files it has made redundant, for the next roll.
		j.ckptKicked++
		j.mu.Unlock()
		j.needCheckpoint()
		j.mu.Lock()
	}
	if checkpoint && len(j.free) == 0 && j.ckptKicked > j.ckptDone && j.opts.JournalRecycleFiles > 0 {
		// Wait for it rather than zero-fill a new file, whose writes would
		// compete with the journal's syncs; bounded, so that a checkpoint
		// stuck behind a long compaction does not stall the journal.
		deadline := time.Now().Add(time.Second)
		t := time.AfterFunc(time.Second, func() {
			j.mu.Lock()
			j.cond.Broadcast()
			j.mu.Unlock()
		})
		for len(j.free) == 0 && j.ckptKicked > j.ckptDone && !j.closing && time.Now().Before(deadline) {
			j.cond.Wait()
		}
		t.Stop()
	}
	if len(j.free) > 0 {
		old := j.free[0]
		j.free = j.free[1:]
		// What FS.ReuseForWrite does, spelled out: pebble's MemFS takes
		// its crash-clone lock twice in ReuseForWrite, which deadlocks
		// against a concurrent CrashClone.
		if err = j.fs.Rename(j.path(old), j.path(num)); err == nil {
			f, err = j.fs.OpenReadWrite(j.path(num), vfs.CategoryJournal)
			j.recycled.Add(1)
			j.m.journalFiles.WithLabelValues("recycled").Inc()
		}
	}
	j.mu.Unlock()
	if f == nil || err != nil {
		return j.create(num)
	}
	return j.ready(num, f)
}

// create creates journal file num and makes it ready (zero-filled).
func (j *journal) create(num uint64) (*jfile, error) {
	f, err := j.fs.Create(j.path(num), vfs.CategoryJournal)
	if err != nil {
		return nil, fmt.Errorf("bookie: creating journal file: %w", err)
	}
	return j.ready(num, f)
}

// ready makes f, journal file num, at least JournalFileSize long
// (preallocated and zero-filled past its end), synced, with its directory
// entry synced.
func (j *journal) ready(num uint64, f vfs.File) (*jfile, error) {
	name := j.path(num)
	fail := func(err error) (*jfile, error) {
		f.Close()
		return nil, fmt.Errorf("bookie: preparing journal file %s: %w", name, err)
	}
	st, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	size := st.Size()
	if size < j.opts.JournalFileSize {
		if err := f.Preallocate(size, j.opts.JournalFileSize-size); err != nil {
			return fail(err)
		}
		zeros := make([]byte, min(1<<20, j.opts.JournalFileSize))
		for size < j.opts.JournalFileSize {
			n := min(int64(len(zeros)), j.opts.JournalFileSize-size)
			clear(zeros) // some File implementations scribble on written buffers
			if _, err := f.WriteAt(zeros[:n], size); err != nil {
				return fail(err)
			}
			size += n
			// Write back as we go (asynchronously): one fsync of 64 MiB
			// at the end would stall the journal's syncs behind it.
			if size%(4<<20) == 0 {
				if _, err := f.SyncTo(size); err != nil {
					return fail(err)
				}
			}
		}
		if err := f.Sync(); err != nil {
			return fail(err)
		}
		j.zeroFilled.Add(1)
		j.m.journalFiles.WithLabelValues("zero_filled").Inc()
	}
	if err := vfs.SyncDir(j.fs, j.dir); err != nil {
		return fail(err)
	}
	return &jfile{num: num, f: f, size: size}, nil
}

// jbatch is a run of records written (not yet synced) to one journal
// file: the unit handed from the journal writer to the syncer.
type jbatch struct {
	f      *jfile
	ops    []op
	end    jpos // position just past the batch's last record
	bytes  int
	queued time.Time // when the group's oldest record was queued
	// group is the whole group's ops on the run that ends it (nil on the
	// others): once that run is applied, every run of the group is, and
	// the applier hands the array back to the journal goroutine.
	group []op
}

// write appends the records of ops to the journal files without syncing
// them, and hands each written run to submit (normally one; two or more
// when the group continues in the next file). Before a file receives
// records, drain waits until every record submitted before is synced, so
// that a file's valid records are always complete before the next file
// holds any. On error it returns the ops that were not handed to submit:
// the caller fails them.
func (j *journal) write(ops []op, queued time.Time, submit func(jbatch) error, drain func() error) (rest []op, err error) {
	j.buf = j.buf[:0]
	first := 0
	for i := range ops {
		size := int64(ops[i].encodedSize())
		if pending := int64(len(j.buf)); j.cur.off+pending+size > j.cur.size && j.cur.off+pending > 0 {
			if err := j.flush(ops[first:i], nil, queued, submit); err != nil {
				return ops[first:], err
			}
			first = i
			if err := drain(); err != nil {
				return ops[first:], err
			}
			if err := j.roll(); err != nil {
				return ops[first:], err
			}
		}
		j.buf = appendRecord(j.buf, j.cur.num, &ops[i])
	}
	if err := j.flush(ops[first:], ops, queued, submit); err != nil {
		return ops[first:], err
	}
	return nil, nil
}

// flush writes the encoded records of ops (in j.buf) at the current
// position and submits them; group is set on the run that ends the group.
func (j *journal) flush(ops, group []op, queued time.Time, submit func(jbatch) error) error {
	if len(j.buf) == 0 {
		return nil
	}
	n := len(j.buf)
	if _, err := j.cur.f.WriteAt(j.buf, j.cur.off); err != nil {
		return fmt.Errorf("bookie: journal write: %w", err)
	}
	j.cur.off += int64(n)
	if j.cur.off > j.cur.size {
		j.cur.size = j.cur.off // an oversized record extended the file
	}
	j.buf = j.buf[:0]
	return submit(jbatch{f: j.cur, ops: ops, end: jpos{file: j.cur.num, off: j.cur.off}, bytes: n, queued: queued, group: group})
}

// roll switches to the prepared next file; every record of the current
// one must be synced (nothing else uses it any more).
func (j *journal) roll() error {
	p := <-j.next
	j.next = nil
	if p.err != nil {
		return p.err
	}
	old := j.cur
	j.cur = p.f
	j.rolled.Add(1)
	if j.onRoll != nil {
		j.onRoll() // may kick a checkpoint, which prepareNext then waits for
	}
	j.prepareNext()
	if err := old.f.Close(); err != nil {
		return fmt.Errorf("bookie: closing journal file: %w", err)
	}
	return nil
}

// retire recycles or removes the journal files numbered below num: a
// checkpoint made everything they hold durable elsewhere.
func (j *journal) retire(below uint64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	nums, err := listNumbered(j.fs, j.dir, journalExt)
	if err != nil {
		return err
	}
	for _, n := range nums {
		if n >= below || slices.Contains(j.free, n) {
			continue
		}
		if len(j.free) < j.opts.JournalRecycleFiles {
			j.free = append(j.free, n)
			continue
		}
		if err := j.fs.Remove(j.path(n)); err != nil && !vfs.IsNotExist(err) {
			return err
		}
	}
	slices.Sort(j.free)
	j.cond.Broadcast()
	return nil
}

// close closes the current and the prepared file.
func (j *journal) close() error {
	j.mu.Lock()
	j.closing = true
	j.cond.Broadcast()
	j.mu.Unlock()
	var err error
	if j.next != nil {
		if p := <-j.next; p.f != nil {
			err = p.f.f.Close()
		}
		j.next = nil
	}
	if j.cur != nil {
		if cerr := j.cur.f.Close(); err == nil {
			err = cerr
		}
		j.cur = nil
	}
	return err
}

// replayJournal calls fn with every valid record of the journal files of
// dir from position from on, in order, and the position just past it.
// Records are read until the first one that is not valid in each file
// (zeros, a torn write, a recycled file's leftovers); a later file is read
// whole, since a file only receives records once its predecessor's are
// complete and synced. It returns the highest journal file number seen.
func replayJournal(fs vfs.FS, dir string, from jpos, fn func(o *op, end jpos) error) (maxNum uint64, err error) {
	nums, err := listNumbered(fs, dir, journalExt)
	if err != nil {
		return 0, err
	}
	for _, num := range nums {
		maxNum = max(maxNum, num)
		if num < from.file {
			continue
		}
		data, err := vfs.ReadFile(fs, fs.PathJoin(dir, fileName(num, journalExt)))
		if err != nil {
			return maxNum, fmt.Errorf("bookie: reading journal file %d: %w", num, err)
		}
		start := int64(0)
		if num == from.file {
			start = from.off
		}
		if _, err := decodeJournal(data, num, start, func(o *op, end int64) error {
			return fn(o, jpos{file: num, off: end})
		}); err != nil {
			return maxNum, err
		}
	}
	return maxNum, nil
}
