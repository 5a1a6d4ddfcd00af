package bookie

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/sstable"

	"github.com/quiremq/quire/internal/vfs"
)

// Bookie stores entries of many ledgers on one node. See the package doc.
type Bookie struct {
	opts    Options
	fs      vfs.FS
	logDir  string
	lock    io.Closer
	db      *pebble.DB
	m       *bookieMetrics
	cookie  Cookie
	jnl     *journal
	readers *logReaders

	// mu guards the queue of records waiting for the journal goroutine, the
	// live ledger states (what reads and new adds see) and the close and
	// failure flags.
	mu         sync.Mutex
	space      *sync.Cond // signalled when inflight drops or the bookie stops
	closed     bool
	err        error // non-nil once failed: wraps ErrFailed
	queue      []op
	queueBytes int
	oldest     time.Time
	epoch      time.Time // op.queued counts from here
	urgent     bool
	inflight   int64 // bytes accepted but not yet applied
	seq        uint64
	ledgers    map[uint64]*ledgerMeta
	kick       chan struct{}
	writerDone chan struct{} // closed when the journal pipeline has stopped

	sy     syncState
	compCh chan []jbatch // synced runs, to the completer

	// readMu guards pending: adds whose journal sync completed but which
	// are not yet in the entry logs and index.
	readMu  sync.RWMutex
	pending pendingIndex

	// The applier writes synced records to the entry logs and the index.
	apMu      sync.Mutex // guards apQ, apClosing
	apQ       []applyBatch
	apClosing bool
	apKick    chan struct{}
	opsFree   chan []op // applied groups' op arrays, for the journal goroutine's next queues
	apDone    chan struct{}

	// applyMu guards ap, the applied state; held by the applier per batch,
	// by checkpoints while they cut, and by compaction while it commits.
	applyMu sync.Mutex
	ap      applyState

	// readGate admits reads of the index and the files: each holds it
	// shared while it touches them, and Close takes it exclusively (and
	// sets readsClosed) before it closes them, so that a read still
	// running when Close is called (a gRPC handler the server did not
	// wait for) ends with ErrClosed instead of using a closed index.
	readGate    sync.RWMutex
	readsClosed bool

	maintMu   sync.Mutex // serializes checkpoints and compactions
	ckptKick  chan struct{}
	stop      chan struct{}
	maintDone chan struct{}
}

type applyBatch struct {
	ops   []op
	end   jpos
	bytes int  // journal bytes of ops
	group []op // as jbatch.group
}

// opsFreeArrays is how many applied groups' op arrays wait to be reused:
// a few groups are in flight between the journal goroutine and the
// applier at a time.
const opsFreeArrays = 8

// applyMaxBytes bounds the journal bytes of the groups the applier takes
// at once, so that the inflight bytes they hold are released in steps.
const applyMaxBytes = 16 << 20

// applyState is the state produced by applying journal records, persisted
// by checkpoints.
type applyState struct {
	pos        jpos // journal position up to which records are applied
	ledgers    map[uint64]*ledgerMeta
	dirty      map[uint64]struct{} // ledgers changed since the last checkpoint
	usage      map[uint64]*logUsage
	usageDirty map[uint64]struct{}
	active     *entryLog
	sealed     []*entryLog // rolled since the last checkpoint, not yet synced
	nextLog    uint64
	buf        []byte
	// lastEntry is the greatest entry the index holds per ledger (none:
	// none), for the ledgers apply wrote since Open (see runWriter.write).
	lastEntry map[uint64]lastEntry
	runs      runWriter
}

// Open opens (or, with no cookie anywhere, formats) the bookie in o.Dir and
// o.JournalDir, replays the journal from the last checkpoint and starts
// accepting operations.
func Open(o Options) (*Bookie, error) {
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	fs := o.FS
	b := &Bookie{
		opts:       o,
		epoch:      time.Now(),
		fs:         fs,
		logDir:     fs.PathJoin(o.Dir, ledgersDir),
		m:          newMetrics(o.Registerer),
		ledgers:    map[uint64]*ledgerMeta{},
		kick:       make(chan struct{}, 1),
		writerDone: make(chan struct{}),
		pending:    pendingIndex{},
		apKick:     make(chan struct{}, 1),
		opsFree:    make(chan []op, opsFreeArrays),
		apDone:     make(chan struct{}),
		ckptKick:   make(chan struct{}, 1),
		stop:       make(chan struct{}),
		maintDone:  make(chan struct{}),
	}
	b.space = sync.NewCond(&b.mu)
	b.sy.cond = sync.NewCond(&b.sy.mu)
	b.compCh = make(chan []jbatch, 64)
	b.readers = &logReaders{fs: fs, dir: b.logDir, m: map[uint64]*logReader{}}
	if err := b.open(); err != nil {
		b.closeFiles()
		return nil, err
	}
	go b.journalLoop()
	go b.syncLoop()
	go b.completeLoop()
	go b.applyLoop()
	go b.maintenanceLoop()
	return b, nil
}

func (b *Bookie) open() error {
	o, fs := &b.opts, b.fs
	for _, d := range []string{o.Dir, o.JournalDir} {
		if err := vfs.MkdirAll(fs, d); err != nil {
			return fmt.Errorf("bookie: creating %s: %w", d, err)
		}
	}
	lock, err := fs.Lock(fs.PathJoin(o.Dir, lockFile))
	if err != nil {
		return fmt.Errorf("bookie: locking %s: %w", o.Dir, err)
	}
	b.lock = lock
	b.cookie, err = checkCookies(o, b.hasData)
	if err != nil {
		return err
	}
	if err := vfs.MkdirAll(fs, b.logDir); err != nil {
		return err
	}
	b.db, err = pebble.Open(fs.PathJoin(o.Dir, indexDir), indexOptions(fs, o.Logf))
	if err != nil {
		return fmt.Errorf("bookie: opening index: %w", err)
	}
	if err := b.load(); err != nil {
		return err
	}
	b.jnl = &journal{fs: fs, dir: o.JournalDir, opts: o, m: b.m, onRoll: b.maybeCheckpoint, needCheckpoint: b.kickCheckpoint}
	b.jnl.cond = sync.NewCond(&b.jnl.mu)
	// Replay the journal from the checkpoint into the entry logs and index.
	var batch []op
	var batchBytes int
	var end jpos
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := b.apply([]applyBatch{{ops: batch, end: end}})
		batch, batchBytes = batch[:0], 0
		return err
	}
	maxNum, err := replayJournal(fs, o.JournalDir, b.ap.pos, func(rec *op, pos jpos) error {
		if pos.file != end.file {
			if err := flush(); err != nil { // payloads alias the file's buffer
				return err
			}
		}
		batch = append(batch, *rec)
		batchBytes += len(rec.payload)
		end = pos
		if batchBytes >= 4<<20 || len(batch) >= 1<<14 {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return fmt.Errorf("bookie: replaying journal: %w", err)
	}
	for l, m := range b.ap.ledgers {
		c := *m
		b.ledgers[l] = &c
	}
	// Persist what the replay applied, so that the journal files it read
	// can be retired, then start a fresh journal file: never append to a
	// file written before the restart, whose tail may hold a torn group.
	if err := b.checkpoint(); err != nil {
		return err
	}
	return b.jnl.start(max(maxNum, b.ap.pos.file) + 1)
}

// indexOptions configure the Pebble index for its load: one small key per
// entry, written in large NoSync batches and read by point lookups. A large
// memtable and a deeper L0 mean fewer, larger flushes and compactions (the
// index's compactions were the bookie's largest CPU cost); values are
// locations that do not compress, so blocks are not compressed.
func indexOptions(fs vfs.FS, logf func(string, ...any)) *pebble.Options {
	o := &pebble.Options{
		FS:                          fs,
		Logger:                      pebbleLogger{logf},
		MemTableSize:                64 << 20,
		MemTableStopWritesThreshold: 4,
		L0CompactionThreshold:       8,
		L0StopWritesThreshold:       32,
		LBaseMaxBytes:               512 << 20,
	}
	for i := range o.Levels {
		o.Levels[i].Compression = func() *sstable.CompressionProfile { return sstable.NoCompression }
	}
	return o
}

// hasData reports whether the bookie's directories hold bookie files.
func (b *Bookie) hasData() (bool, error) {
	fs := b.fs
	for _, c := range []struct{ dir, ext string }{{b.opts.JournalDir, journalExt}, {b.logDir, entryLogExt}} {
		nums, err := listNumbered(fs, c.dir, c.ext)
		if err != nil && !vfs.IsNotExist(err) {
			return false, err
		}
		if len(nums) > 0 {
			return true, nil
		}
	}
	if _, err := fs.Stat(fs.PathJoin(b.opts.Dir, indexDir)); err == nil {
		return true, nil
	}
	return false, nil
}

// load reads the checkpointed state from the index, drops entry logs that
// no checkpoint or compaction recorded (everything in them is replayed from
// the journal) and opens a new active entry log.
func (b *Bookie) load() error {
	ap := &b.ap
	ap.ledgers = map[uint64]*ledgerMeta{}
	ap.dirty = map[uint64]struct{}{}
	ap.usage = map[uint64]*logUsage{}
	ap.usageDirty = map[uint64]struct{}{}
	ap.lastEntry = map[uint64]lastEntry{}
	ap.runs = runWriter{b: b, runs: map[uint64]*indexRun{}}
	if err := b.migrateEntryKeys(); err != nil {
		return fmt.Errorf("bookie: converting the index to range records: %w", err)
	}
	if v, closer, err := b.db.Get(checkpointKey); err == nil {
		ap.pos, err = decodeJpos(v)
		closer.Close()
		if err != nil {
			return err
		}
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return err
	}
	if v, closer, err := b.db.Get(nextLogKey); err == nil {
		if len(v) == 8 {
			ap.nextLog = leUint64(v)
		}
		closer.Close()
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return err
	}
	it, err := b.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixLedger}, UpperBound: []byte{prefixLedger + 1}})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		m, err := decodeLedgerMeta(it.Value())
		if err != nil || len(it.Key()) != 9 {
			it.Close()
			return fmt.Errorf("bookie: ledger metadata: %w", errors.Join(err, ErrCorrupt))
		}
		ap.ledgers[beUint64(it.Key()[1:])] = &m
	}
	if err := it.Close(); err != nil {
		return err
	}
	it, err = b.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixUsage}, UpperBound: []byte{prefixUsage + 1}})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		u, err := decodeUsage(it.Value())
		if err != nil || len(it.Key()) != 9 {
			it.Close()
			return fmt.Errorf("bookie: entry-log usage: %w", errors.Join(err, ErrCorrupt))
		}
		ap.usage[beUint64(it.Key()[1:])] = u
	}
	if err := it.Close(); err != nil {
		return err
	}
	ids, err := listNumbered(b.fs, b.logDir, entryLogExt)
	if err != nil {
		return err
	}
	present := map[uint64]bool{}
	for _, id := range ids {
		ap.nextLog = max(ap.nextLog, id+1)
		if _, ok := ap.usage[id]; !ok {
			if err := b.fs.Remove(b.fs.PathJoin(b.logDir, fileName(id, entryLogExt))); err != nil {
				return err
			}
			continue
		}
		present[id] = true
	}
	for id := range ap.usage {
		ap.nextLog = max(ap.nextLog, id+1)
		if !present[id] {
			delete(ap.usage, id)
			ap.usageDirty[id] = struct{}{}
		}
	}
	return b.newEntryLog()
}

// newEntryLog starts a new active entry log; applyMu held (or opening).
func (b *Bookie) newEntryLog() error {
	ap := &b.ap
	id := ap.nextLog
	ap.nextLog++
	f, err := b.fs.Create(b.fs.PathJoin(b.logDir, fileName(id, entryLogExt)), vfs.CategoryShard)
	if err != nil {
		return fmt.Errorf("bookie: creating entry log: %w", err)
	}
	if ap.active != nil {
		ap.sealed = append(ap.sealed, ap.active)
	}
	ap.active = &entryLog{id: id, f: f}
	ap.usage[id] = &logUsage{live: map[uint64]int64{}}
	ap.usageDirty[id] = struct{}{}
	b.m.entryLogFiles.Set(float64(len(ap.usage)))
	return nil
}

// applyBufBytes bounds the entry-log bytes apply buffers before writing
// them: the applier may take many synced groups at once.
const applyBufBytes = 4 << 20

// apply writes journaled records to the entry logs and the index, in
// journal order, with one index batch for all of q; applyMu held (or
// opening).
func (b *Bookie) apply(q []applyBatch) error {
	ap := &b.ap
	batch := b.db.NewBatch()
	defer func() { batch.Close() }() // runs may replace it (mergeRun)
	ap.buf = ap.buf[:0]
	ledger := func(l uint64) *ledgerMeta {
		m := ap.ledgers[l]
		if m == nil {
			m = &ledgerMeta{lac: -1}
			ap.ledgers[l] = m
		}
		ap.dirty[l] = struct{}{}
		return m
	}
	// The metadata of the previous add's ledger (consecutive adds are
	// often to one ledger); a delete drops it.
	var lastLedger uint64
	var lastMeta *ledgerMeta
	for _, ab := range q {
		for i := range ab.ops {
			o := &ab.ops[i]
			switch o.kind {
			case kindAdd:
				size := int64(logHeaderSize + len(o.payload))
				if used := ap.active.size + int64(len(ap.buf)); used > 0 && used+size > b.opts.EntryLogSize {
					if err := b.applyWriteBuf(); err != nil {
						return err
					}
					if err := ap.runs.flush(&batch); err != nil { // a run lies in one log
						return err
					}
					if err := b.newEntryLog(); err != nil {
						return err
					}
				} else if len(ap.buf) >= applyBufBytes {
					if err := b.applyWriteBuf(); err != nil {
						return err
					}
				}
				loc := location{log: ap.active.id, offset: ap.active.size + int64(len(ap.buf)), length: uint32(len(o.payload))}
				ap.buf = appendLogRecord(ap.buf, o.ledger, o.entry, o.payload)
				if err := ap.runs.add(&batch, o.ledger, loc, o.entry); err != nil {
					return err
				}
				ap.usage[ap.active.id].live[o.ledger] += size
				if lastMeta == nil || lastLedger != o.ledger {
					lastLedger, lastMeta = o.ledger, ledger(o.ledger)
				}
				lastMeta.lac = max(lastMeta.lac, o.lac)
			case kindFence:
				ledger(o.ledger).fenced = true
			case kindLAC:
				m := ledger(o.ledger)
				m.lac = max(m.lac, o.lac)
			case kindDelete:
				lastMeta = nil
				ap.runs.drop(o.ledger)
				lo, hi := ledgerIndexBounds(o.ledger)
				if err := batch.DeleteRange(lo, hi, nil); err != nil {
					return err
				}
				ap.lastEntry[o.ledger] = lastEntry{}
				delete(ap.ledgers, o.ledger)
				ap.dirty[o.ledger] = struct{}{}
				for id, u := range ap.usage {
					if _, ok := u.live[o.ledger]; ok {
						delete(u.live, o.ledger)
						ap.usageDirty[id] = struct{}{}
					}
				}
			}
		}
	}
	if err := b.applyWriteBuf(); err != nil {
		return err
	}
	if err := ap.runs.flush(&batch); err != nil {
		return err
	}
	if err := batch.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("bookie: index write: %w", err)
	}
	if len(q) > 0 {
		ap.pos = q[len(q)-1].end
	}
	return nil
}

// applyWriteBuf appends the entry-log records apply buffered to the
// active log; before the index records that point at them are committed.
func (b *Bookie) applyWriteBuf() error {
	ap := &b.ap
	if len(ap.buf) == 0 {
		return nil
	}
	ap.active.preallocate(int64(len(ap.buf)))
	if _, err := ap.active.f.Write(ap.buf); err != nil {
		return fmt.Errorf("bookie: entry-log write: %w", err)
	}
	ap.active.size += int64(len(ap.buf))
	ap.active.writeBack()
	ap.usage[ap.active.id].size = ap.active.size
	ap.usageDirty[ap.active.id] = struct{}{} // before a roll too
	ap.buf = ap.buf[:0]
	return nil
}

// AddEntry adds entry of ledger with payload and the writer's piggybacked
// lac (-1 for none). It is asynchronous: done is called exactly once, with
// nil after the journal fdatasync that covers the add, or with the error
// (ErrLedgerFenced for a non-recovery add to a fenced ledger, ErrClosed,
// ErrEntryTooLarge, or an error wrapping ErrFailed). done may run before
// AddEntry returns; otherwise it runs on the bookie's journal goroutine and
// must not block. Many adds may be in flight; AddEntry blocks only while
// more than Options.MaxInflightBytes wait to be applied.
//
// AddEntry takes ownership of payload: the caller must not modify it
// afterwards. Recovery adds (recovery=true) are accepted on fenced ledgers.
// Adding an entry that exists replaces it. AddEntries adds many at once,
// more cheaply.
func (b *Bookie) AddEntry(ledger, entry uint64, lac int64, payload []byte, recovery bool, done func(error)) {
	o := op{kind: kindAdd, recovery: recovery, ledger: ledger, entry: entry, lac: lac, payload: payload, done: done,
		queued: int64(time.Since(b.epoch))}
	b.mu.Lock()
	b.addLocked(&o, nil)
	b.mu.Unlock()
}

// AddReq is one add of an AddEntries batch: as the arguments of AddEntry.
type AddReq struct {
	Ledger, Entry uint64
	LAC           int64 // the writer's piggybacked LAC; -1 for none
	Payload       []byte
	Recovery      bool // accepted on a fenced ledger
}

// AddEntries adds every entry of adds, in order, as AddEntry would one by
// one, but taking the bookie's lock once for the batch and with no
// allocation per add: the RPC server's hot path.
//
// done is called exactly once for each add, as done(i, err) with i its
// index in adds: with nil after the journal fdatasync that covers adds[i],
// or with its error (ErrLedgerFenced, ErrClosed, ErrEntryTooLarge, or an
// error wrapping ErrFailed). An add refused at once (too large, fenced,
// the bookie closed or failed) is answered on the caller's goroutine
// before AddEntries returns; every other answer comes later from the
// bookie's completion goroutine (or, if the bookie fails meanwhile, from
// whichever of its goroutines notices), in journal order, so done must not
// block and must be safe to call from another goroutine than the caller's.
// Adds of one batch are acknowledged in their order in adds, possibly in
// several bursts (the batch may be synced in more than one group), which
// may interleave with other batches' answers.
//
// Ownership: AddEntries copies the AddReq values, so adds may be reused
// as soon as it returns; it takes ownership of every Payload (kept for
// reads until the entry is in the entry log, possibly after done ran): the
// caller must not modify a payload after passing it. AddEntries blocks
// only while more than Options.MaxInflightBytes wait to be applied (then
// possibly after some of the batch's adds are queued: those proceed).
func (b *Bookie) AddEntries(adds []AddReq, done func(i int, err error)) {
	if len(adds) == 0 {
		return
	}
	queued := int64(time.Since(b.epoch))
	b.mu.Lock()
	b.queue = slices.Grow(b.queue, len(adds))
	var last *ledgerMeta // the previous add's ledger: batches are mostly one ledger
	for i := range adds {
		a := &adds[i]
		o := op{kind: kindAdd, recovery: a.Recovery, ledger: a.Ledger, entry: a.Entry, lac: a.LAC,
			payload: a.Payload, batchDone: done, idx: i, queued: queued}
		if last != nil && adds[i-1].Ledger != a.Ledger {
			last = nil
		}
		last = b.addLocked(&o, last)
	}
	b.mu.Unlock()
}

// addLocked checks and queues the add o; mu held. m, when not nil, is
// the live metadata of o's ledger (nil: looked up). It returns the
// ledger's metadata, or nil if the add was refused; a refused add is
// answered at once, with mu released meanwhile.
func (b *Bookie) addLocked(o *op, m *ledgerMeta) *ledgerMeta {
	refuse := func(err error) *ledgerMeta {
		b.mu.Unlock()
		b.m.addErrors.Inc()
		o.finish(err)
		b.mu.Lock()
		return nil
	}
	if len(o.payload) > b.opts.MaxEntrySize {
		return refuse(fmt.Errorf("%w: %d bytes, limit %d", ErrEntryTooLarge, len(o.payload), b.opts.MaxEntrySize))
	}
	if size := int64(o.encodedSize()); b.inflight > 0 && b.inflight+size > b.opts.MaxInflightBytes {
		for b.inflight > 0 && b.inflight+size > b.opts.MaxInflightBytes && !b.closed && b.err == nil {
			b.space.Wait()
		}
		m = nil // a delete may have run meanwhile
	}
	if err := b.writeErrLocked(); err != nil {
		return refuse(err)
	}
	if m == nil {
		m = b.ledgers[o.ledger]
	}
	if m != nil && m.fenced && !o.recovery {
		return refuse(fmt.Errorf("%w: ledger %d", ErrLedgerFenced, o.ledger))
	}
	if m == nil {
		m = &ledgerMeta{lac: -1}
		b.ledgers[o.ledger] = m
	}
	m.lac = max(m.lac, o.lac)
	b.seq++
	o.seq = b.seq
	b.enqueueLocked(*o, false)
	return m
}

func (b *Bookie) writeErrLocked() error {
	if b.closed {
		return ErrClosed
	}
	return b.err
}

func (b *Bookie) enqueueLocked(o op, urgent bool) {
	size := o.encodedSize()
	if len(b.queue) == 0 {
		b.oldest = time.Now()
		b.kickWriter()
	}
	b.queue = append(b.queue, o)
	b.queueBytes += size
	b.inflight += int64(size)
	if urgent || b.queueBytes >= b.opts.MaxGroupBytes {
		b.urgent = b.urgent || urgent
		b.kickWriter()
	} else if b.queueBytes >= writeAheadBytes && b.queueBytes-size < writeAheadBytes {
		b.kickWriter() // it may go while a sync runs: see writeAheadBytes
	}
}

func (b *Bookie) kickWriter() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// control journals a fence, LAC or delete record after mutate updated the
// live state (under mu), and waits until it is synced.
func (b *Bookie) control(o op, mutate func()) error {
	ch := make(chan error, 1)
	o.done = func(err error) { ch <- err }
	b.mu.Lock()
	if err := b.writeErrLocked(); err != nil {
		b.mu.Unlock()
		return err
	}
	mutate()
	b.enqueueLocked(o, true)
	b.mu.Unlock()
	return <-ch
}

// Fence fences ledger: once Fence returns, non-recovery adds to it fail
// with ErrLedgerFenced. The fence is journaled and synced before Fence
// returns. It returns the ledger's LAC (-1 if none), and creates the ledger
// if this bookie did not know it.
func (b *Bookie) Fence(ledger uint64) (lac int64, err error) {
	err = b.control(op{kind: kindFence, ledger: ledger}, func() {
		m := b.ledgers[ledger]
		if m == nil {
			m = &ledgerMeta{lac: -1}
			b.ledgers[ledger] = m
		}
		m.fenced = true
		lac = m.lac
	})
	if err != nil {
		return 0, err
	}
	b.m.fences.Inc()
	return lac, nil
}

// WriteLAC records an explicit LAC for ledger (an idle writer's); it is
// journaled and synced before WriteLAC returns. ReadLAC reports the highest
// LAC seen, explicit or piggybacked.
func (b *Bookie) WriteLAC(ledger uint64, lac int64) error {
	return b.control(op{kind: kindLAC, ledger: ledger, lac: lac}, func() {
		m := b.ledgers[ledger]
		if m == nil {
			m = &ledgerMeta{lac: -1}
			b.ledgers[ledger] = m
		}
		m.lac = max(m.lac, lac)
	})
}

// DeleteLedger deletes ledger and all its entries; the deletion is
// journaled and synced before it returns, and the space is reclaimed in the
// background (whole entry logs deleted once nothing in them is live,
// sparse ones compacted). Deleting an unknown ledger is not an error.
// Ledger ids must not be reused after a delete.
func (b *Bookie) DeleteLedger(ledger uint64) error {
	return b.control(op{kind: kindDelete, ledger: ledger}, func() {
		delete(b.ledgers, ledger)
	})
}

// Ledgers returns the ledgers the bookie holds (entries, a fence or a
// LAC), ascending.
func (b *Bookie) Ledgers() []uint64 {
	b.mu.Lock()
	ids := make([]uint64, 0, len(b.ledgers))
	for id := range b.ledgers {
		ids = append(ids, id)
	}
	b.mu.Unlock()
	slices.Sort(ids)
	return ids
}

// ReadLAC returns the ledger's LAC: the highest of the LACs piggybacked on
// its adds and written explicitly, -1 if none. With fence it fences the
// ledger first (as Fence). It returns ErrNoSuchLedger for an unknown ledger.
func (b *Bookie) ReadLAC(ledger uint64, fence bool) (int64, error) {
	if fence {
		return b.Fence(ledger)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, ErrClosed
	}
	m := b.ledgers[ledger]
	if m == nil {
		return 0, fmt.Errorf("%w: ledger %d", ErrNoSuchLedger, ledger)
	}
	return m.lac, nil
}

// ReadEntry returns the payload of entry of ledger, or ErrNoSuchEntry if
// this bookie does not hold it (ErrNoSuchLedger, which also matches
// ErrNoSuchEntry, if it knows nothing of the ledger). With fence it fences
// the ledger first, synced before the read. Only durable (synced) entries
// are visible. The returned slice belongs to the caller.
func (b *Bookie) ReadEntry(ledger, entry uint64, fence bool) ([]byte, error) {
	if fence {
		if _, err := b.Fence(ledger); err != nil {
			return nil, err
		}
	}
	b.mu.Lock()
	closed, known := b.closed, b.ledgers[ledger] != nil
	b.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	if !known {
		return nil, fmt.Errorf("%w: ledger %d", ErrNoSuchLedger, ledger)
	}
	b.readMu.RLock()
	p, ok := b.pending.get(ledger, entry)
	b.readMu.RUnlock()
	if ok {
		return append([]byte(nil), p...), nil
	}
	if err := b.enterRead(); err != nil {
		return nil, err
	}
	defer b.exitRead()
	return b.readEntryAdmitted(ledger, entry)
}

// readEntryAdmitted reads a stored entry; the caller holds the read gate
// (enterRead).
func (b *Bookie) readEntryAdmitted(ledger, entry uint64) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		data, err := b.readStored(ledger, entry)
		if err != nil && vfs.IsNotExist(err) && attempt < 3 {
			continue // compaction moved the entry and removed its old log
		}
		return data, err
	}
}

func (b *Bookie) readStored(ledger, entry uint64) ([]byte, error) {
	loc, ok, err := b.lookup(ledger, entry)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: ledger %d entry %d", ErrNoSuchEntry, ledger, entry)
	}
	lr, err := b.readers.acquire(loc.log)
	if err != nil {
		return nil, err
	}
	defer b.readers.release(lr)
	buf := make([]byte, logHeaderSize+int(loc.length))
	if _, err := lr.f.ReadAt(buf, loc.offset); err != nil && !(errors.Is(err, io.EOF) && len(buf) > 0) {
		return nil, fmt.Errorf("bookie: reading entry log %d: %w", loc.log, err)
	}
	l, e, payload, _, ok := decodeLogRecord(buf)
	if !ok || l != ledger || e != entry {
		return nil, fmt.Errorf("%w: ledger %d entry %d at entry log %d offset %d", ErrCorrupt, ledger, entry, loc.log, loc.offset)
	}
	return payload, nil
}

// The journal is a pipeline of three goroutines, so that the disk syncs
// back to back while the CPU work of a group overlaps the previous sync:
//
//   - journalLoop cuts groups from the queue (MaxGroupWait or
//     MaxGroupBytes, or at once when the syncer is idle), encodes them and writes them to the journal file
//     without syncing, and submits each written run to the syncer;
//   - syncLoop takes every run written so far, fdatasyncs their file once
//     and hands them to the completer: a run is acknowledged only after an
//     fdatasync that began after its write returned;
//   - completeLoop makes the synced adds readable, calls the callbacks in
//     journal order and passes the runs to the applier.
//
// Before a run goes to the next journal file the writer waits until the
// syncer has synced everything submitted (syncState.drain). After a failure
// (syncState.err set, under syncMu) nothing more is acknowledged: runs not
// yet synced, or synced after the failure was noticed, fail.
type syncState struct {
	mu      sync.Mutex
	cond    *sync.Cond
	q       []jbatch // written, waiting for the syncer
	syncing bool     // the syncer holds runs it has not finished
	done    bool     // the writer has exited
	err     error    // the bookie failed: accept and acknowledge nothing
}

// syncState reports whether the syncer is idle — no run written and
// waiting, none being synced: the journal goroutine then cuts the group it
// holds without waiting out MaxGroupWait, as waiting would leave the disk
// idle — and whether no written run waits for it (a sync may be running:
// see writeAheadBytes). Called with mu held (mu → syncState.mu).
func (b *Bookie) syncState() (idle, noneWaiting bool) {
	s := &b.sy
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.q) == 0 && !s.syncing, len(s.q) == 0
}

// writeAheadBytes: while a sync runs and no written run waits for the
// next one, a group holding this many bytes is written at once rather
// than when the sync ends, so that the next sync can start as soon as
// this one ends instead of after the group's encoding and write (which
// otherwise leave the disk idle a third of the time at 16 writers).
const writeAheadBytes = 64 << 10

// submit hands a written run to the syncer; it fails once the bookie
// failed (the caller then fails the run's ops).
func (b *Bookie) submit(jb jbatch) error {
	s := &b.sy
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	s.q = append(s.q, jb)
	s.cond.Broadcast()
	return nil
}

// drain waits until every submitted run is synced.
func (b *Bookie) drain() error {
	s := &b.sy
	s.mu.Lock()
	defer s.mu.Unlock()
	for (len(s.q) > 0 || s.syncing) && s.err == nil {
		s.cond.Wait()
	}
	return s.err
}

// journalLoop is the one goroutine that cuts groups and writes them to
// the journal.
func (b *Bookie) journalLoop() {
	defer func() {
		s := &b.sy
		s.mu.Lock()
		s.done = true
		s.cond.Broadcast()
		s.mu.Unlock()
	}()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var spare []op // the next queue, sized like the last group
	for {
		if spare == nil {
			spare = make([]op, 0, 64)
		}
		b.mu.Lock()
		for {
			if len(b.queue) == 0 {
				if b.closed || b.err != nil {
					b.mu.Unlock()
					return
				}
				b.mu.Unlock()
				<-b.kick
				b.mu.Lock()
				continue
			}
			age := time.Since(b.oldest)
			wait := b.opts.MaxGroupWait - age
			if wait <= 0 || b.urgent || b.closed || b.err != nil || b.queueBytes >= b.opts.MaxGroupBytes {
				break
			}
			idle, noneWaiting := b.syncState()
			if idle {
				if idle := b.opts.IdleGroupWait - age; idle > 0 {
					wait = min(wait, idle)
				} else {
					break
				}
			} else if noneWaiting && b.queueBytes >= writeAheadBytes {
				break
			}
			b.mu.Unlock()
			timer.Reset(wait)
			select {
			case <-b.kick:
				timer.Stop()
			case <-timer.C:
			}
			b.mu.Lock()
		}
		ops, queued := b.queue, b.oldest
		b.queue, b.queueBytes, b.urgent = spare, 0, false
		failed := b.err
		b.mu.Unlock()
		// Made ready here, not by appends under mu.
		spare = b.newQueue(max(64, len(ops)))
		if failed != nil {
			b.fail(failed, ops)
			continue
		}
		rest, err := b.jnl.write(ops, queued, b.submit, b.drain)
		if err != nil {
			b.fail(err, rest)
		}
	}
}

// syncLoop fdatasyncs the written runs, as many as were written while the
// previous sync ran, and hands them to the completer.
func (b *Bookie) syncLoop() {
	s := &b.sy
	defer close(b.compCh)
	var q []jbatch
	for {
		s.mu.Lock()
		for len(s.q) == 0 && !s.done {
			s.cond.Wait()
		}
		if len(s.q) == 0 {
			s.mu.Unlock()
			return
		}
		q, s.q = s.q, q[:0]
		failed := s.err
		s.syncing = failed == nil
		s.mu.Unlock()
		b.kickWriter() // a group of writeAheadBytes may be written during this sync
		if failed != nil {
			b.failBatches(failed, q)
			q = nil
			continue
		}

		start := time.Now()
		var err error
		var bytes int
		for i := range q {
			bytes += q[i].bytes
			if i == len(q)-1 || q[i+1].f != q[i].f {
				if serr := q[i].f.f.SyncData(); serr != nil && err == nil {
					err = fmt.Errorf("bookie: journal fdatasync: %w", serr)
				}
			}
		}
		took := time.Since(start)
		s.mu.Lock()
		s.syncing = false
		if err != nil && s.err == nil {
			s.err = fmt.Errorf("%w: %w", ErrFailed, err)
		}
		failed = s.err
		idle := len(s.q) == 0
		s.cond.Broadcast()
		s.mu.Unlock()
		if idle {
			b.kickWriter() // a waiting group goes now: see syncState
		}
		if failed != nil {
			b.fail(err, nil)
			b.failBatches(failed, q)
			q = nil
			continue
		}
		if b.opts.syncHook != nil {
			b.opts.syncHook(took, bytes)
		}
		b.m.syncLatency.Observe(took.Seconds())
		b.m.syncs.Inc()
		b.m.syncBytes.Observe(float64(bytes))
		b.compCh <- q
		q = nil
	}
}

// completeLoop makes synced adds readable, acknowledges them in journal
// order and queues them for the applier.
func (b *Bookie) completeLoop() {
	defer close(b.writerDone)
	for q := range b.compCh {
		b.readMu.Lock()
		for _, jb := range q {
			for i := range jb.ops {
				if o := &jb.ops[i]; o.kind == kindAdd {
					b.pending.add(o.ledger, o.entry, o.seq, o.payload)
				}
			}
		}
		b.readMu.Unlock()
		var adds, bytes, records int
		synced := int64(time.Since(b.epoch))
		for _, jb := range q {
			records += len(jb.ops)
			for i := range jb.ops {
				o := &jb.ops[i]
				if o.kind == kindAdd {
					adds++
					bytes += len(o.payload)
					b.m.addLatency.Observe(float64(synced-o.queued) / 1e9)
				}
				o.finish(nil)
			}
		}
		b.m.adds.Add(float64(adds))
		b.m.addBytes.Add(float64(bytes))
		b.m.groupSize.Observe(float64(records))
		now := time.Now()
		for i, jb := range q {
			if i == 0 || jb.queued != q[i-1].queued { // a group written in two files
				b.m.groupLatency.Observe(now.Sub(jb.queued).Seconds())
			}
		}

		b.apMu.Lock()
		for _, jb := range q {
			b.apQ = append(b.apQ, applyBatch{ops: jb.ops, end: jb.end, bytes: jb.bytes, group: jb.group})
		}
		b.apMu.Unlock()
		select {
		case b.apKick <- struct{}{}:
		default:
		}
	}
}

func (b *Bookie) failBatches(err error, q []jbatch) {
	for _, jb := range q {
		b.failOps(err, jb.ops)
	}
}

func (b *Bookie) failOps(err error, ops []op) {
	for i := range ops {
		if o := &ops[i]; o.done != nil || o.batchDone != nil {
			if o.kind == kindAdd {
				b.m.addErrors.Inc()
			}
			o.finish(err)
		}
	}
}

// fail puts the bookie into the failed state: every queued write, the
// runs written but not yet synced and inflight fail with an error
// wrapping ErrFailed and cause (nil: the recorded failure).
func (b *Bookie) fail(cause error, inflight []op) {
	b.mu.Lock()
	if b.err == nil {
		if cause == nil {
			cause = errors.New("failed")
		}
		b.err = fmt.Errorf("%w: %w", ErrFailed, cause)
		b.opts.Logf("bookie: failed: %v", cause)
	}
	err := b.err
	queued := b.queue
	b.queue, b.queueBytes = nil, 0
	b.space.Broadcast()
	b.mu.Unlock()
	b.kickWriter()
	s := &b.sy
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	written := s.q
	s.q = nil
	s.cond.Broadcast()
	s.mu.Unlock()
	b.m.failed.Set(1)
	b.failOps(err, inflight)
	b.failBatches(err, written)
	b.failOps(err, queued)
}

// applyLoop applies synced groups to the entry logs and index.
func (b *Bookie) applyLoop() {
	defer close(b.apDone)
	for {
		// Take the queued groups, up to applyMaxBytes of records (at
		// least one group), to apply with one index batch.
		b.apMu.Lock()
		n, bytes := 0, 0
		for n < len(b.apQ) && (n == 0 || bytes+b.apQ[n].bytes <= applyMaxBytes) {
			bytes += b.apQ[n].bytes
			n++
		}
		q, closing := slices.Clone(b.apQ[:n]), b.apClosing
		clear(b.apQ[:n]) // drop the references to the taken groups' ops
		if b.apQ = b.apQ[n:]; len(b.apQ) == 0 {
			b.apQ = nil
		}
		b.apMu.Unlock()
		if len(q) == 0 {
			if closing {
				return
			}
			<-b.apKick
			continue
		}
		b.applyMu.Lock()
		err := b.apply(q)
		b.applyMu.Unlock()
		if err != nil {
			// The records are durable in the journal and stay readable
			// from pending; a restart replays them.
			b.fail(err, nil)
			return
		}
		var released int64
		b.readMu.Lock()
		for _, ab := range q {
			for i := range ab.ops {
				o := &ab.ops[i]
				released += int64(o.encodedSize())
				if o.kind != kindAdd {
					continue
				}
				b.pending.applied(o.ledger, o.seq)
			}
		}
		b.readMu.Unlock()
		b.mu.Lock()
		b.inflight -= released
		b.space.Broadcast()
		b.mu.Unlock()
		for _, ab := range q {
			if ab.group != nil {
				b.recycleOps(ab.group)
			}
		}
	}
}

// recycleOps hands the array of an applied group's ops back to the
// journal goroutine for a later queue (nothing refers to the ops any
// more: answered, applied, out of pending), so that a group's ops are not
// a new array of pointers for the GC at every group commit.
func (b *Bookie) recycleOps(ops []op) {
	ops = ops[:cap(ops)]
	clear(ops) // the payloads and callbacks
	select {
	case b.opsFree <- ops[:0]:
	default:
	}
}

// newQueue returns an empty queue for at least n ops: a recycled array
// if one is large enough.
func (b *Bookie) newQueue(n int) []op {
	for {
		select {
		case ops := <-b.opsFree:
			if cap(ops) >= n {
				return ops
			}
		default:
			return make([]op, 0, n+n/4)
		}
	}
}

func (b *Bookie) maybeCheckpoint() {
	if b.jnl.rolled.Load() >= int64(b.opts.CheckpointJournalFiles) {
		b.jnl.checkpointKicked()
		b.kickCheckpoint()
	}
}

func (b *Bookie) kickCheckpoint() {
	select {
	case b.ckptKick <- struct{}{}:
	default:
	}
}

// maintenanceLoop runs periodic checkpoints, then reclaims space.
func (b *Bookie) maintenanceLoop() {
	defer close(b.maintDone)
	t := time.NewTicker(b.opts.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		case <-b.ckptKick:
		}
		if err := b.checkpoint(); err != nil {
			b.fail(err, nil)
			return
		}
		if err := b.reclaim(); err != nil {
			b.opts.Logf("bookie: reclaiming entry-log space: %v", err)
		}
	}
}

func (b *Bookie) hook(point string) {
	if b.opts.testHook != nil {
		b.opts.testHook(point)
	}
}

// checkpoint makes everything applied so far durable without the journal:
// it syncs the entry logs, writes the index with the journal position they
// cover (synced), then retires the journal files wholly before it.
func (b *Bookie) checkpoint() error {
	b.maintMu.Lock()
	defer b.maintMu.Unlock()
	if b.jnl != nil {
		defer b.jnl.checkpointDone(b.jnl.checkpointStarting())
	}
	// Under applyMu only a snapshot: the logs to sync and how far, the
	// position they cover and the dirty metadata, encoded. The syncs run
	// without it, so that the applier (and the adds waiting for inflight
	// bytes it releases) never waits for an fsync of the entry logs; what
	// it writes meanwhile lies past the snapshot, past pos in the journal.
	ap := &b.ap
	b.applyMu.Lock()
	sealed := ap.sealed
	ap.sealed = nil
	active, activeSize := ap.active, ap.active.size
	pos, next := ap.pos, ap.nextLog
	batch := b.db.NewBatch()
	defer batch.Close()
	for l := range ap.dirty {
		if m := ap.ledgers[l]; m != nil {
			_ = batch.Set(ledgerKey(l), m.encode(), nil)
		} else {
			_ = batch.Delete(ledgerKey(l), nil)
		}
	}
	for id := range ap.usageDirty {
		if u := ap.usage[id]; u != nil {
			_ = batch.Set(usageKey(id), u.encode(), nil)
		} else {
			_ = batch.Delete(usageKey(id), nil)
		}
	}
	clear(ap.dirty)
	clear(ap.usageDirty)
	b.jnl.rolled.Store(0)
	b.applyMu.Unlock()

	var err error
	for _, l := range sealed { // the applier no longer writes them
		serr := l.f.Sync()
		if serr == nil {
			b.readers.synced(l.id, l.size)
		}
		if cerr := l.f.Close(); serr == nil {
			serr = cerr
		}
		if serr != nil && err == nil {
			err = fmt.Errorf("bookie: checkpoint: syncing entry log %d: %w", l.id, serr)
		}
	}
	if err != nil {
		return err
	}
	err = active.f.Sync()
	if err == nil {
		b.readers.synced(active.id, activeSize)
		err = vfs.SyncDir(b.fs, b.logDir)
	}
	if err != nil {
		return fmt.Errorf("bookie: checkpoint: syncing entry logs: %w", err)
	}

	b.hook("checkpoint:synced")
	_ = batch.Set(checkpointKey, pos.encode(), nil)
	_ = batch.Set(nextLogKey, leBytes(next), nil)
	if err := batch.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("bookie: checkpoint: index: %w", err)
	}
	b.hook("checkpoint:committed")
	if err := b.jnl.retire(pos.file); err != nil {
		return fmt.Errorf("bookie: checkpoint: retiring journal files: %w", err)
	}
	b.m.checkpoints.Inc()
	return nil
}

// reclaim deletes entry logs in which nothing is live and compacts those
// whose live share fell below the threshold. Only logs synced by a
// checkpoint are considered.
func (b *Bookie) reclaim() error {
	b.maintMu.Lock()
	defer b.maintMu.Unlock()
	ap := &b.ap
	type cand struct {
		id    uint64
		ratio float64
	}
	var empty []uint64
	var sparse []cand
	b.applyMu.Lock()
	unsynced := map[uint64]bool{ap.active.id: true}
	for _, l := range ap.sealed {
		unsynced[l.id] = true
	}
	for id, u := range ap.usage {
		if unsynced[id] {
			continue
		}
		live := u.liveBytes()
		switch {
		case live == 0:
			empty = append(empty, id)
			delete(ap.usage, id)
			ap.usageDirty[id] = struct{}{}
		case u.size > 0 && b.opts.CompactionThreshold > 0 && float64(live)/float64(u.size) < b.opts.CompactionThreshold:
			sparse = append(sparse, cand{id, float64(live) / float64(u.size)})
		}
	}
	b.m.entryLogFiles.Set(float64(len(ap.usage)))
	b.applyMu.Unlock()

	var errs []error
	for _, id := range empty {
		b.hook("reclaim:delete")
		b.readers.forget(id)
		if err := b.fs.Remove(b.fs.PathJoin(b.logDir, fileName(id, entryLogExt))); err != nil && !vfs.IsNotExist(err) {
			errs = append(errs, err)
		}
		b.m.deletedLogs.Inc()
	}
	for _, c := range sparse {
		if err := b.compact(c.id); err != nil {
			errs = append(errs, fmt.Errorf("compacting entry log %d: %w", c.id, err))
		}
	}
	return errors.Join(errs...)
}

// movedKey names an entry of a compacted log: where it was.
type movedKey struct {
	ledger, entry uint64
	from          int64
}

// compact copies the live entries of entry log id into a new log, switches
// the index to the copies (synced) and deletes the old log.
func (b *Bookie) compact(id uint64) error {
	b.hook("compaction:start")
	data, err := vfs.ReadFile(b.fs, b.fs.PathJoin(b.logDir, fileName(id, entryLogExt)))
	if err != nil {
		return err
	}
	b.applyMu.Lock()
	dstID := b.ap.nextLog
	b.ap.nextLog++
	b.applyMu.Unlock()
	dstName := b.fs.PathJoin(b.logDir, fileName(dstID, entryLogExt))
	dst, err := b.fs.Create(dstName, vfs.CategoryShard)
	if err != nil {
		return err
	}
	var out []byte
	moves := map[movedKey]location{}
	var size int64
	c, err := newRangeCursor(b.db, 0, true)
	if err != nil {
		dst.Close()
		return err
	}
	defer c.close()
	for off := 0; off < len(data); {
		l, e, payload, n, ok := decodeLogRecord(data[off:])
		if !ok {
			break // the unsynced tail of a log written before a crash
		}
		loc, found, err := c.find(l, e)
		if err != nil {
			dst.Close()
			return err
		}
		if found && loc.log == id && loc.offset == int64(off) {
			moves[movedKey{ledger: l, entry: e, from: int64(off)}] = location{log: dstID, offset: size + int64(len(out)), length: uint32(len(payload))}
			out = appendLogRecord(out, l, e, payload)
		}
		if len(out) >= 1<<20 {
			if _, err := dst.Write(out); err != nil {
				dst.Close()
				return err
			}
			size += int64(len(out))
			out = out[:0]
		}
		off += n
	}
	if len(out) > 0 {
		if _, err := dst.Write(out); err != nil {
			dst.Close()
			return err
		}
		size += int64(len(out))
	}
	err = dst.Sync()
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = vfs.SyncDir(b.fs, b.logDir)
	}
	if err != nil {
		return err
	}
	b.hook("compaction:copied")

	// Switch the index to the copies, durably, in one batch: every range
	// record in log id (none is written there any more; a merge keeps its
	// entries' locations) gets the copies' locations. An entry of one
	// that was not copied would be lost with the log: then the
	// compaction is abandoned.
	b.applyMu.Lock()
	batch := b.db.NewBatch()
	defer batch.Close()
	u := &logUsage{size: size, live: map[uint64]int64{}}
	ledgers := map[uint64]bool{}
	for mk := range moves {
		ledgers[mk.ledger] = true
	}
	if old := b.ap.usage[id]; old != nil {
		for l := range old.live {
			ledgers[l] = true
		}
	}
	if err := b.switchRanges(batch, id, dstID, ledgers, moves, u); err != nil {
		b.applyMu.Unlock()
		if rerr := b.fs.Remove(dstName); rerr != nil && !vfs.IsNotExist(rerr) {
			err = errors.Join(err, rerr)
		}
		return err
	}
	_ = batch.Set(usageKey(dstID), u.encode(), nil)
	_ = batch.Delete(usageKey(id), nil)
	_ = batch.Set(nextLogKey, leBytes(b.ap.nextLog), nil)
	if err := batch.Commit(pebble.Sync); err != nil {
		b.applyMu.Unlock()
		return err
	}
	b.ap.usage[dstID] = u
	delete(b.ap.usage, id)
	delete(b.ap.usageDirty, id)
	b.m.entryLogFiles.Set(float64(len(b.ap.usage)))
	b.applyMu.Unlock()
	b.hook("compaction:committed")

	b.readers.forget(id)
	if err := b.fs.Remove(b.fs.PathJoin(b.logDir, fileName(id, entryLogExt))); err != nil && !vfs.IsNotExist(err) {
		return err
	}
	b.m.compactions.Inc()
	return nil
}

// switchRanges writes into batch the range records of ledgers that lie in
// entry log from, pointing at the copies moves made in log to, and adds
// their bytes to u; applyMu held.
func (b *Bookie) switchRanges(batch *pebble.Batch, from, to uint64, ledgers map[uint64]bool, moves map[movedKey]location, u *logUsage) error {
	var elems []rangeElem
	for l := range ledgers {
		lo, hi := ledgerIndexBounds(l)
		it, err := b.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
		if err != nil {
			return err
		}
		for it.First(); it.Valid(); it.Next() {
			v, err := decodeRange(it.Value())
			if err != nil {
				it.Close()
				return err
			}
			if v.log() != from {
				continue
			}
			elems = elems[:0]
			for i := range v.len() {
				e := v.elem(i)
				dst, ok := moves[movedKey{ledger: l, entry: e.entry, from: e.offset}]
				if !ok {
					it.Close()
					return fmt.Errorf("bookie: compaction: ledger %d entry %d at entry log %d offset %d was not copied", l, e.entry, from, e.offset)
				}
				elems = append(elems, rangeElem{entry: e.entry, offset: dst.offset, length: dst.length})
				u.live[l] += int64(logHeaderSize) + int64(dst.length)
			}
			_ = batch.Set(it.Key(), appendRange(nil, to, elems), nil)
		}
		if err := it.Close(); err != nil {
			return err
		}
	}
	return nil
}

// Close stops accepting operations, writes and syncs what was queued,
// checkpoints and closes every file. Operations after Close fail with
// ErrClosed.
func (b *Bookie) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	b.closed = true
	b.space.Broadcast()
	b.mu.Unlock()
	b.kickWriter()
	<-b.writerDone
	b.apMu.Lock()
	b.apClosing = true
	b.apMu.Unlock()
	select {
	case b.apKick <- struct{}{}:
	default:
	}
	<-b.apDone
	close(b.stop)
	<-b.maintDone

	b.mu.Lock()
	failed := b.err
	b.mu.Unlock()
	var err error
	if failed == nil {
		err = b.checkpoint()
	}
	b.readGate.Lock() // reads in progress end first; later ones see ErrClosed
	b.readsClosed = true
	b.readGate.Unlock()
	return errors.Join(err, b.closeFiles())
}

// enterRead admits a read of the index and files until exitRead;
// ErrClosed once Close closes them.
func (b *Bookie) enterRead() error {
	b.readGate.RLock()
	if b.readsClosed {
		b.readGate.RUnlock()
		return ErrClosed
	}
	return nil
}

func (b *Bookie) exitRead() { b.readGate.RUnlock() }

func (b *Bookie) closeFiles() error {
	var errs []error
	if b.jnl != nil {
		errs = append(errs, b.jnl.close())
	}
	if b.ap.active != nil {
		errs = append(errs, b.ap.active.f.Close())
		b.ap.active = nil
	}
	for _, l := range b.ap.sealed {
		errs = append(errs, l.f.Close())
	}
	b.ap.sealed = nil
	b.readers.closeAll()
	if b.db != nil {
		errs = append(errs, b.db.Close())
		b.db = nil
	}
	if b.lock != nil {
		errs = append(errs, b.lock.Close())
		b.lock = nil
	}
	return errors.Join(errs...)
}

// pebbleLogger drops Pebble's informational messages and forwards errors.
type pebbleLogger struct{ logf func(string, ...any) }

func (l pebbleLogger) Infof(string, ...any)              {}
func (l pebbleLogger) Errorf(format string, args ...any) { l.logf("pebble: "+format, args...) }
func (l pebbleLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf("pebble: "+format, args...))
}
