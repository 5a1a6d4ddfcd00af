package bookierpc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
	"github.com/quiremq/quire/journal/bookie"
)

// Every bookie error maps to its status, and a StatusError matches the
// bookie sentinel of its status, so a remote outcome is tested as a local one.
func TestStatusMapping(t *testing.T) {
	for _, c := range []struct {
		err  error
		want journalv1.Status
	}{
		{nil, journalv1.Status_STATUS_OK},
		{fmt.Errorf("x: %w", bookie.ErrNoSuchLedger), journalv1.Status_STATUS_NO_SUCH_LEDGER},
		{fmt.Errorf("x: %w", bookie.ErrNoSuchEntry), journalv1.Status_STATUS_NO_SUCH_ENTRY},
		{fmt.Errorf("x: %w", bookie.ErrLedgerFenced), journalv1.Status_STATUS_FENCED},
		{fmt.Errorf("x: %w", bookie.ErrEntryTooLarge), journalv1.Status_STATUS_TOO_LARGE},
		{fmt.Errorf("%w: %w", bookie.ErrFailed, errors.New("disk full")), journalv1.Status_STATUS_FAILED},
		{bookie.ErrClosed, journalv1.Status_STATUS_CLOSED},
		{fmt.Errorf("x: %w", bookie.ErrCorrupt), journalv1.Status_STATUS_CORRUPT},
		{errors.New("read: i/o error"), journalv1.Status_STATUS_ERROR},
	} {
		got := statusOf(c.err)
		if got != c.want {
			t.Errorf("statusOf(%v) = %v, want %v", c.err, got, c.want)
		}
		remote := errorOf(got, message(c.err))
		if c.err == nil {
			if remote != nil {
				t.Errorf("errorOf(OK) = %v", remote)
			}
			continue
		}
		if StatusOf(remote) != c.want {
			t.Errorf("StatusOf(%v) = %v", remote, StatusOf(remote))
		}
		for _, s := range []error{bookie.ErrNoSuchLedger, bookie.ErrNoSuchEntry, bookie.ErrLedgerFenced, bookie.ErrEntryTooLarge,
			bookie.ErrFailed, bookie.ErrClosed, bookie.ErrCorrupt} {
			if errors.Is(remote, s) != errors.Is(c.err, s) {
				t.Errorf("errors.Is(remote %v, %v) = %v, local %v", remote, s, errors.Is(remote, s), errors.Is(c.err, s))
			}
		}
	}
	if StatusOf(status.Error(codes.DeadlineExceeded, "x")) != journalv1.Status_STATUS_UNSPECIFIED {
		t.Error("a gRPC error must not look like a bookie answer")
	}
	if !errors.Is(errorOf(journalv1.Status_STATUS_BAD_CRC, ""), ErrBadCRC) {
		t.Error("BAD_CRC does not match ErrBadCRC")
	}
}

// An AddEntries stream holds at most StreamInflightBytes of adds not yet
// answered: the server stops reading at the bound instead of buffering.
func TestStreamFlowControl(t *testing.T) {
	const limit = 8 << 10
	r := newRig(t, ServerOptions{StreamInflightBytes: limit})
	// Slow group commits keep adds in flight long enough to reach the bound.
	r.b.Close()
	r.opts.MaxGroupWait = 5 * time.Millisecond
	b, err := bookie.Open(r.opts)
	if err != nil {
		t.Fatal(err)
	}
	r.b = b
	r.srv.Attach(b)

	const n = 300
	payload := bytes.Repeat([]byte{7}, 1024)
	var acked atomic.Int64
	s, err := r.client.AddStream(context.Background(), func(res AddResult) {
		if res.Err != nil {
			t.Errorf("add %d: %v", res.Entry, res.Err)
		}
		acked.Add(1)
	})
	if err != nil {
		t.Fatal(err)
	}
	for e := range uint64(n) {
		if err := s.Add(Add{Ledger: 1, Entry: e, LAC: -1, Payload: payload}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if acked.Load() != n {
		t.Fatalf("acked %d of %d", acked.Load(), n)
	}
	cost := int64(len(payload)) + AddOverhead
	if p := r.srv.peak.Load(); p > limit || p < limit-cost {
		t.Errorf("peak bytes held by the stream = %d, want in (%d, %d]", p, limit-cost, limit)
	}
	for e := range uint64(n) {
		if got, err := r.client.ReadEntry(context.Background(), 1, e, false); err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("read %d: %v", e, err)
		}
	}
}

// A cancelled stream ends its handler and releases what it held; adds
// already passed to the bookie complete without blocking it, and each add
// gets exactly one result at the client.
func TestStreamCancel(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := newRig(t, ServerOptions{StreamInflightBytes: 16 << 10, Registerer: reg})
	for round := range 20 {
		ctx, cancel := context.WithCancel(context.Background())
		var results sync.Map
		var count atomic.Int64
		s, err := r.client.AddStream(ctx, func(res AddResult) {
			if _, dup := results.LoadOrStore(res.Entry, res.Err); dup {
				t.Errorf("two results for entry %d", res.Entry)
			}
			count.Add(1)
		})
		if err != nil {
			t.Fatal(err)
		}
		sent := 0
		for e := range uint64(200) {
			if e == uint64(round*7) {
				cancel()
			}
			if err := s.Add(Add{Ledger: uint64(100 + round), Entry: e, LAC: -1, Payload: bytes.Repeat([]byte{byte(e)}, 500)}); err != nil {
				break
			}
			sent++
		}
		cancel()
		s.Close()
		if int(count.Load()) != sent {
			t.Fatalf("round %d: %d results for %d adds accepted", round, count.Load(), sent)
		}
		// Whatever was acknowledged is there.
		results.Range(func(k, v any) bool {
			if v == nil {
				if _, err := r.client.ReadEntry(context.Background(), uint64(100+round), k.(uint64), false); err != nil {
					t.Errorf("acked entry %d: %v", k, err)
				}
			}
			return true
		})
	}
	// Every handler ended and released its bytes.
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(r.srv.m.streams) != 0 || testutil.ToFloat64(r.srv.m.inflight) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("streams %v, inflight bytes %v after every stream was cancelled",
				testutil.ToFloat64(r.srv.m.streams), testutil.ToFloat64(r.srv.m.inflight))
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The bookie still serves.
	s, err := r.client.AddStream(context.Background(), func(res AddResult) {
		if res.Err != nil {
			t.Error(res.Err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Add(Add{Ledger: 1, Entry: 0, LAC: -1, Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "quire_bookie_rpc_add_streams", "quire_bookie_rpc_inflight_bytes", "quire_bookie_rpc_bad_crc_total"); err != nil || n != 3 {
		t.Errorf("metrics: %d, %v", n, err)
	}
}

// Many streams and readers at once: every acknowledged add reads back with
// its bytes (run with -race).
func TestConcurrentStreams(t *testing.T) {
	r := newRig(t, ServerOptions{StreamInflightBytes: 32 << 10})
	const writers, perWriter = 8, 300
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ledger := uint64(w + 1)
			var acked sync.Map
			s, err := r.client.AddStream(context.Background(), func(res AddResult) {
				if res.Err != nil {
					t.Errorf("ledger %d entry %d: %v", res.Ledger, res.Entry, res.Err)
				}
				acked.Store(res.Entry, true)
			})
			if err != nil {
				t.Error(err)
				return
			}
			for e := range uint64(perWriter) {
				if err := s.Add(Add{Ledger: ledger, Entry: e, LAC: int64(e) - 1, Payload: payloadFor(ledger, e)}); err != nil {
					t.Error(err)
					return
				}
				if e%50 == 49 {
					// Read something already acknowledged while adds are in flight.
					acked.Range(func(k, _ any) bool {
						got, err := r.client.ReadEntry(context.Background(), ledger, k.(uint64), false)
						if err != nil || !bytes.Equal(got, payloadFor(ledger, k.(uint64))) {
							t.Errorf("read ledger %d entry %d: %v", ledger, k, err)
						}
						return false
					})
				}
			}
			if err := s.Close(); err != nil {
				t.Error(err)
			}
			for e := range uint64(perWriter) {
				got, err := r.client.ReadEntry(context.Background(), ledger, e, false)
				if err != nil || !bytes.Equal(got, payloadFor(ledger, e)) {
					t.Errorf("read ledger %d entry %d: %v", ledger, e, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// Stopping a bookie under load (Close, then Detach, as the node does):
// every open stream ends, every add gets one result, and every add
// acknowledged OK is there after reopening.
func TestStopUnderLoad(t *testing.T) {
	r := newRig(t, ServerOptions{StreamInflightBytes: 16 << 10})
	type result struct {
		ledger, entry uint64
		err           error
	}
	var mu sync.Mutex
	var results []result
	var wg sync.WaitGroup
	started := make(chan struct{}, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ledger := uint64(w + 1)
			s, err := r.client.AddStream(context.Background(), func(res AddResult) {
				mu.Lock()
				results = append(results, result{res.Ledger, res.Entry, res.Err})
				mu.Unlock()
			})
			if err != nil {
				t.Error(err)
				return
			}
			for e := uint64(0); ; e++ {
				if e == 50 {
					started <- struct{}{}
				}
				if err := s.Add(Add{Ledger: ledger, Entry: e, LAC: -1, Payload: payloadFor(ledger, e)}); err != nil {
					break
				}
			}
			if err := s.Close(); status.Code(err) != codes.Unavailable {
				t.Errorf("stream ended with %v, want UNAVAILABLE", err)
			}
		}()
	}
	for range 4 {
		<-started
	}
	if err := r.b.Close(); err != nil {
		t.Fatal(err)
	}
	r.srv.Detach()
	wg.Wait()
	b, err := bookie.Open(r.opts)
	if err != nil {
		t.Fatal(err)
	}
	r.b = b
	r.srv.Attach(b)
	ok := 0
	for _, res := range results {
		if res.err != nil {
			if st := StatusOf(res.err); st != journalv1.Status_STATUS_CLOSED && st != journalv1.Status_STATUS_UNSPECIFIED {
				t.Errorf("entry %d/%d: %v", res.ledger, res.entry, res.err)
			}
			continue
		}
		ok++
		got, err := r.client.ReadEntry(context.Background(), res.ledger, res.entry, false)
		if err != nil || !bytes.Equal(got, payloadFor(res.ledger, res.entry)) {
			t.Errorf("acknowledged %d/%d: %v", res.ledger, res.entry, err)
		}
	}
	if ok == 0 {
		t.Error("no add acknowledged")
	}
}

// payloadFor is the deterministic payload of (ledger, entry).
func payloadFor(ledger, entry uint64) []byte {
	n := int((ledger*7919+entry*104729)%3000) + 1
	p := make([]byte, n)
	x := ledger*0x9E3779B97F4A7C15 ^ entry*0xBF58476D1CE4E5B9 | 1
	for i := range p {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		p[i] = byte(x)
	}
	copy(p, fmt.Sprintf("%d/%d:", ledger, entry))
	return p
}
