// Package mqtt is Quire's MQTT 3.1, 3.1.1 and 5.0 broker, built on the wire
// codec in frontends/mqtt/packet, the topic tree and retained store in
// frontends/pubsub, the listeners in frontends/listen, and shards for storage.
//
// # Use
//
//	st := mqtt.NewShardStorage(router, 0) // router: *shard.Router
//	srv, err := mqtt.NewServer(mqtt.Options{
//		Listeners:  []listen.Config{{Name: "tcp", Addr: ":1883"}},
//		Storage:    st,
//		Registerer: reg,
//		Logger:     log,
//	})
//	err = srv.Start(ctx)
//	…
//	err = srv.Stop(ctx) // before the engines close
//
// # Storage
//
// Every PUBLISH (and every will) is appended to a shard before anything else
// happens to it: ShardStorage lets the router pick the engine from the
// topic's rule and hashes the topic (FNV-1a) onto one of ShardsPerEngine
// shards of that engine, "mqtt/<engine>/<n>". A record's key is the topic, its
// value the payload, its timestamp the broker's accept time, and its headers
// the QoS, retain flag, publisher and v5 properties (Header* constants; user
// properties under their own key). A QoS 1 PUBLISH gets its PUBACK, and a QoS
// 2 PUBLISH its PUBREC, only after Append returned — as durable as the engine
// promises (fsync for file) — and after the message was queued for every
// matching online session (RobustMQ #2056). A failed append is answered with
// reason code 0x80 in v5 and by closing the connection in v3 (which cannot
// refuse a PUBLISH; the client resends it).
//
// # Delivery
//
// Delivery is from memory in this slice: a published message is matched on
// the topic tree and queued in each matching session. Each session has a
// queue of at most Options.MaxQueued messages, online or offline. Drop policy:
// when the queue is full, the new message is dropped for that session (tail
// drop, as Mosquitto's max_queued_messages); QoS 0 messages are not queued
// for offline sessions, and are removed from the queue when the session goes
// offline; expired messages (v5 Message Expiry) are dropped when their turn
// comes. Every drop is counted in quire_mqtt_messages_dropped_total{reason}.
// At most min(Options.MaxInflight, the client's Receive Maximum) QoS 1/2
// messages are unacknowledged per session; a resumed session first resends
// them (PUBLISH with DUP, or PUBREL), in order.
//
// A session holding several matching non-shared subscriptions gets one copy
// with the highest QoS and every subscription identifier (MQTT 5.0 §3.3.4);
// shared subscriptions ("$share/group/filter") get one copy per group, round
// robin over the online members (pubsub package doc).
//
// # What survives a restart
//
// Published messages survive as far as their engine promises: they are in
// the shards. Nothing else does yet: sessions, subscriptions, offline queues,
// inflight and QoS 2 packet-id state, and retained messages (the default
// pubsub.MemoryRetained) live in memory and are lost on restart; a client
// reconnecting with Clean Start 0 then gets Session Present 0 and must
// resubscribe. Replaying offline queues from the shards and keeping session
// state in a local store is the next step of the issue "MQTT".
//
// # Sessions
//
// A CONNECT whose client identifier is connected already takes the session
// over: the old connection gets DISCONNECT 0x8E (v5) and is closed, and its
// cleanup (including a will with no delay) finishes before the new CONNACK is
// sent (RobustMQ #2057). A v5 client with no identifier is assigned one
// ("quire-" and 24 hex digits, CONNACK Assigned Client Identifier); so is a
// 3.1.1 client with Clean Session 1; 3.1, and 3.1.1 with Clean Session 0, are
// refused (0x02). Session expiry: v5 Session Expiry Interval, v3 Clean Session
// 0 meaning Options.MaxSessionExpiry (default 24 h), both capped by it.
// Keep alive: a connection silent for 1.5 times its keep alive is closed (v5:
// DISCONNECT 0x8D); Options.MaxKeepAlive is sent to v5 clients as Server Keep
// Alive.
//
// Wills are published when the connection closes without DISCONNECT (or with
// v5 reason 0x04), after the v5 Will Delay Interval unless the client
// reconnects first or its session ends first; never after a normal
// DISCONNECT, and not when the server stops.
//
// # Bad input
//
// A packet the codec refuses closes that connection only: v5 gets DISCONNECT
// (CONNACK while connecting) with the codec's reason code (packet.ReasonCodeOf
// table), v3 a plain close (CONNACK 0x01 for an unknown protocol level).
// Broker-level violations (topic alias out of range 0x94, too many QoS 2 in
// flight 0x93, No Local on a shared subscription 0x82, AUTH 0x82) do the same.
//
// # Not yet
//
// Enhanced authentication (AUTH; CONNECT with an Authentication Method gets
// 0x8C), username/password and ACLs, outbound topic aliases, $SYS topics,
// delayed publish, redelivery of a shared subscription's inflight messages to
// another member, and persistence of sessions and retained messages.
//
// # Metrics
//
// quire_mqtt_connections{listener}, connects_total{result},
// listener_refused_total{listener,reason}, packets_received_total{type},
// packets_sent_total{type}, received_bytes_total{listener},
// sent_bytes_total{listener}, messages_published_total{qos},
// messages_delivered_total, messages_dropped_total{reason},
// storage_errors_total, session_takeovers_total, sessions, subscriptions,
// retained_messages.
//
// # Locking
//
// Server.mu (sessions, connections) before session.mu; the topic tree's and
// retained store's locks are leaves; conn.wmu is never held with another
// lock. Fan-out takes no server lock: a subscription carries its session.
//
// # Files
//
//	options.go   Options, defaults
//	server.go    Server: Start/Stop, accept, publish and fan-out, attach/detach
//	session.go   session state: queue, inflight, QoS 2 ids, expiry and will timers
//	conn.go      one connection: CONNECT handshake, read loop, write loop
//	storage.go   Storage, ShardStorage, record encoding
//	metrics.go   quire_mqtt_* metrics
package mqtt
