package bookierpc

import (
	"bytes"
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
)

// codec is gRPC's protobuf codec with bufferPool in place of gRPC's
// default pool, which its codec uses whatever pool the transport was given:
// the default pool zeroes every buffer it hands out, and the codec takes
// one for each message it encodes (above 1 KiB) and for each message it
// decodes that arrived in more than one HTTP/2 frame (above 16 KiB), so a
// batch of adds was cleared once more on each side for nothing (16% of a
// journal-engine node's CPU under MQTT load). Installed on both sides of
// bookie connections (GRPCServerOptions, dialOptions); the server's also
// serves whatever else shares its gRPC server (meta, MQTT forwarding).
type codec struct{}

var _ encoding.CodecV2 = codec{}

// Name is "proto": peers see the same content-subtype as gRPC's own codec.
func (codec) Name() string { return "proto" }

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("bookierpc: cannot marshal %T: not a proto.Message", v)
	}
	size := proto.Size(m)
	opts := proto.MarshalOptions{UseCachedSize: true} // the size was just computed
	if mem.IsBelowBufferPoolingThreshold(size) {
		b, err := opts.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	buf := bufferPool.Get(size)
	b, err := opts.MarshalAppend((*buf)[:0], m)
	if err != nil {
		bufferPool.Put(buf)
		return nil, err
	}
	*buf = b
	return mem.BufferSlice{mem.NewBuffer(buf, bufferPool)}, nil
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("bookierpc: cannot unmarshal into %T: not a proto.Message", v)
	}
	r := m.ProtoReflect()
	if fd := aliased[r.Descriptor().FullName()]; fd != nil {
		return unmarshalAliased(gather(data), r, fd)
	}
	buf := data.MaterializeToBuffer(bufferPool)
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}

// aliased names, by message, the bytes field that carries a message's
// bulk: many adds (AddRequest.packed) or many entries
// (ReadEntriesResponse.records). The codec decodes it without copying it
// once more: the message is gathered from gRPC's buffers into memory of its
// own, and the field's value is a slice of that (its consumers keep slices
// of it: the bookie's pending adds, the reader's payloads).
var aliased = map[protoreflect.FullName]protoreflect.FieldDescriptor{}

func init() {
	for _, f := range []struct {
		m     proto.Message
		field protoreflect.Name
	}{{&journalv1.AddRequest{}, "packed"}, {&journalv1.ReadEntriesResponse{}, "records"}} {
		d := f.m.ProtoReflect().Descriptor()
		fd := d.Fields().ByName(f.field)
		if fd == nil || fd.Kind() != protoreflect.BytesKind || fd.Cardinality() == protoreflect.Repeated {
			panic(fmt.Sprintf("bookierpc: %s has no singular bytes field %s", d.FullName(), f.field))
		}
		aliased[d.FullName()] = fd
	}
}

// gather copies data's bytes into a new slice. Unlike
// BufferSlice.Materialize it does not clear the slice first (bytes.Join
// allocates without zeroing): one pass over the bytes, not two.
func gather(data mem.BufferSlice) []byte {
	parts := make([][]byte, len(data))
	for i, b := range data {
		parts[i] = b.ReadOnlyData()
	}
	return bytes.Join(parts, nil)
}

// unmarshalAliased decodes b into m, whose bytes field fd it sets to a
// slice of b. The other fields are decoded by proto.Unmarshal from a copy
// of b without fd's occurrences (a few bytes: fd holds the bulk); of
// several occurrences of fd the last counts, as proto.Unmarshal has it.
func unmarshalAliased(b []byte, m protoreflect.Message, fd protoreflect.FieldDescriptor) error {
	var rest, value []byte
	found := false
	for off := 0; off < len(b); {
		num, typ, n := protowire.ConsumeTag(b[off:])
		if n < 0 {
			return fmt.Errorf("bookierpc: %s: %w", m.Descriptor().FullName(), protowire.ParseError(n))
		}
		if num == fd.Number() && typ == protowire.BytesType {
			v, k := protowire.ConsumeBytes(b[off+n:])
			if k < 0 {
				return fmt.Errorf("bookierpc: %s.%s: %w", m.Descriptor().FullName(), fd.Name(), protowire.ParseError(k))
			}
			if rest == nil {
				rest = append(make([]byte, 0, 64), b[:off]...)
			}
			value, found = v[:len(v):len(v)], true
			off += n + k
			continue
		}
		k := protowire.ConsumeFieldValue(num, typ, b[off+n:])
		if k < 0 {
			return fmt.Errorf("bookierpc: %s: %w", m.Descriptor().FullName(), protowire.ParseError(k))
		}
		if rest != nil {
			rest = append(rest, b[off:off+n+k]...)
		}
		off += n + k
	}
	if !found {
		rest = b
	}
	if err := proto.Unmarshal(rest, m.Interface()); err != nil {
		return err
	}
	if found {
		m.Set(fd, protoreflect.ValueOfBytes(value))
	}
	return nil
}
