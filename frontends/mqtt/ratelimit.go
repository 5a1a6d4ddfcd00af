package mqtt

import (
	"time"
)

// Publish rate limit: with Options.MaxPublishRate set, each connection
// may send at most that many PUBLISH packets per second on average, in
// bursts of up to PublishBurst. A client over the rate is slowed, not
// refused: the connection stops reading until a token is available, so TCP
// (or QUIC) flow control pushes back on the client and nothing is lost —
// as EMQX's and Mosquitto's rate limits do. Time spent waiting is counted
// in quire_mqtt_publish_throttled_seconds_total.

// tokenBucket is one connection's budget; only the connection's reading
// goroutine uses it.
type tokenBucket struct {
	rate, burst, tokens float64
	last                time.Time
}

func newTokenBucket(rate float64, burst int) *tokenBucket {
	b := float64(max(burst, 1))
	return &tokenBucket{rate: rate, burst: b, tokens: b, last: time.Now()}
}

// take consumes a token, first waiting until one accrues; it returns how
// long it waited, or false if closing was closed while it waited.
func (b *tokenBucket) take(closing <-chan struct{}) (time.Duration, bool) {
	now := time.Now()
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return 0, true
	}
	wait := time.Duration((1 - b.tokens) / b.rate * float64(time.Second))
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-closing:
		return wait, false
	}
	b.tokens = 0
	b.last = time.Now()
	return wait, true
}
