// Package file is the "file" shard engine: every shard is a segmented,
// append-only log in a directory on this node's disk, made durable by
// fdatasync with group commit.
//
// # Use
//
//	e, err := file.Open(file.Options{Dir: "/var/lib/quire/file", Registerer: reg})
//	s, err := e.Create(ctx, "orders/0")         // or e.Open(ctx, name)
//	first, err := s.Append(ctx, recs)           // returns after the fdatasync that covers recs
//	recs, err := s.Read(ctx, first, shard.Limits{MaxBytes: 1 << 20})
//	<-s.(shard.Tailer).Wait(high)               // wakes when records at or above high arrive
//
// Options.Sync chooses when an append is acknowledged: SyncBatch (default)
// after the fdatasync that covers it, SyncInterval after the write with an
// fdatasync at most SyncInterval later, SyncNone after the write with fdatasync only
// when a segment is rolled, before a seal and on Close. Options.FS is the file
// system seam (internal/vfs): tests run the same code on vfs.NewMem, on
// vfs.NewCrashableMem (crash tests) and on vfs.InjectFS (failed fsyncs, full
// disks). Options.Now is the clock for default timestamps, segment age and
// retention age.
//
// # Files
//
//	<Dir>/LOCK                       advisory lock: one engine per directory
//	<Dir>/s-<escaped name>/          one directory per shard (see below)
//	<Dir>/h-<sha256 of name, hex>/   ... for names too long to escape
//	    NAME                         the shard's real name; its presence means the shard exists
//	    TRIM                         the low watermark set by Trim or retention (absent: 0)
//	    SEALED                       present once the shard is sealed
//	    OFFLOAD                      locations of offloaded segments (FileManifest)
//	    00000000000000000000.log     segment files, named by their base offset (20 digits)
//	    00000000000000000000.idx     sparse index of a sealed segment (written at roll)
//	    00000000000000004711.log     the last segment is the active one
//	    *.tmp                        an atomic write in progress (removed at open)
//
// Directory names escape every byte outside [a-z0-9._-] as %XX (upper-case
// hex), so the mapping from shard names is bijective and safe on
// case-insensitive file systems ("UPPER" is s-%55%50%50%45%52, "upper" is
// s-upper). A name whose escaped form exceeds 200 bytes is stored under the
// hex SHA-256 of the name; NAME holds the real name in either case. NAME,
// TRIM and SEALED are replaced atomically (write temporary, fsync, rename,
// fsync directory) and carry a CRC-32C.
//
// # Segment format
//
// A segment is a 32-byte header followed by records. All integers are
// little-endian; CRCs are CRC-32C (Castagnoli).
//
//	segment header (32 bytes)
//	+----------------+-----------+--------------+-----------+---------+-----------+
//	| magic[8]       | base u64  | created i64  | version   | 0 u16   | crc32c    |
//	| "QUIRESEG"     |           | (unix ms)    | u16 (=1)  |         | of [0,28) |
//	+----------------+-----------+--------------+-----------+---------+-----------+
//
//	record (36-byte fixed header, then bodies)
//	+---------+---------+------------+---------------+---------+---------+----------+
//	| len u32 | crc u32 | offset u64 | timestamp i64 | keylen  | vallen  | nheaders |
//	|         |         |            | (unix ms)     | u32     | u32     | u32      |
//	+---------+---------+------------+---------------+---------+---------+----------+
//	| key [keylen] | value [vallen] | header 0 | ... | header nheaders-1 |
//	+--------------+----------------+----------+-----+-------------------+
//	header i: | hklen u32 | hvlen u32 | hkey [hklen] | hvalue [hvlen] |
//
// len counts the bytes after the crc field (28 + keylen + vallen + headers);
// crc covers the len field and those bytes. A record is valid when len is
// between 28 and MaxRecordSize-8, the record fits in the file, the CRC
// matches and the lengths add up to len. Offsets are dense: the first record
// of a segment has the segment's base offset and each next record the next
// offset. Null and empty keys and values are stored alike.
//
// The index file of a sealed segment is a 64-byte header (magic "QUIREIDX",
// version, entry count, base, end offset, segment size, largest timestamp,
// CRC of the entries, CRC of the header) and 24-byte entries (offset u64,
// byte position u64, largest timestamp of the segment's records before this
// one i64), one every IndexIntervalBytes. The running maximum makes
// OffsetForTime exact with out-of-order timestamps: it starts scanning at the
// last entry whose preceding records are all older than the target. Indexes
// are an optimisation: one that is missing, damaged or does not match its
// segment's size and offsets is rebuilt by scanning the segment; the active
// segment's index is rebuilt by scanning at every open.
//
// Part of the on-disk format: the magics, version 1, the header layouts
// above, the 32-byte segment header, the 36-byte record header, CRC-32C,
// little-endian integers, MaxRecordSize (recovery treats longer lengths as
// garbage), the file names, and the 4 KiB page that recovery assumes lost
// writes are aligned to. IndexIntervalBytes, SegmentBytes and the sync policy
// are not: any value reads any segment.
//
// # Writing: group commit
//
// Each open shard has one committer goroutine that owns the active
// segment's file. Append validates its records and enqueues them; offsets
// are assigned in enqueue order. The committer takes every queued append,
// encodes all of them into one reused buffer, writes it with one call,
// fdatasyncs once (SyncBatch), then publishes the new high watermark and
// answers the appenders: records are visible to readers only once acked. If
// the active segment has reached SegmentBytes or SegmentAge, the committer
// first rolls: it syncs the segment, writes its index, and creates and syncs
// the next segment (named by the next offset) and the directory.
//
// A failed write or fdatasync fails the appends of its group with an error
// wrapping both shard.ErrFailed and the I/O error, and the shard then
// refuses every write with shard.ErrFailed until it is reopened (Engine.Open
// reopens a failed shard): after a failed fsync the file's state is unknown,
// so only recovery may decide what it holds. Reads of acknowledged records
// keep working. An append that failed may or may not be present after the
// reopen, as after a crash.
//
// Trim persists the new low watermark in TRIM before it deletes the sealed
// segments wholly below it; records below the low watermark in the remaining
// first segment are hidden. Retention (after every roll and once a minute)
// deletes the oldest sealed segments beyond RetentionBytes or older than
// RetentionAge, the same way. Seal syncs, then persists SEALED.
//
// # Recovery: torn tails and corruption
//
// Opening a shard removes leftover *.tmp files, finishes an interrupted trim
// (segments wholly below TRIM), takes sealed segments' extents from their
// index files, and scans the active (last) segment record by record from its
// header. Sealed segments were fully synced before the next segment was
// created, so any invalid record in one is corruption. In the last segment,
// an invalid record at byte p is a torn tail — the file is truncated at p
// and everything after it dropped — when either
//
//   - its extent (its length field, or the next 4 KiB if the length is
//     unusable) overlaps a lost page: a 4 KiB-aligned block that is all zeros
//     from p or the block start to the block end. A crash loses unsynced
//     pages whole, and they read back as zeros (a file system never exposes
//     stale data in a file's unwritten blocks; this engine never preallocates
//     or reuses files). Everything after a lost page was never covered by a
//     completed fdatasync, because a sync covers a prefix of the file, so it
//     was never acknowledged (under SyncBatch) and may be dropped even where
//     intact records survive after the hole; or
//   - no valid record (checksum matching, offset at least the expected one)
//     follows it anywhere in the segment: an incomplete last write.
//
// Otherwise non-zero garbage sits between valid records, which no crash
// explains (a bit flip, a bad sector, a buggy writer): Open of that shard
// returns a *shard.CorruptError naming the file and byte offset, wrapping
// shard.ErrCorrupt, and nothing is truncated. A CRC-valid record with the
// wrong offset or inconsistent lengths is corruption too. A last segment
// whose header is invalid and that holds no valid record is a segment whose
// creation was interrupted; it is recreated empty. The engine keeps serving
// every other shard: shards are opened lazily, List lists a corrupt shard,
// and each Open of it retries. Reads check every record's CRC too, so
// corruption that appears in a sealed segment later is reported by the Read
// that meets it (Options.VerifySealedOnOpen also scans sealed segments at
// open, at the cost of reading all data).
//
// The cost of telling a torn tail from corruption this way: damage to the
// very last record of the active segment, or to a record holding a whole
// zeroed 4 KiB page, is indistinguishable from a crash and is truncated (and
// logged, and counted in quire_file_recovery_truncations_total).
//
// # Offload (tiered storage)
//
// With Options.Offload, a background offloader per engine copies every
// sealed segment of the open shards (OffloadOptions.Policy picks shards) to
// an objstore.Store and serves it from there once the local copy is gone.
// A pass runs every Interval and after each roll; it uploads at most
// Concurrency segments at once. For each segment:
//
//  1. upload: the segment file to <Prefix>/<shard directory>/<base>.log
//     (a section reader of known size: S3 uploads large segments as
//     parallel multipart) and, at the same time, its index to
//     .../<base>.idx; the CRC-32C of each is computed from the local file
//     and sent with the upload (objstore.PutVerified);
//  2. verify: a store that checks the CRC-32C sent with the PUT
//     (objstore.ChecksumPutter: S3 servers with x-amz-checksum-crc32c, the
//     directory and memory stores) refuses a mismatch and nothing is read
//     back; with a store that cannot, both objects are read back and their
//     CRCs compared (counted in quire_offload_readback_total);
//  3. record: Manifest.CAS (absent -> RemoteSegment{end, size, max
//     timestamp, CRC, keys, time}) under the shard's ctlMu, only if the
//     segment is still the shard's (not trimmed meanwhile: then the objects
//     are deleted);
//  4. delete: once DeleteLag has passed since the record, the segment is
//     switched to its object (reads opened later range-GET it; open readers
//     finish on the local file) and the .log and .idx files are removed.
//
// A failure counts in quire_offload_failures_total and the segment is
// retried after an exponential backoff (RetryMin..RetryMax). Every step is
// idempotent and keys are deterministic, so a crash anywhere is resumed by
// the next pass: before the record the local copy is authoritative and the
// upload is redone (overwriting); after it, recovery takes a segment whose
// local file is missing from the manifest (end, size, timestamps) and a
// local file, while it exists, over its object. Recovery deletes local
// index files of offloaded segments and never offloads the active segment.
//
// Reads of offloaded segments go through the reader cache like local ones:
// ReadAt calls of at least BlockBytes (catch-up reads ask for megabytes)
// are served from 8 MiB ranges aligned in the object, each one ranged GET;
// a reader holds the ranges of its last read and keeps the next two in
// flight (read-ahead), and once it nears the object's end it prefetches
// the first range of the next segment's object (key <base = this end>.log),
// which the next segment's reader adopts. Read-ahead and prefetches share a
// budget of CacheBytes; a failed one is fetched again when read. Smaller
// reads (index-guided lookups, time lookups) go through an engine-wide LRU
// of BlockBytes blocks (CacheBytes). The sparse index is fetched on demand
// from its object. Records are checked by their CRCs when decoded, once.
//
// Trim and retention leave offloaded segments below the new low watermark
// to the offloader, which deletes their objects, then their records (also
// those a crash left behind). Engine.Delete deletes a shard's objects and
// records before its directory; Create deletes any an interrupted delete
// left. The Manifest is a narrow seam with a conformance suite
// (engines/file/manifesttest): FileManifest keeps an OFFLOAD file (JSON
// with a CRC, replaced atomically) in the shard's directory; MetaManifest
// keeps one meta key per segment, changed by version CAS (the node uses it
// when it runs meta). Objects uploaded but never recorded (a crash between
// the two, then a trim) are found by listing the shard's prefix in the
// first pass after the shard opens, and by Engine.Delete.
//
// # Resources
//
// An open shard holds one file descriptor (its active segment, also used to
// read it) and a goroutine. Reads of sealed segments go through an
// engine-wide LRU of at most MaxOpenSegments open files, each with its
// index. Read returns records whose keys and values share one buffer per
// read; a Read without MaxBytes returns at most 4 MiB.
//
// # Code map and lock order
//
//	options.go   Options, defaults, validation
//	format.go    every on-disk encoding (segment header, record, index, TRIM, SEALED, NAME)
//	names.go     shard name <-> directory name
//	engine.go    Engine: lock file, shard directory create/open/delete/list
//	shard.go     Shard: Append (enqueue), Read, OffsetForTime, Trim, retention, Seal, Wait, Close
//	commit.go    the committer goroutine: group commit, roll, seal, failure state
//	recover.go   opening a shard: cleanup, sealed segment summaries, torn-tail recovery
//	segment.go   segments, the engine-wide reader cache, the record iterator
//	offload.go   OffloadOptions, the offloader, trimmed objects' collection
//	manifest.go  Manifest, RemoteSegment, FileManifest; metamanifest.go MetaManifest
//	remote.go    reading offloaded segments: ranged GETs, the block cache
//	metrics.go   quire_file_* and quire_offload_* collectors
//
// Locks are taken in this order: Shard.ctlMu (trim and retention), Shard.mu
// (published state), Shard.qmu (queue), segment.rmu (a segment's reader),
// readerCache.mu. Only the committer goroutine writes segment files.
//
// # Metrics
//
// quire_file_appends_total, _appended_records_total, _appended_bytes_total,
// _writes_total, _fsyncs_total, _fsync_duration_seconds (histogram),
// _sync_bytes (histogram of bytes per fdatasync), _segments_rolled_total,
// _segments_deleted_total{reason="retention"|"trim"},
// _recovery_truncations_total, _recovery_truncated_bytes_total,
// _corrupt_shards, _failed_shards_total, _open_shards.
//
// quire_offload_bytes_total and _segments_total (offloaded, verified and
// recorded), _failures_total (failed attempts), _lag_seconds (age of the
// oldest sealed segment not offloaded yet, since a pass first saw it).
package file
