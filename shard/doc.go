// Package shard is Quire's Storage Adapter: the Shard and Engine interfaces
// every storage engine implements, the errors they return, and the Router that
// picks an engine for a topic from per-topic rules and the cluster default.
//
// A shard is an append-only, totally ordered log of records with dense offsets
// starting at 0. A Kafka topic-partition, an AMQP queue and a group of MQTT
// topics each map to one shard. Engines (engines/memory, engines/file, and the
// journal and object-store engines) own the bytes; front-ends own protocols and
// never see how records are stored.
//
// The contract, checked for every engine by shard/shardtest:
//
//   - Append assigns dense offsets in call order and returns the first one. It
//     returns only once the batch is as durable as the engine promises (after
//     its fsync for file, its ack quorum for journal); a failed append returns an
//     error and none of its records become visible.
//   - Read returns acknowledged records only, in offset order, from exactly the
//     requested offset, honouring Limits but always returning at least one
//     record when one exists at that offset.
//   - Watermarks: low is the first readable offset, high is the next offset to
//     be assigned; low <= high. Reading at high returns no records; reading
//     outside [low, high] fails with ErrOffsetOutOfRange.
//   - Trim(before) makes low = before exactly (engines may reclaim space in
//     coarser units, but never expose records below low).
//   - Seal makes the shard read-only forever (appends fail with ErrSealed).
//
// Optional capabilities are separate small interfaces (Tailer), discovered
// with a type assertion, so the core interface stays narrow.
package shard
