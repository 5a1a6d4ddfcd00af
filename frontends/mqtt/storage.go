package mqtt

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quiremq/quire/frontends/mqtt/store"
	"github.com/quiremq/quire/frontends/pubsub"
	"github.com/quiremq/quire/shard"
)

// Storage persists published messages. Append returns once the message is
// as durable as its engine promises, with the message's position (a zero
// Position if the storage has none); the broker acknowledges a QoS 1 or 2
// PUBLISH only after that. Implementations are safe for concurrent use.
type Storage interface {
	Append(ctx context.Context, m *pubsub.Message) (Position, error)
}

// BatchStorage is a Storage that appends several messages in one call:
// the messages of one shard go in one append, in order, so a batch costs
// one write (one fsync on a durable engine) per shard. The broker batches
// the QoS 0 and 1 PUBLISHes a client has sent before it waits for more.
type BatchStorage interface {
	Storage
	// AppendBatch appends ms, keeping their order per topic, and sets
	// pos[i] and errs[i] (both of len(ms)) for ms[i]: the message is
	// stored at pos[i] if errs[i] is nil.
	AppendBatch(ctx context.Context, ms []*pubsub.Message, pos []Position, errs []error)
}

// Position is where a message is stored: shard name and offset.
type Position = store.Position

// Stored is a message read back from storage, with its position.
type Stored struct {
	Pos Position
	Msg *pubsub.Message
	// Delayed is the stamp of a released delayed publish (delayed.go),
	// "" for any other message.
	Delayed string
	// Origin is the node a message forwarded here was published on
	// (HeaderOrigin), 0 for this node's own.
	Origin uint64
}

// ReplayStorage is a Storage whose messages can be read back, which
// persistent sessions need (Options.Store): offline queues are rebuilt
// from it after a restart. ShardStorage implements it.
type ReplayStorage interface {
	Storage
	// Done tells the storage that the message at pos was handed to every
	// matching session (or its publish failed after the append).
	Done(pos Position)
	// Frontiers returns, for every open shard, the offset below which
	// every message is Done.
	Frontiers() map[string]uint64
	// OpenAll opens every existing shard of the storage, so that
	// Frontiers covers them.
	OpenAll(ctx context.Context) error
	// Next returns the shard topic is stored in and its high watermark:
	// the next message on topic will be at or above it. It opens (or
	// creates) the shard.
	Next(ctx context.Context, topic string) (Position, error)
	// Watermarks returns an open shard's low and high watermarks.
	Watermarks(shard string) (low, high uint64, ok bool)
	// Read returns up to max messages of shard from offset from on.
	Read(ctx context.Context, shard string, from uint64, max int) ([]Stored, error)
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
	HeaderQoS2ID          = "mqtt.qos2-id"          // a QoS 2 PUBLISH's packet identifier, decimal
	HeaderDelayed         = "mqtt.delayed"          // a released delayed publish's stamp (delayed.go)
	userPrefix            = "mqtt.user."
)

// DefaultShardsPerEngine is the number of shards a ShardStorage hashes topics
// onto per engine.
const DefaultShardsPerEngine = 16

// ShardStorage appends each message to a shard picked from its topic: the
// router picks the engine by the topic's rule, and the topic is hashed
// (FNV-1a, 32 bits) onto one of a fixed number of shards of that engine,
// named "mqtt/<engine>/<n>" (ShardName), or "mqtt/<engine>/<node>/<n>" on
// an engine the nodes share (NodeScoped). Millions of topics therefore mean
// ShardsPerEngine shards per engine, not millions. A record's key is the
// topic name, its value the payload, its timestamp the time the broker
// accepted it; its headers carry the rest (Header* constants). Shards are
// created on first use and kept open until Close.
//
// ShardStorage also tracks, per shard, a frontier: the offset below which
// every appended message is Done (handed to the sessions). Offsets are
// dense, so the frontier advances over the contiguous Done offsets; an
// append that failed after the engine assigned an offset holds it back,
// which costs redelivery after a restart, never a loss.
type ShardStorage struct {
	router *shard.Router
	n      int
	names  sync.Map          // engine → []string, the shard names by index
	scoped map[string]string // engine → "<node>/" for node-scoped engines (NodeScoped); set before use

	mu     sync.RWMutex
	shards map[string]*openShard
	closed bool
}

type openShard struct {
	sh shard.Shard

	mu       sync.Mutex
	frontier uint64
	done     map[uint64]struct{} // Done offsets at or above frontier
}

var (
	_ ReplayStorage = (*ShardStorage)(nil)
	_ BatchStorage  = (*ShardStorage)(nil)
)

// NewShardStorage returns a ShardStorage over router with shardsPerEngine
// shards per engine (0: DefaultShardsPerEngine). Changing shardsPerEngine
// on existing data moves topics to other shards: order per topic holds only
// within one setting.
func NewShardStorage(router *shard.Router, shardsPerEngine int) *ShardStorage {
	if shardsPerEngine <= 0 {
		shardsPerEngine = DefaultShardsPerEngine
	}
	return &ShardStorage{router: router, n: shardsPerEngine, shards: map[string]*openShard{}}
}

// NodeScoped scopes the shards of the named engines by node: "mqtt/
// <engine>/<node>/<n>" instead of "mqtt/<engine>/<n>", and returns st. An
// engine whose shard namespace the nodes of a cluster share, with one
// writer per shard fenced when another node opens it (the journal engine:
// shards in meta, ledgers on the bookies), needs it when several nodes
// serve MQTT on it: with the plain names each node's open of "mqtt/
// journal/3" fences the others' writer of the same shard. Node-local
// engines (memory, file) need not. Call it before the storage is used.
// Switching an engine's naming on existing data leaves the shards of the
// other naming unread: their undelivered messages are not replayed.
func (st *ShardStorage) NodeScoped(node uint64, engines ...string) *ShardStorage {
	if st.scoped == nil {
		st.scoped = map[string]string{}
	}
	for _, e := range engines {
		st.scoped[e] = strconv.FormatUint(node, 10) + "/"
	}
	return st
}

// ShardName is the shard topic is stored in on engine, with n shards per
// engine (not node-scoped).
func ShardName(engine, topic string, n int) string {
	return shardPrefix(engine, "") + strconv.Itoa(shardIndex(topic, n))
}

// shardPrefix is what the names of engine's shards start with, scope being
// "<node>/" for a node-scoped engine, else "".
func shardPrefix(engine, scope string) string { return "mqtt/" + engine + "/" + scope }

// shardIndex is FNV-1a (32 bits) of topic modulo n.
func shardIndex(topic string, n int) int {
	const offset, prime = 2166136261, 16777619
	h := uint32(offset)
	for i := 0; i < len(topic); i++ {
		h ^= uint32(topic[i])
		h *= prime
	}
	return int(h % uint32(n))
}

// shardOf returns the engine and the shard name of topic; the names are
// built once per engine.
func (st *ShardStorage) shardOf(topic string) (engine, name string) {
	engine = st.router.EngineName(topic)
	v, ok := st.names.Load(engine)
	if !ok {
		names := make([]string, st.n)
		prefix := shardPrefix(engine, st.scoped[engine])
		for i := range names {
			names[i] = prefix + strconv.Itoa(i)
		}
		v, _ = st.names.LoadOrStore(engine, names)
	}
	return engine, v.([]string)[shardIndex(topic, st.n)]
}

// Append implements Storage.
func (st *ShardStorage) Append(ctx context.Context, m *pubsub.Message) (Position, error) {
	engine, name := st.shardOf(m.Topic)
	os, err := st.shard(ctx, engine, name, true)
	if err != nil {
		return Position{}, err
	}
	off, err := os.sh.Append(ctx, []shard.Record{EncodeRecord(m)})
	if err != nil {
		return Position{}, err
	}
	return Position{Shard: name, Offset: off}, nil
}

// AppendBatch implements BatchStorage: one shard Append per shard, with
// that shard's messages in batch order.
func (st *ShardStorage) AppendBatch(ctx context.Context, ms []*pubsub.Message, pos []Position, errs []error) {
	buf := newRecordBuf(ms)
	st.appendEach(ctx, len(ms), func(i int) string { return ms[i].Topic },
		func(i int) shard.Record { return buf.encode(ms[i]) }, pos, errs)
}

// appendEach is AppendBatch for n records: record i, rec(i), goes to
// topic(i)'s shard (InjectForwarded stores records received from a peer).
func (st *ShardStorage) appendEach(ctx context.Context, n int, topic func(int) string, rec func(int) shard.Record, pos []Position, errs []error) {
	type group struct {
		engine string
		idx    []int
	}
	var groups map[string]*group // by shard name
	var order []string
	for i := range n {
		engine, name := st.shardOf(topic(i))
		pos[i] = Position{Shard: name}
		if groups == nil {
			groups = make(map[string]*group, 1)
		}
		g := groups[name]
		if g == nil {
			g = &group{engine: engine}
			groups[name] = g
			order = append(order, name)
		}
		g.idx = append(g.idx, i)
	}
	recs := make([]shard.Record, 0, n) // one allocation, for the largest group at most
	for _, name := range order {
		g := groups[name]
		os, err := st.shard(ctx, g.engine, name, true)
		var off uint64
		if err == nil {
			recs = recs[:0]
			for _, i := range g.idx {
				recs = append(recs, rec(i))
			}
			off, err = os.sh.Append(ctx, recs)
		}
		for k, i := range g.idx {
			pos[i].Offset, errs[i] = off+uint64(k), err
		}
	}
}

// Next implements ReplayStorage.
func (st *ShardStorage) Next(ctx context.Context, topic string) (Position, error) {
	engine, name := st.shardOf(topic)
	os, err := st.shard(ctx, engine, name, true)
	if err != nil {
		return Position{}, err
	}
	_, high := os.sh.Watermarks()
	return Position{Shard: name, Offset: high}, nil
}

// Done implements ReplayStorage.
func (st *ShardStorage) Done(pos Position) {
	st.mu.RLock()
	os := st.shards[pos.Shard]
	st.mu.RUnlock()
	if os == nil {
		return
	}
	os.mu.Lock()
	defer os.mu.Unlock()
	if pos.Offset < os.frontier {
		return
	}
	if pos.Offset > os.frontier {
		if os.done == nil {
			os.done = map[uint64]struct{}{}
		}
		os.done[pos.Offset] = struct{}{}
		return
	}
	os.frontier++
	for {
		if _, ok := os.done[os.frontier]; !ok {
			return
		}
		delete(os.done, os.frontier)
		os.frontier++
	}
}

// Frontiers implements ReplayStorage.
func (st *ShardStorage) Frontiers() map[string]uint64 {
	st.mu.RLock()
	defer st.mu.RUnlock()
	f := make(map[string]uint64, len(st.shards))
	for name, os := range st.shards {
		os.mu.Lock()
		f[name] = os.frontier
		os.mu.Unlock()
	}
	return f
}

// OpenAll implements ReplayStorage: it opens every shard of every engine
// named as this storage names them ("mqtt/<engine>/<n>", or "mqtt/
// <engine>/<node>/<n>" for a node-scoped engine), and no other: another
// node's shards of a shared engine stay closed (opening one would fence
// its writer).
func (st *ShardStorage) OpenAll(ctx context.Context) error {
	for engine, e := range st.router.Engines() {
		names, err := e.List(ctx)
		if err != nil {
			return fmt.Errorf("mqtt: list shards of %s: %w", engine, err)
		}
		prefix := shardPrefix(engine, st.scoped[engine])
		for _, name := range names {
			if i, ok := strings.CutPrefix(name, prefix); ok && i != "" && strings.Trim(i, "0123456789") == "" {
				if _, err := st.shard(ctx, engine, name, false); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// Watermarks implements ReplayStorage.
func (st *ShardStorage) Watermarks(name string) (low, high uint64, ok bool) {
	st.mu.RLock()
	os := st.shards[name]
	st.mu.RUnlock()
	if os == nil {
		return 0, 0, false
	}
	low, high = os.sh.Watermarks()
	return low, high, true
}

// Read implements ReplayStorage.
func (st *ShardStorage) Read(ctx context.Context, name string, from uint64, max int) ([]Stored, error) {
	st.mu.RLock()
	os := st.shards[name]
	st.mu.RUnlock()
	if os == nil {
		return nil, fmt.Errorf("mqtt: shard %s is not open: %w", name, shard.ErrNotFound)
	}
	recs, err := os.sh.Read(ctx, from, shard.Limits{MaxRecords: max, MaxBytes: 4 << 20})
	if err != nil {
		return nil, fmt.Errorf("mqtt: read shard %s at %d: %w", name, from, err)
	}
	out := make([]Stored, 0, len(recs))
	for i := range recs {
		m, stamp, err := decodeRecord(&recs[i])
		if err != nil {
			return nil, fmt.Errorf("mqtt: shard %s offset %d: %w", name, recs[i].Offset, err)
		}
		origin, _ := recordOrigin(&recs[i])
		out = append(out, Stored{Pos: Position{Shard: name, Offset: recs[i].Offset}, Msg: m, Delayed: stamp, Origin: origin})
	}
	return out, nil
}

// shard returns the open shard name of engine, opening it (and, with
// create, creating it) on first use. A shard's frontier starts at its high
// watermark when opened: nothing below was appended through this storage.
func (st *ShardStorage) shard(ctx context.Context, engine, name string, create bool) (*openShard, error) {
	st.mu.RLock()
	os := st.shards[name]
	closed := st.closed
	st.mu.RUnlock()
	if os != nil {
		return os, nil
	}
	if closed {
		return nil, shard.ErrClosed
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if os := st.shards[name]; os != nil {
		return os, nil
	}
	if st.closed {
		return nil, shard.ErrClosed
	}
	e, ok := st.router.Lookup(engine)
	if !ok {
		return nil, fmt.Errorf("mqtt: engine %q not available", engine)
	}
	sh, err := e.Open(ctx, name)
	if create && errors.Is(err, shard.ErrNotFound) {
		sh, err = e.Create(ctx, name)
		if errors.Is(err, shard.ErrExists) {
			sh, err = e.Open(ctx, name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("mqtt: open shard %s: %w", name, err)
	}
	_, high := sh.Watermarks()
	os = &openShard{sh: sh, frontier: high}
	st.shards[name] = os
	return os, nil
}

// Close forgets the open shards (the engines own and close them); later
// Appends fail with shard.ErrClosed.
func (st *ShardStorage) Close() error {
	st.mu.Lock()
	st.shards = map[string]*openShard{}
	st.closed = true
	st.mu.Unlock()
	return nil
}

// digits are the values of the QoS and retain headers; engines copy what
// they store and never write to a record's slices.
var digits = [3][]byte{[]byte("0"), []byte("1"), []byte("2")}

// EncodeRecord is the shard record of m (see ShardStorage).
func EncodeRecord(m *pubsub.Message) shard.Record {
	b := recordBuf{hdrs: make([]shard.Header, 0, 4), bytes: make([]byte, 0, len(m.Topic)+len(m.Publisher))}
	return b.encode(m)
}

// recordBuf holds the headers and the copied strings of the records
// encoded into it: AppendBatch encodes a batch into one (two allocations
// per batch instead of three per message). Its records share its memory;
// engines copy what they store.
type recordBuf struct {
	hdrs  []shard.Header
	bytes []byte
}

// newRecordBuf returns a recordBuf sized for the usual headers of ms (QoS,
// retain, publisher) and their topics and publishers.
func newRecordBuf(ms []*pubsub.Message) *recordBuf {
	n := 0
	for _, m := range ms {
		n += len(m.Topic) + len(m.Publisher)
	}
	return &recordBuf{hdrs: make([]shard.Header, 0, 3*len(ms)), bytes: make([]byte, 0, n)}
}

// str returns a copy of v in b.bytes. Past their capacity a new array is
// taken: the records encoded before keep the old one.
func (b *recordBuf) str(v string) []byte {
	if len(b.bytes)+len(v) > cap(b.bytes) {
		b.bytes = make([]byte, 0, max(len(v), 2*cap(b.bytes), 64))
	}
	n := len(b.bytes)
	b.bytes = append(b.bytes, v...)
	return b.bytes[n:len(b.bytes):len(b.bytes)]
}

func (b *recordBuf) encode(m *pubsub.Message) shard.Record {
	start := len(b.hdrs)
	r := shard.Record{Timestamp: m.Time.UnixMilli(), Key: b.str(m.Topic), Value: m.Payload}
	add := func(k, v string) { b.hdrs = append(b.hdrs, shard.Header{Key: k, Value: b.str(v)}) }
	b.hdrs = append(b.hdrs, shard.Header{Key: HeaderQoS, Value: digits[m.QoS%3]})
	if m.Retain {
		b.hdrs = append(b.hdrs, shard.Header{Key: HeaderRetain, Value: digits[1]})
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
		b.hdrs = append(b.hdrs, shard.Header{Key: HeaderCorrelationData, Value: m.CorrelationData})
	}
	if !m.Expiry.IsZero() {
		add(HeaderExpiry, strconv.FormatInt(m.Expiry.UnixMilli(), 10))
	}
	if m.PacketID != 0 {
		add(HeaderQoS2ID, strconv.Itoa(int(m.PacketID)))
	}
	for _, h := range m.Headers {
		k := h.Key
		if k == delayedStampKey {
			add(HeaderDelayed, h.Value)
			continue
		}
		if strings.HasPrefix(k, "mqtt.") {
			k = userPrefix + k
		}
		add(k, h.Value)
	}
	r.Headers = b.hdrs[start:len(b.hdrs):len(b.hdrs)]
	return r
}

// ErrBadRecord is returned by DecodeRecord for a record this package did
// not write.
var ErrBadRecord = errors.New("mqtt: not an MQTT record")

// DecodeRecord is the message of a record written by EncodeRecord.
func DecodeRecord(r *shard.Record) (*pubsub.Message, error) {
	m, _, err := decodeRecord(r)
	return m, err
}

// decodeRecord is DecodeRecord, also returning a delayed publish's stamp
// (HeaderDelayed), which is not part of the message.
func decodeRecord(r *shard.Record) (m *pubsub.Message, stamp string, err error) {
	m = &pubsub.Message{Topic: string(r.Key), Payload: r.Value, Time: time.UnixMilli(r.Timestamp)}
	qos := -1
	for _, h := range r.Headers {
		v := string(h.Value)
		switch h.Key {
		case HeaderDelayed:
			stamp = v
		case HeaderQoS:
			if len(v) == 1 && v[0] >= '0' && v[0] <= '2' {
				qos = int(v[0] - '0')
			}
		case HeaderRetain:
			m.Retain = v == "1"
		case HeaderPublisher:
			m.Publisher = v
		case HeaderPayloadFormat:
			if v == "1" {
				m.PayloadFormat = 1
			}
		case HeaderContentType:
			m.ContentType = v
		case HeaderResponseTopic:
			m.ResponseTopic = v
		case HeaderCorrelationData:
			m.CorrelationData = h.Value
		case HeaderExpiry:
			ms, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, "", fmt.Errorf("%w: bad %s %q", ErrBadRecord, HeaderExpiry, v)
			}
			m.Expiry = time.UnixMilli(ms)
		case HeaderQoS2ID:
			id, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return nil, "", fmt.Errorf("%w: bad %s %q", ErrBadRecord, HeaderQoS2ID, v)
			}
			m.PacketID = uint16(id)
		default:
			k := h.Key
			if strings.HasPrefix(k, "mqtt.") {
				var ok bool
				if k, ok = strings.CutPrefix(k, userPrefix); !ok {
					continue // a header of a later version
				}
			}
			m.Headers = append(m.Headers, pubsub.Header{Key: k, Value: v})
		}
	}
	if qos < 0 {
		return nil, "", fmt.Errorf("%w: no valid %s header", ErrBadRecord, HeaderQoS)
	}
	m.QoS = byte(qos)
	return m, stamp, nil
}
