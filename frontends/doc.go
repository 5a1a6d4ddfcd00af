// Package frontends groups Quire's protocol front-ends: frontends/mqtt,
// frontends/kafka and frontends/amqp (codec and protocol logic, one package
// each), frontends/pubsub (protocol-neutral message logic: topic tree,
// retained, delayed and expiring messages) and frontends/listen (TCP, TLS,
// WebSocket, WebSocket-TLS and QUIC behind one Conn interface). Front-ends
// talk to storage only through the shard package.
//
// Built: frontends/listen, frontends/pubsub and a first slice of
// frontends/mqtt (see its package doc for what is and is not done; the
// issue "MQTT" tracks the rest). Kafka and AMQP follow. The node accepts
// their listener addresses in its config and says at start which
// front-ends are not available yet.
package frontends
