// Package bookie is the storage server of Quire's journal: it stores the
// entries of many ledgers on one node, durably, with fencing and explicit
// LACs, and survives a crash at any point. See DESIGN.md, "Journal", and
// BookKeeper's bookie (journal + entry logger + ledger index + cookies),
// which it follows.
//
// # Usage
//
//	b, err := bookie.Open(bookie.Options{
//		Dir:      "/var/lib/quire/bookie",
//		BookieID: "node-1:1228",
//		Cookies:  bookie.NewFileCookieStore(vfs.Default, "/var/lib/quire/cookies.json"),
//	})
//	b.AddEntry(ledger, entry, lac, payload, false, func(err error) { ... }) // acked after fdatasync
//	b.AddEntries(adds, func(i int, err error) { ... })                     // a batch: one lock, no closure per add
//	data, err := b.ReadEntry(ledger, entry, false) // ErrNoSuchEntry if absent
//	lac, err := b.Fence(ledger)                    // later non-recovery adds: ErrLedgerFenced
//	err = b.Close()
//
// # Write path
//
// AddEntry, AddEntries, Fence, WriteLAC and DeleteLedger append a record to an
// in-memory group. The journal is a pipeline: one goroutine cuts a group
// when its oldest record has waited Options.MaxGroupWait (2 ms) or it holds
// Options.MaxGroupBytes (512 KiB), whichever comes first, or at once when
// the syncer is idle (no run written and waiting, no fdatasync running:
// waiting would only leave the disk idle), or once it holds 64 KiB while a
// sync runs and no written group waits for the next (writeAheadBytes: the
// next sync then starts as soon as this one ends), and writes it to
// the journal file; a second fdatasyncs, back to back, everything written
// while its previous sync ran (so group N+1 is written while group N
// syncs, and an add is acknowledged only after an fdatasync that began
// after its write); a third makes the synced entries readable and calls
// the callbacks in journal order. Another goroutine
// applies synced groups to the entry logs (append-only files of entry
// records, in Dir/ledgers) and the index (Pebble, in Dir/index, opened on
// the same vfs.FS): range records (ledger, first entry) → (log, then
// entry, offset and length of each entry of a run), plus ledger metadata
// (fenced, LAC). A checkpoint (every CheckpointInterval, or after
// CheckpointJournalFiles journal files) syncs the entry logs (up to where
// the applier had written when it started: it holds the applier's lock
// only for that snapshot, never during an fsync), writes the
// journal position they cover into the index with a synced batch, and
// retires the journal files wholly before it (kept for recycling or
// removed). Open replays the journal from the last checkpoint position;
// replay is idempotent (an add rewrites its index entry, merged into the
// range records it overlaps; fences and LACs are monotonic, deletes are
// range deletions).
//
// A failed journal write or fdatasync fails every add in flight with an
// error wrapping ErrFailed and the cause, and the bookie accepts no more
// writes (reads keep working): it never acknowledges what it could not
// sync.
//
// Lock order: Bookie.maintMu → Bookie.applyMu → Bookie.mu → Bookie.readMu;
// journal.mu, syncState.mu and logReaders.mu are leaves.
//
// # Journal files
//
// Journal files are named %016x.jnl by a file number that only grows
// (across restarts too: a restart always starts a new file, never appends
// to one written before it). Before use a file is preallocated
// (File.Preallocate) and zero-filled to JournalFileSize once, or recycled:
// a retired file renamed to the new number and overwritten in place, so
// that fdatasync never has to update the file size. Zero-filling doubles
// the disk writes while it runs, so when the retired files run low the
// journal kicks a checkpoint and waits (up to a second) for it to retire
// one rather than zero-fill. Open prepares the first file and the next
// itself, and zero-fills spares until two files are ready for recycling,
// without waiting for a checkpoint (its own has just retired what it
// could), so that a new bookie's zero-fills are not under its first adds
// (spares hold zeros: replay finds no record in them). Both leave bytes after
// the last record that are not records of this file: zeros, or the records
// of the file's previous life.
//
// A journal file is a sequence of records, each:
//
//	 0        4        8                16   17
//	+--------+--------+----------------+----+-------------------------+
//	| CRC32C | length |  file number   |kind| body (length bytes)      |
//	+--------+--------+----------------+----+-------------------------+
//	  CRC32C (Castagnoli) over bytes 4..17+length: length, file number,
//	  kind and body; all integers little-endian.
//
//	kind 1 add:    ledger u64 | entry u64 | lac i64 | payload
//	kind 2 fence:  ledger u64
//	kind 3 lac:    ledger u64 | lac i64
//	kind 4 delete: ledger u64
//
// A reader stops at the first record that is not valid: too short, a
// length above MaxEntrySizeLimit+24 or past the end of the file, a file
// number other than the file's own, a checksum mismatch, or an unknown kind
// or wrong body size for its kind. That is how the end of data is found in
// a pre-zeroed file (a zero header has file number 0, and numbers start at
// 1), how a torn write is detected (the group's tail fails its checksum),
// and why a recycled file's leftovers are never replayed: they carry the
// older file number (and a stale record surviving with a torn one over it
// still fails the checksum). A group that does not fit in the current file
// continues in the next, and a file receives records only once all of its
// predecessor's are synced, so a reader moves on to the next file after
// the first invalid record of each.
//
// # Entry logs and index
//
// Entry logs are named %016x.log and hold records
//
//	+--------+--------+-----------+-----------+---------+
//	| CRC32C | length | ledger u64| entry u64 | payload |
//	+--------+--------+-----------+-----------+---------+
//	  CRC32C over bytes 4..24+length.
//
// and a read checks the checksum and that ledger and entry are the ones
// asked for (ErrCorrupt otherwise; ReadRangeRecords, which hands out the
// records as stored, leaves the checksum to the receiver). The applier writes the groups it takes
// (up to 16 MiB of records at once) with one index batch; entry logs are
// preallocated 8 MiB ahead of their writes, their write-back is started
// (sync_file_range) each MiB as the applier writes them, so that a
// checkpoint's fsync has little left to flush and does not stall the
// journal's fdatasyncs behind a burst of tens of MB, and a checkpoint drops the
// synced pages that lie more than entryLogCacheWindow (512 MiB of log
// data) behind the newest from the page cache (on Linux; cache_window.go):
// appending to a preallocated file in recycled pages costs the kernel a
// fraction of the CPU of growing the page cache with fresh ones, and the
// newest data, which catch-up readers read, stays cached. The index keys are listed in store.go
// ('r' entry locations, 'l' ledger metadata, 'u' live bytes per ledger of
// each entry log, 'c' the checkpoint position, 'n' the next log id). An
// entry's location is in a range record, one key per run of up to 256
// entries of a ledger in one entry log (index.go):
//
//	key:   'r' | ledger u64 BE | first entry u64 BE
//	value: log id u64 | n u32 | n × (entry u64 | offset u64 | length u32)
//
// Entries strictly increase within a record and a ledger's records never
// overlap, so an entry is found in the record with the greatest first
// entry not above it (a gap, as a striped ledger leaves, is not held). A
// run that rewrites entries the index holds is merged with the records it
// overlaps, which are rewritten. Open converts an index of per-entry 'e'
// keys (the format before range records) once. An
// entry log without a 'u' record at Open was created after the last
// checkpoint (or is the unfinished output of a compaction): everything in
// it is replayed from the journal, so it is deleted.
//
// Space of deleted ledgers is reclaimed after checkpoints: entry logs with
// no live bytes are deleted whole; logs whose live share fell below
// CompactionThreshold are compacted (entries the index still points at are
// copied to a new log, which is synced, then the range records in the old
// log are switched to the copies in one synced batch and the old log
// deleted).
//
// On-disk constants: recHeaderSize (17), addBodyFixed (24),
// MaxEntrySizeLimit (64 MiB), the kinds above, logHeaderSize (24), the
// CRC32C polynomial, the index key prefixes and value layouts of store.go
// and index.go (rangeMaxEntries only bounds what the applier writes),
// the file name patterns, and the cookie file name COOKIE.
//
// # Cookies
//
// On first start (no cookie in any directory nor in Options.Cookies) the
// bookie writes a Cookie — bookie id, a random instance id, its
// directories — into Dir and JournalDir and registers it in the
// CookieStore (a FileCookieStore until meta implements the interface).
// Later starts require all copies to agree; a directory without a cookie
// while the store has one (a wiped or replaced disk, which has forgotten
// its fences) refuses to start with ErrCookieMismatch naming the mismatch.
package bookie
