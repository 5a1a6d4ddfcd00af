package bookierpc

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"

	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/journal/bookie"
)

// TestSyncFailureOverGRPC fails the journal's fdatasync of a bookie served
// over gRPC on loopback TCP while a writer streams adds: every add in
// flight is answered STATUS_FAILED carrying the cause (none acknowledged),
// later adds, fences and LAC writes are refused the same way, and reads of
// what was acknowledged before keep working — over the wire exactly as in
// the bookie's own fsyncgate test.
func TestSyncFailureOverGRPC(t *testing.T) {
	mem := vfs.NewCrashableMem()
	var armed atomic.Bool
	fs := vfs.InjectFS(mem, vfs.InjectorFunc(func(op vfs.Op) error {
		if armed.Load() && strings.HasPrefix(op.Path, "/data/journal") &&
			(op.Kind == vfs.OpFileSyncData || op.Kind == vfs.OpFileSync) {
			return vfs.ErrInjected
		}
		return nil
	}))
	b, err := bookie.Open(testBookieOptions(fs))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	srv := NewServer(ServerOptions{})
	srv.Attach(b)
	defer srv.Detach()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	journalv1.RegisterBookieServer(gs, srv)
	go gs.Serve(lis)
	defer gs.Stop()
	c, err := Dial(lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	payload := func(e uint64) []byte { return bytes.Repeat([]byte{byte(e)}, 512+int(e)) }
	var mu sync.Mutex
	results := map[uint64]error{}
	var wg sync.WaitGroup
	s, err := c.AddStream(ctx, func(r AddResult) {
		mu.Lock()
		results[r.Entry] = r.Err
		mu.Unlock()
		wg.Done()
	})
	if err != nil {
		t.Fatal(err)
	}
	add := func(from, to uint64) {
		t.Helper()
		for e := from; e < to; e++ {
			wg.Add(1)
			if err := s.Add(Add{Ledger: 7, Entry: e, LAC: int64(e) - 1, Payload: payload(e)}); err != nil {
				t.Fatal(err)
			}
		}
		wg.Wait()
	}
	add(0, 20)
	for e, err := range results {
		if err != nil {
			t.Fatalf("add %d before the failure: %v", e, err)
		}
	}
	clear(results)

	armed.Store(true)
	add(20, 120)
	for e := uint64(20); e < 120; e++ {
		err := results[e]
		var se *StatusError
		if !errors.Is(err, bookie.ErrFailed) || !errors.As(err, &se) || se.Status != journalv1.Status_STATUS_FAILED {
			t.Fatalf("add %d after the failed sync: %v, want STATUS_FAILED", e, err)
		}
		if !strings.Contains(err.Error(), vfs.ErrInjected.Error()) {
			t.Fatalf("add %d: the error %q does not name the cause", e, err)
		}
	}
	if err := s.Close(); err != nil && !errors.Is(err, bookie.ErrFailed) {
		t.Fatalf("closing the stream: %v", err)
	}
	if _, err := c.Fence(ctx, 7); !errors.Is(err, bookie.ErrFailed) {
		t.Fatalf("fence after the failure: %v, want STATUS_FAILED", err)
	}
	if err := c.WriteLAC(ctx, 7, 19); !errors.Is(err, bookie.ErrFailed) {
		t.Fatalf("LAC write after the failure: %v, want STATUS_FAILED", err)
	}
	for e := uint64(0); e < 20; e++ {
		got, err := c.ReadEntry(ctx, 7, e, false)
		if err != nil || !bytes.Equal(got, payload(e)) {
			t.Fatalf("read %d after the failure: %v", e, err)
		}
	}
	for e := uint64(20); e < 120; e++ {
		if _, err := c.ReadEntry(ctx, 7, e, false); !errors.Is(err, bookie.ErrNoSuchEntry) {
			t.Fatalf("entry %d, never synced, reads back: %v", e, err)
		}
	}
}
