//go:build race

package bookie

const raceEnabled = true
