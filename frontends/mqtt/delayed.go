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
	"github.com/quiremq/quire/frontends/mqtt/store"
	"github.com/quiremq/quire/frontends/pubsub"
)

// Delayed publish: a PUBLISH to "$delayed/<seconds>/<topic>" is published
// to <topic> after <seconds> (0 to MaxDelaySeconds), as EMQX does. It is
// acknowledged once it is stored: with Options.Store, in the store, synced
// (delayed publishes are rare enough that a sync each is cheap, and the
// store batches concurrent ones); without a Store, in memory only, lost on
// restart like every other piece of session state then. When it is due it
// is published like any message (appended to its topic's shard, retained
// if flagged), then forgotten. Released exactly once across a crash: with
// a Store, the release is marked (synced) with the shard position the
// message will be at or after, and the record carries a stamp
// (HeaderDelayed); a restart that finds a marked message in its shard
// forgets it, one that does not releases it. A QoS 2 PUBLISH's packet
// identifier is stored in the same batch as the message, so the client's
// resend after a crash is not stored again. At most Options.MaxDelayed wait at
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
	at  time.Time       // when it is due (later after a failed publish)
	id  store.DelayedID // its key in the store: the first due time, unix ns, and seq
	m   *pubsub.Message
	rel *store.Position // where its release began (stored): it is at or after it; nil: not begun
	// tried: an append of it was attempted and failed (it may be in its
	// shard all the same). Only then, or after a restart (restore), can
	// its shard hold it: a first attempt appends without searching.
	tried bool
}

// stamp identifies dm's record in its shard (storage.go HeaderDelayed).
func (dm *delayedMsg) stamp() string {
	return strconv.FormatInt(dm.id.At, 10) + "." + strconv.FormatUint(dm.id.Seq, 10)
}

// delayedStampKey carries a delayed publish's stamp in the Headers of the
// message appended (EncodeRecord writes it as HeaderDelayed). MQTT strings
// cannot hold U+0000, so no user property has this key.
const delayedStampKey = "\x00delayed"

type delayedHeap []*delayedMsg

func (h delayedHeap) Len() int { return len(h) }
func (h delayedHeap) Less(i, j int) bool {
	return h[i].at.Before(h[j].at) || h[i].at.Equal(h[j].at) && h[i].id.Seq < h[j].id.Seq
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

// restore loads the stored delayed publishes. One whose release had begun
// is looked for in its shard: found, it was released and is forgotten;
// not found, it is released again.
func (d *delayer) restore(ctx context.Context) error {
	st := d.s.opts.Store
	if st == nil {
		return nil
	}
	var ms []*delayedMsg
	err := st.Delayed(func(id store.DelayedID, m *pubsub.Message, rel *store.Position) error {
		ms = append(ms, &delayedMsg{at: time.Unix(0, id.At), id: id, m: m, rel: rel})
		return nil
	})
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, dm := range ms {
		d.seq = max(d.seq, dm.id.Seq)
		if dm.rel != nil {
			found, err := d.released(ctx, dm)
			if err != nil {
				return err
			}
			if found != nil {
				// The restore replays it to the sessions owed it.
				if err := st.DeleteDelayed(dm.id); err != nil {
					return err
				}
				continue
			}
		}
		heap.Push(&d.h, dm)
	}
	return nil
}

// released returns dm, whose release began, as found in its shard (nil:
// not there).
func (d *delayer) released(ctx context.Context, dm *delayedMsg) (*Stored, error) {
	stamp := dm.stamp()
	return d.s.findStored(ctx, *dm.rel, func(m Stored) bool { return m.Delayed == stamp })
}

func (d *delayer) len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.h)
}

// add stores m to be published after delay; it returns once m is as
// durable as the package doc says. pid is the packet identifier of a QoS
// 2 PUBLISH of a stored session, recorded with m (0: none).
func (d *delayer) add(m *pubsub.Message, delay time.Duration, pid uint16) error {
	d.mu.Lock()
	if len(d.h) >= d.s.opts.MaxDelayed {
		d.mu.Unlock()
		return &reasonError{packet.QuotaExceeded, fmt.Sprintf("%d delayed publishes are waiting (the limit)", d.s.opts.MaxDelayed)}
	}
	d.seq++
	dm := &delayedMsg{at: time.Now().Add(delay), m: m}
	dm.id = store.DelayedID{At: dm.at.UnixNano(), Seq: d.seq}
	d.mu.Unlock()
	if st := d.s.opts.Store; st != nil {
		if err := st.PutDelayed(dm.id, m, m.Publisher, pid); err != nil {
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

// maxRelease bounds the delayed publishes released in one round (one
// synced store batch marks them).
const maxRelease = 256

// run publishes delayed messages as they come due, until ctx ends.
func (d *delayer) run(ctx context.Context) {
	defer close(d.done)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		now := time.Now()
		var due []*delayedMsg
		wait := time.Hour
		d.mu.Lock()
		for len(d.h) > 0 && len(due) < maxRelease {
			if w := d.h[0].at.Sub(now); w > 0 {
				wait = w
				break
			}
			// Popped before publishing: the count must not include it
			// once delivered.
			due = append(due, heap.Pop(&d.h).(*delayedMsg))
		}
		d.mu.Unlock()
		if len(due) > 0 {
			d.release(ctx, due)
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

// release publishes due (popped from the heap) and forgets each. With a
// Store, the release of each is marked first (one synced batch), with the
// position its message will be at or after, and the message is appended
// with its stamp: a crash after the append then finds it at restart
// instead of publishing it again, and so does a retry after a failed
// append (which may have stored it). A message that fails is retried a
// second later.
func (d *delayer) release(ctx context.Context, due []*delayedMsg) {
	st := d.s.opts.Store
	if st != nil {
		marks := map[store.DelayedID]store.Position{}
		for _, dm := range due {
			if dm.rel != nil {
				continue
			}
			pos, err := d.s.rs.Next(ctx, dm.m.Topic)
			if err != nil {
				d.retry(ctx, due, err)
				return
			}
			marks[dm.id] = pos
		}
		if len(marks) > 0 {
			if err := st.MarkReleasing(marks); err != nil {
				d.s.m.storageErrors.Inc()
				d.retry(ctx, due, err)
				return
			}
			for _, dm := range due {
				if pos, ok := marks[dm.id]; ok {
					dm.rel = &pos
				}
			}
		}
	}
	for i, dm := range due {
		if err := d.publish(ctx, dm); err != nil {
			d.retry(ctx, due[i:i+1], err)
			continue
		}
		if st != nil {
			if err := st.DeleteDelayed(dm.id); err != nil {
				d.s.log.Warn("mqtt: forgetting a published delayed message failed; a restart finds it published", "err", err)
			}
		}
	}
}

// publish publishes dm, unless an earlier attempt stored it. Only a retry
// after a failed append searches its shard for it (from the release
// mark): a first attempt cannot find it there, and searching on every
// release would read the shard from the mark to its end once per message,
// O(n²) when many fall due together on one shard. A release begun before a
// restart was searched for by restore.
func (d *delayer) publish(ctx context.Context, dm *delayedMsg) error {
	m := *dm.m
	m.Time = time.Now()
	if dm.rel == nil {
		return d.s.publish(ctx, &m)
	}
	if dm.tried {
		found, err := d.released(ctx, dm)
		if err != nil {
			return err
		}
		if found != nil {
			// A failed append stored it after all: hand it to the
			// sessions now, as that append did not.
			d.s.stored(ctx, &m, found.Pos)
			return nil
		}
	}
	stamped := m
	stamped.Headers = append(m.Headers[:len(m.Headers):len(m.Headers)], pubsub.Header{Key: delayedStampKey, Value: dm.stamp()})
	pos, err := d.s.opts.Storage.Append(ctx, &stamped)
	if err != nil {
		dm.tried = true
		d.s.m.storageErrors.Inc()
		return err
	}
	d.s.stored(ctx, &m, pos)
	return nil
}

// retry puts dms back, due a second from now unless the server stops.
func (d *delayer) retry(ctx context.Context, dms []*delayedMsg, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, dm := range dms {
		if ctx.Err() == nil {
			d.s.log.Warn("mqtt delayed publish failed; retrying", "topic", dm.m.Topic, "err", err)
			dm.at = time.Now().Add(time.Second)
		}
		heap.Push(&d.h, dm)
	}
}

// publishOrDelay publishes m now, or stores it for later if its topic is
// a delayed publish.
// pid is a QoS 2 PUBLISH's packet identifier to record with a delayed
// publish (0: none; see delayer.add).
func (s *Server) publishOrDelay(ctx context.Context, m *pubsub.Message, pid uint16) error {
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
	return s.delayed.add(m, delay, pid)
}
