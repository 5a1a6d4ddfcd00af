package bookie

import (
	"testing"

	"github.com/quiremq/quire/internal/vfs"
)

// BenchmarkApply measures the applier alone: b.N adds of 1 KiB to 16
// ledgers, interleaved as 16 writers' adds are in the journal, applied
// to the entry logs and index on the real disk in batches of 1 MiB, as
// the applier takes them. ns/op is per add.
//
//	go test ./journal/bookie -run '^$' -bench BenchmarkApply -benchtime 1000000x
func BenchmarkApply(b *testing.B) {
	dir := b.TempDir()
	bk, err := Open(Options{FS: vfs.Default, Dir: dir, BookieID: "bench", Cookies: NewFileCookieStore(vfs.Default, dir+"/cookies.json")})
	if err != nil {
		b.Fatal(err)
	}
	defer bk.Close()
	payload := make([]byte, 1024)
	const batch = 1 << 20 / (1024 + recHeaderSize + addBodyFixed)
	ops := make([]op, 0, batch)
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	for i := 0; i < b.N; {
		ops = ops[:0]
		for ; i < b.N && len(ops) < batch; i++ {
			ops = append(ops, op{kind: kindAdd, ledger: uint64(i % 16), entry: uint64(i / 16), lac: -1, payload: payload})
		}
		bk.applyMu.Lock()
		err := bk.apply([]applyBatch{{ops: ops, end: bk.ap.pos}})
		bk.applyMu.Unlock()
		if err != nil {
			b.Fatal(err)
		}
	}
}
