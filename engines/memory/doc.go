// Package memory is the in-memory shard engine: for huge volumes of
// latency-sensitive data where a small loss is tolerated. Nothing survives a
// restart.
//
// Each shard has a byte budget (Options.ShardBudgetBytes). When an append
// would exceed it, the oldest records are dropped, the low watermark moves up,
// and quire_memory_dropped_records_total counts them. A single batch larger
// than the budget is still accepted whole (the budget bounds what is retained,
// not what one append may carry); the records before it are dropped.
//
// A record's key, value and headers are copied into 1 MiB arena chunks on
// append (one allocation per chunk, not per record; a record above 256 KiB
// gets memory of its own), and its index entry holds no pointers: a chunk
// number and lengths. The garbage collector then marks a full shard by its
// few chunks instead of scanning hundreds of thousands of entries and their
// header arrays, which made every collection of a broker holding a few
// shards' budgets last hundreds of milliseconds. A chunk is released once
// every record in it has been dropped or trimmed, and freed once no reader
// holds one of its records. Read rebuilds the records (header keys are
// strings over the arena's bytes, one header array per Read). Read returns records that share memory with the engine: callers
// must not modify them (see shard.Shard).
package memory
