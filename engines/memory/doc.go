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
// Record payloads are copied into 1 MiB arena chunks on append (one
// allocation per chunk, not per record), so a chunk is freed by the garbage
// collector once every record in it has been dropped or trimmed and no reader
// holds one. Read returns records that share memory with the engine: callers
// must not modify them (see shard.Shard).
package memory
