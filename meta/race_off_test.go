//go:build !race

package meta

const raceSlowdown = 1
