package bookierpc

import (
	"context"
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
			if c.name == "bad crc" && !errors.Is(err, ErrBadCRC) {
				t.Errorf("bad crc: %v", err)
			}
		})
	}
}
