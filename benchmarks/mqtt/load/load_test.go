package load_test

import (
	"context"
	"testing"
	"time"

	"github.com/quiremq/quire/benchmarks/mqtt/inproc"
	"github.com/quiremq/quire/benchmarks/mqtt/load"
	"github.com/quiremq/quire/frontends/mqtt/packet"
)

// smoke is a short run of a few hundred messages per publisher.
func smoke(addr string, sc load.Scenario, qos packet.QoS, clients int) load.Config {
	return load.Config{Addr: addr, Scenario: sc, QoS: qos, Clients: clients, Size: 64,
		Warmup: time.Millisecond, Duration: 20 * time.Second, Drain: 10 * time.Second, Messages: 300, Window: 16}
}

// TestScenariosExactCounts runs every scenario at QoS 0 and 1 against
// Quire in process and checks that the counts are exact: every message
// sent once, delivered once to each of its subscribers, acknowledged.
func TestScenariosExactCounts(t *testing.T) {
	addr := inproc.Start(t, "memory")
	for _, tc := range []struct {
		sc           load.Scenario
		clients      int
		pubs, subs   int
		fanPerPublsh int
	}{
		{load.PointToPoint, 3, 3, 3, 1},
		{load.FanIn, 4, 4, 1, 1},
		{load.FanOut, 3, 1, 3, 3},
	} {
		for _, qos := range []packet.QoS{0, 1} {
			t.Run(string(tc.sc)+"/qos"+string('0'+byte(qos)), func(t *testing.T) {
				res, err := load.Run(context.Background(), smoke(addr, tc.sc, qos, tc.clients))
				if err != nil {
					t.Fatal(err)
				}
				t.Log(res.Summary())
				want := uint64(tc.pubs * 300)
				if res.Publishers != tc.pubs || res.Subscribers != tc.subs {
					t.Errorf("publishers %d, subscribers %d; want %d, %d", res.Publishers, res.Subscribers, tc.pubs, tc.subs)
				}
				if res.Sent != want || res.Expected != want*uint64(tc.fanPerPublsh) || res.Received != res.Expected {
					t.Errorf("sent %d expected %d received %d; want %d sent, %d delivered", res.Sent, res.Expected, res.Received, want, want*uint64(tc.fanPerPublsh))
				}
				if !res.OK || res.Lost != 0 || res.Duplicates != 0 || res.Unacked != 0 || res.Foreign != 0 {
					t.Errorf("delivery check failed: %s", res.Summary())
				}
				if res.MsgsPerSec <= 0 || res.P50 <= 0 || res.P99 < res.P50 || res.Max < res.P99 {
					t.Errorf("implausible rate or latency: %s", res.Summary())
				}
			})
		}
	}
}

// TestDetectsLossAndDuplicates puts a proxy between Quire and the clients
// that drops every 7th PUBLISH to a subscriber and doubles every 11th: the
// result must count exactly those and not be OK.
func TestDetectsLossAndDuplicates(t *testing.T) {
	proxy := &faultyProxy{broker: inproc.Start(t, "memory"), dropEvery: 7, dupEvery: 11}
	addr := proxy.start(t)
	cfg := smoke(addr, load.PointToPoint, 0, 2)
	// The dropped ones never come: a window as large as the run keeps the
	// publishers going, and the drain (which then always runs to its end)
	// leaves time for every PUBLISH to pass the proxy.
	cfg.Window, cfg.Duration, cfg.Drain = 1000, 2*time.Second, 2*time.Second
	res, err := load.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	dropped, doubled := proxy.counts()
	t.Log(res.Summary(), "proxy dropped", dropped, "doubled", doubled)
	if dropped == 0 || doubled == 0 {
		t.Fatalf("proxy dropped %d and doubled %d: the test did not test", dropped, doubled)
	}
	if res.OK || res.Lost != uint64(dropped) || res.Duplicates != uint64(doubled) {
		t.Errorf("lost %d duplicates %d ok=%v; want %d, %d, false", res.Lost, res.Duplicates, res.OK, dropped, doubled)
	}
}

// TestRate: an open-loop run at a fixed rate delivers every message exactly
// once and records the rate, and cannot finish before the schedule lets it
// (2 publishers at 2,000 msgs/s between them: message 199 of each is due
// 199 ms after the start).
func TestRate(t *testing.T) {
	addr := inproc.Start(t, "memory")
	for _, qos := range []packet.QoS{0, 1} {
		cfg := smoke(addr, load.PointToPoint, qos, 2)
		cfg.Messages, cfg.Rate = 200, 2000
		start := time.Now()
		res, err := load.Run(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Log(res.Summary())
		if !res.OK || res.Sent != 400 || res.Received != 400 || res.Rate != 2000 {
			t.Errorf("qos %d: %s, rate %v; want 400 sent and received at rate 2000", qos, res.Summary(), res.Rate)
		}
		if took := time.Since(start); took < 199*time.Millisecond {
			t.Errorf("qos %d: the run took %v, less than the schedule's 199 ms", qos, took)
		}
	}
}

// TestIdle holds a few idle connections.
func TestIdle(t *testing.T) {
	addr := inproc.Start(t, "memory")
	ready := false
	res, err := load.Run(context.Background(), load.Config{Addr: addr, Scenario: load.Idle, Clients: 50,
		Duration: 200 * time.Millisecond, OnReady: func() { ready = true }})
	if err != nil {
		t.Fatal(err)
	}
	if !ready || !res.OK || res.Clients != 50 || res.Lost != 0 {
		t.Errorf("ready=%v %s", ready, res.Summary())
	}
}

// TestRunErrors: bad configurations and an unreachable broker are errors.
func TestRunErrors(t *testing.T) {
	for _, cfg := range []load.Config{
		{},
		{Addr: "127.0.0.1:1", Scenario: "zigzag"},
		{Addr: "127.0.0.1:1", QoS: 2},
		{Addr: "127.0.0.1:1", Size: 10},
		{Addr: "127.0.0.1:1", Clients: -1},
		{Addr: "127.0.0.1:1", Prefix: "a/+"},
		{Addr: "127.0.0.1:1", Version: packet.V31},
		{Addr: "127.0.0.1:1", Rate: -5},
	} {
		if _, err := load.Run(context.Background(), cfg); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
	// Nothing listens on port 1.
	if _, err := load.Run(context.Background(), load.Config{Addr: "127.0.0.1:1", Duration: time.Second}); err == nil {
		t.Error("unreachable broker: no error")
	}
}
