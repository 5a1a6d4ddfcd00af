// Package fuzz holds Quire's cross-engine randomized harness and the script
// that runs every fuzz target (run.sh, `make fuzz`). Each Fuzz* target lives
// in the package it tests (for example FuzzSegmentRecovery in engines/file);
// run.sh finds them all, so a new target is fuzzed without being listed here.
package fuzz
