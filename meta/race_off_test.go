//go:build !race

package meta

// raceSlowdown is 2 without the race detector too: on a shared two-core
// machine under heavy load, 150ms heartbeats are missed and leaders step
// down in the middle of tests.
const raceSlowdown = 2
