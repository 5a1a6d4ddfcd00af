// Package mqtt is Quire's MQTT 3.1, 3.1.1 and 5.0 broker, built on the wire
// codec in frontends/mqtt/packet, the topic tree and retained store in
// frontends/pubsub, the listeners in frontends/listen, and shards for storage.
//
// # Use
//
//	st := mqtt.NewShardStorage(router, 0) // router: *shard.Router
//	db, err := store.Open(store.Options{FS: fs, Dir: dataDir + "/mqtt"})
//	ret, err := store.NewRetained(db)
//	srv, err := mqtt.NewServer(mqtt.Options{
//		Listeners:  []listen.Config{{Name: "tcp", Addr: ":1883"}},
//		Storage:    st,
//		Store:      db,  // nil: sessions in memory only
//		Retained:   ret, // nil: retained messages in memory only
//		Registerer: reg,
//		Logger:     log,
//	})
//	err = srv.Start(ctx) // restores stored sessions first
//	…
//	err = srv.Stop(ctx) // before the engines and db close
//	db.Close()
//
// # Storage
//
// Every PUBLISH (and every will) is appended to a shard before anything else
// happens to it: ShardStorage lets the router pick the engine from the
// topic's rule and hashes the topic (FNV-1a) onto one of ShardsPerEngine
// shards of that engine, "mqtt/<engine>/<n>" — "mqtt/<engine>/<node>/<n>"
// on an engine whose shards the nodes share, such as the journal engine
// (ShardStorage.NodeScoped: one writer per shard, and a node opening
// another's shard would fence it). A record's key is the topic, its
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
// Delivery is from memory while the node runs: a published message is
// matched on the topic tree and queued in each matching session (after a
// restart, queues are rebuilt from the shards: see below). Each session has a
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
// with the highest QoS and every subscription identifier (MQTT 5.0 §3.3.4).
//
// Shared subscriptions ("$share/group/filter", shared.go) get one copy per
// group (in a cluster, one per group in the whole cluster: see "Shared
// subscriptions in a cluster"). Dispatch policy on a node, MQTT 5.0 §4.8.2:
//
//   - A message goes to one online member, round robin (pubsub package
//     doc). With no member online it is queued at an offline persistent
//     one, round robin over them (a clean member's session ends with its
//     connection).
//   - When a member's connection goes, what it got through the group and
//     has not acknowledged — queued messages, and QoS 1 ones in flight —
//     goes to the other online members; with none online it stays. When a
//     member's session ends (expiry, Clean Start), it goes to the other
//     members, online or not. QoS 2 messages already sent stay with their
//     member: their exchange has begun.
//   - When a member connects, it takes what offline members of its groups
//     hold of the groups' messages (queued, and QoS 1 in flight): the
//     first member back gets every message the group kept while it had
//     no member online, not only its own share.
//   - Across a restart (with Options.Store): a group's messages are owed
//     to the group, not to the member that holds them, and the group has
//     cursors in the store like a session. The restart replays each group
//     with a restored member from its cursors, queuing each message at one
//     member as above (all are offline then), and the first member to
//     connect takes them. A message acknowledged to its publisher is not
//     lost while the group has a persistent member, not even one a clean
//     member held at a graceful stop; like any replay it may come again if
//     it was acknowledged just before a crash (at least once), and a QoS 2
//     one a member had in flight or completed is not replayed.
//
// Every move between members is counted in
// quire_mqtt_shared_redelivered_total.
//
// # Shared subscriptions in a cluster
//
// In a cluster (cluster.go) a group's members may be on several nodes, and
// a message goes to one member of the group in the whole cluster, not one
// per node. The node a message is published on (its origin) chooses, per
// group, the node that delivers it (internal/node mqttcluster_shared.go);
// that node chooses the member as above. Dispatch policy:
//
//   - Which nodes have members: each node's Pull requests to its peers carry
//     its shared subscriptions (group, filter) with a member there, online
//     or offline persistent, and whether one is online (sent at once when a
//     group gets its first member there or loses its last, the online flags
//     at most a second late); its routes in meta carry the groups too, for
//     the peers it has no stream to. The candidates are, of the nodes with a
//     member, the first non-empty of: the reachable ones (the origin, and
//     the peers with a Pull stream open to it) with an online member; the
//     reachable ones; all of them (a peer that is down gets its messages
//     when it pulls again).
//   - Which node: the candidates in node id order, the message's shard
//     offset (plus a hash of the shard's name) modulo their number, so a
//     shard's messages go round the nodes in turn. The origin keeps the
//     history of each group's candidates, each set from the high watermarks
//     of its shards when it took effect (up to 64 per group), and a message
//     is of the set its offset falls in: the origin's own delivery and each
//     peer's stream, however late it reads the message, give the same
//     answer.
//   - The origin delivers a message to its own members of a group only if
//     it chose itself, and streams it to a peer for a group only if it chose
//     that peer, naming the peer's groups that take it in the record's
//     header mqtt.share (HeaderShare): the peer delivers it to those groups
//     and to its non-shared subscriptions, no other group.
//
// While membership changes, at least once, no message lost while some node
// has a member:
//
//   - A message chosen for a node that has no member of the group any more
//     (its members left before the change reached the origin, or the node
//     comes back without them) is an orphan: the origin sees it when it
//     streams the message (the peer's groups no longer have it), or the peer
//     when it stores it, and sends it back on its Pull stream; the origin
//     itself when it chose itself and delivers it (SharedDispatch.Mine: its
//     last member left a moment before its own routes changed). The origin
//     chooses again among the candidates not tried yet for it: itself
//     (delivered at once), or a peer (sent on its stream for that group
//     only, HeaderShareOnly). With no candidate left it is dropped and
//     counted (quire_mqtt_cluster_shared_unroutable_total); each move is
//     counted in quire_mqtt_cluster_shared_redirected_total.
//   - When the last member of a group on a node ends its session, what it
//     held of the group's messages (queued, QoS 1 in flight) goes back to
//     their origins the same way (a forwarded copy knows where it is stored
//     on its origin: HeaderShareFrom), instead of ending with it.
//   - A group's first member on a node: the messages published after its
//     SUBACK and before the change reached the origin were given to the
//     nodes that had members then; with none, to every node that has one
//     when the message is read. The member's node reads again what it
//     stored since shortly before the subscription and delivers those its
//     dispatch gives it (ReplayShared: its own routes follow its tree a
//     moment later); a peer's stream reads again, from the Since of the
//     request that adds the group, the messages the origin gives it
//     (cluster.go, New filters).
//   - A node that stops or dies: its peers stop choosing it when its Pull
//     stream ends (if another node has a member). What they chose it for
//     before and it had not pulled waits in their shards: it reaches it
//     when it comes back, its persistent members then, or goes elsewhere as
//     orphans if it comes back without members. A node that never comes
//     back keeps those (its stream's lag when it died).
//   - A message may then reach the group twice: a node chosen before a
//     change that had already delivered it when it is sent elsewhere, an
//     orphan reported twice (a stream read again), a message older than the
//     origin's history (stored before the origin started: the choice made
//     then is not known, so every node with a member takes it), or one
//     stored while no node was known to have a member (every node that has
//     one when it is read takes it: a subscription whose SUBACK came before
//     gets it). A restart's replay of a group from its cursors (see "What
//     survives a restart") also ignores which node was chosen.
//
// Limits: an orphan on its way (in a stream, or queued in memory for a
// peer's stream) is lost if the stream breaks at that moment or the origin
// restarts; a node that is down and has the only members gets the
// messages when it returns, not before; a node that never returns keeps
// what was chosen for it and it had not pulled. The origin keeps 64
// membership changes per group: for a peer that lags behind more, the
// older messages are older than the history (every node with a member
// takes them).
//
// # What survives a restart
//
// With Options.Store (the node puts it in data_dir/mqtt; package
// frontends/mqtt/store), persistent sessions survive a restart, graceful or
// kill -9. A session is persistent while its expiry is above 0 (v5 Session
// Expiry Interval, v3 Clean Session 0); a clean session with expiry 0
// never touches the store (what it holds of a shared subscription's
// messages counts in the group's cursors, which are written in the same
// background batch), so the common publish path costs nothing more.
// What is kept, and how:
//
//   - The session record: client id, protocol version, expiry, when it went
//     offline, its subscriptions with their options and identifiers, and a
//     pending will with the time it is due. Written and synced before
//     CONNACK, SUBACK and UNSUBACK and when a will becomes pending; these
//     are low-rate events.
//   - No message copies. The offline queue is positions: for each session
//     and shard a cursor, the offset below which nothing is owed to it (the
//     lowest offset it has queued or inflight, capped by the shard's
//     frontier, the offset below which every message has been handed to
//     the sessions). A session with nothing owed in a shard has no cursor
//     there and uses the shard's global cursor. Every CursorInterval
//     (100 ms), if anything changed, a background loop writes one batch
//     with the global cursors (the frontiers) and the cursors of the
//     sessions whose owed set changed, and syncs it (one fsync per
//     interval at most: Pebble buffers unsynced log records in the
//     process, where kill -9 would lose them). A QoS 1 PUBLISH therefore
//     waits for the engine's fsync only; no per-message store write, no
//     Raft round trip.
//   - At Start every stored session is rebuilt offline: subscriptions go
//     back into the tree, then each shard is read once from the lowest
//     cursor to its high watermark and each message is queued for every
//     session whose cursor it is at or above and whose non-shared
//     subscriptions match (QoS 0 is not queued for offline sessions, as
//     ever). Per-topic order holds (a topic lives in one shard). A crash
//     before the last cursor batch means replaying from older cursors:
//     QoS 1 messages already acknowledged by the subscriber come again
//     (at least once, the contract), none acknowledged to a publisher is
//     lost on an engine that made it durable before the PUBACK.
//   - QoS 2 packet-id state, synced: an inbound PUBLISH's id before the
//     message is appended, with the shard and offset it will be at or
//     after (the record carries the id, HeaderQoS2ID): at Start an id
//     whose message is not in the shard is dropped, so the client's resend
//     is stored, and one whose message is there makes the resend get
//     PUBREC without being stored again; its removal before PUBCOMP; an outbound message's id, position and
//     send order before its PUBLISH, its released state before PUBREL. A
//     completed outbound message leaves a done marker (unsynced, in the
//     same batch as the id's removal) so that a replay from an older
//     cursor skips it. A resumed session gets its QoS 2 messages back in
//     send order with their packet ids: PUBLISH with DUP, or PUBREL.
//   - Shared subscriptions: the positions owed to each group (what any
//     member holds of its messages) have cursors of their own ('h' keys,
//     store.GroupKey), flushed with the sessions' and replayed at Start
//     (see "Delivery").
//   - Delayed publishes ($delayed/…, delayed.go): stored synced before
//     their acknowledgement, a QoS 2 one's packet id in the same batch;
//     released exactly once (a synced release mark with the position, a
//     stamp on the record, looked for at restart).
//   - Retained messages: store.Retained keeps them in the same store,
//     unsynced (the next cursor batch syncs them), and the restore replays retained PUBLISHes from the global
//     cursors on, so a retained message acknowledged before a crash is
//     retained after it. Each node keeps its own copy: a retained message
//     published on another node arrives through cross-node routing
//     (cluster.go) when this node had a matching subscription filter then.
//   - Retained messages queued at SUBSCRIBE (QoS 1 and 2) are owed by
//     value, not by position (the position may be far below the
//     session's cursors, or gone): the session record keeps a copy of
//     each, queued or inflight with its packet identifier, written with
//     the SUBACK's synced record, rewritten by the next cursor batch when
//     one is sent or acknowledged, and synced before a QoS 2 one's
//     PUBLISH or PUBREL. The restore queues them before the replay. A
//     crash before the rewrite sends an acknowledged one again (at least
//     once).
//   - Expiry and wills: a session's expiry counts from when it went
//     offline (from the restart if it was online at a crash); one that
//     expired while the node was down ends at Start, publishing its pending
//     will. A pending will is published when its delay ends, counted from
//     the disconnect across the restart. Wills of connections alive at a
//     crash or a Stop are not published (the clients did nothing wrong).
//
// Known gaps: cursors of sessions and groups that a crash left with a
// message in an engine that keeps nothing (memory) are clamped to the
// shard's new range.
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
// Every v5 DISCONNECT the server sends, and every refusing v5 CONNACK,
// carries a Reason String saying why (conn.sendReason, kickReasons; for
// internal failures and authentication refusals only the text before the
// first ": ", the rest goes to the log), dropped if it would exceed the
// client's Maximum Packet Size.
// After such a last packet the connection is half-closed (TCP FIN, also
// under TLS) and its input read and discarded until the client closes,
// for at most a second and 1 MiB, then closed: closing with input unread
// would make the kernel reset the connection, dropping the last packet if
// not yet sent (conn.lastWordsClose).
// Broker-level violations (topic alias out of range 0x94, too many QoS 2 in
// flight 0x93, No Local on a shared subscription 0x82, a failed
// re-authentication 0x87, 0x8C or 0x82) do the same.
//
// # Testing
//
// FEATURES.md maps every feature of the issue to the test that exercises
// it with a real client (paho.golang, paho.mqtt.golang, mosquitto_pub and
// mosquitto_sub), against a `quire start` process (cmd/quire, mainly
// TestMQTTFeatures in mqtt_features_test.go) or in process, and lists what
// no real client covers yet.
//
// # Elsewhere
//
// Authentication and ACLs are in authz.go: SCRAM-SHA-256 for enhanced
// authentication at CONNECT and for re-authentication (AUTH 0x19 on an
// established connection, same method and user, MQTT 5.0 §4.12.1).
// Outbound topic aliases are in aliases.go, delayed publish in delayed.go,
// $SYS in sys.go, the publish rate limit in ratelimit.go.
//
// # Metrics
//
// quire_mqtt_connections{listener}, connects_total{result},
// listener_refused_total{listener,reason}, packets_received_total{type},
// packets_sent_total{type}, received_bytes_total{listener},
// sent_bytes_total{listener}, messages_published_total{qos},
// messages_delivered_total, messages_dropped_total{reason},
// storage_errors_total, session_takeovers_total, shared_redelivered_total,
// reauthentications_total, server_disconnects_total{reason},
// publish_throttled_seconds_total, sessions, subscriptions,
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
//	aliases.go   outbound topic aliases
//	storage.go   Storage, ReplayStorage, ShardStorage (frontiers), record encoding and decoding
//	persist.go   stored sessions: records, cursor flushes, QoS 2 state, restore at Start
//	shared.go    shared subscriptions: owed positions per group, moves between members
//	metrics.go   quire_mqtt_* metrics
//	cluster.go   cross-node routing: routes in meta, Forwarder.Pull serving and pulling, injection
package mqtt
