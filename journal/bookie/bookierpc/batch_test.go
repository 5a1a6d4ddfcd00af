package bookierpc

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
	"github.com/quiremq/quire/journal/bookie"
)

// AddBatch sends many adds in one message: each gets exactly one answer,
// every acknowledged one is readable and the piggybacked LAC is kept.
func TestAddBatch(t *testing.T) {
	r := newRig(t, ServerOptions{StreamInflightBytes: 64 << 10})
	const ledger, n, per = 7, 600, 40
	var mu sync.Mutex
	answers := map[uint64]int{}
	s, err := r.client.AddStream(context.Background(), func(res AddResult) {
		mu.Lock()
		defer mu.Unlock()
		if res.Ledger != ledger || res.Err != nil {
			t.Errorf("ledger %d entry %d: %v", res.Ledger, res.Entry, res.Err)
		}
		answers[res.Entry]++
	})
	if err != nil {
		t.Fatal(err)
	}
	for first := uint64(0); first < n; first += per {
		var adds []Add
		for e := first; e < first+per; e++ {
			adds = append(adds, Add{Ledger: ledger, Entry: e, LAC: int64(first) - 1, Payload: payloadFor(ledger, e)})
		}
		if err := s.AddBatch(adds); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if len(answers) != n {
		t.Fatalf("%d entries answered, want %d", len(answers), n)
	}
	for e := range uint64(n) {
		if answers[e] != 1 {
			t.Errorf("entry %d answered %d times", e, answers[e])
		}
		got, err := r.client.ReadEntry(context.Background(), ledger, e, false)
		if err != nil || !bytes.Equal(got, payloadFor(ledger, e)) {
			t.Fatalf("read entry %d: %v", e, err)
		}
	}
	if lac, err := r.client.ReadLAC(context.Background(), ledger, false); err != nil || lac != n-per-1 {
		t.Errorf("LAC %d, %v: want %d (the last piggybacked)", lac, err, n-per-1)
	}
}

// wireRig is a rig with ledger 9 fenced, its raw gRPC client and an open
// AddEntries stream.
func wireRig(t *testing.T) (*rig, journalv1.BookieClient, grpc.BidiStreamingClient[journalv1.AddRequest, journalv1.AddResponse]) {
	r := newRig(t, ServerOptions{})
	if _, err := r.b.Fence(9); err != nil {
		t.Fatal(err)
	}
	rpc := journalv1.NewBookieClient(r.cc)
	st, err := rpc.AddEntries(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return r, rpc, st
}

// recvAll receives the stream's messages until its clean end.
func recvAll(t *testing.T, st grpc.BidiStreamingClient[journalv1.AddRequest, journalv1.AddResponse]) []*journalv1.AddResponse {
	var all []*journalv1.AddResponse
	for {
		resp, err := st.Recv()
		if err == io.EOF {
			return all
		}
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, resp)
	}
}

// A raw batched request is handled add by add: a bad CRC in the middle
// fails only that add, a fenced ledger fails only its adds, and the
// answers (batched or not) cover every add once. A batch nested in a
// batched add is refused with InvalidArgument.
func TestAddBatchWire(t *testing.T) {
	r, rpc, st := wireRig(t)
	req := func(l, e uint64, bad bool) *journalv1.AddRequest {
		p := payloadFor(l, e)
		crc := CRC32C(p)
		if bad {
			crc ^= 1
		}
		return &journalv1.AddRequest{Ledger: l, Entry: e, Lac: -1, Payload: p, Crc32C: crc}
	}
	msg := &journalv1.AddRequest{Batch: []*journalv1.AddRequest{req(1, 0, false), req(1, 1, true), req(9, 0, false), req(1, 2, false)}}
	if err := st.Send(msg); err != nil {
		t.Fatal(err)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	got := map[[2]uint64]journalv1.Status{}
	for _, resp := range recvAll(t, st) {
		rs := resp.Batch
		if len(rs) == 0 {
			rs = []*journalv1.AddResponse{resp}
		}
		for _, a := range rs {
			k := [2]uint64{a.Ledger, a.Entry}
			if _, dup := got[k]; dup {
				t.Errorf("ledger %d entry %d answered twice", a.Ledger, a.Entry)
			}
			got[k] = a.Status
		}
	}
	want := map[[2]uint64]journalv1.Status{
		{1, 0}: journalv1.Status_STATUS_OK, {1, 1}: journalv1.Status_STATUS_BAD_CRC,
		{9, 0}: journalv1.Status_STATUS_FENCED, {1, 2}: journalv1.Status_STATUS_OK,
	}
	if len(got) != len(want) {
		t.Errorf("answers %v, want %v", got, want)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("ledger %d entry %d: %v, want %v", k[0], k[1], got[k], w)
		}
	}
	if _, err := r.b.ReadEntry(1, 1, false); !errors.Is(err, bookie.ErrNoSuchEntry) {
		t.Errorf("the bad-CRC add was stored: %v", err)
	}

	st, err := rpc.AddEntries(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	nested := &journalv1.AddRequest{Batch: []*journalv1.AddRequest{{Batch: []*journalv1.AddRequest{req(1, 5, false)}}}}
	if err := st.Send(nested); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("nested batch: %v, want InvalidArgument", err)
	}
}

// Packed adds (AddRequest.packed) are numbered with every other add of the
// stream in arrival order and answered packed with that number: here a
// single add (number 0, answered unpacked), then a packed message of four
// (1..4: OK, BAD_CRC, FENCED, a recovery add to the fenced ledger OK), each
// answered exactly once. A truncated packed add ends the stream with
// InvalidArgument.
func TestAddPackedWire(t *testing.T) {
	r, rpc, st := wireRig(t)
	p := payloadFor(1, 0)
	if err := st.Send(&journalv1.AddRequest{Ledger: 1, Entry: 0, Lac: -1, Payload: p, Crc32C: CRC32C(p)}); err != nil {
		t.Fatal(err)
	}
	var buf []byte
	for _, a := range []struct {
		add Add
		bad bool
	}{{Add{Ledger: 1, Entry: 1, LAC: 0}, false}, {Add{Ledger: 1, Entry: 2, LAC: 0}, true},
		{Add{Ledger: 9, Entry: 0, LAC: -1}, false}, {Add{Ledger: 9, Entry: 1, LAC: -1, Recovery: true}, false}} {
		a.add.Payload = payloadFor(a.add.Ledger, a.add.Entry)
		crc := CRC32C(a.add.Payload)
		if a.bad {
			crc ^= 1
		}
		buf = appendPackedAdd(buf, &a.add, crc)
	}
	if err := st.Send(&journalv1.AddRequest{Packed: buf}); err != nil {
		t.Fatal(err)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	type key struct{ seq, ledger, entry uint64 }
	got := map[key]journalv1.Status{}
	for _, resp := range recvAll(t, st) {
		if len(resp.Packed) == 0 {
			got[key{0, resp.Ledger, resp.Entry}] = resp.Status
			continue
		}
		for b := resp.Packed; len(b) > 0; {
			var a packedAnswer
			var err error
			if a, b, err = nextPackedAnswer(b); err != nil {
				t.Fatal(err)
			}
			k := key{a.seq, a.ledger, a.entry}
			if _, dup := got[k]; dup {
				t.Errorf("%v answered twice", k)
			}
			if (a.status == journalv1.Status_STATUS_OK) != (a.msg == "") {
				t.Errorf("%v: status %v with message %q", k, a.status, a.msg)
			}
			got[k] = a.status
		}
	}
	want := map[key]journalv1.Status{
		{0, 1, 0}: journalv1.Status_STATUS_OK, {1, 1, 1}: journalv1.Status_STATUS_OK,
		{2, 1, 2}: journalv1.Status_STATUS_BAD_CRC, {3, 9, 0}: journalv1.Status_STATUS_FENCED,
		{4, 9, 1}: journalv1.Status_STATUS_OK,
	}
	if len(got) != len(want) {
		t.Errorf("answers %v, want %v", got, want)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%v: %v, want %v", k, got[k], w)
		}
	}
	if data, err := r.b.ReadEntry(9, 1, false); err != nil || !bytes.Equal(data, payloadFor(9, 1)) {
		t.Errorf("the packed recovery add: %q, %v", data, err)
	}
	if _, err := r.b.ReadEntry(1, 2, false); !errors.Is(err, bookie.ErrNoSuchEntry) {
		t.Errorf("the bad-CRC add was stored: %v", err)
	}

	st, err := rpc.AddEntries(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&journalv1.AddRequest{Packed: buf[:len(buf)-1]}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("truncated packed add: %v, want InvalidArgument", err)
	}
}
