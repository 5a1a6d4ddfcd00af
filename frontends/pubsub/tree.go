// Package pubsub is the protocol-neutral message logic of the front-ends: a
// topic tree matching topic names against subscription filters, shared
// subscriptions, and the retained-message store. It does no I/O and knows no
// wire format; frontends/mqtt (and later AMQP's topic exchanges) build on it.
//
// # Topics and filters
//
// Topic names and filters are MQTT's (MQTT 5.0 §4.7): levels separated by
// '/', '+' matches exactly one level, '#' (last level only) matches any
// number of levels including none ("a/#" matches "a"). A topic starting with
// '$' is not matched by a filter whose first level is a wildcard
// [MQTT-4.7.2-1], so "#" does not see "$SYS/…".
//
// # Shared subscriptions
//
// A filter "$share/{group}/{filter}" (MQTT 5.0 §4.8.2) joins the group; each
// message matching the filter goes to one member of each group. Shared
// subscriptions live in an index of their own (a second tree keyed by group
// and client), so the common non-shared match never looks at them. Dispatch
// policy: round robin over the members of a (group, filter) pair in the order
// they subscribed, skipping members the caller's accept function refuses
// (the broker refuses offline members, so a member that disconnects stops
// receiving at once; if every member refuses, the first is chosen, so a
// persistent session can still queue it).
//
// # Changes
//
// A Tree counts the changes of its filter set (Filters, Routes): Version
// grows whenever a filter gains its first subscription or loses its last,
// or a shared (group, filter) its first member or its last, and Changed
// returns a channel closed at the next such change. A subscriber joining
// or leaving a filter (or group) that others hold is no change. A watcher
// (the broker's cross-node routes) rebuilds only then, and at once.
//
// # Locking
//
// Tree and MemoryRetained are safe for concurrent use; each holds one
// RWMutex, and no callback runs while it is held.
package pubsub

import (
	"slices"
	"strings"
	"sync"
)

// Subscription is one client's subscription to one filter.
type Subscription struct {
	Client string // session identifier
	Filter string // the filter without any "$share/{group}/" prefix
	Group  string // share name; "" for a non-shared subscription
	QoS    byte   // maximum QoS granted

	NoLocal           bool   // do not deliver the client's own publications
	RetainAsPublished bool   // keep the RETAIN flag when forwarding
	RetainHandling    byte   // 0 send retained on subscribe, 1 only if new, 2 never
	ID                uint32 // subscription identifier, 0 for none

	// Owner is opaque to pubsub: the subscriber's handle (the broker's
	// session), returned with the subscription by Match so that delivery
	// needs no second lookup.
	Owner any
}

// ParseShared splits "$share/{group}/{filter}" into group and filter; a
// non-shared filter comes back with group "". ok is false for a malformed
// shared filter (no group, or no filter after it).
func ParseShared(filter string) (group, f string, ok bool) {
	rest, found := strings.CutPrefix(filter, "$share/")
	if !found {
		return "", filter, true
	}
	group, f, found = strings.Cut(rest, "/")
	if !found || group == "" || f == "" || strings.ContainsAny(group, "+#") {
		return "", "", false
	}
	return group, f, true
}

// Tree indexes subscriptions by filter.
type Tree struct {
	mu     sync.RWMutex
	plain  *node // key: client
	shared *node // key: group + "\x00" + client
	count  int

	version uint64        // changes of the filter set
	changed chan struct{} // closed at the next change; nil until Changed asks
}

type node struct {
	children map[string]*node
	subs     map[string]Subscription
	order    []string // shared: member keys in subscription order
	next     int      // shared: round-robin cursor
}

// NewTree returns an empty tree.
func NewTree() *Tree { return &Tree{plain: &node{}, shared: &node{}} }

func (t *Tree) root(group string) *node {
	if group == "" {
		return t.plain
	}
	return t.shared
}

func key(s Subscription) string {
	if s.Group == "" {
		return s.Client
	}
	return s.Group + "\x00" + s.Client
}

// Subscribe adds or replaces the subscription of s.Client to (s.Group,
// s.Filter) and reports whether one existed.
func (t *Tree) Subscribe(s Subscription) (existed bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.root(s.Group)
	for level := range strings.SplitSeq(s.Filter, "/") {
		c := n.children[level]
		if c == nil {
			if n.children == nil {
				n.children = map[string]*node{}
			}
			c = &node{}
			n.children[level] = c
		}
		n = c
	}
	k := key(s)
	if n.subs == nil {
		n.subs = map[string]Subscription{}
	}
	_, existed = n.subs[k]
	n.subs[k] = s
	if !existed {
		t.count++
		if s.Group != "" {
			n.order = append(n.order, k)
		}
		if len(n.subs) == 1 || (s.Group != "" && !otherMember(n, s.Group, k)) {
			t.filtersChanged()
		}
	}
	return existed
}

// otherMember reports whether a subscription of n other than k's is in
// group.
func otherMember(n *node, group, k string) bool {
	for _, o := range n.order {
		if o != k && n.subs[o].Group == group {
			return true
		}
	}
	return false
}

// filtersChanged records a change of the filter set. t.mu is held.
func (t *Tree) filtersChanged() {
	t.version++
	if t.changed != nil {
		close(t.changed)
		t.changed = nil
	}
}

// Version counts the changes of the filter set (see the package doc).
func (t *Tree) Version() uint64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.version
}

// Changed returns a channel closed at the next change of the filter set
// (after the Version it returns with).
func (t *Tree) Changed() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.changed == nil {
		t.changed = make(chan struct{})
	}
	return t.changed
}

// Filters returns the distinct filters of the tree's subscriptions, a
// shared one by its filter without "$share/{group}/", sorted, and the
// Version they are of.
func (t *Tree) Filters() (filters []string, version uint64) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var path []string
	var walk func(n *node)
	walk = func(n *node) {
		if len(n.subs) > 0 {
			filters = append(filters, strings.Join(path, "/"))
		}
		for level, c := range n.children {
			path = append(path, level)
			walk(c)
			path = path[:len(path)-1]
		}
	}
	walk(t.plain)
	walk(t.shared)
	slices.Sort(filters)
	return slices.Compact(filters), t.version
}

// Routes returns what Filters does split in two: the distinct filters of
// the non-shared subscriptions, and the (group, filter) pairs of the
// shared ones, each sorted, and the Version they are of.
func (t *Tree) Routes() (plain []string, groups []SharedKey, version uint64) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var path []string
	var walk func(n *node, shared bool)
	walk = func(n *node, shared bool) {
		if len(n.subs) > 0 {
			f := strings.Join(path, "/")
			if !shared {
				plain = append(plain, f)
			}
			for _, s := range n.subs {
				if shared {
					groups = append(groups, SharedKey{Group: s.Group, Filter: f})
				}
			}
		}
		for level, c := range n.children {
			path = append(path, level)
			walk(c, shared)
			path = path[:len(path)-1]
		}
	}
	walk(t.plain, false)
	walk(t.shared, true)
	slices.Sort(plain)
	slices.SortFunc(groups, func(a, b SharedKey) int {
		if c := strings.Compare(a.Group, b.Group); c != 0 {
			return c
		}
		return strings.Compare(a.Filter, b.Filter)
	})
	return plain, slices.Compact(groups), t.version
}

// SharedKey names a shared subscription: its group and its filter
// (without "$share/{group}/").
type SharedKey struct{ Group, Filter string }

// Unsubscribe removes client's subscription to filter (which may be a
// "$share/…" filter) and reports whether there was one.
func (t *Tree) Unsubscribe(client, filter string) bool {
	group, f, ok := ParseShared(filter)
	if !ok {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	k := key(Subscription{Client: client, Group: group})
	path := []*node{t.root(group)}
	levels := strings.Split(f, "/")
	for _, level := range levels {
		c := path[len(path)-1].children[level]
		if c == nil {
			return false
		}
		path = append(path, c)
	}
	n := path[len(path)-1]
	if _, ok := n.subs[k]; !ok {
		return false
	}
	delete(n.subs, k)
	t.count--
	if group != "" {
		for i, o := range n.order {
			if o == k {
				n.order = append(n.order[:i], n.order[i+1:]...)
				break
			}
		}
	}
	if len(n.subs) == 0 || (group != "" && !otherMember(n, group, k)) {
		t.filtersChanged()
	}
	// Prune empty nodes bottom-up so that churn does not grow the tree.
	for i := len(path) - 1; i > 0; i-- {
		if len(path[i].subs) > 0 || len(path[i].children) > 0 {
			break
		}
		delete(path[i-1].children, levels[i-1])
	}
	return true
}

// Len is the number of subscriptions, shared ones included.
func (t *Tree) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.count
}

// SharedMembers returns the members of the shared subscription (group,
// filter).
func (t *Tree) SharedMembers(group, filter string) []Subscription {
	t.mu.RLock()
	defer t.mu.RUnlock()
	n := t.shared
	for l := range strings.SplitSeq(filter, "/") {
		if n == nil {
			return nil
		}
		n = n.children[l]
	}
	if n == nil {
		return nil
	}
	var out []Subscription
	for _, k := range n.order {
		if s := n.subs[k]; s.Group == group {
			out = append(out, s)
		}
	}
	return out
}

// Match appends to dst every non-shared subscription whose filter matches
// topic, and one member of each shared (group, filter) that matches (see the
// package doc for the dispatch policy; accept may be nil), and returns dst.
func (t *Tree) Match(topic string, dst []Subscription, accept func(Subscription) bool) []Subscription {
	dollar := strings.HasPrefix(topic, "$")
	t.mu.RLock()
	for _, n := range matchNodes(t.plain, topic, dollar, true, nil) {
		for _, s := range n.subs {
			dst = append(dst, s)
		}
	}
	var shared []*node
	if len(t.shared.children) > 0 {
		shared = matchNodes(t.shared, topic, dollar, true, nil)
	}
	t.mu.RUnlock()
	if len(shared) == 0 {
		return dst
	}
	// Choosing a member moves a cursor: take the write lock only when a
	// shared subscription matched.
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, n := range shared {
		dst = pickShared(n, dst, accept)
	}
	return dst
}

// pickShared appends one member per group of n, round robin.
func pickShared(n *node, dst []Subscription, accept func(Subscription) bool) []Subscription {
	if len(n.order) == 0 {
		return dst
	}
	// Walk the members once from the cursor; each group takes the first
	// member accept likes, else its first member.
	done := map[string]bool{}
	start := n.next % len(n.order)
	fallback := map[string]Subscription{}
	var groups []string
	for i := range len(n.order) {
		s := n.subs[n.order[(start+i)%len(n.order)]]
		if done[s.Group] {
			continue
		}
		if _, seen := fallback[s.Group]; !seen {
			fallback[s.Group] = s
			groups = append(groups, s.Group)
		}
		if accept == nil || accept(s) {
			done[s.Group] = true
			dst = append(dst, s)
		}
	}
	for _, g := range groups {
		if !done[g] {
			dst = append(dst, fallback[g])
		}
	}
	n.next = start + 1
	return dst
}

// matchNodes returns the nodes holding filters that match topic.
func matchNodes(n *node, topic string, dollar, first bool, dst []*node) []*node {
	level, rest, more := strings.Cut(topic, "/")
	wild := !(first && dollar)
	if wild {
		if c := n.children["#"]; c != nil {
			dst = append(dst, c)
		}
		if c := n.children["+"]; c != nil {
			dst = matchNext(c, rest, more, dollar, dst)
		}
	}
	if c := n.children[level]; c != nil {
		dst = matchNext(c, rest, more, dollar, dst)
	}
	return dst
}

func matchNext(c *node, rest string, more, dollar bool, dst []*node) []*node {
	if !more {
		if len(c.subs) > 0 {
			dst = append(dst, c)
		}
		// "a/#" matches "a".
		if h := c.children["#"]; h != nil {
			dst = append(dst, h)
		}
		return dst
	}
	return matchNodes(c, rest, dollar, false, dst)
}
