// Package s3 is the "s3" shard engine: shards stored as objects in an object
// store (AWS S3, MinIO, versitygw and other S3-compatible servers, through
// the objstore seam), with the index of every shard's objects in meta.
//
// # Use
//
//	e, err := s3.Open(ctx, s3.Options{
//		Endpoint: "127.0.0.1:9000", Bucket: "quire", AccessKey: "...", SecretKey: "...",
//		PathStyle: true, Prefix: "quire/", Meta: kv,      // kv: the node's meta.KV
//	})
//	s, err := e.Create(ctx, "orders/0")
//	first, err := s.Append(ctx, recs) // after the object is written and indexed
//
// Options' S3 fields are the [storage.s3] configuration section one to one
// (endpoint, bucket, region, access_key, secret_key, path_style, tls,
// prefix, flush_interval, flush_bytes); Options.Store replaces the S3
// connection with any objstore.Store (the in-memory and directory stores in
// tests, HDFS). The S3 client is minio-go; why, see engines/objstore/s3store.
//
// # Write path
//
// Appends queue on their shard; one flusher goroutine per shard turns the
// queue into objects. The first queued append waits up to FlushInterval for
// others (or until FlushBytes are queued), then the flusher
//
//  1. assigns the batch offsets high..high+n-1 and encodes it as one object;
//  2. PUTs the object under a fresh key (first offset + random suffix, so a
//     retried append never overwrites an object the index names);
//  3. commits the object's index entry to meta with a CAS on the entry's
//     key (the offset): against the version of this writer's claim on it
//     (below), or requiring the key to be new (IfVersion(0));
//  4. only then moves high, wakes tailing readers and acknowledges every
//     append of the batch.
//
// A failed PUT or commit fails the whole batch and nothing of it becomes
// visible; the object of a failed commit is deleted, or, if that fails too,
// found and deleted at the next open as an orphan (an object no index entry
// names). An ambiguous commit (meta.ErrAmbiguous) is resolved by reading the
// entry back (one resolver, casPut, serves every CAS of the engine); if that
// fails as well, the shard refuses further appends (shard.ErrFailed) until
// it is reopened.
//
// # Fencing
//
// One engine writes a shard at a time, and opening it (Create or Open)
// takes it from whichever engine wrote it before. The opener
//
//  1. writes a new writer token into the shard's record (CAS): the old
//     writer's Trim and Seal, CASes on the record, fail from then on;
//  2. claims the index key at the shard's high with a marker (an entry
//     with no records, naming its token), by CAS; an entry the old writer
//     commits meanwhile moves the claim past it.
//
// Every commit is a CAS on the key at the committing handle's high, so the
// old writer's next commit meets the claim (or an entry after it) and
// fails. The new writer's first commit replaces its own claim (CAS on the
// claim's version) and is flagged "claim": a trim leaves a marker at such a
// key instead of deleting it, so a fenced writer whose next key it was
// cannot create it anew. The orphan sweep of the opener runs after the
// claim, so an object the old writer had put but not committed is deleted
// and its commit fails. A fenced handle's appends, trims and seals fail
// with ErrFenced (appends also with shard.ErrFailed); reads still work.
//
// # Read path
//
// The index (all entries of an open shard, in memory) maps an offset to the
// object holding it. Read fetches whole objects (one GET each) and keeps them
// decoded in an LRU cache of ReadCacheBytes shared by all shards; objects
// just written are put there too, so tailing readers do not fetch them back.
// A Read also starts fetching the following object in the background (read
// ahead for catch-up readers), and concurrent readers of one object share
// one GET.
// OffsetForTime uses each entry's largest timestamp: every object before the
// first whose largest timestamp is >= ts holds only older records, so only
// that object is scanned.
//
// # Trim, retention, seal, delete
//
// Trim writes the new low watermark to the shard's record (CAS), then
// deletes the index entries and objects wholly below it. Retention
// (RetentionBytes, RetentionAge) trims whole objects, keeping the newest;
// it runs in the engine's background loop, soon after a shard writes an
// object and for every open shard once a minute, never on the append path.
// Seal sets the record's sealed flag. Delete removes the record first (the
// shard is gone from then on) and then its entries and objects; a shard
// created again under the same name gets a new ID, so leftovers of an
// interrupted delete are never read.
//
// # Meta keys (MetaPrefix, default /engines/s3/)
//
//	<MetaPrefix>shards/<name>                  {"name","id","low","sealed","created_at","writer"}
//	<MetaPrefix>objects/<id>/<first, 20 digits> {"key","first","count","max_ts","size","bytes","writer","claim"}
//
// An entry with count 0 and no key is a marker: the claim of the writer
// named at the shard's high, or what a trim left of a "claim" entry.
//
// # Objects (key <Prefix><id>/<first, 20 digits>-<16 hex digits>)
//
// A 32-byte header, then the records. Integers in the header are
// little-endian; CRCs are CRC-32C (Castagnoli); varints are Go's
// encoding/binary (zig-zag for the timestamp).
//
//	+----------+-------------+-----------+-----------+-----------+------------+------------+
//	| "QS3O"   | version u16 | 0 u16     | first u64 | count u32 | body len   | body crc   |
//	|          | (=1)        |           |           |           | u32        | u32        |
//	+----------+-------------+-----------+-----------+-----------+------------+------------+
//	| header crc u32 of bytes [0,28) |
//	+--------------------------------+
//	record: timestamp varint | key len uvarint, key | value len uvarint, value |
//	        header count uvarint | (key len, key, value len, value) per header
//
// Objects are written whole (an S3 PUT is atomic), so there are no torn
// tails: an object that fails its checksums, or disagrees with its index
// entry on first offset, count or size, is reported as shard.ErrCorrupt by
// the Read that meets it. Fetched objects are checked once; an object this
// engine has just written goes to the read cache decoded without a second
// pass over its CRCs.
package s3
