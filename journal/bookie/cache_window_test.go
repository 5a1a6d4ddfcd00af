package bookie

import (
	"fmt"
	"slices"
	"testing"
)

// logCache keeps the newest window bytes of synced entry-log data, across
// logs, and drops each byte behind it once: sealed logs as they fall out,
// the active one's older part, never what was not synced.
func TestLogCacheWindow(t *testing.T) {
	var dropped []string
	c := &logCache{window: 100, drop: func(id uint64, off, n int64) {
		dropped = append(dropped, fmt.Sprintf("%d:[%d,%d)", id, off, off+n))
	}}
	step := func(id uint64, size int64, want ...string) {
		t.Helper()
		dropped = nil
		c.synced(id, size)
		if !slices.Equal(dropped, want) {
			t.Fatalf("synced(%d, %d) dropped %v, want %v", id, size, dropped, want)
		}
	}
	step(1, 60)
	step(1, 100)
	step(1, 130, "1:[0,30)")
	step(1, 130) // nothing new
	step(1, 150, "1:[30,50)")
	step(2, 40, "1:[50,90)")                   // log 1 sealed at 150, log 2 active
	step(3, 0)                                 // a new log, nothing synced yet
	step(3, 70, "2:[0,10)", "1:[90,150)")      // log 1 falls out entirely
	step(3, 500, "3:[0,400)", "2:[10,40)")     // past the window in one go
	if len(c.logs) != 1 || c.logs[0].id != 3 { // 1 and 2 are done with
		t.Fatalf("tracked %v, want log 3 only", c.logs)
	}
	c.forget(3)
	step(4, 50)
	if len(c.logs) != 1 {
		t.Fatalf("tracked %v after forget", c.logs)
	}
}
