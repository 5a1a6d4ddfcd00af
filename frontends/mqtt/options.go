package mqtt

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/frontends/auth"
	"github.com/quiremq/quire/frontends/listen"
	"github.com/quiremq/quire/frontends/mqtt/packet"
	"github.com/quiremq/quire/frontends/mqtt/store"
	"github.com/quiremq/quire/frontends/pubsub"
)

// Options configure a Server. Zero fields take the defaults in
// EnsureDefaults.
type Options struct {
	// Listeners are opened by Start; each needs at least Addr (port 0
	// picks a free port, see Server.Addr). Give them one listen.Limiter to
	// bound connections node-wide.
	Listeners []listen.Config
	// Storage receives every published message before it is acknowledged
	// (see NewShardStorage). Required.
	Storage Storage
	// Auth authenticates CONNECT (nil: every client may connect); ACL
	// governs the will, every PUBLISH and every SUBSCRIBE (nil: all
	// allowed). See frontends/auth and authz.go.
	Auth *auth.Chain
	ACL  *auth.ACL
	// SCRAM, if set, offers MQTT 5 enhanced authentication with
	// SCRAM-SHA-256 (authz.go); nil: a CONNECT naming a method gets 0x8C.
	SCRAM *auth.SCRAM
	// Retained stores retained messages; default an in-memory store
	// (store.NewRetained keeps them in Store).
	Retained pubsub.RetainedStore
	// Store keeps persistent sessions (Session Expiry > 0) across
	// restarts: subscriptions, cursors into the shards, QoS 2 packet-id
	// state, pending wills (package doc, "What survives a restart"). Nil
	// keeps sessions in memory only. Storage must then be a ReplayStorage.
	// The caller opens and closes it (after Stop).
	Store *store.Store
	// CursorInterval is how often the positions owed to stored sessions
	// are written, in one batch synced by a background loop (not on the
	// publish path), when they changed. Default 100 ms.
	CursorInterval time.Duration
	// Registerer receives the quire_mqtt_* metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Logger; default slog.Default().
	Logger *slog.Logger

	// MaxPacketSize is the largest packet accepted, fixed header included,
	// and the Maximum Packet Size sent in a v5 CONNACK. Default 16 MiB.
	MaxPacketSize int
	// ConnectTimeout bounds the time from accept to a complete CONNECT
	// (the TLS or WebSocket handshake included). Default 10 s.
	ConnectTimeout time.Duration
	// MaxKeepAlive caps a client's keep alive, in seconds: a v5 client
	// asking for more (or for 0, no keep alive) is told this value as
	// Server Keep Alive. v3 has no way to tell, so a v3 client keeps its
	// own value. 0 means no cap.
	MaxKeepAlive uint16
	// WriteTimeout bounds one write to a client; a client that does not
	// read for this long is disconnected. Default 30 s.
	WriteTimeout time.Duration

	// MaxInflight bounds the outbound QoS 1 and 2 messages awaiting
	// acknowledgement per session (a v5 client's Receive Maximum lowers
	// it). Default 64.
	MaxInflight int
	// MaxQueued bounds the messages waiting per session, online or
	// offline, not yet sent. When full, a new message for the session is
	// dropped (tail drop) and quire_mqtt_messages_dropped_total{reason=
	// "queue_full"} counts it. Default 1000.
	MaxQueued int
	// ReceiveMaximum bounds the inbound QoS 2 messages awaiting PUBREL per
	// connection; sent in a v5 CONNACK. Default 256.
	ReceiveMaximum uint16
	// TopicAliasMaximum is the highest inbound topic alias a v5 client may
	// use. Default 64; 0 keeps the default (aliases are cheap).
	TopicAliasMaximum uint16
	// OutboundTopicAliases bounds the topic aliases the server uses
	// towards a v5 client (aliases.go), at most the client's own Topic
	// Alias Maximum from CONNECT. Default 64; negative: none.
	OutboundTopicAliases int
	// MaxSessionExpiry caps how long a persistent session (v3 clean
	// session 0, v5 Session Expiry Interval > 0) outlives its connection.
	// Default 24 h.
	MaxSessionExpiry time.Duration

	// SysInterval is how often the $SYS/broker/ statistics are published
	// (sys.go). Default 10 s; negative turns them off.
	SysInterval time.Duration
	// Version is published as $SYS/broker/version. Default "quire".
	Version string
	// MaxDelayed bounds the delayed publishes ($delayed/<seconds>/<topic>,
	// delayed.go) waiting at once. Default 100,000.
	MaxDelayed int
	// MaxPublishRate, when > 0, limits each connection to that many
	// PUBLISH packets per second, in bursts of up to PublishBurst (default
	// the rate), by slowing its reads (ratelimit.go).
	MaxPublishRate float64
	PublishBurst   int
	// Sessions, on a node of a cluster, says which node owns each session
	// and takes sessions over from other nodes (directory.go). Nil: the
	// sessions are this server's alone.
	Sessions SessionDirectory
}

// Defaults.
const (
	DefaultMaxPacketSize     = 16 << 20
	DefaultConnectTimeout    = 10 * time.Second
	DefaultWriteTimeout      = 30 * time.Second
	DefaultMaxInflight       = 64
	DefaultMaxQueued         = 1000
	DefaultReceiveMaximum    = 256
	DefaultTopicAliasMaximum = 64
	DefaultOutboundAliases   = 64
	DefaultMaxSessionExpiry  = 24 * time.Hour
	DefaultCursorInterval    = 100 * time.Millisecond
	DefaultSysInterval       = 10 * time.Second
	DefaultMaxDelayed        = 100_000
)

// EnsureDefaults fills zero fields with defaults.
func (o *Options) EnsureDefaults() {
	if o.Retained == nil {
		o.Retained = pubsub.NewMemoryRetained(nil)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxPacketSize <= 0 {
		o.MaxPacketSize = DefaultMaxPacketSize
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.MaxInflight <= 0 {
		o.MaxInflight = DefaultMaxInflight
	}
	if o.MaxQueued <= 0 {
		o.MaxQueued = DefaultMaxQueued
	}
	if o.ReceiveMaximum == 0 {
		o.ReceiveMaximum = DefaultReceiveMaximum
	}
	if o.TopicAliasMaximum == 0 {
		o.TopicAliasMaximum = DefaultTopicAliasMaximum
	}
	if o.OutboundTopicAliases == 0 {
		o.OutboundTopicAliases = DefaultOutboundAliases
	}
	if o.CursorInterval <= 0 {
		o.CursorInterval = DefaultCursorInterval
	}
	if o.MaxSessionExpiry <= 0 {
		o.MaxSessionExpiry = DefaultMaxSessionExpiry
	}
	if o.SysInterval == 0 {
		o.SysInterval = DefaultSysInterval
	}
	if o.Version == "" {
		o.Version = "quire"
	}
	if o.MaxDelayed <= 0 {
		o.MaxDelayed = DefaultMaxDelayed
	}
	if o.MaxPublishRate > 0 && o.PublishBurst <= 0 {
		o.PublishBurst = max(1, int(o.MaxPublishRate))
	}
	for i := range o.Listeners {
		o.Listeners[i].EnsureDefaults()
	}
}

// Validate reports options that cannot work.
func (o *Options) Validate() error {
	if o.Storage == nil {
		return errors.New("mqtt: Options.Storage is required")
	}
	if _, ok := o.Storage.(ReplayStorage); o.Store != nil && !ok {
		return fmt.Errorf("mqtt: Options.Store needs a Storage that can replay (ReplayStorage), not %T", o.Storage)
	}
	if o.MaxPacketSize > packet.MaxPacketSize {
		return fmt.Errorf("mqtt: MaxPacketSize %d over the protocol's %d", o.MaxPacketSize, packet.MaxPacketSize)
	}
	if o.MaxInflight > 65535 {
		return fmt.Errorf("mqtt: MaxInflight %d over 65535 packet identifiers", o.MaxInflight)
	}
	names := map[string]bool{}
	for _, l := range o.Listeners {
		if err := l.Validate(); err != nil {
			return err
		}
		if names[l.Name] {
			return fmt.Errorf("mqtt: two listeners named %q", l.Name)
		}
		names[l.Name] = true
	}
	return nil
}
