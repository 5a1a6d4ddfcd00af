package load

import (
	"context"
	"fmt"
	"time"

	"github.com/quiremq/quire/benchmarks/mqtt/client"
)

// idleReadBuffer is the read buffer of an idle client: it only ever reads
// a CONNACK and PINGRESPs.
const idleReadBuffer = 64

// runIdle opens cfg.Clients connections, holds them for cfg.Duration (or
// until ctx ends) and closes them. A connection that the broker drops while
// held makes the result not OK.
func runIdle(ctx context.Context, cfg Config) (*Result, error) {
	clients := make([]*client.Client, cfg.Clients)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	start := time.Now()
	err := parallel(ctx, cfg.Clients, func(ctx context.Context, i int) error {
		c, err := client.Dial(ctx, client.Options{Addr: cfg.Addr, ClientID: fmt.Sprintf("%s-idle-%d", cfg.Prefix, i),
			Version: cfg.Version, KeepAlive: 300, ReadBufferSize: idleReadBuffer})
		clients[i] = c
		return err
	})
	if err != nil {
		return nil, err
	}
	connectTime := time.Since(start)
	if cfg.OnReady != nil {
		cfg.OnReady()
	}
	var dropped uint64
	hold := time.NewTimer(cfg.Duration)
	defer hold.Stop()
	select {
	case <-hold.C:
	case <-ctx.Done():
	}
	for _, c := range clients {
		if c.Err() != nil {
			dropped++
		}
	}
	res := &Result{Scenario: Idle, Clients: cfg.Clients, Duration: cfg.Duration.Seconds(),
		Lost: dropped, ConnectSeconds: connectTime.Seconds()}
	res.OK = res.Lost == 0
	return res, nil
}
