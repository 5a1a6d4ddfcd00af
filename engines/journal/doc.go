// Package journal is the journal shard engine: every shard is a log of
// ledgers replicated over bookies (journal/client logs; DESIGN.md,
// "Journal"), so an acknowledged record survives Qa−1 bookie losses and
// any node can take a shard over.
//
// # Usage
//
//	e, _ := journal.Open(journal.Options{Client: cl, Meta: kv, Quorum: journal.Quorum{3, 2, 2}})
//	s, _ := e.CreateWith(ctx, "orders/0", shard.Settings{"ensemble": "5", "write_quorum": "3", "ack_quorum": "2"})
//	first, err := s.Append(ctx, recs) // one ledger entry, acked by Qa bookies
//
// # What is where
//
// In meta: the shard record /engines/journal/shards/<prefix><name>
// (shardRecord: E/Qw/Qa, low watermark, seal — the settings a shard was
// created with are used by every later writer), and the shard's log
// /logs/<prefix><name> (schema.Log: its ledger ids in order). On the
// bookies: the ledgers. Nothing is kept on the node's disk.
//
// One Append batch is one ledger entry (format.go draws it): the entry
// carries the shard offset of its first record, so record offsets are
// dense across ledgers no matter how ledgers roll, recover or are dropped,
// and the running maximum timestamp, which OffsetForTime binary-searches.
//
// # Writers
//
// A shard's writer is the node that last took its log over
// (client.OpenLogWriter: fence and recover the last two ledgers, create a
// ledger and CAS-append it). Open takes over at once only when the log
// ends in a ledger that is not closed (a crashed or live writer
// elsewhere), so that the watermarks are final; otherwise the first Append
// does. Appends are pipelined (client.LogWriter.AppendAsync) and return
// once the ack quorum has the entry and every earlier one; the high
// watermark moves in entry order. A failed append is ambiguous, as a
// fenced ledger write is: its records are not acknowledged, but the
// recovery done by the next takeover (the next Append) may keep them.
// Rollover (Options.RollBytes, RollEntries, RollAge) is the log's.
//
// # Reads
//
// A read locates the ledger by the ledgers' first offsets, then the entry
// by binary search over entry headers (or, for the ledger this shard
// writes, an in-memory index), and reads entries in turn from the first
// bookie of each entry's write set that has it (re-reading the metadata
// after an ensemble change). Decoded entries, including every entry just
// appended, stay in a per-shard cache (Options.CacheBytes) for tailing
// readers.
//
// # Trim, seal, delete
//
// Trim stores the low watermark in the shard record, then drops the
// ledgers that hold only records below it from the front of the log and
// deletes them from their bookies (retention in whole ledgers). Seal
// closes the ledger being written and stores the seal. Delete removes the
// shard record (the commit point), then the log and its ledgers; a Create
// of the same name removes a log an interrupted delete left.
//
// # Re-replication
//
// With Options.RereplicateAfter (the node's [storage.journal]
// rereplicate_after, default 2m), the engine runs a journal/client Auditor
// every AuditInterval: a bookie missing from the directory that long is
// lost, and every ledger in meta that names it in a final fragment (all
// of a closed ledger, all but the writer's last of an open one; not only
// this engine's shards) has the entries it held copied to another bookie
// and its metadata CASed to name that one (client.Rereplicate). Every node
// running the engine has an auditor, but one at a time audits: the one
// holding meta's schema.KeyAuditor (under a lease of three audit
// intervals, at least 10s; its value is the node's id), which its node
// gives up when the engine closes and loses when the node dies. Should
// two audit at once anyway, the CAS makes each ledger's re-replication
// happen once.
//
// The writer's last fragment is its own to change: the node's client
// (client.Options.ReplaceMissingAfter, set to rereplicate_after) makes a
// writer replace a bookie the live list has missed that long even when
// it is idle, which ends that fragment and hands it to the auditor.
//
// # Offload
//
// With Options.Offload, a pass every Offload.Interval copies each closed
// ledger of a shard this node writes (front first; never the last) to the
// object store as one object of its entries, each preceded by its length,
// then an index (each entry's first offset and position), then records it
// in meta by create-if-absent under
// /engines/journal/offload/<escaped name>/<ledger> (remoteLedger: first
// and end offset, key, size, CRCs, index position). The object is
// streamed: a scan reads the entries once for the object's size, index
// and CRC-32C, keeping the first Offload.BufferBytes of them, and the
// upload (objstore.PutVerified: size and CRC-32C checked, so an entry read
// differently the second time fails it; s3store goes multipart for large
// ledgers) reads the rest again. Each entry read has Options.OpTimeout,
// each ledger's upload and record OpTimeout plus its size at
// Offload.MinRate. Once Offload.DeleteLag has passed since the record, the
// writer drops the ledger from the log front and deletes it from its
// bookies, as Trim does. Only the writer offloads (on a sealed shard,
// which has none, any node that has it open): a node that only reads a
// shard neither reads its ledgers for offload nor uploads them; its pass
// reloads the manifest and forgets the ledgers the writer recorded and
// dropped. Reads below the log's first ledger come from
// the recorded objects: the index (kept), then ranged reads of about 1 MiB
// of entries (the last chunk stays decoded). A crash between
// the steps leaves either an unrecorded object (rewritten under the same
// key by the next pass) or a recorded ledger still in the log (read from
// the log; dropped by the next pass): every record is read exactly once.
// Trim and retention delete the records, then the objects, below the trim
// point (after the shard's lock is released); Delete deletes them all.
package journal
