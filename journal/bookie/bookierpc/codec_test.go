package bookierpc

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
)

// The codec encodes as gRPC's protobuf codec does, small messages and
// pooled large ones alike, and decodes a message that arrived split over
// many buffers (HTTP/2 frames of 16 KiB) as well as a whole one.
func TestCodecRoundTrip(t *testing.T) {
	for _, size := range []int{0, 100, 40 << 10, 1 << 20} {
		in := &journalv1.AddRequest{Ledger: 7, Packed: bytes.Repeat([]byte{0xa5}, size)}
		data, err := codec{}.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		want, err := proto.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := data.Materialize(); !bytes.Equal(got, want) {
			t.Fatalf("size %d: encoded %d bytes, want the %d of proto.Marshal", size, len(got), len(want))
		}
		var split mem.BufferSlice
		for b := data.Materialize(); len(b) > 0; {
			n := min(len(b), 16<<10)
			split = append(split, mem.SliceBuffer(b[:n]))
			b = b[n:]
		}
		data.Free()
		for _, d := range []mem.BufferSlice{split, {mem.SliceBuffer(want)}} {
			out := new(journalv1.AddRequest)
			if err := (codec{}).Unmarshal(d, out); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(in, out) {
				t.Fatalf("size %d: decoded ledger %d, %d packed bytes", size, out.Ledger, len(out.Packed))
			}
		}
	}
	if _, err := (codec{}).Marshal("not a message"); err == nil {
		t.Error("marshalling a string: no error")
	}
}
