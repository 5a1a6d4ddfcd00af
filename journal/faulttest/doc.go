// Package faulttest holds the journal's fault tests against real
// processes (DESIGN.md, "Journal" and "How we know it works"); it has no
// non-test code.
//
// Each test builds cmd/quire once, starts 3–5 `quire bookie` processes on
// loopback, each behind a small TCP proxy (proxy_test.go) that can
// blackhole (silently drop) or reset the writer's connections to it, and
// an in-process meta served over gRPC. The writer is a re-exec of the
// test binary (writer_test.go): it connects to meta over gRPC and to the
// bookies through their proxies, takes a shard's log over
// (client.OpenLogWriter: fence and recover the last ledgers, append a new
// one) and appends, streaming one line per event to the test over a pipe:
// invoked, acknowledged (with its offset) or failed, each only after the
// fact. The test can therefore kill -9 the writer; a new writer process
// takes over, and whatever the dead one invoked without an answer is
// unknown.
//
// A seeded schedule (plan; the seed is logged, and -seed N replays the
// schedule, though not the timing) kills -9 bookies and restarts them on
// the same data directory, SIGSTOPs and SIGCONTs them, partitions them
// from the writer and kills the writer. At the end the checker takes the
// log over once more, reads it back through client.OpenLogReader and
// every copy on the bookies directly, and checks the history against it
// (checker.check lists the invariants).
//
// Every fault of the schedule heals within seconds. A bookie that stays
// dead is TestKillOneOfFour's (the writer changes its ensemble) and
// TestTakeoverWithDeadBookie's (the writer dies with it: the new writer's
// recovery replaces the dead bookie, which with Qw = Qa it must, since no
// write-back may fail).
//
// `go test ./journal/faulttest` runs a short schedule; -soak (or
// QUIRE_SOAK=1, with QUIRE_SOAK_DURATION, default 5m) runs a long one.
package faulttest
