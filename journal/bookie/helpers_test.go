package bookie

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/quiremq/quire/internal/vfs"
)

// testOptions are small sizes so that tests roll journal files and entry
// logs, checkpoint and compact often.
func testOptions(fs vfs.FS, cookies CookieStore) Options {
	return Options{
		FS:                     fs,
		Dir:                    "/data",
		JournalDir:             "/journal",
		BookieID:               "bookie-1",
		Cookies:                cookies,
		MaxGroupWait:           200 * time.Microsecond,
		MaxGroupBytes:          32 << 10,
		JournalFileSize:        64 << 10,
		JournalRecycleFiles:    2,
		EntryLogSize:           48 << 10,
		CheckpointInterval:     time.Hour,
		CheckpointJournalFiles: 3,
		MaxEntrySize:           16 << 10,
	}
}

func mustOpen(t testing.TB, o Options) *Bookie {
	t.Helper()
	b, err := Open(o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return b
}

// addSync adds an entry and waits for its acknowledgement.
func addSync(b *Bookie, ledger, entry uint64, lac int64, payload []byte, recovery bool) error {
	ch := make(chan error, 1)
	b.AddEntry(ledger, entry, lac, payload, recovery, func(err error) { ch <- err })
	return <-ch
}

// requireEntries fails t unless entries [first, end) of ledger read back
// as payloadFor; when says where (e.g. "after restart").
func requireEntries(t testing.TB, b *Bookie, ledger, first, end uint64, when string) {
	t.Helper()
	for e := first; e < end; e++ {
		if got, err := b.ReadEntry(ledger, e, false); err != nil || !bytes.Equal(got, payloadFor(ledger, e)) {
			t.Fatalf("read %d/%d %s: %v", ledger, e, when, err)
		}
	}
}

// payloadFor is the deterministic payload of (ledger, entry): tests check
// read-back bytes against it without storing what they wrote.
func payloadFor(ledger, entry uint64) []byte {
	n := int((ledger*7919+entry*104729)%3000) + 1
	p := make([]byte, n)
	x := ledger*0x9E3779B97F4A7C15 ^ entry*0xBF58476D1CE4E5B9
	for i := range p {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		p[i] = byte(x)
	}
	copy(p, fmt.Sprintf("%d/%d:", ledger, entry))
	return p
}

func errName(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrNoSuchLedger):
		return "no such ledger"
	case errors.Is(err, ErrNoSuchEntry):
		return "no such entry"
	case errors.Is(err, ErrLedgerFenced):
		return "ledger fenced"
	case errors.Is(err, ErrClosed):
		return "closed"
	case errors.Is(err, ErrFailed):
		return "failed"
	case errors.Is(err, ErrCookieMismatch):
		return "cookie mismatch"
	case errors.Is(err, ErrEntryTooLarge):
		return "entry too large"
	case errors.Is(err, ErrCorrupt):
		return "corrupt"
	}
	return "error: " + err.Error()
}

// checkpointApplied waits until everything acknowledged so far has been
// applied to the entry logs and the index (acks come after the journal
// sync, the apply after that), then checkpoints: without the wait a
// checkpoint may miss a delete that DeleteLedger already acknowledged.
func checkpointApplied(b *Bookie) error {
	b.mu.Lock()
	for b.inflight > 0 && !b.closed && b.err == nil {
		b.space.Wait()
	}
	b.mu.Unlock()
	return b.checkpoint()
}
