// Package inproc runs Quire's MQTT broker inside a test or benchmark process
// (on the memory engine, or the file engine with sync=batch), for the load
// generator's smoke tests and for profiling the broker under load with
// go test -cpuprofile (BenchmarkQuire in package load).
package inproc

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/quiremq/quire/engines/file"
	"github.com/quiremq/quire/engines/memory"
	"github.com/quiremq/quire/frontends/listen"
	"github.com/quiremq/quire/frontends/mqtt"
	"github.com/quiremq/quire/shard"
)

// Start runs Quire's MQTT broker in process on 127.0.0.1:0 over the
// memory engine, or the file engine (sync=batch) in a temporary directory
// when engine is "file", and returns its address.
func Start(tb testing.TB, engine string) string {
	tb.Helper()
	var eng shard.Engine
	switch engine {
	case "memory":
		eng = memory.New(memory.Options{})
	case "file":
		fe, err := file.Open(file.Options{Dir: tb.TempDir(), Sync: file.SyncBatch, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			tb.Fatal(err)
		}
		eng = fe
	default:
		tb.Fatalf("unknown engine %q", engine)
	}
	router, err := shard.NewRouter(engine, nil, map[string]shard.Engine{engine: eng})
	if err != nil {
		tb.Fatal(err)
	}
	st := mqtt.NewShardStorage(router, 0)
	s, err := mqtt.NewServer(mqtt.Options{
		Listeners: []listen.Config{{Name: "tcp", Addr: "127.0.0.1:0"}},
		Storage:   st,
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			tb.Errorf("stop: %v", err)
		}
		st.Close()
		eng.Close()
	})
	return s.Addr("tcp").String()
}
