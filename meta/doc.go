// Package meta is Quire's cluster metadata service: a versioned key-value
// store with CAS, watches and leases, replicated with hashicorp/raft.
// (Full package documentation: see the end of this session's work.)
package meta
