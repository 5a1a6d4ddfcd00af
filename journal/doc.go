// Package journal will own Quire's replicated, BookKeeper-style log: the
// ledger client (ensemble, write and ack quorums, LAC, fencing, recovery),
// logs (ordered ledger chains with rollover) and record framing. See
// DESIGN.md, "Journal".
//
// The ledger client's protocol core is in journal/ledger: pure state
// machines for the writer (striping, ack quorum, LAC, ensemble changes,
// close), recovery (fencing coverage, fencing reads, explicit-negative
// quorum, write-back, close) and readers; the driver that runs them over
// bookierpc and meta/schema is journal/client (create with placement,
// pipelined writer, ensemble changes, close, tailing reader, recovery).
//
// The bookie's storage engine is in journal/bookie: journal with group
// commit on preallocated or recycled files, entry logs, a Pebble index,
// checkpoints, fencing, explicit LACs, deletion with compaction, and
// cookies; journal/bookie/bookierpc serves it over gRPC. Not built yet
// ("Journal, part 2"): logs (ledger chains with rollover), the journal
// engine and journal-bench.
package journal
