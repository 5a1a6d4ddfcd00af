package pubsub

import (
	"context"
	"strings"
	"sync"
	"time"
)

// Header is one application property of a message (an MQTT 5 user
// property, an AMQP application property, a Kafka record header).
type Header struct {
	Key, Value string
}

// Message is a published message as the front-ends share it. A Message is
// immutable once published: every subscriber gets the same pointer.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte // QoS the publisher sent with
	Retain  bool

	// Optional properties (MQTT 5.0 §3.3.2.3; AMQP has each of them).
	PayloadFormat   byte // 1: UTF-8 text
	ContentType     string
	ResponseTopic   string
	CorrelationData []byte
	Headers         []Header
	// Expiry is when the message stops being delivered; zero: never.
	Expiry time.Time

	// Publisher is the publishing session's identifier ("" for the broker).
	Publisher string
	// PacketID is the publisher's packet identifier of a QoS 2 PUBLISH
	// (0 otherwise), stored with the message so that a restart can tell
	// whether a PUBLISH the publisher may resend was stored already.
	PacketID uint16
	// Time is when the broker accepted the message.
	Time time.Time
}

// Expired reports whether m has expired at now.
func (m *Message) Expired(now time.Time) bool {
	return !m.Expiry.IsZero() && !now.Before(m.Expiry)
}

// RetainedStore keeps the last retained message of each topic (MQTT 5.0
// §3.3.1.3). Implementations are safe for concurrent use.
type RetainedStore interface {
	// Set stores m as topic m.Topic's retained message, replacing any; an
	// empty payload deletes it [MQTT-3.3.1-6].
	Set(ctx context.Context, m *Message) error
	// Match calls fn for each retained message whose topic matches filter
	// (a plain filter, not "$share/…"), until fn returns false.
	Match(ctx context.Context, filter string, fn func(*Message) bool) error
	// Len is the number of retained messages.
	Len() int
}

// MemoryRetained is a RetainedStore in memory: nothing survives a restart.
// Messages are kept in a tree of topic levels, so a filter visits only the
// branches it can match. Expired messages are dropped when a match finds
// them.
type MemoryRetained struct {
	mu    sync.RWMutex
	root  rnode
	count int
	now   func() time.Time
}

type rnode struct {
	children map[string]*rnode
	msg      *Message
}

var _ RetainedStore = (*MemoryRetained)(nil)

// NewMemoryRetained returns an empty store; now defaults to time.Now.
func NewMemoryRetained(now func() time.Time) *MemoryRetained {
	if now == nil {
		now = time.Now
	}
	return &MemoryRetained{now: now}
}

// Set implements RetainedStore.
func (r *MemoryRetained) Set(_ context.Context, m *Message) error {
	levels := strings.Split(m.Topic, "/")
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(m.Payload) == 0 {
		r.delete(levels)
		return nil
	}
	n := &r.root
	for _, l := range levels {
		c := n.children[l]
		if c == nil {
			if n.children == nil {
				n.children = map[string]*rnode{}
			}
			c = &rnode{}
			n.children[l] = c
		}
		n = c
	}
	if n.msg == nil {
		r.count++
	}
	n.msg = m
	return nil
}

func (r *MemoryRetained) delete(levels []string) {
	path := []*rnode{&r.root}
	for _, l := range levels {
		c := path[len(path)-1].children[l]
		if c == nil {
			return
		}
		path = append(path, c)
	}
	if path[len(path)-1].msg == nil {
		return
	}
	path[len(path)-1].msg = nil
	r.count--
	for i := len(path) - 1; i > 0; i-- {
		if path[i].msg != nil || len(path[i].children) > 0 {
			break
		}
		delete(path[i-1].children, levels[i-1])
	}
}

// Match implements RetainedStore.
func (r *MemoryRetained) Match(_ context.Context, filter string, fn func(*Message) bool) error {
	now := r.now()
	var found, expired []*Message
	r.mu.RLock()
	collect(&r.root, strings.Split(filter, "/"), true, func(m *Message) {
		if m.Expired(now) {
			expired = append(expired, m)
		} else {
			found = append(found, m)
		}
	})
	r.mu.RUnlock()
	for _, m := range expired {
		r.mu.Lock()
		if n := r.find(m.Topic); n != nil && n.msg == m {
			r.delete(strings.Split(m.Topic, "/"))
		}
		r.mu.Unlock()
	}
	for _, m := range found {
		if !fn(m) {
			break
		}
	}
	return nil
}

func (r *MemoryRetained) find(topic string) *rnode {
	n := &r.root
	for l := range strings.SplitSeq(topic, "/") {
		if n = n.children[l]; n == nil {
			return nil
		}
	}
	return n
}

// collect calls fn for each message under n matching the filter levels.
func collect(n *rnode, f []string, first bool, fn func(*Message)) {
	if len(f) == 0 {
		if n.msg != nil {
			fn(n.msg)
		}
		return
	}
	switch f[0] {
	case "#":
		// "#" matches the parent level too ("a/#" matches "a").
		if n.msg != nil && !first {
			fn(n.msg)
		}
		for l, c := range n.children {
			if first && strings.HasPrefix(l, "$") {
				continue
			}
			all(c, fn)
		}
	case "+":
		for l, c := range n.children {
			if first && strings.HasPrefix(l, "$") {
				continue
			}
			collect(c, f[1:], false, fn)
		}
	default:
		if c := n.children[f[0]]; c != nil {
			collect(c, f[1:], false, fn)
		}
	}
}

func all(n *rnode, fn func(*Message)) {
	if n.msg != nil {
		fn(n.msg)
	}
	for _, c := range n.children {
		all(c, fn)
	}
}

// Len implements RetainedStore.
func (r *MemoryRetained) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.count
}
