package s3_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/engines/objstore/s3test"
	"github.com/quiremq/quire/engines/s3"
	"github.com/quiremq/quire/shard/shardtest"
)

// benchObjectSize is the engine's object size in the benchmark (FlushBytes)
// and the size of the raw PUTs and GETs it is compared with.
const benchObjectSize = 1 << 20

// BenchmarkMinIO measures the engine against a local MinIO next to raw PUT
// and GET of objects of the same size, in the same run:
//
//	go test -run '^$' -bench MinIO -benchtime 2s -count 3 ./engines/s3/
//
// RawPUT/RawGET report MB/s of object bytes; Append and Read report MB/s of
// record values (1 KiB each). Appends do not wait for company
// (FlushInterval < 0): concurrent appends share an object when they queue
// behind one being written. The read cache is 4 MiB, so Read fetches every
// object from the server once per pass.
func BenchmarkMinIO(b *testing.B) { benchServer(b, s3test.StartMinIO(b)) }

// BenchmarkVersityGW is the same against versitygw's posix backend.
func BenchmarkVersityGW(b *testing.B) { benchServer(b, s3test.StartVersityGW(b)) }

func benchServer(b *testing.B, srv *s3test.Server) {
	ctx := context.Background()
	payload := bytes.Repeat([]byte("0123456789abcdef"), benchObjectSize/16)
	b.Run("RawPUT", func(b *testing.B) {
		st := serverStore(b, srv)
		b.SetBytes(benchObjectSize)
		for i := 0; b.Loop(); i++ {
			if err := st.Put(ctx, fmt.Sprintf("raw/%08d", i), bytes.NewReader(payload), benchObjectSize); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("RawGET", func(b *testing.B) {
		st := serverStore(b, srv)
		const objects = 32
		for i := range objects {
			if err := st.Put(ctx, fmt.Sprintf("raw/%08d", i), bytes.NewReader(payload), benchObjectSize); err != nil {
				b.Fatal(err)
			}
		}
		b.SetBytes(benchObjectSize)
		for i := 0; b.Loop(); i++ {
			if _, err := st.Get(ctx, fmt.Sprintf("raw/%08d", i%objects), 0, -1); err != nil {
				b.Fatal(err)
			}
		}
	})
	cfg := shardtest.BenchConfig{New: func(b *testing.B) shardtest.Opener {
		return opener(serverStore(b, srv), newMeta(b), func(o *s3.Options) {
			o.FlushBytes, o.ReadCacheBytes = benchObjectSize, 4<<20
		})
	}}
	for _, c := range []struct{ batch, writers int }{{16, 64}, {256, 1}, {256, 64}} {
		b.Run(fmt.Sprintf("Append/batch=%d/writers=%d", c.batch, c.writers), func(b *testing.B) {
			shardtest.BenchAppend(b, cfg, c.batch, c.writers)
		})
	}
	b.Run("Read", func(b *testing.B) { shardtest.BenchRead(b, cfg) })
}

// BenchmarkMem is the engine's own overhead: the same suite on the
// in-memory store.
func BenchmarkMem(b *testing.B) {
	shardtest.Bench(b, shardtest.BenchConfig{New: func(b *testing.B) shardtest.Opener {
		return opener(objstore.NewMem(), newMeta(b), nil)
	}})
}
