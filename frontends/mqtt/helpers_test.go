package mqtt

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/engines/memory"
	"github.com/quiremq/quire/frontends/listen"
	"github.com/quiremq/quire/frontends/pubsub"
	"github.com/quiremq/quire/shard"
)

type testBroker struct {
	*Server
	engine *memory.Engine
	reg    *prometheus.Registry
	tcp    string
	ws     string
}

// startBroker runs a Server on 127.0.0.1:0 (TCP and WebSocket) over a
// ShardStorage on the memory engine; wrap, if set, wraps the storage.
func startBroker(t testing.TB, wrap func(Storage) Storage, tweak func(*Options)) *testBroker {
	t.Helper()
	eng := memory.New(memory.Options{})
	router, err := shard.NewRouter("memory", nil, map[string]shard.Engine{"memory": eng})
	if err != nil {
		t.Fatal(err)
	}
	var st Storage = NewShardStorage(router, 4)
	if wrap != nil {
		st = wrap(st)
	}
	reg := prometheus.NewRegistry()
	opts := Options{
		Listeners: []listen.Config{
			{Name: "tcp", Addr: "127.0.0.1:0"},
			{Name: "ws", Kind: listen.WebSocket, Addr: "127.0.0.1:0"},
		},
		Storage:    st,
		Registerer: reg,
		Logger:     slog.New(slog.DiscardHandler),
	}
	s := newStarted(t, opts, tweak)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
		eng.Close()
	})
	b := &testBroker{Server: s, engine: eng, reg: reg, tcp: s.Addr("tcp").String()}
	if a := s.Addr("ws"); a != nil {
		b.ws = a.String()
	}
	return b
}

// newStarted creates and starts a Server with opts, changed by tweak.
func newStarted(t testing.TB, opts Options, tweak func(*Options)) *Server {
	t.Helper()
	if tweak != nil {
		tweak(&opts)
	}
	s, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// stored returns the payloads stored under topic, in order, from every
// "mqtt/memory/N" shard.
func (b *testBroker) stored(t *testing.T, topic string) []string {
	t.Helper()
	return storedPayloads(t, b.engine, topic)
}

// metric returns the value of a counter or gauge with the given labels.
func (b *testBroker) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := b.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
	}
	return 0
}

// gatedStorage blocks Append until release is closed, so a test can see
// that nothing is acknowledged before the append returned.
type gatedStorage struct {
	Storage
	mu      sync.Mutex
	release chan struct{}
	entered chan string
}

func (g *gatedStorage) Append(ctx context.Context, m *pubsub.Message) (Position, error) {
	g.mu.Lock()
	rel := g.release
	g.mu.Unlock()
	if rel != nil {
		g.entered <- m.Topic
		select {
		case <-rel:
		case <-ctx.Done():
			return Position{}, ctx.Err()
		}
	}
	return g.Storage.Append(ctx, m)
}

// failingStorage fails every Append.
type failingStorage struct{}

func (failingStorage) Append(context.Context, *pubsub.Message) (Position, error) {
	return Position{}, fmt.Errorf("disk on fire")
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
