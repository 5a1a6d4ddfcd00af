package bookierpc

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
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

// The messages whose bulk field the codec aliases decode as proto.Unmarshal
// decodes them — split over buffers, with the field repeated (the last
// counts), absent, or truncated (both fail) — and the value does not
// share memory with gRPC's buffers, which are reused once Unmarshal
// returns.
func TestCodecAliased(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	bulk := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	msgs := []proto.Message{
		&journalv1.AddRequest{Ledger: 3, Entry: 9, Lac: 8, Packed: bulk(70 << 10)},
		&journalv1.AddRequest{Ledger: 3, Payload: bulk(100)},
		&journalv1.ReadEntriesResponse{Status: journalv1.Status_STATUS_NO_SUCH_ENTRY, Message: "gone", End: true, MissingEntry: 7, Records: bulk(40 << 10)},
		&journalv1.ReadEntriesResponse{Entries: []*journalv1.Entry{{Entry: 1, Payload: bulk(10)}}},
	}
	for i, in := range msgs {
		b, err := proto.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		// The bulk field once more, earlier: the last occurrence counts.
		fd := aliased[in.ProtoReflect().Descriptor().FullName()]
		twice := protowire.AppendBytes(protowire.AppendTag(nil, fd.Number(), protowire.BytesType), []byte("stale"))
		for _, wire := range [][]byte{b, append(twice, b...), b[:len(b)-1]} {
			want := in.ProtoReflect().New().Interface()
			wantErr := proto.Unmarshal(wire, want)
			var split mem.BufferSlice
			for rest := bytes.Clone(wire); len(rest) > 0; {
				n := min(len(rest), 1+rng.IntN(16<<10))
				split = append(split, mem.SliceBuffer(rest[:n]))
				rest = rest[n:]
			}
			got := in.ProtoReflect().New().Interface()
			gotErr := codec{}.Unmarshal(split, got)
			if (gotErr == nil) != (wantErr == nil) {
				t.Fatalf("message %d (%d bytes): error %v, proto.Unmarshal's %v", i, len(wire), gotErr, wantErr)
			}
			if wantErr != nil {
				continue
			}
			if !proto.Equal(got, want) {
				t.Fatalf("message %d (%d bytes): decoded differently from proto.Unmarshal", i, len(wire))
			}
			for _, buf := range split {
				clear(buf.ReadOnlyData()) // gRPC reuses its buffers
			}
			if !proto.Equal(got, want) {
				t.Fatalf("message %d: the decoded message shares memory with the buffers it came in", i)
			}
		}
	}
}
