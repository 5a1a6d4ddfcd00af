//go:build race

package main

// raceEnabled builds the end-to-end binaries with -race too, so that they
// reuse the packages the test binary was compiled with (and races in the
// real processes fail the test).
const raceEnabled = true
