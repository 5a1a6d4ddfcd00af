package load

import (
	"errors"
	"fmt"
	"time"

	"github.com/quiremq/quire/frontends/mqtt/packet"
)

// Scenario is a shape of traffic.
type Scenario string

// Scenarios.
const (
	// PointToPoint: Clients pairs, publisher i to topic …/p2p/i, which
	// only subscriber i subscribes to.
	PointToPoint Scenario = "p2p"
	// FanIn: Clients publishers, each to its own topic …/fanin/i, and one
	// subscriber to …/fanin/+.
	FanIn Scenario = "fanin"
	// FanOut: one publisher to …/fanout, Clients subscribers to it.
	FanOut Scenario = "fanout"
	// Idle: Clients connections that connect and then do nothing but keep
	// alive until the run ends (for the broker's memory per connection).
	Idle Scenario = "idle"
)

// Scenarios lists every scenario, for flag help.
var Scenarios = []Scenario{PointToPoint, FanIn, FanOut, Idle}

// HeaderSize is the smallest payload: every message carries its send time
// (8 bytes), its publisher (4) and its sequence number (8).
const HeaderSize = 20

// Config describes one run. Zero fields take the defaults of EnsureDefaults.
type Config struct {
	// Addr is the broker, HOST:PORT. Required.
	Addr string
	// Scenario; default PointToPoint.
	Scenario Scenario
	// QoS of the publications and subscriptions: 0 or 1.
	QoS packet.QoS
	// Size of each payload in bytes, at least HeaderSize; default 64.
	Size int
	// Clients: pairs (p2p), publishers (fanin), subscribers (fanout) or
	// connections (idle); default 4.
	Clients int
	// Warmup runs the traffic without measuring it; default 2 s.
	Warmup time.Duration
	// Duration is the measured time after the warm-up (idle: how long the
	// connections are held); default 5 s.
	Duration time.Duration
	// Drain bounds the wait, after the publishers stop, for the last
	// deliveries and acknowledgements; what has not arrived by then is
	// lost. Default 10 s.
	Drain time.Duration
	// Messages, if not 0, stops each publisher after that many messages,
	// even before Warmup plus Duration have passed; the run then ends once
	// they are drained, and rates are over the time actually measured.
	Messages int
	// Window bounds the messages in flight end to end (published, not yet
	// received) per subscriber: each publisher of p2p and fanout may be
	// Window ahead of its slowest subscriber, each of the Clients
	// publishers of fanin Window/Clients (at least 1). It keeps every
	// broker below its per-client queue limits (Mosquitto's and Quire's
	// default 1000), so that a closed loop, not a queue overflow, sets the
	// pace. Default 64.
	Window int
	// Rate, if not 0, is the offered load in messages per second, split
	// evenly over the publishers (open loop): message k of a publisher is
	// due k/(Rate/publishers) seconds after the start and carries its due
	// time, not the time it was actually written, so a broker that falls
	// behind is charged the lag in its latency (no coordinated omission).
	// Window still bounds what is in flight. 0: each publisher sends as
	// fast as Window lets it (closed loop, the throughput runs).
	Rate float64
	// Version is the MQTT version of every client; default 3.1.1.
	Version packet.Version
	// Prefix starts every topic and client identifier; default
	// "bench-<random>", unique per run.
	Prefix string
	// OnReady, if set, is called once every connection is up and
	// subscribed, before traffic starts (idle: before the hold).
	OnReady func()
}

// Defaults.
const (
	DefaultSize     = 64
	DefaultClients  = 4
	DefaultWarmup   = 2 * time.Second
	DefaultDuration = 5 * time.Second
	DefaultDrain    = 10 * time.Second
	DefaultWindow   = 64
)

// EnsureDefaults fills zero fields.
func (c *Config) EnsureDefaults() {
	orDefault(&c.Scenario, PointToPoint)
	orDefault(&c.Size, DefaultSize)
	orDefault(&c.Clients, DefaultClients)
	orDefault(&c.Warmup, DefaultWarmup)
	orDefault(&c.Duration, DefaultDuration)
	orDefault(&c.Drain, DefaultDrain)
	orDefault(&c.Window, DefaultWindow)
	orDefault(&c.Version, packet.V311)
	orDefault(&c.Prefix, fmt.Sprintf("bench-%x", time.Now().UnixNano()&0xffffffffff))
}

// orDefault sets *p to v if it is the zero value.
func orDefault[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

// Validate reports a Config that cannot run.
func (c *Config) Validate() error {
	if c.Addr == "" {
		return errors.New("load: a broker address is required")
	}
	switch c.Scenario {
	case PointToPoint, FanIn, FanOut, Idle:
	default:
		return fmt.Errorf("load: unknown scenario %q (want one of %v)", c.Scenario, Scenarios)
	}
	if c.QoS > 1 {
		return fmt.Errorf("load: QoS %d not supported (0 or 1)", c.QoS)
	}
	if c.Size < HeaderSize || c.Size > 1<<20 {
		return fmt.Errorf("load: payload size %d out of range [%d, %d]", c.Size, HeaderSize, 1<<20)
	}
	if c.Clients < 1 || c.Clients > 100000 {
		return fmt.Errorf("load: clients %d out of range [1, 100000]", c.Clients)
	}
	if c.Warmup < 0 || c.Duration <= 0 || c.Drain < 0 {
		return errors.New("load: warm-up and drain must not be negative, duration must be positive")
	}
	if c.Messages < 0 {
		return fmt.Errorf("load: messages %d must not be negative", c.Messages)
	}
	if c.Rate < 0 {
		return fmt.Errorf("load: rate %g must not be negative", c.Rate)
	}
	if c.Window < 1 {
		return fmt.Errorf("load: window %d must be at least 1", c.Window)
	}
	if c.Version != packet.V311 && c.Version != packet.V5 {
		return fmt.Errorf("load: MQTT version %v not supported (3.1.1 or 5.0)", c.Version)
	}
	if !packet.ValidTopicName(c.Prefix) {
		return fmt.Errorf("load: prefix %q is not a valid topic name", c.Prefix)
	}
	return nil
}
