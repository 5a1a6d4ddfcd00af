package bookierpc

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
	"github.com/quiremq/quire/journal/bookie"
)

// scriptedBookie answers ReadEntries with fixed messages, as a faulty or
// malicious bookie might.
type scriptedBookie struct {
	journalv1.UnimplementedBookieServer
	msgs []*journalv1.ReadEntriesResponse
}

func (s *scriptedBookie) ReadEntries(_ *journalv1.ReadEntriesRequest, st grpc.ServerStreamingServer[journalv1.ReadEntriesResponse]) error {
	for _, m := range s.msgs {
		if err := st.Send(m); err != nil {
			return err
		}
	}
	return nil
}

func scriptedClient(t *testing.T, srv journalv1.BookieServer) *Client {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	journalv1.RegisterBookieServer(gs, srv)
	go gs.Serve(lis)
	cc, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close(); gs.Stop() })
	return NewClient(cc)
}

func ent(e uint64, data string) *journalv1.Entry {
	return &journalv1.Entry{Entry: e, Payload: []byte(data), Crc32C: CRC32C([]byte(data))}
}

// recs packs entries of ledger 1 as a packed ReadEntriesResponse carries
// them: entry-log records back to back.
func recs(ents ...*journalv1.Entry) []byte { return recsOf(1, ents...) }

func recsOf(ledger uint64, ents ...*journalv1.Entry) []byte {
	var b []byte
	for _, e := range ents {
		start := len(b)
		b = binary.LittleEndian.AppendUint32(b, 0)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(e.Payload)))
		b = binary.LittleEndian.AppendUint64(b, ledger)
		b = binary.LittleEndian.AppendUint64(b, e.Entry)
		b = append(b, e.Payload...)
		binary.LittleEndian.PutUint32(b[start:], CRC32C(b[start+4:]))
	}
	return b
}

// flip returns b with bit 0 of byte i inverted.
func flip(b []byte, i int) []byte {
	b = bytes.Clone(b)
	b[i] ^= 1
	return b
}

// The client checks what a ReadEntries stream says against the range it
// asked for: an answer that does not fit is an error that is not a
// bookie status (no answer: never a negative), and fn sees only the
// entries that fit, in order.
func TestReadEntriesClientChecks(t *testing.T) {
	ok := journalv1.Status_STATUS_OK
	noEntry := journalv1.Status_STATUS_NO_SUCH_ENTRY
	for _, c := range []struct {
		name    string
		msgs    []*journalv1.ReadEntriesResponse
		seen    int
		outcome journalv1.Status // UNSPECIFIED: not a bookie answer
	}{
		{"complete", []*journalv1.ReadEntriesResponse{
			{Status: ok, Entries: []*journalv1.Entry{ent(2, "a"), ent(4, "b")}},
			{Status: ok, End: true, Entries: []*journalv1.Entry{ent(6, "c")}}}, 3, ok},
		{"missing", []*journalv1.ReadEntriesResponse{
			{Status: noEntry, End: true, MissingEntry: 4, Entries: []*journalv1.Entry{ent(2, "a")}}}, 1, noEntry},
		{"missing elsewhere", []*journalv1.ReadEntriesResponse{
			{Status: noEntry, End: true, MissingEntry: 6, Entries: []*journalv1.Entry{ent(2, "a")}}}, 1, 0},
		{"no end", []*journalv1.ReadEntriesResponse{
			{Status: ok, Entries: []*journalv1.Entry{ent(2, "a")}}}, 1, 0},
		{"ok but short", []*journalv1.ReadEntriesResponse{
			{Status: ok, End: true, Entries: []*journalv1.Entry{ent(2, "a")}}}, 1, 0},
		{"out of order", []*journalv1.ReadEntriesResponse{
			{Status: ok, End: true, Entries: []*journalv1.Entry{ent(2, "a"), ent(3, "b")}}}, 1, 0},
		{"past the end", []*journalv1.ReadEntriesResponse{
			{Status: ok, End: true, Entries: []*journalv1.Entry{ent(2, "a"), ent(4, "b"), ent(6, "c"), ent(8, "d")}}}, 3, 0},
		{"bad crc", []*journalv1.ReadEntriesResponse{
			{Status: ok, End: true, Entries: []*journalv1.Entry{ent(2, "a"), {Entry: 4, Payload: []byte("b"), Crc32C: 1}}}}, 1, 0},
		// Packed: the same checks on records, which may come after
		// messages of entries (a bookie may answer either way).
		{"packed complete", []*journalv1.ReadEntriesResponse{
			{Status: ok, Records: recs(ent(2, "a"), ent(4, "b"))},
			{Status: ok, End: true, Records: recs(ent(6, "c"))}}, 3, ok},
		{"packed after entries", []*journalv1.ReadEntriesResponse{
			{Status: ok, Entries: []*journalv1.Entry{ent(2, "a")}},
			{Status: ok, End: true, Records: recs(ent(4, "b"), ent(6, "c"))}}, 3, ok},
		{"packed missing", []*journalv1.ReadEntriesResponse{
			{Status: noEntry, End: true, MissingEntry: 4, Records: recs(ent(2, "a"))}}, 1, noEntry},
		{"packed missing elsewhere", []*journalv1.ReadEntriesResponse{
			{Status: noEntry, End: true, MissingEntry: 6, Records: recs(ent(2, "a"))}}, 1, 0},
		{"packed out of order", []*journalv1.ReadEntriesResponse{
			{Status: ok, End: true, Records: recs(ent(2, "a"), ent(3, "b"))}}, 1, 0},
		{"packed bad payload", []*journalv1.ReadEntriesResponse{
			{Status: ok, End: true, Records: flip(recs(ent(2, "a"), ent(4, "bcd"), ent(6, "c")), 2*bookie.RecordHeaderSize+1+1)}}, 1, 0},
		{"packed bad header", []*journalv1.ReadEntriesResponse{
			{Status: ok, End: true, Records: flip(recs(ent(2, "a"), ent(4, "b"), ent(6, "c")), bookie.RecordHeaderSize+1+16)}}, 1, 0},
		{"packed truncated", []*journalv1.ReadEntriesResponse{
			{Status: ok, End: true, Records: recs(ent(2, "a"), ent(4, "bc"), ent(6, "c"))[:2*bookie.RecordHeaderSize+2]}}, 1, 0},
		{"packed other ledger", []*journalv1.ReadEntriesResponse{
			{Status: ok, End: true, Records: recsOf(2, ent(2, "a"))}}, 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl := scriptedClient(t, &scriptedBookie{msgs: c.msgs})
			var seen []uint64
			err := cl.ReadEntries(context.Background(), 1, 2, 6, 2, func(e uint64, _ []byte) error {
				seen = append(seen, e)
				return nil
			})
			if len(seen) != c.seen {
				t.Errorf("fn saw %v, want %d entries", seen, c.seen)
			}
			if got := StatusOf(err); got != c.outcome {
				t.Errorf("outcome %v (%v), want %v", got, err, c.outcome)
			}
			if c.outcome == 0 && (err == nil || errors.Is(err, bookie.ErrNoSuchEntry)) {
				t.Errorf("a broken answer reads as %v", err)
			}
			if (c.name == "bad crc" || c.name == "packed bad payload" || c.name == "packed bad header") && !errors.Is(err, ErrBadCRC) {
				t.Errorf("bad crc: %v", err)
			}
		})
	}
}

// A bookie answers ReadEntries packed (records) when asked, entries
// otherwise: the same entries, payloads and outcome either way, over
// several messages, stopping at a hole in the middle of the ledger.
func TestReadEntriesPackedOrNot(t *testing.T) {
	r := newRig(t, ServerOptions{})
	const n, hole = 1500, 1201
	payload := func(e uint64) []byte { return bytes.Repeat([]byte{byte(e)}, 1000+int(e%50)) }
	done := make(chan error, n)
	for e := range uint64(n) {
		if e == hole {
			done <- nil
			continue
		}
		r.b.AddEntry(1, e, -1, payload(e), false, func(err error) { done <- err })
	}
	for range n {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	for _, packed := range []bool{false, true} {
		st, err := r.client.rpc.ReadEntries(context.Background(), &journalv1.ReadEntriesRequest{Ledger: 1, FirstEntry: 3, LastEntry: n - 1, Stride: 2, Packed: packed})
		if err != nil {
			t.Fatal(err)
		}
		next, msgs := uint64(3), 0
		for {
			m, err := st.Recv()
			if err != nil {
				t.Fatalf("packed=%v: %v", packed, err)
			}
			msgs++
			if packed != (len(m.Entries) == 0) || (!packed && len(m.Records) > 0) {
				t.Fatalf("packed=%v: a message with %d entries and %d bytes of records", packed, len(m.Entries), len(m.Records))
			}
			for _, e := range m.Entries {
				if e.Entry != next || !bytes.Equal(e.Payload, payload(next)) || e.Crc32C != CRC32C(e.Payload) {
					t.Fatalf("entries: entry %d where %d was due, or not its payload", e.Entry, next)
				}
				next += 2
			}
			for recs := m.Records; len(recs) > 0; {
				l, e, p, size, ok := bookie.DecodeRecord(recs)
				if !ok || l != 1 || e != next || !bytes.Equal(p, payload(next)) {
					t.Fatalf("records: entry %d (ok %v) where %d was due, or not its payload", e, ok, next)
				}
				next += 2
				recs = recs[size:]
			}
			if m.End {
				if m.Status != journalv1.Status_STATUS_NO_SUCH_ENTRY || m.MissingEntry != hole || next != hole {
					t.Fatalf("packed=%v: ended with %v at %d after entry %d; want NO_SUCH_ENTRY at %d", packed, m.Status, m.MissingEntry, next-2, hole)
				}
				break
			}
		}
		if msgs < 2 {
			t.Errorf("packed=%v: %d messages for %d KiB", packed, msgs, hole/2)
		}
	}
}
