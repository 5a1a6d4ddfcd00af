package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/cockroachdb/pebble/v2"

	"github.com/quiremq/quire/frontends/pubsub"
	"github.com/quiremq/quire/internal/vfs"
)

// Key prefixes: part of the on-disk format.
const (
	prefixSession  = 's' // s<client>                      → Session (JSON)
	prefixCursor   = 'c' // c<client>\x00<shard>           → u64 BE offset
	prefixGlobal   = 'g' // g<shard>                       → u64 BE offset
	prefixOutbound = 'o' // o<client>\x00<pid u16 BE>      → Outbound (JSON)
	prefixDone     = 'd' // d<client>\x00<shard>\x00<u64>  → empty
	prefixInbound  = 'i' // i<client>\x00<pid u16 BE>      → Position (JSON)
	prefixRetained = 'r' // r<topic>                       → pubsub.Message (JSON)
	prefixGroup    = 'h' // h<group>\x00<filter>\x00<shard> → u64 BE offset
	prefixHandover = 'x' // x<client>                      → Handover (JSON)
)

// GroupKey names a shared subscription (share name and inner filter) in
// the store: group and filter joined by 0x00, which neither may contain.
func GroupKey(group, filter string) string { return group + "\x00" + filter }

// SplitGroupKey is GroupKey's inverse.
func SplitGroupKey(k string) (group, filter string) {
	group, filter, _ = strings.Cut(k, "\x00")
	return group, filter
}

// Errors.
var (
	// ErrCorrupt is returned when a stored value cannot be decoded.
	ErrCorrupt = errors.New("mqtt store: corrupt value")
)

// Options configure a Store.
type Options struct {
	// FS is the file system; default vfs.Default.
	FS vfs.FS
	// Dir holds the Pebble files. Required.
	Dir string
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Sub is one persisted subscription.
type Sub struct {
	Filter            string `json:"f"` // as subscribed, "$share/…" included
	QoS               byte   `json:"q,omitempty"`
	NoLocal           bool   `json:"nl,omitempty"`
	RetainAsPublished bool   `json:"rap,omitempty"`
	RetainHandling    byte   `json:"rh,omitempty"`
	ID                uint32 `json:"id,omitempty"`
}

// Session is the low-rate state of one persistent session.
type Session struct {
	ClientID string `json:"client"`
	Version  byte   `json:"v"`
	// ExpirySeconds is the session expiry in force.
	ExpirySeconds uint32 `json:"exp"`
	// DisconnectedAt is when the session went offline (Unix ms); 0 while
	// a connection held it.
	DisconnectedAt int64 `json:"disc,omitempty"`
	Subs           []Sub `json:"subs,omitempty"`
	// Will is a pending will (its connection closed abnormally), due at
	// WillDue (Unix ms).
	Will    *pubsub.Message `json:"will,omitempty"`
	WillDue int64           `json:"will_due,omitempty"`
	// Copies are the QoS 1 and 2 messages owed to the session that are
	// at no position it has a cursor for (retained messages queued at
	// SUBSCRIBE), queued or inflight, in the order they are owed.
	Copies []Copy `json:"copies,omitempty"`
}

// Copy is a message a session is owed by value (Session.Copies).
type Copy struct {
	Msg    *pubsub.Message `json:"m"`
	QoS    byte            `json:"q"`
	Retain bool            `json:"rt,omitempty"`
	SubIDs []uint32        `json:"sid,omitempty"`
	// ID, Seq and Released are set once it was sent (inflight): its
	// packet identifier, send order and, for QoS 2, whether PUBREC came.
	ID       uint16 `json:"id,omitempty"`
	Seq      uint64 `json:"n,omitempty"`
	Released bool   `json:"r,omitempty"`
}

// Position is a message's place in the shards.
type Position struct {
	Shard  string `json:"s"`
	Offset uint64 `json:"o"`
}

// Outbound is an outbound QoS 2 message awaiting PUBREC (Released false)
// or PUBCOMP (Released true), under its packet identifier.
type Outbound struct {
	Pos      Position `json:"p"`
	Released bool     `json:"r,omitempty"`
	// Seq orders a session's inflight messages as they were sent.
	Seq uint64 `json:"n"`
	// QoS, Retain and SubIDs are those of the delivery.
	QoS    byte     `json:"q"`
	Retain bool     `json:"rt,omitempty"`
	SubIDs []uint32 `json:"sid,omitempty"`
	// Group is the GroupKey of the shared subscription it came through,
	// "" for none.
	Group string `json:"g,omitempty"`
}

// Store is the broker's local Pebble store of sessions, positions and
// retained messages. Safe for concurrent use.
type Store struct {
	db  *pebble.DB
	log *slog.Logger
}

// Open opens (creating if needed) the store in o.Dir.
func Open(o Options) (*Store, error) {
	if o.Dir == "" {
		return nil, errors.New("mqtt store: Options.Dir is required")
	}
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if err := o.FS.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("mqtt store: %w", err)
	}
	db, err := pebble.Open(o.Dir, &pebble.Options{FS: o.FS, Logger: pebbleLogger{o.Logger}})
	if err != nil {
		return nil, fmt.Errorf("mqtt store: open %s: %w", o.Dir, err)
	}
	return &Store{db: db, log: o.Logger}, nil
}

// Close flushes and closes the store.
func (s *Store) Close() error { return s.db.Close() }

type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug("mqtt store: " + fmt.Sprintf(format, args...))
}
func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error("mqtt store: " + fmt.Sprintf(format, args...))
}
func (p pebbleLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf("mqtt store: "+format, args...))
}

func key(prefix byte, parts ...string) []byte {
	b := []byte{prefix}
	for i, p := range parts {
		if i > 0 {
			b = append(b, 0)
		}
		b = append(b, p...)
	}
	return b
}

func clientPrefix(prefix byte, client string) []byte {
	return append(key(prefix, client), 0)
}

func pidKey(prefix byte, client string, pid uint16) []byte {
	return binary.BigEndian.AppendUint16(clientPrefix(prefix, client), pid)
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// upper returns the smallest key above every key starting with p.
func upper(p []byte) []byte {
	u := bytes.Clone(p)
	for i := len(u) - 1; i >= 0; i-- {
		if u[i] < 0xff {
			u[i]++
			return u[:i+1]
		}
	}
	return nil
}

func opts(sync bool) *pebble.WriteOptions {
	if sync {
		return pebble.Sync
	}
	return pebble.NoSync
}

// scan calls fn for each key with prefix p, in order.
func (s *Store) scan(p []byte, fn func(k, v []byte) error) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: upper(p)})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		if err := fn(it.Key(), it.Value()); err != nil {
			it.Close()
			return err
		}
	}
	return errors.Join(it.Error(), it.Close())
}

// PutSession stores sess and, in the same batch, the given cursors of the
// client (shard → offset) and of shared subscriptions (GroupKey → shard →
// offset); with sync, durably before returning.
func (s *Store) PutSession(sess *Session, cursors map[string]uint64, groups map[string]map[string]uint64, sync bool) error {
	b := s.db.NewBatch()
	defer b.Close()
	if err := setSession(b, sess); err != nil {
		return err
	}
	for sh, off := range cursors {
		b.Set(key(prefixCursor, sess.ClientID, sh), u64(off), nil)
	}
	setGroupCursors(b, groups)
	return b.Commit(opts(sync))
}

func setGroupCursors(b *pebble.Batch, groups map[string]map[string]uint64) {
	for g, m := range groups {
		for sh, off := range m {
			b.Set(key(prefixGroup, g, sh), u64(off), nil)
		}
	}
}

// Sessions calls fn for each stored session.
func (s *Store) Sessions(fn func(*Session) error) error {
	return s.scan([]byte{prefixSession}, func(k, v []byte) error {
		var sess Session
		if err := json.Unmarshal(v, &sess); err != nil {
			return fmt.Errorf("%w: session %q: %v", ErrCorrupt, k[1:], err)
		}
		return fn(&sess)
	})
}

// DeleteSession removes every record of client (session, cursors,
// packet-id state, done markers), durably.
func (s *Store) DeleteSession(client string) error {
	b := s.db.NewBatch()
	defer b.Close()
	b.Delete(key(prefixSession, client), nil)
	for _, p := range []byte{prefixCursor, prefixOutbound, prefixDone, prefixInbound} {
		cp := clientPrefix(p, client)
		b.DeleteRange(cp, upper(cp), nil)
	}
	return b.Commit(pebble.Sync)
}

// Cursors is a batch of positions: per client, per shard, the offset
// below which nothing is owed to it (absent: the global cursor); and the
// global cursor per shard.
type Cursors struct {
	// Clients maps client → shard → offset to set.
	Clients map[string]map[string]uint64
	// Clear maps client → shards whose cursor is deleted (the client then
	// uses the global one).
	Clear map[string][]string
	// Global maps shard → global cursor.
	Global map[string]uint64
	// Groups and ClearGroups are Clients and Clear for shared
	// subscriptions, by GroupKey: the offset below which nothing is owed
	// to any member through the group.
	Groups      map[string]map[string]uint64
	ClearGroups map[string][]string
}

// PutSessions writes session records in one batch without fsync (the
// broker's next PutCursors syncs them).
func (s *Store) PutSessions(recs []*Session) error {
	b := s.db.NewBatch()
	defer b.Close()
	for _, r := range recs {
		if err := setSession(b, r); err != nil {
			return err
		}
	}
	return b.Commit(pebble.NoSync)
}

func setSession(b *pebble.Batch, sess *Session) error {
	v, err := json.Marshal(sess)
	if err != nil {
		return err
	}
	return b.Set(key(prefixSession, sess.ClientID), v, nil)
}

// PutCursors writes c in one batch. The broker writes it from a background
// loop, not on the publish path, so it is synced: Pebble keeps unsynced
// log records in its own buffer until a 32 KiB block fills, so without the
// sync even a process crash (kill -9) would lose the cursors. Losing them
// only means redelivery (QoS 1 is at least once), and the sync also covers
// the unsynced retained and done-marker writes before it.
func (s *Store) PutCursors(c *Cursors) error {
	b := s.db.NewBatch()
	defer b.Close()
	for client, m := range c.Clients {
		for sh, off := range m {
			b.Set(key(prefixCursor, client, sh), u64(off), nil)
		}
	}
	for client, shards := range c.Clear {
		for _, sh := range shards {
			b.Delete(key(prefixCursor, client, sh), nil)
		}
	}
	for sh, off := range c.Global {
		b.Set(key(prefixGlobal, sh), u64(off), nil)
	}
	setGroupCursors(b, c.Groups)
	for g, shards := range c.ClearGroups {
		for _, sh := range shards {
			b.Delete(key(prefixGroup, g, sh), nil)
		}
	}
	return b.Commit(pebble.Sync)
}

// GroupCursors returns the cursors of every shared subscription: GroupKey
// → shard → offset.
func (s *Store) GroupCursors() (map[string]map[string]uint64, error) {
	m := map[string]map[string]uint64{}
	err := s.scan([]byte{prefixGroup}, func(k, v []byte) error {
		i := bytes.LastIndexByte(k, 0)
		if len(v) != 8 || i < 1 || bytes.IndexByte(k[1:i], 0) < 0 {
			return fmt.Errorf("%w: group cursor %q", ErrCorrupt, k)
		}
		g := string(k[1:i])
		if m[g] == nil {
			m[g] = map[string]uint64{}
		}
		m[g][string(k[i+1:])] = binary.BigEndian.Uint64(v)
		return nil
	})
	return m, err
}

// DeleteGroup removes a shared subscription's cursors (it has no member
// left), durably.
func (s *Store) DeleteGroup(group string) error {
	p := append(key(prefixGroup, group), 0)
	return s.db.DeleteRange(p, upper(p), pebble.Sync)
}

// ClientCursors returns client's stored cursors.
func (s *Store) ClientCursors(client string) (map[string]uint64, error) {
	m := map[string]uint64{}
	p := clientPrefix(prefixCursor, client)
	err := s.scan(p, func(k, v []byte) error {
		if len(v) != 8 {
			return fmt.Errorf("%w: cursor %q", ErrCorrupt, k)
		}
		m[string(k[len(p):])] = binary.BigEndian.Uint64(v)
		return nil
	})
	return m, err
}

// GlobalCursors returns the global cursor of each shard.
func (s *Store) GlobalCursors() (map[string]uint64, error) {
	m := map[string]uint64{}
	err := s.scan([]byte{prefixGlobal}, func(k, v []byte) error {
		if len(v) != 8 {
			return fmt.Errorf("%w: global cursor %q", ErrCorrupt, k)
		}
		m[string(k[1:])] = binary.BigEndian.Uint64(v)
		return nil
	})
	return m, err
}

// PutOutbound stores outbound QoS 2 messages' state (by packet
// identifier) durably, in one batch: it is written before the PUBLISH (or
// PUBREL) it describes is sent.
func (s *Store) PutOutbound(client string, os map[uint16]*Outbound) error {
	b := s.db.NewBatch()
	defer b.Close()
	for pid, o := range os {
		v, err := json.Marshal(o)
		if err != nil {
			return err
		}
		b.Set(pidKey(prefixOutbound, client, pid), v, nil)
	}
	return b.Commit(pebble.Sync)
}

// CompleteOutbound removes pid's state and marks its position done (so a
// replay from an older cursor skips it), in one batch without fsync: if a
// crash loses it, the PUBREL is sent again, which the client answers.
// group is the GroupKey of the shared subscription the message came
// through ("" for none), kept as the marker's value: a shared message is
// skipped for the group, not for the client's own subscriptions.
func (s *Store) CompleteOutbound(client string, pid uint16, pos Position, group string) error {
	b := s.db.NewBatch()
	defer b.Close()
	b.Delete(pidKey(prefixOutbound, client, pid), nil)
	b.Set(binary.BigEndian.AppendUint64(append(key(prefixDone, client, pos.Shard), 0), pos.Offset), []byte(group), nil)
	return b.Commit(pebble.NoSync)
}

// Outbounds returns client's outbound QoS 2 state by packet identifier.
func (s *Store) Outbounds(client string) (map[uint16]*Outbound, error) {
	m := map[uint16]*Outbound{}
	p := clientPrefix(prefixOutbound, client)
	err := s.scan(p, func(k, v []byte) error {
		var o Outbound
		if len(k) != len(p)+2 || json.Unmarshal(v, &o) != nil {
			return fmt.Errorf("%w: outbound %q", ErrCorrupt, k)
		}
		m[binary.BigEndian.Uint16(k[len(p):])] = &o
		return nil
	})
	return m, err
}

// Done returns client's done markers (completed QoS 2 positions), each
// with the GroupKey of its shared subscription ("" for none).
func (s *Store) Done(client string) (map[Position]string, error) {
	m := map[Position]string{}
	p := clientPrefix(prefixDone, client)
	err := s.scan(p, func(k, v []byte) error {
		rest := k[len(p):]
		i := len(rest) - 9 // <shard>\x00<offset u64>
		if i < 0 || rest[i] != 0 {
			return fmt.Errorf("%w: done marker %q", ErrCorrupt, k)
		}
		m[Position{Shard: string(rest[:i]), Offset: binary.BigEndian.Uint64(rest[i+1:])}] = string(v)
		return nil
	})
	return m, err
}

// DeleteDone removes client's done markers (after a restart replayed
// past them).
func (s *Store) DeleteDone(client string, pos []Position) error {
	b := s.db.NewBatch()
	defer b.Close()
	for _, p := range pos {
		b.Delete(binary.BigEndian.AppendUint64(append(key(prefixDone, client, p.Shard), 0), p.Offset), nil)
	}
	return b.Commit(pebble.NoSync)
}

// PutInbound records an inbound QoS 2 PUBLISH with pid, durably, before
// it is stored in the shards at or after from: a PUBLISH resent with pid
// is then not stored twice, even after a restart. Whether the first one
// was stored when the node crashed is found at restart by looking for it
// (publisher and packet identifier) in the shard from from on
// (frontends/mqtt restore).
func (s *Store) PutInbound(client string, pid uint16, from Position) error {
	b := s.db.NewBatch()
	defer b.Close()
	if err := setInbound(b, client, pid, from); err != nil {
		return err
	}
	return b.Commit(pebble.Sync)
}

// setInbound adds an inbound packet identifier's record to b.
func setInbound(b *pebble.Batch, client string, pid uint16, from Position) error {
	v, err := json.Marshal(from)
	if err != nil {
		return err
	}
	return b.Set(pidKey(prefixInbound, client, pid), v, nil)
}

// DeleteInbound forgets pid (PUBREL received), durably before the PUBCOMP
// is sent: once the client has its PUBCOMP it may reuse pid for a new
// message, which a forgotten delete would make look like a resend.
func (s *Store) DeleteInbound(client string, pid uint16) error {
	return s.db.Delete(pidKey(prefixInbound, client, pid), pebble.Sync)
}

// Inbounds returns client's inbound QoS 2 packet identifiers with the
// position their message was stored at or after.
func (s *Store) Inbounds(client string) (map[uint16]Position, error) {
	ids := map[uint16]Position{}
	p := clientPrefix(prefixInbound, client)
	err := s.scan(p, func(k, v []byte) error {
		var pos Position
		if len(k) != len(p)+2 || json.Unmarshal(v, &pos) != nil {
			return fmt.Errorf("%w: inbound %q", ErrCorrupt, k)
		}
		ids[binary.BigEndian.Uint16(k[len(p):])] = pos
		return nil
	})
	return ids, err
}

// Handover is a session this node handed over to another node of its
// cluster, kept until that node confirms it stored it (or Until passes),
// so that a Release whose reply was lost can be answered again.
type Handover struct {
	To    uint64 `json:"to"`    // the node it was handed to
	Until int64  `json:"until"` // Unix ms: dropped after it
	State []byte `json:"state"` // the state as handed over (frontends/mqtt's encoding)
}

// PutHandover stores client's handover, durably (before the session's
// records are deleted).
func (s *Store) PutHandover(client string, h *Handover) error {
	v, err := json.Marshal(h)
	if err != nil {
		return err
	}
	return s.db.Set(key(prefixHandover, client), v, pebble.Sync)
}

// DeleteHandover forgets client's handover.
func (s *Store) DeleteHandover(client string) error {
	return s.db.Delete(key(prefixHandover, client), pebble.Sync)
}

// Handovers calls fn for each stored handover.
func (s *Store) Handovers(fn func(client string, h *Handover) error) error {
	return s.scan([]byte{prefixHandover}, func(k, v []byte) error {
		var h Handover
		if err := json.Unmarshal(v, &h); err != nil {
			return fmt.Errorf("%w: handover %q: %v", ErrCorrupt, k[1:], err)
		}
		return fn(string(k[1:]), &h)
	})
}

// SetRetained stores (or, with an empty payload, deletes) topic's
// retained message without fsync: the broker replays retained messages
// from the shards past the global cursors after a crash.
func (s *Store) SetRetained(m *pubsub.Message) error {
	if len(m.Payload) == 0 {
		return s.db.Delete(key(prefixRetained, m.Topic), pebble.NoSync)
	}
	return s.PutRetained(RetainedEntry{Msg: m})
}

// retainedValue is the JSON of an 'r' key: the message's fields, and the
// node it was published on and, for a tombstone (empty payload), when it
// was recorded (Unix ms).
type retainedValue struct {
	*pubsub.Message
	Origin uint64 `json:"origin,omitempty"`
	At     int64  `json:"at,omitempty"`
}

// PutRetained stores e as its topic's entry, a tombstone (empty payload)
// included, without fsync (see SetRetained; Sync).
func (s *Store) PutRetained(e RetainedEntry) error {
	v, err := json.Marshal(retainedValue{Message: e.Msg, Origin: e.Origin, At: e.At})
	if err != nil {
		return err
	}
	return s.db.Set(key(prefixRetained, e.Msg.Topic), v, pebble.NoSync)
}

// Retained calls fn for each stored retained message (not the
// tombstones).
func (s *Store) Retained(fn func(*pubsub.Message) error) error {
	return s.RetainedEntries(func(e RetainedEntry) error {
		if len(e.Msg.Payload) == 0 {
			return nil
		}
		return fn(e.Msg)
	})
}

// RetainedEntries calls fn for each stored retained entry, tombstones
// included.
func (s *Store) RetainedEntries(fn func(RetainedEntry) error) error {
	return s.scan([]byte{prefixRetained}, func(k, v []byte) error {
		var rv retainedValue
		if err := json.Unmarshal(v, &rv); err != nil || rv.Message == nil {
			return fmt.Errorf("%w: retained %q: %v", ErrCorrupt, k[1:], err)
		}
		return fn(RetainedEntry{Msg: rv.Message, Origin: rv.Origin, At: rv.At})
	})
}

// Sync makes the writes before it durable (the unsynced retained and
// done-marker writes).
func (s *Store) Sync() error { return s.db.LogData(nil, pebble.Sync) }
