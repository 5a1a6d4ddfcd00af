package mqtt

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/engines/file"
	"github.com/quiremq/quire/frontends/listen"
	"github.com/quiremq/quire/frontends/mqtt/packet"
	"github.com/quiremq/quire/shard"
)

// TestManyTopicsFewShards publishes to 100,000 distinct topics
// (devices/<id>/telemetry, as an IoT fleet does) on the file engine: they
// land in the engine's 16 hashed shards, not 100,000, every message is
// stored, and neither open files nor the heap grow with the topic count.
func TestManyTopicsFewShards(t *testing.T) {
	const topics = 100_000
	// Sync "interval": the test is about files and memory, and 100,000
	// one-by-one QoS 0 appends would otherwise wait for as many fsyncs.
	eng, err := file.Open(file.Options{Dir: t.TempDir(), Sync: file.SyncInterval, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	router, err := shard.NewRouter("file", nil, map[string]shard.Engine{"file": eng})
	if err != nil {
		t.Fatal(err)
	}
	s := newStarted(t, Options{Listeners: []listen.Config{{Name: "tcp", Addr: "127.0.0.1:0"}},
		Storage: NewShardStorage(router, 0), Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler)}, nil)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Stop(ctx)
	})
	c := rawOn(t, dial(t, s.Addr("tcp").String()))
	c.connect(&packet.Connect{Version: packet.V5, ClientID: "fleet", CleanStart: true, KeepAlive: 600})
	fds0, heap0 := openFiles(t), heapInUse()
	// QoS 0 in bulk, then one QoS 1: its PUBACK comes after every earlier
	// PUBLISH on the connection was stored (they are handled in order).
	w := bufio.NewWriterSize(c.nc, 64<<10)
	for i := range topics {
		p := &packet.Publish{Topic: fmt.Sprintf("devices/%06d/telemetry", i), Payload: []byte("21.5")}
		b, err := p.Append(nil, packet.V5)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(b)
	}
	last, _ := (&packet.Publish{Topic: "devices/last", QoS: packet.QoS1, PacketID: 1, Payload: []byte("x")}).Append(nil, packet.V5)
	w.Write(last)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	c.nc.SetReadDeadline(time.Now().Add(2 * time.Minute))
	if p, err := c.r.ReadPacket(); err != nil {
		t.Fatal(err)
	} else if ack, ok := p.(*packet.Puback); !ok || ack.PacketID != 1 {
		t.Fatalf("got %v", p)
	}
	ctx := context.Background()
	names, err := eng.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) > DefaultShardsPerEngine {
		t.Fatalf("%d shards for %d topics, want at most %d", len(names), topics, DefaultShardsPerEngine)
	}
	var stored int
	for _, n := range names {
		sh, err := eng.Open(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		low, high := sh.Watermarks()
		stored += int(high - low)
	}
	if stored != topics+1 {
		t.Fatalf("%d records stored, want %d", stored, topics+1)
	}
	fds1, heap1 := openFiles(t), heapInUse()
	if fds1-fds0 > 2*DefaultShardsPerEngine+8 {
		t.Fatalf("open files grew from %d to %d for %d topics", fds0, fds1, topics)
	}
	// Generous: the point is "not per topic" (100,000 topics at even 500
	// bytes each would be 50 MB).
	if grow := int64(heap1) - int64(heap0); grow > 32<<20 {
		t.Fatalf("heap grew by %d MiB for %d topics", grow>>20, topics)
	}
	t.Logf("%d topics → %d shards, %d records; open files %d → %d; heap %d → %d MiB",
		topics, len(names), stored, fds0, fds1, heap0>>20, heap1>>20)
}

func openFiles(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}
