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
// batches.
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
//
// Lock order: fsm.mu → history.mu; fsm.mu → lessor.mu. Server.leadMu is
// taken alone.
package meta
