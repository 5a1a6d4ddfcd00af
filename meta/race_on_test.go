//go:build race

package meta

// raceSlowdown scales the Raft timeouts of tests: the race detector makes
// everything several times slower, and a starved leader steps down.
const raceSlowdown = 4
