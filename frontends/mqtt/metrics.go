package mqtt

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/frontends/mqtt/packet"
	"github.com/quiremq/quire/internal/metrics"
)

// Drop reasons, the "reason" label of quire_mqtt_messages_dropped_total.
const (
	dropQueueFull      = "queue_full"       // the session's queue held MaxQueued messages
	dropOfflineQoS0    = "offline_qos0"     // QoS 0 is not queued for offline sessions
	dropExpired        = "expired"          // message expiry passed before delivery
	dropTooLarge       = "packet_too_large" // over the client's Maximum Packet Size
	dropSessionEnded   = "session_ended"    // queued or inflight when the session ended
	dropStorageFailure = "storage_error"    // the shard append failed
	dropNotAuthorized  = "not_authorized"   // a PUBLISH the ACL refused
)

type serverMetrics struct {
	connections   *prometheus.GaugeVec   // listener
	connects      *prometheus.CounterVec // result
	refused       *prometheus.CounterVec // listener, reason
	packetsIn     [16]prometheus.Counter // by packet type
	packetsOut    [16]prometheus.Counter
	bytesIn       *prometheus.CounterVec // listener
	bytesOut      *prometheus.CounterVec
	published     [3]prometheus.Counter // by QoS
	delivered     prometheus.Counter
	dropped       *prometheus.CounterVec // reason
	storageErrors prometheus.Counter
	takeovers     prometheus.Counter
	closedBy      *prometheus.CounterVec // reason: connections the server closed, by reason code
	throttled     prometheus.Counter     // seconds publishers waited for the rate limit
	redelivered   prometheus.Counter     // shared-subscription messages moved to another member
	reauths       prometheus.Counter     // completed MQTT 5 re-authentications
}

func newMetrics(reg prometheus.Registerer, s *Server) *serverMetrics {
	const ns, sub = metrics.Namespace, "mqtt"
	m := &serverMetrics{
		connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "connections",
			Help: "Open MQTT network connections, by listener."}, []string{"listener"}),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "connects_total",
			Help: "CONNECT attempts by result (accepted, or the refusing reason code's name)."}, []string{"result"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "listener_refused_total",
			Help: "Connections closed by a listener before MQTT saw them (connection limit, WebSocket handshake)."}, []string{"listener", "reason"}),
		bytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "received_bytes_total",
			Help: "Bytes read from MQTT clients, by listener."}, []string{"listener"}),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "sent_bytes_total",
			Help: "Bytes written to MQTT clients, by listener."}, []string{"listener"}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "messages_delivered_total",
			Help: "PUBLISH packets written to subscribers (resends included)."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "messages_dropped_total",
			Help: "Messages not delivered to a subscriber, by reason."}, []string{"reason"}),
		storageErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "storage_errors_total",
			Help: "Shard appends that failed (the publish was not acknowledged)."}),
		takeovers: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "session_takeovers_total",
			Help: "Connections closed because a new CONNECT used their client identifier."}),
		closedBy: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "server_disconnects_total",
			Help: "Connections the server closed for a protocol or limit violation, by reason code (packet too large, receive maximum exceeded, keep alive timeout, malformed packet, ...)."}, []string{"reason"}),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "publish_throttled_seconds_total",
			Help: "Seconds connections spent waiting for the publish rate limit (reads paused)."}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "shared_redelivered_total",
			Help: "Messages of a shared subscription handed to another member because theirs disconnected without acknowledging them."}),
		reauths: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "reauthentications_total",
			Help: "MQTT 5 re-authentications (AUTH 0x19) that succeeded; failed ones close the connection (server_disconnects_total)."}),
	}
	in := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "packets_received_total",
		Help: "MQTT control packets received, by type."}, []string{"type"})
	out := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "packets_sent_total",
		Help: "MQTT control packets sent, by type."}, []string{"type"})
	for t := packet.CONNECT; t <= packet.AUTH; t++ {
		m.packetsIn[t] = in.WithLabelValues(t.String())
		m.packetsOut[t] = out.WithLabelValues(t.String())
	}
	pub := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "messages_published_total",
		Help: "PUBLISH packets accepted from clients (stored and fanned out), by QoS."}, []string{"qos"})
	for q := range m.published {
		m.published[q] = pub.WithLabelValues(string(rune('0' + q)))
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, f)
	}
	metrics.Register(reg, m.connections, m.connects, m.refused, in, out, m.bytesIn, m.bytesOut, pub, m.delivered,
		m.dropped, m.storageErrors, m.takeovers, m.closedBy, m.throttled, m.redelivered, m.reauths,
		gauge("sessions", "MQTT sessions, online and offline.", func() float64 { return float64(s.sessionCount()) }),
		gauge("subscriptions", "Subscriptions in the topic tree, shared ones included.", func() float64 { return float64(s.tree.Len()) }),
		gauge("retained_messages", "Retained messages.", func() float64 { return float64(s.opts.Retained.Len()) }),
	)
	return m
}
