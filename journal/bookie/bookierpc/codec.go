package bookierpc

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
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
	buf := data.MaterializeToBuffer(bufferPool)
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}
