package mqtt

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/quiremq/quire/frontends/pubsub"
)

// $SYS topics: every Options.SysInterval the server publishes its
// statistics as retained QoS 0 messages under "$SYS/broker/", in the names
// Mosquitto uses where one exists, so existing dashboards work:
//
//	$SYS/broker/version               the server's version
//	$SYS/broker/uptime                seconds since Start, as "N seconds"
//	$SYS/broker/clients/connected     connected clients
//	$SYS/broker/sessions              sessions, online and offline
//	$SYS/broker/subscriptions/count   subscriptions
//	$SYS/broker/retained messages/count
//	$SYS/broker/messages/received     PUBLISH accepted from clients
//	$SYS/broker/messages/sent         PUBLISH written to subscribers
//	$SYS/broker/messages/dropped      messages not delivered (any reason)
//	$SYS/broker/messages/delayed      delayed publishes waiting
//	$SYS/broker/bytes/received        bytes read from clients
//	$SYS/broker/bytes/sent            bytes written to clients
//
// They are neither stored in shards nor counted as retained messages (they
// are recomputed, not data): the latest values are kept in memory and sent
// to a new "$SYS/..." subscription as retained messages. Wildcards
// at the first level do not match them (MQTT 5.0 §4.7.2): subscribe to
// "$SYS/#". Clients may not publish to $SYS topics.

const sysPrefix = "$SYS/"

func (s *Server) sysLoop(ctx context.Context, done chan struct{}) {
	defer close(done)
	start := time.Now()
	t := time.NewTicker(s.opts.SysInterval)
	defer t.Stop()
	for {
		s.publishSys(ctx, start)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Server) publishSys(ctx context.Context, start time.Time) {
	s.mu.Lock()
	conns := len(s.conns)
	s.mu.Unlock()
	delayed := 0
	if s.delayed != nil {
		delayed = s.delayed.len()
	}
	var received float64
	for _, c := range s.m.published {
		received += counterValue(c)
	}
	vals := []struct{ topic, value string }{
		{"version", s.opts.Version},
		{"uptime", strconv.Itoa(int(time.Since(start).Seconds())) + " seconds"},
		{"clients/connected", strconv.Itoa(conns)},
		{"sessions", strconv.Itoa(s.sessionCount())},
		{"subscriptions/count", strconv.Itoa(s.tree.Len())},
		{"retained messages/count", strconv.Itoa(s.opts.Retained.Len())},
		{"messages/received", ftoa(received)},
		{"messages/sent", ftoa(counterValue(s.m.delivered))},
		{"messages/dropped", ftoa(counterValue(s.m.dropped))},
		{"messages/delayed", strconv.Itoa(delayed)},
		{"bytes/received", ftoa(counterValue(s.m.bytesIn))},
		{"bytes/sent", ftoa(counterValue(s.m.bytesOut))},
	}
	now := time.Now()
	for _, v := range vals {
		m := &pubsub.Message{Topic: sysPrefix + "broker/" + v.topic, Payload: []byte(v.value), Retain: true,
			Publisher: "$SYS", Time: now}
		s.sysRetained.Set(ctx, m)
		s.deliver(m, Position{}, s.tree.Match(m.Topic, nil, onlineSub), nil)
	}
}

// matchRetained calls fn for the retained messages matching filter: the
// $SYS values (kept apart, in memory: they are not data) and the stored
// ones.
func (s *Server) matchRetained(filter string, fn func(*pubsub.Message) bool) {
	if strings.HasPrefix(filter, sysPrefix) {
		s.sysRetained.Match(s.ctx, filter, fn) // clients may not publish to $SYS
		return
	}
	s.opts.Retained.Match(s.ctx, filter, fn)
}

func ftoa(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// counterValue sums the samples of a counter or counter vector.
func counterValue(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 64)
	go func() { c.Collect(ch); close(ch) }()
	var sum float64
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) == nil && d.Counter != nil {
			sum += d.Counter.GetValue()
		}
	}
	return sum
}
