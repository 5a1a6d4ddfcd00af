// Package meta is Quire's cluster metadata service (DESIGN.md, "Meta
// service"): a versioned key-value store with compare-and-swap, watches and
// leases, replicated with hashicorp/raft, served in process (Server) and
// over gRPC (meta.v1.Meta, Client). Typed records live in meta/schema.
//
// # Usage
//
//	voters, _ := meta.ParseVoters(cfg.MetaAddrs)      // "ID@HOST:PORT", HOST:PORT = inner gRPC
//	m, err := meta.Open(meta.Options{ID: cfg.NodeID, Voters: voters,
//		Dir: filepath.Join(dataDir, "meta"), Logger: log, Registerer: reg})
//	m.Register(innerGRPCServer)                       // Meta + RaftTransport services
//	m.Start(ctx)                                       // bootstrap if new, run Raft
//	m.WaitLeader(ctx)                                  // optional
//	... m.Put / m.Get / m.Watch ... (m is a meta.KV)
//	m.Stop(ctx)
//
//	c, _ := meta.NewClient(meta.ClientOptions{Addrs: addrs})   // from another process
//
// # Membership and bootstrap
//
// Options.Voters is meta_addrs. A node with no Raft state bootstraps with
// the full voter list; every voter does the same with the same list, and
// hashicorp/raft accepts identical bootstrap configurations, so one node
// alone is a one-voter cluster and three nodes started in any order form
// one cluster. A restarted node keeps its log, vote and snapshots and
// rejoins. Changing the voter set of an existing cluster is not supported
// yet (the node logs a warning when meta_addrs and the log disagree).
//
// # Transport
//
// Raft rides the inner gRPC server: hashicorp's NetworkTransport runs
// unchanged over a StreamLayer whose connections are bidirectional gRPC
// streams (service meta.v1.RaftTransport). Chosen over the TCP transport on
// a port of its own because meta_addrs already names each voter's inner
// gRPC address (one port per node to open, secure and configure), while
// NetworkTransport still gives pipelined AppendEntries, the heartbeat fast
// path and streamed snapshots. Tests use Options.Transport with a
// FaultNetwork (in-memory transports that can be partitioned together with
// the nodes' gRPC connections to each other).
//
// # Data model
//
// Every change (put, delete, or a key deleted with its lease) takes the next
// global revision; a key's Version is the revision of its last write, never
// reused, so a CAS (IfVersion) cannot succeed against a key deleted and
// created again (no ABA). IfVersion(0) means "must not exist". Failed CASes
// and lease grants/keep-alives take no revision.
//
// Writes go to the leader: a follower forwards them over gRPC (Client asks
// not to be forwarded and follows NOT_LEADER hints instead). Reads are
// linearizable by default: the leader, once its FSM has applied a barrier
// of its own term, confirms with VerifyLeader that a quorum still follows it
// and reads its state; followers forward them. Stale() reads are served from
// the contacted node's state. Watches are served by any node from its
// in-memory history (WatchHistory changes): every change under the prefix
// from the start revision, in order, with no gaps; a start revision that
// has left the history, or that predates a snapshot the node restored,
// fails with ErrCompacted (List again, watch from the list's revision+1).
//
// Leases: granted through the log (the id is the grant's log index), with a
// TTL. Deadlines live only in the leader's memory (lessor): a keep-alive
// moves the deadline and is acknowledged after VerifyLeader; the leader
// expires a lease by proposing a revoke through the log, so every replica
// deletes the same keys at the same revisions. A new leader gives every
// lease a full TTL from its promotion, so leadership changes never expire
// a lease early (they may extend it by up to one TTL).
//
// # Batching
//
// Concurrent requests are coalesced at both ends, so throughput grows with
// concurrency instead of paying one RPC and one Raft entry per request:
//
//   - Client sends Get, Put and Delete over one bidirectional Batch stream
//     per node (batchstream.go). Callers queue their op; a sender goroutine
//     sends everything queued as one BatchRequest while fewer than
//     ClientOptions.BatchWindow requests await results, so under load each
//     message carries the ops of many goroutines and a lone op still leaves
//     at once. The KV API is unchanged. The other calls stay unary.
//   - The leader's write batcher (batch.go) gathers the puts and deletes of
//     every source — Batch streams, unary calls, in-process calls, batches
//     forwarded by followers — into one Raft entry (a CommandBatch) while
//     Options.WriteBatchInflight entries are in flight. The FSM applies the
//     ops of an entry in order, each with its own result and revision: a
//     failed CAS fails only itself, and watchers see one event per change
//     exactly as if the writes had come one by one. Raft then stores and
//     replicates entries in batches too (BatchApplyCh, MaxAppendEntries).
//     Lease grants and revokes are not batched (a grant's id is its entry's
//     index).
//   - Linearizable reads (and keep-alives) share leadership checks
//     (readBarrier): each VerifyLeader round serves every read that arrived
//     before it started. Stale reads in a batch are answered inline.
//   - A follower forwards the leader-only ops of a batch to the leader over
//     its own Batch stream, as one batch.
//
// Exactly-once: a write's outcome is known when the server answered it, or
// when it never left the client (still queued when its stream broke: the
// Client retries it on another node). A write sent on a stream that then
// broke may have been applied; it is never retried and fails with
// ErrAmbiguous, as a unary write whose connection broke does — the caller
// reads back (for a CAS: the version tells) before trying again. Reads are
// retried freely.
//
// Errors cross gRPC as statuses carrying a google.rpc.ErrorInfo (domain
// meta.quire) with the reasons in errors.go's code table; both Server and
// Client return the same sentinels. ErrNotLeader means "not applied, retry";
// ErrAmbiguous means the write may have been applied.
//
// # State machine and storage
//
// The FSM state (B-tree of keys, leases, revision) is kept in memory, not in
// Pebble: metadata is small and low-rate, reads are then lock-and-lookup,
// and a copy-on-write clone of the B-tree lets Raft write a snapshot while
// applies continue. The Raft log bounds recovery: a snapshot every
// SnapshotInterval once SnapshotThreshold entries were applied, keeping
// TrailingLogs entries. FSM implements raft.BatchingFSM: a committed batch
// is applied under one lock and wakes watchers once; with BatchApplyCh and
// MaxAppendEntries the leader stores, replicates and applies writes in
// batches. The leader encodes a write batch entry, and every replica
// decodes its puts and deletes, without the protobuf runtime (command.go:
// the bytes proto.Marshal writes; any other command or encoding goes
// through proto.Unmarshal). A
// raft.LogCache keeps the latest entries in memory, so replicating and
// applying them does not read them back from Pebble.
//
// Raft store (LogStore, one Pebble DB in Dir/raft on Options.FS; every
// write is a synced Pebble batch, so an acknowledged append, vote or term is
// on disk; a failed WAL fsync is fatal, as Pebble treats it):
//
//	'l' | uint64 BE index  ->  1 | type(1) | uvarint term | varint appended_at_ns
//	                           | uvarint len(ext) | ext | data
//	's' | key              ->  stable value (CurrentTerm, LastVoteTerm, LastVoteCand)
//
// Log entry data (raft.Log.Data of LogCommand) is one protobuf
// meta.v1.Command (internal/proto/meta/v1/store.proto). A snapshot is a
// stream of varint-delimited meta.v1.SnapshotRecord: header (format 1,
// revision, applied index), leases by id, keys in order, trailer with the
// counts; a snapshot without its trailer or with wrong counts is rejected.
// Snapshots are files (raft.FileSnapshotStore in Dir/snapshots, CRC-checked
// by it) unless Options.Snapshots says otherwise.
//
// # Files
//
//	options.go    Options, Voter, ParseVoters
//	server.go     Server: Open/Register/Start/Stop, routing, linearizable reads, KV
//	fsm.go        state machine, snapshots          watch.go   history, watch loop
//	lease.go      leader-side lease deadlines       logstore.go Pebble LogStore/StableStore
//	transport.go  Raft over gRPC streams            grpc.go    meta.v1.Meta service
//	client.go     Client, KeepLeaseAlive            faultnet.go FaultNetwork (tests)
//	errors.go     sentinels and the gRPC code table kv.go      KV interface and types
//	batch.go      write batcher, read barrier, serving batches
//	command.go    encoding and decoding a write batch entry
//	batchstream.go the calling side of a Batch stream (Client, forwarding)
//
// Lock order: fsm.mu → history.mu; fsm.mu → lessor.mu. Server.leadMu,
// writeBatcher.mu, readBarrier.mu, batchStream.mu and liveStream.mu are
// taken alone.
package meta
