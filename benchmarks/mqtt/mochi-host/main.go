// Command mochi-host runs a mochi-mqtt v2 broker for benchmarks/mqtt/run.sh:
// one TCP listener, every client allowed, and optionally the pebble storage
// hook. It is its own module so that mochi-mqtt never becomes a dependency
// of Quire; run.sh builds it with `go install` into .cache/bin.
//
//	mochi-host -addr 127.0.0.1:1883                      # memory only
//	mochi-host -addr 127.0.0.1:1883 -pebble DIR -sync    # pebble hook, Sync writes
//
// With -pebble, mochi stores sessions, subscriptions, retained messages and
// every outbound QoS 1/2 message (its inflight state, OnQosPublish) in
// Pebble; -sync makes each of those writes fsync (pebble.Sync) before mochi
// goes on, which happens before the publisher's PUBACK. It does not store
// the inbound message itself or any QoS 0 message.
package main

import (
	"flag"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/hooks/storage/pebble"
	"github.com/mochi-mqtt/server/v2/listeners"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:1883", "TCP listen address")
	dir := flag.String("pebble", "", "directory of the pebble storage hook (empty: no persistence)")
	sync := flag.Bool("sync", false, "with -pebble: fsync every write (pebble.Sync)")
	flag.Parse()

	srv := mqtt.New(&mqtt.Options{
		InlineClient: false,
		Logger:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		log.Fatal(err)
	}
	if *dir != "" {
		mode := pebble.NoSync
		if *sync {
			mode = pebble.Sync
		}
		if err := srv.AddHook(new(pebble.Hook), &pebble.Options{Path: *dir, Mode: mode}); err != nil {
			log.Fatal(err)
		}
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: *addr})); err != nil {
		log.Fatal(err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		if err := srv.Serve(); err != nil {
			log.Fatal(err)
		}
	}()
	<-sigs
	_ = srv.Close()
}
