// Package store is the MQTT broker's local state on one node: persistent
// sessions, their positions in the shards, QoS 2 packet-id state and
// retained messages, in a Pebble database (by default data_dir/mqtt). It
// holds no message bodies except retained ones: queued messages stay in the
// shards and are found again by position (frontends/mqtt, "What survives a
// restart").
//
// # Use
//
//	st, err := store.Open(store.Options{FS: fs, Dir: "/var/lib/quire/mqtt"})
//	ret, err := store.NewRetained(st) // a pubsub.RetainedStore
//	srv, err := mqtt.NewServer(mqtt.Options{Store: st, Retained: ret, …})
//	…
//	srv.Stop(ctx)
//	st.Close()
//
// # Keys
//
// One byte of prefix, then the client identifier (MQTT forbids U+0000 in
// it [MQTT-1.5.4-2], so 0x00 ends it), then the rest. Integers are
// big-endian, so a client's keys sort by shard and offset.
//
//	's' client                              → Session, JSON
//	'c' client 0x00 shard                   → u64 cursor: nothing below is owed to client
//	'g' shard                               → u64 global cursor (clients without a 'c' key)
//	'o' client 0x00 pid u16                 → Outbound, JSON: outbound QoS 2 awaiting PUBREC/PUBCOMP
//	'd' client 0x00 shard 0x00 offset u64   → GroupKey or empty: QoS 2 delivery completed (skip on replay)
//	'i' client 0x00 pid u16                 → Position, JSON: inbound QoS 2 stored at or after it, awaiting PUBREL
//	'r' topic                               → pubsub.Message, JSON, with "origin" (node it was published on) and, for a tombstone (empty payload: cleared), "at" (Unix ms recorded): retained entry
//	'h' group 0x00 filter 0x00 shard         → u64 cursor of a shared subscription (GroupKey)
//	'D' at u64 seq u64                      → pubsub.Message, JSON: delayed publish due at at (unix ns)
//	'R' at u64 seq u64                      → Position, JSON: its release began, appended at or after it
//
// The prefixes and encodings are part of the on-disk format.
//
// # Durability
//
// Writes that a client acts on are synced before the packet that tells it:
// a session and its subscriptions (before CONNACK and SUBACK), 'o' (before
// the PUBLISH or PUBREL it describes), 'i' (before the PUBLISH is stored) and its delete
// (before PUBCOMP), a pending will, a delayed publish (with the 'i' of a
// QoS 2 one, in one batch) and its release mark (before the append). Done markers and retained messages are
// written without fsync; cursors in one batch per interval from a
// background loop, synced there (Pebble keeps unsynced log records in a
// buffer of the process until a 32 KiB block fills, so unsynced writes do
// not survive even kill -9). A crash may lose what came after the last
// sync, and the broker then replays from the shards, which only
// redelivers (QoS 1 is at least once). Pebble's write-ahead log keeps
// writes in commit order, so a surviving write implies every earlier one
// survived.
package store
