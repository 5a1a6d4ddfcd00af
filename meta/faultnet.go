package meta

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FaultNetwork is the network seam of in-process clusters: it hands out
// in-memory Raft transports (hashicorp's InmemTransport, one per node,
// addressed by the node's gRPC address) and gRPC client interceptors for the
// nodes' connections to each other, and can partition both at once. Pass
// Transport(addr) as Options.Transport and DialOptions(addr) as
// Options.DialOptions.
type FaultNetwork struct {
	mu    sync.Mutex
	nodes map[string]*raft.InmemTransport
	group map[string]int // partition group per address; nil: fully connected
}

// NewFaultNetwork returns a fully connected network with no nodes.
func NewFaultNetwork() *FaultNetwork {
	return &FaultNetwork{nodes: map[string]*raft.InmemTransport{}}
}

// Transport returns a new Raft transport for the node at addr (replacing any
// earlier one: a restarted node), connected to every node it can reach.
func (n *FaultNetwork) Transport(addr string) raft.Transport {
	_, t := raft.NewInmemTransportWithTimeout(raft.ServerAddress(addr), 500*time.Millisecond)
	n.mu.Lock()
	n.nodes[addr] = t
	n.rewire()
	n.mu.Unlock()
	return &faultTransport{InmemTransport: t, net: n, addr: addr}
}

// Partition splits the nodes into groups that cannot reach each other.
// Nodes not listed form one more group.
func (n *FaultNetwork) Partition(groups ...[]string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.group = map[string]int{}
	for i, g := range groups {
		for _, a := range g {
			n.group[a] = i + 1
		}
	}
	n.rewire()
}

// Heal reconnects every node.
func (n *FaultNetwork) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.group = nil
	n.rewire()
}

// Blocked reports whether from cannot reach to.
func (n *FaultNetwork) Blocked(from, to string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.blocked(from, to)
}

func (n *FaultNetwork) blocked(from, to string) bool {
	return n.group != nil && n.group[from] != n.group[to]
}

// rewire connects every pair of live transports that can reach each other
// and disconnects (closing pipelines) every pair that cannot.
func (n *FaultNetwork) rewire() {
	for a, ta := range n.nodes {
		for b, tb := range n.nodes {
			if a == b {
				continue
			}
			if n.blocked(a, b) {
				ta.Disconnect(raft.ServerAddress(b))
			} else {
				ta.Connect(raft.ServerAddress(b), tb)
			}
		}
	}
}

func (n *FaultNetwork) remove(addr string, t *raft.InmemTransport) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nodes[addr] != t {
		return
	}
	delete(n.nodes, addr)
	for _, o := range n.nodes {
		o.Disconnect(raft.ServerAddress(addr))
	}
}

// DialOptions returns interceptors that fail calls from the node at from to
// nodes it cannot reach with UNAVAILABLE, as a cut network would.
func (n *FaultNetwork) DialOptions(from string) []grpc.DialOption {
	unary := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if n.Blocked(from, cc.Target()) {
			return status.Error(codes.Unavailable, "fault network: partitioned")
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	stream := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		if n.Blocked(from, cc.Target()) {
			return nil, status.Error(codes.Unavailable, "fault network: partitioned")
		}
		return streamer(ctx, desc, cc, method, opts...)
	}
	return []grpc.DialOption{grpc.WithUnaryInterceptor(unary), grpc.WithStreamInterceptor(stream)}
}

type faultTransport struct {
	*raft.InmemTransport
	net  *FaultNetwork
	addr string
}

// Close disconnects the node from the network (a stopped node).
func (t *faultTransport) Close() error {
	t.net.remove(t.addr, t.InmemTransport)
	return t.InmemTransport.Close()
}
