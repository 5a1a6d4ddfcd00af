package bookierpc

import (
	"math/bits"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"
)

// Transport settings of bookie connections, on both sides: larger socket
// buffers and HTTP/2 flow-control windows than gRPC's defaults (32 KiB
// buffers, 64 KiB windows grown by BDP estimation), so that a stream of
// batched adds, or a catch-up read, is not held to small writes and window
// updates; and a buffer pool that does not zero what it hands out.
const (
	transportBuffer     = 256 << 10
	streamWindow        = 8 << 20
	connectionWindow    = 32 << 20
	minPooledBufferBits = 8  // 256 B
	maxPooledBufferBits = 23 // 8 MiB
)

// GRPCServerOptions are the gRPC server options a server of bookies
// should use (the transport settings above and a receive limit of
// MaxMessageSize).
func GRPCServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxMessageSize),
		grpc.ReadBufferSize(transportBuffer), grpc.WriteBufferSize(transportBuffer),
		grpc.InitialWindowSize(streamWindow), grpc.InitialConnWindowSize(connectionWindow),
		experimental.BufferPool(bufferPool), grpc.ForceServerCodecV2(codec{}),
	}
}

// dialOptions are Dial's transport settings.
func dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithReadBufferSize(transportBuffer), grpc.WithWriteBufferSize(transportBuffer),
		grpc.WithInitialWindowSize(streamWindow), grpc.WithInitialConnWindowSize(connectionWindow),
		experimental.WithBufferPool(bufferPool), grpc.WithDefaultCallOptions(grpc.ForceCodecV2(codec{})),
	}
}

// bufferPool is the bookie connections' gRPC buffer pool.
var bufferPool mem.BufferPool = new(dirtyPool)

// dirtyPool is a mem.BufferPool of power-of-two tiers that does not clear
// buffers: gRPC's default pool zeroes a whole buffer on Get, so a message
// just over 32 KiB cost a 1 MiB clear. Every user of a gRPC pool buffer
// writes it before reading it (a frame read from the socket, a message
// encoded into it), so stale bytes are never seen. Sizes outside the tiers
// are allocated and left to the garbage collector.
type dirtyPool struct {
	tiers [maxPooledBufferBits - minPooledBufferBits + 1]sync.Pool
}

// tier returns the index of the smallest tier holding n bytes, or -1.
func tier(n int) int {
	b := max(bits.Len(uint(max(n, 1)-1)), minPooledBufferBits)
	if b > maxPooledBufferBits {
		return -1
	}
	return b - minPooledBufferBits
}

func (p *dirtyPool) Get(n int) *[]byte {
	t := tier(n)
	if t < 0 {
		b := make([]byte, n)
		return &b
	}
	if v, ok := p.tiers[t].Get().(*[]byte); ok {
		*v = (*v)[:n]
		return v
	}
	b := make([]byte, n, 1<<(t+minPooledBufferBits))
	return &b
}

func (p *dirtyPool) Put(b *[]byte) {
	c := cap(*b)
	if t := tier(c); t >= 0 && c == 1<<(t+minPooledBufferBits) {
		*b = (*b)[:0]
		p.tiers[t].Put(b)
	}
}
