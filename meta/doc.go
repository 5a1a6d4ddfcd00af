// Package meta will own Quire's cluster metadata: a Raft (hashicorp/raft)
// state machine holding a versioned key-value store with CAS, watches and
// leases, typed records for nodes, topics, shards, ledgers, consumer groups
// and sessions, and the gRPC service meta.v1.Meta. See DESIGN.md, "Meta".
//
// Not built yet: tracked by the issue "Meta". Until then a node keeps its
// topic registry in a local file (internal/node) behind the interface meta
// will implement, and runs only as a one-voter cluster.
package meta
