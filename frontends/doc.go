// Package frontends groups Quire's protocol front-ends: frontends/mqtt,
// frontends/kafka and frontends/amqp (codec and protocol logic, one package
// each), frontends/pubsub (protocol-neutral message logic: topic tree,
// retained, delayed and expiring messages) and frontends/listen (TCP, TLS,
// WebSocket, WebSocket-TLS and QUIC behind one Conn interface). Front-ends
// talk to storage only through the shard package.
//
// Not built yet: MQTT is tracked by the issue "MQTT"; Kafka and AMQP follow.
// The node accepts their listener addresses in its config and says at start
// that these front-ends are not available yet.
package frontends
