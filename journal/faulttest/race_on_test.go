//go:build race

package faulttest

// raceEnabled builds the bookie binary with -race too, so that it reuses
// the packages the test binary was compiled with (and races in the real
// processes fail the test).
const raceEnabled = true
