package mqtt

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"

	"github.com/quiremq/quire/frontends/pubsub"
	"github.com/quiremq/quire/shard"
)

// Storage persists published messages. Append returns once the message is
// as durable as its engine promises; the broker acknowledges a QoS 1 or 2
// PUBLISH only after that. Implementations are safe for concurrent use.
type Storage interface {
	Append(ctx context.Context, m *pubsub.Message) error
}

// Record headers written for each message. User properties are stored as
// headers under their own key, so a Kafka consumer of the shard sees them as
// record headers; a user property whose key starts with "mqtt." is stored
// under "mqtt.user." + key, keeping the "mqtt." prefix for these.
const (
	HeaderQoS             = "mqtt.qos"              // "0", "1" or "2"
	HeaderRetain          = "mqtt.retain"           // "1" when set
	HeaderPublisher       = "mqtt.publisher"        // client identifier
	HeaderPayloadFormat   = "mqtt.payload-format"   // "1": UTF-8
	HeaderContentType     = "mqtt.content-type"     // v5 Content Type
	HeaderResponseTopic   = "mqtt.response-topic"   // v5 Response Topic
	HeaderCorrelationData = "mqtt.correlation-data" // v5 Correlation Data
	HeaderExpiry          = "mqtt.expiry"           // Unix ms when the message expires
	userPrefix            = "mqtt.user."
)

// DefaultShardsPerEngine is the number of shards a ShardStorage hashes topics
// onto per engine.
const DefaultShardsPerEngine = 16

// ShardStorage appends each message to a shard picked from its topic: the
// router picks the engine by the topic's rule, and the topic is hashed
// (FNV-1a, 32 bits) onto one of a fixed number of shards of that engine,
// named "mqtt/<engine>/<n>" (ShardName). Millions of topics therefore mean
// ShardsPerEngine shards per engine, not millions. A record's key is the
// topic name, its value the payload, its timestamp the time the broker
// accepted it; its headers carry the rest (Header* constants). Shards are
// created on first use and kept open until Close.
type ShardStorage struct {
	router *shard.Router
	n      int

	mu     sync.Mutex
	shards map[string]shard.Shard
}

var _ Storage = (*ShardStorage)(nil)

// NewShardStorage returns a ShardStorage over router with shardsPerEngine
// shards per engine (0: DefaultShardsPerEngine). Changing shardsPerEngine
// on existing data moves topics to other shards: order per topic holds only
// within one setting.
func NewShardStorage(router *shard.Router, shardsPerEngine int) *ShardStorage {
	if shardsPerEngine <= 0 {
		shardsPerEngine = DefaultShardsPerEngine
	}
	return &ShardStorage{router: router, n: shardsPerEngine, shards: map[string]shard.Shard{}}
}

// ShardName is the shard topic is stored in on engine, with n shards per
// engine.
func ShardName(engine, topic string, n int) string {
	h := fnv.New32a()
	h.Write([]byte(topic))
	return "mqtt/" + engine + "/" + strconv.Itoa(int(h.Sum32()%uint32(n)))
}

// Append implements Storage.
func (st *ShardStorage) Append(ctx context.Context, m *pubsub.Message) error {
	engine := st.router.EngineName(m.Topic)
	sh, err := st.shard(ctx, engine, ShardName(engine, m.Topic, st.n))
	if err != nil {
		return err
	}
	_, err = sh.Append(ctx, []shard.Record{EncodeRecord(m)})
	return err
}

func (st *ShardStorage) shard(ctx context.Context, engine, name string) (shard.Shard, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if sh := st.shards[name]; sh != nil {
		return sh, nil
	}
	if st.shards == nil {
		return nil, shard.ErrClosed
	}
	e, ok := st.router.Lookup(engine)
	if !ok {
		return nil, fmt.Errorf("mqtt: engine %q not available", engine)
	}
	sh, err := e.Open(ctx, name)
	if errors.Is(err, shard.ErrNotFound) {
		sh, err = e.Create(ctx, name)
		if errors.Is(err, shard.ErrExists) {
			sh, err = e.Open(ctx, name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("mqtt: open shard %s: %w", name, err)
	}
	st.shards[name] = sh
	return sh, nil
}

// Close forgets the open shards (the engines own and close them); later
// Appends fail with shard.ErrClosed.
func (st *ShardStorage) Close() error {
	st.mu.Lock()
	st.shards = nil
	st.mu.Unlock()
	return nil
}

// EncodeRecord is the shard record of m (see ShardStorage).
func EncodeRecord(m *pubsub.Message) shard.Record {
	r := shard.Record{Timestamp: m.Time.UnixMilli(), Key: []byte(m.Topic), Value: m.Payload}
	add := func(k, v string) { r.Headers = append(r.Headers, shard.Header{Key: k, Value: []byte(v)}) }
	add(HeaderQoS, strconv.Itoa(int(m.QoS)))
	if m.Retain {
		add(HeaderRetain, "1")
	}
	if m.Publisher != "" {
		add(HeaderPublisher, m.Publisher)
	}
	if m.PayloadFormat != 0 {
		add(HeaderPayloadFormat, strconv.Itoa(int(m.PayloadFormat)))
	}
	if m.ContentType != "" {
		add(HeaderContentType, m.ContentType)
	}
	if m.ResponseTopic != "" {
		add(HeaderResponseTopic, m.ResponseTopic)
	}
	if m.CorrelationData != nil {
		r.Headers = append(r.Headers, shard.Header{Key: HeaderCorrelationData, Value: m.CorrelationData})
	}
	if !m.Expiry.IsZero() {
		add(HeaderExpiry, strconv.FormatInt(m.Expiry.UnixMilli(), 10))
	}
	for _, h := range m.Headers {
		k := h.Key
		if strings.HasPrefix(k, "mqtt.") {
			k = userPrefix + k
		}
		add(k, h.Value)
	}
	return r
}
