package mqtt

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quiremq/quire/frontends/mqtt/packet"
	"github.com/quiremq/quire/frontends/pubsub"
)

// Delayed publish: a PUBLISH to "$delayed/<seconds>/<topic>" is published
// to <topic> after <seconds> (0 to MaxDelaySeconds), as EMQX does. It is
// acknowledged once it is stored: with Options.Store, in the store, synced
// (delayed publishes are rare enough that a sync each is cheap, and the
// store batches concurrent ones); without a Store, in memory only, lost on
// restart like every other piece of session state then. When it is due it
// is published like any message (appended to its topic's shard, retained
// if flagged), then forgotten; a crash between the two publishes it again
// after the restart — at least once. At most Options.MaxDelayed wait at
// once; beyond that a v5 publisher gets 0x97 (quota exceeded). A malformed
// delay gets 0x90 (topic name invalid) in v5; v3, which cannot refuse a
// PUBLISH, is disconnected.

// DelayedPrefix starts the topic of a delayed publish.
const DelayedPrefix = "$delayed/"

// MaxDelaySeconds is the longest delay accepted (about 49.7 days).
const MaxDelaySeconds = 4294967

// reasonError is an error carrying the reason code a v5 client is told.
type reasonError struct {
	code packet.ReasonCode
	msg  string
}

func (e *reasonError) Error() string { return "mqtt: " + e.msg }

// parseDelayed splits "$delayed/<seconds>/<topic>"; ok is false for other
// topics.
func parseDelayed(topic string) (d time.Duration, real string, ok bool, err error) {
	rest, ok := strings.CutPrefix(topic, DelayedPrefix)
	if !ok {
		return 0, "", false, nil
	}
	secs, real, found := strings.Cut(rest, "/")
	n, perr := strconv.ParseUint(secs, 10, 32)
	switch {
	case !found || real == "":
		return 0, "", true, &reasonError{packet.TopicNameInvalid, fmt.Sprintf("delayed publish %q: want $delayed/<seconds>/<topic>", topic)}
	case perr != nil || n > MaxDelaySeconds:
		return 0, "", true, &reasonError{packet.TopicNameInvalid, fmt.Sprintf("delayed publish %q: the delay must be 0 to %d seconds", topic, MaxDelaySeconds)}
	}
	return time.Duration(n) * time.Second, real, true, nil
}

// aclTopic is the topic the ACL judges a publish by: the real topic of a
// delayed publish.
func aclTopic(topic string) string {
	if _, real, ok, err := parseDelayed(topic); ok && err == nil {
		return real
	}
	return topic
}

type delayedMsg struct {
	at     time.Time // when it is due (later after a failed publish)
	stored int64     // its key in the store: the first due time, unix ns
	seq    uint64
	m      *pubsub.Message
}

type delayedHeap []*delayedMsg

func (h delayedHeap) Len() int { return len(h) }
func (h delayedHeap) Less(i, j int) bool {
	return h[i].at.Before(h[j].at) || h[i].at.Equal(h[j].at) && h[i].seq < h[j].seq
}
func (h delayedHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *delayedHeap) Push(x any)   { *h = append(*h, x.(*delayedMsg)) }
func (h *delayedHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// delayer holds the delayed publishes and publishes each when it is due.
type delayer struct {
	s    *Server
	mu   sync.Mutex
	h    delayedHeap
	seq  uint64
	wake chan struct{}
	done chan struct{}
}

func newDelayer(s *Server) *delayer {
	return &delayer{s: s, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// restore loads the stored delayed publishes.
func (d *delayer) restore() error {
	st := d.s.opts.Store
	if st == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return st.Delayed(func(at int64, seq uint64, m *pubsub.Message) error {
		heap.Push(&d.h, &delayedMsg{at: time.Unix(0, at), stored: at, seq: seq, m: m})
		d.seq = max(d.seq, seq)
		return nil
	})
}

func (d *delayer) len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.h)
}

// add stores m to be published after delay; it returns once m is as
// durable as the package doc says.
func (d *delayer) add(m *pubsub.Message, delay time.Duration) error {
	d.mu.Lock()
	if len(d.h) >= d.s.opts.MaxDelayed {
		d.mu.Unlock()
		return &reasonError{packet.QuotaExceeded, fmt.Sprintf("%d delayed publishes are waiting (the limit)", d.s.opts.MaxDelayed)}
	}
	d.seq++
	dm := &delayedMsg{at: time.Now().Add(delay), seq: d.seq, m: m}
	dm.stored = dm.at.UnixNano()
	d.mu.Unlock()
	if st := d.s.opts.Store; st != nil {
		if err := st.PutDelayed(dm.stored, dm.seq, m); err != nil {
			d.s.m.storageErrors.Inc()
			return fmt.Errorf("storing a delayed publish: %w", err)
		}
	}
	d.mu.Lock()
	heap.Push(&d.h, dm)
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
	return nil
}

// run publishes delayed messages as they come due, until ctx ends.
func (d *delayer) run(ctx context.Context) {
	defer close(d.done)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		d.mu.Lock()
		var next *delayedMsg
		if len(d.h) > 0 {
			next = d.h[0]
		}
		d.mu.Unlock()
		wait := time.Hour
		if next != nil {
			wait = time.Until(next.at)
		}
		if next != nil && wait <= 0 {
			d.publish(ctx, next)
			continue
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
		case <-t.C:
		}
	}
}

// publish publishes dm (the earliest) and forgets it; on a storage failure
// it retries a second later (the message stays stored).
func (d *delayer) publish(ctx context.Context, dm *delayedMsg) {
	d.mu.Lock()
	heap.Pop(&d.h) // before publishing: the count must not include it once delivered
	d.mu.Unlock()
	m := *dm.m
	m.Time = time.Now()
	if err := d.s.publish(ctx, &m); err != nil {
		d.mu.Lock()
		if ctx.Err() == nil {
			d.s.log.Warn("mqtt delayed publish failed; retrying", "topic", m.Topic, "err", err)
			dm.at = time.Now().Add(time.Second)
		}
		heap.Push(&d.h, dm)
		d.mu.Unlock()
		return
	}
	if st := d.s.opts.Store; st != nil {
		if err := st.DeleteDelayed(dm.stored, dm.seq); err != nil {
			d.s.log.Warn("mqtt: forgetting a published delayed message failed; it is published again after a restart", "err", err)
		}
	}
}

// publishOrDelay publishes m now, or stores it for later if its topic is
// a delayed publish.
func (s *Server) publishOrDelay(ctx context.Context, m *pubsub.Message) error {
	delay, real, ok, err := parseDelayed(m.Topic)
	if !ok {
		return s.publish(ctx, m)
	}
	if err != nil {
		return err
	}
	m.Topic = real
	if s.delayed == nil {
		return errors.New("mqtt: server not started")
	}
	return s.delayed.add(m, delay)
}
