package mqtt

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/quiremq/quire/frontends/mqtt/packet"
	"github.com/quiremq/quire/frontends/mqtt/store"
	"github.com/quiremq/quire/frontends/pubsub"
)

// This file keeps persistent sessions in Options.Store (package doc, "What
// survives a restart"): session records, cursors, QoS 2 packet-id state,
// and the restore at Start that rebuilds offline queues from the shards.

// persistent reports whether sessions are stored.
func (s *Server) persistent() bool { return s.opts.Store != nil }

// record is sess as stored, with pending (deliveries about to be queued)
// among its copies. sess.mu is not held.
func (sess *session) record(pending ...delivery) *store.Session {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	r := &store.Session{ClientID: sess.id, Version: sess.version, ExpirySeconds: uint32(sess.expiry / time.Second)}
	if !sess.offlineSince.IsZero() {
		r.DisconnectedAt = sess.offlineSince.UnixMilli()
	}
	for _, f := range slices.Sorted(maps.Keys(sess.subs)) {
		ps := sess.subs[f]
		r.Subs = append(r.Subs, store.Sub{Filter: f, QoS: ps.QoS, NoLocal: ps.NoLocal,
			RetainAsPublished: ps.RetainAsPublished, RetainHandling: ps.RetainHandling, ID: ps.ID})
	}
	if sess.will != nil {
		r.Will = sess.will
		r.WillDue = sess.willDue.UnixMilli()
	}
	r.Copies = sess.copies(pending)
	return r
}

// copies returns the QoS 1 and 2 deliveries without a position (retained
// messages queued at SUBSCRIBE) that sess owes, inflight ones first in
// send order, then the queued ones and pending: the record keeps them by
// value, as no cursor covers them. sess.mu is held.
func (sess *session) copies(pending []delivery) []store.Copy {
	var out []store.Copy
	add := func(d *delivery) {
		if d.qos > 0 && d.pos.Shard == "" {
			out = append(out, store.Copy{Msg: d.msg, QoS: d.qos, Retain: d.retain, SubIDs: d.subIDs, ID: d.id, Seq: d.seq,
				Released: d.released})
		}
	}
	for _, d := range sess.inflight {
		add(d)
	}
	slices.SortFunc(out, func(a, b store.Copy) int { return cmp.Compare(a.Seq, b.Seq) })
	for i := range sess.queue {
		add(&sess.queue[i])
	}
	for i := range pending {
		add(&pending[i])
	}
	return out
}

// saveSession writes sess's record if it is stored, with pending among its
// copies; with explicit, also its cursors for every shard (a new
// subscription must not see older messages after a restart).
func (s *Server) saveSession(sess *session, explicit, sync bool, pending ...delivery) error {
	if !s.persistent() {
		return nil
	}
	sess.mu.Lock()
	ended := sess.ended
	sess.mu.Unlock()
	if !sess.stored.Load() || ended {
		return nil
	}
	var cursors map[string]uint64
	var groups map[string]map[string]uint64
	if explicit {
		// A shared subscription's cursors too: a new group must not see
		// older messages after a restart either.
		f := s.rs.Frontiers()
		cursors, _ = sess.cursors(f, true)
		for _, sub := range sess.sharedSubs() {
			if groups == nil {
				groups = map[string]map[string]uint64{}
			}
			g := s.shareGroup(sub.Group, sub.Filter)
			groups[g.key], _ = g.cursors(f, true)
			g.own.dirty.Store(true) // the next flush leaves the global cursor to shards with nothing owed
		}
	}
	sess.copied.Store(false)
	if err := s.opts.Store.PutSession(sess.record(pending...), cursors, groups, sync); err != nil {
		sess.copied.Store(true)
		s.m.storageErrors.Inc()
		s.log.Warn("mqtt session not stored", "client_id", sess.id, "err", err)
		return err
	}
	return nil
}

// startStoring marks a session persistent (Session Expiry > 0) and writes
// its record with explicit cursors, durably.
func (s *Server) startStoring(sess *session) error {
	fresh := !sess.stored.Swap(true)
	return s.saveSession(sess, fresh, true)
}

// deleteStored removes a stored session's records. s.mu is held.
func (s *Server) deleteStored(sess *session) {
	if !s.persistent() || !sess.stored.Load() {
		return
	}
	if err := s.opts.Store.DeleteSession(sess.id); err != nil {
		s.m.storageErrors.Inc()
		s.log.Warn("mqtt ended session not deleted from the store", "client_id", sess.id, "err", err)
	}
}

// flushLoop writes cursors every Options.CursorInterval until stop closes.
func (s *Server) flushLoop(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(s.opts.CursorInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			s.flushCursors()
		}
	}
}

// flushCursors writes, in one batch, the cursors of every stored session
// whose owed positions changed, and the global cursors (the frontiers,
// read first: a message below a frontier was handed to its sessions
// before, so it is owed in what is read next). Nothing is written when
// nothing changed.
func (s *Server) flushCursors() {
	f := s.rs.Frontiers()
	s.mu.Lock()
	var dirty []*session
	var recs []*store.Session
	for _, sess := range s.sessions {
		if !sess.stored.Load() {
			continue
		}
		if sess.own.dirty.Swap(false) {
			dirty = append(dirty, sess)
		}
		if sess.copied.Swap(false) {
			recs = append(recs, sess.record())
		}
	}
	if len(recs) > 0 {
		// Under s.mu, which ending a session (and deleting its record)
		// holds: an ended session's record is not written back. Unsynced:
		// PutCursors below syncs it.
		if err := s.opts.Store.PutSessions(recs); err != nil {
			s.m.storageErrors.Inc()
			s.log.Warn("mqtt session records not stored", "err", err)
			for _, r := range recs {
				if sess := s.sessions[r.ClientID]; sess != nil {
					sess.copied.Store(true)
				}
			}
		}
	}
	s.mu.Unlock()
	groups := s.dirtyGroups()
	if len(dirty) == 0 && len(groups) == 0 && len(recs) == 0 && maps.Equal(f, s.flushed) {
		return
	}
	c := &store.Cursors{Clients: make(map[string]map[string]uint64, len(dirty)), Clear: map[string][]string{}, Global: f,
		Groups: map[string]map[string]uint64{}, ClearGroups: map[string][]string{}}
	put := func(sets map[string]map[string]uint64, clears map[string][]string, k string, set map[string]uint64, clear []string) {
		if len(set) > 0 {
			sets[k] = set
		}
		if len(clear) > 0 {
			clears[k] = clear
		}
	}
	for _, sess := range dirty {
		set, clear := sess.cursors(f, false)
		put(c.Clients, c.Clear, sess.id, set, clear)
	}
	for _, g := range groups {
		set, clear := g.cursors(f, false)
		put(c.Groups, c.ClearGroups, g.key, set, clear)
	}
	if err := s.opts.Store.PutCursors(c); err != nil {
		s.m.storageErrors.Inc()
		s.log.Warn("mqtt cursors not stored", "err", err)
		for _, sess := range dirty {
			sess.own.dirty.Store(true)
		}
		for _, g := range groups {
			g.own.dirty.Store(true)
		}
		return
	}
	s.flushed = f
}

// restored is a session read back at Start.
type restored struct {
	sess      *session
	rec       *store.Session
	cursors   map[string]uint64
	skip      map[Position]bool // QoS 2 inflight or completed: not replayed
	groupSkip []groupPos        // the same for shared subscriptions
}

// groupPos is a QoS 2 message of a shared subscription that a member has
// inflight or completed (a done marker): not replayed to the group.
type groupPos struct {
	key  string // store.GroupKey
	pos  Position
	done bool
}

// restoredGroup is a shared subscription with a restored member.
type restoredGroup struct {
	sg      *shareGroup
	cursors map[string]uint64
	skip    map[Position]bool
}

// restoreGroups returns the shared subscriptions of the restored
// sessions, with their stored cursors and the positions not replayed to
// them; it deletes the cursors of groups without a member, and the done
// markers of shared messages below their group's cursor.
func (s *Server) restoreGroups(all []*restored) (map[string]*restoredGroup, error) {
	st := s.opts.Store
	stored, err := st.GroupCursors()
	if err != nil {
		return nil, err
	}
	groups := map[string]*restoredGroup{}
	for _, r := range all {
		for _, sub := range r.sess.subs {
			if sub.Group == "" {
				continue
			}
			sg := s.shareGroup(sub.Group, sub.Filter)
			if groups[sg.key] == nil {
				g := &restoredGroup{sg: sg, cursors: stored[sg.key], skip: map[Position]bool{}}
				sg.own.kept = map[string]bool{}
				for sh := range g.cursors {
					sg.own.kept[sh] = true
				}
				sg.own.dirty.Store(true)
				groups[sg.key] = g
			}
		}
	}
	for k := range stored {
		if groups[k] == nil {
			if err := st.DeleteGroup(k); err != nil {
				return nil, err
			}
		}
	}
	for _, r := range all {
		var spent []Position
		for _, gp := range r.groupSkip {
			g := groups[gp.key]
			switch {
			case gp.done && (g == nil || g.cursors[gp.pos.Shard] > gp.pos.Offset):
				spent = append(spent, gp.pos)
			case g != nil:
				g.skip[gp.pos] = true
			}
		}
		if len(spent) > 0 {
			if err := st.DeleteDone(r.sess.id, spent); err != nil {
				return nil, err
			}
		}
	}
	return groups, nil
}

// restore loads the stored sessions and rebuilds what they are owed: QoS
// 2 inflight messages by packet identifier, then the offline queues by
// reading every shard from the lowest cursor up to its high watermark and
// matching each message against the sessions whose cursor it is at or
// above, and the shared subscriptions (of restored members) whose cursor
// it is at or above, each queuing it at one member, round robin. Retained messages are replayed from the global cursors on (their
// store writes are not synced). Then expired sessions end and pending wills
// are armed.
func (s *Server) restore(ctx context.Context) error {
	st := s.opts.Store
	if err := s.rs.OpenAll(ctx); err != nil {
		return err
	}
	global, err := st.GlobalCursors()
	if err != nil {
		return err
	}
	var recs []*store.Session
	if err := st.Sessions(func(r *store.Session) error { recs = append(recs, r); return nil }); err != nil {
		return err
	}
	byID := map[*session]*restored{}
	var all []*restored
	for _, rec := range recs {
		r, err := s.restoreSession(ctx, rec)
		if err != nil {
			return fmt.Errorf("mqtt: restoring session %q: %w", rec.ClientID, err)
		}
		byID[r.sess] = r
		all = append(all, r)
	}

	groups, err := s.restoreGroups(all)
	if err != nil {
		return err
	}

	// Replay the shards.
	frontiers := s.rs.Frontiers()
	replayed := 0
	for _, sh := range slices.Sorted(maps.Keys(frontiers)) {
		low, high, _ := s.rs.Watermarks(sh)
		clamp := func(off uint64) uint64 { return min(max(off, low), high) }
		g, ok := global[sh]
		if !ok {
			g = low // the shard is newer than the last flush
		}
		g = clamp(g)
		from := g
		cur := map[*session]uint64{}
		for _, r := range all {
			c, ok := r.cursors[sh]
			if !ok {
				c = g
			}
			c = clamp(c)
			cur[r.sess] = c
			from = min(from, c)
		}
		gcur := map[string]uint64{}
		for k, rg := range groups {
			c, ok := rg.cursors[sh]
			if !ok {
				c = g
			}
			c = clamp(c)
			gcur[k] = c
			from = min(from, c)
		}
		for off := from; off < high; {
			batch, err := s.rs.Read(ctx, sh, off, 512)
			if err != nil {
				return err
			}
			if len(batch) == 0 {
				break
			}
			for _, m := range batch {
				off = m.Pos.Offset + 1
				if m.Msg.Retain && m.Pos.Offset >= g {
					// In the shard's order, which is its origin's.
					if _, err := s.setRetained(ctx, m.Msg, m.Origin, true); err != nil {
						return err
					}
				}
				replayed += s.deliver(m.Msg, m.Pos, s.tree.Match(m.Msg.Topic, nil, func(pubsub.Subscription) bool { return false }),
					func(sub pubsub.Subscription) bool {
						r := byID[sub.Owner.(*session)]
						switch {
						case r == nil:
							return false
						case sub.Group == "":
							return m.Pos.Offset >= cur[r.sess] && !r.skip[m.Pos]
						}
						// The member Match chose, round robin, for the group.
						k := store.GroupKey(sub.Group, sub.Filter)
						rg := groups[k]
						return rg != nil && m.Pos.Offset >= gcur[k] && !rg.skip[m.Pos]
					})
			}
		}
	}
	s.flushCursors() // clamped cursors; global cursors of new shards

	now := time.Now()
	ended := 0
	for _, r := range all {
		sess, rec := r.sess, r.rec
		since := now
		if rec.DisconnectedAt != 0 {
			since = time.UnixMilli(rec.DisconnectedAt)
		}
		sess.mu.Lock()
		sess.offlineSince = since
		sess.mu.Unlock()
		left := since.Add(time.Duration(rec.ExpirySeconds) * time.Second).Sub(now)
		if left <= 0 {
			s.mu.Lock()
			s.endSessionLocked(sess)
			s.mu.Unlock()
			if rec.Will != nil {
				// The session ended before its will delay did: publish
				// now (MQTT 5.0 §3.1.3.2.2).
				go s.publishWill(rec.Will)
			}
			ended++
			continue
		}
		s.armExpiry(sess, left)
		if rec.Will != nil {
			sess.setWillTimer(rec.Will, max(0, time.UnixMilli(rec.WillDue).Sub(now)), s.publishWill)
		}
		if rec.DisconnectedAt == 0 {
			s.saveSession(sess, false, false)
		}
	}
	if len(all) > 0 || replayed > 0 {
		s.log.Info("mqtt sessions restored", "sessions", len(all)-ended, "expired", ended, "queued", replayed)
	}
	return nil
}

// restoreSession builds one stored session, offline, with its
// subscriptions in the tree and its QoS 2 state.
func (s *Server) restoreSession(ctx context.Context, rec *store.Session) (*restored, error) {
	st := s.opts.Store
	sess := newSession(rec.ClientID)
	sess.stored.Store(true)
	sess.version = rec.Version
	sess.expiry = time.Duration(rec.ExpirySeconds) * time.Second
	r := &restored{sess: sess, rec: rec, skip: map[Position]bool{}}
	if err := s.restoreSubs(sess, rec); err != nil {
		return nil, err
	}
	ids, err := st.Inbounds(rec.ClientID)
	if err != nil {
		return nil, err
	}
	for id, from := range ids {
		stored, err := s.storedInbound(ctx, rec.ClientID, id, from)
		if err != nil {
			return nil, err
		}
		if !stored {
			// Recorded, but the node stopped before the append: the
			// client's resend must be stored.
			if err := st.DeleteInbound(rec.ClientID, id); err != nil {
				return nil, err
			}
			continue
		}
		sess.inQoS2[id] = struct{}{}
	}
	outs, err := st.Outbounds(rec.ClientID)
	if err != nil {
		return nil, err
	}
	var ds []*delivery
	for id, o := range outs {
		got, err := s.rs.Read(ctx, o.Pos.Shard, o.Pos.Offset, 1)
		if err != nil || len(got) == 0 || got[0].Pos != o.Pos {
			// Gone with an engine that keeps nothing across restarts.
			s.log.Warn("mqtt inflight QoS 2 message not found", "client_id", rec.ClientID, "shard", o.Pos.Shard,
				"offset", o.Pos.Offset, "err", err)
			continue
		}
		d := &delivery{msg: got[0].Msg, qos: o.QoS, retain: o.Retain, subIDs: o.SubIDs, pos: o.Pos,
			id: id, released: o.Released, seq: o.Seq}
		if o.Group != "" {
			d.sg = s.shareGroup(store.SplitGroupKey(o.Group))
			r.groupSkip = append(r.groupSkip, groupPos{key: o.Group, pos: o.Pos})
		} else {
			r.skip[o.Pos] = true
		}
		ds = append(ds, d)
	}
	for _, c := range rec.Copies {
		d := &delivery{msg: c.Msg, qos: c.QoS, retain: c.Retain, subIDs: c.SubIDs, id: c.ID, seq: c.Seq, released: c.Released}
		if _, used := outs[c.ID]; c.ID == 0 || used {
			d.id, d.seq, d.released = 0, 0, false
			sess.queue = append(sess.queue, *d) // before the replay queues anything
			sess.owe(d)
			continue
		}
		ds = append(ds, d)
	}
	slices.SortFunc(ds, func(a, b *delivery) int { return cmp.Compare(a.seq, b.seq) })
	for _, d := range ds {
		sess.seq = max(sess.seq, d.seq)
		sess.inflight[d.id] = d
		sess.owe(d)
	}
	done, err := st.Done(rec.ClientID)
	if err != nil {
		return nil, err
	}
	if r.cursors, err = st.ClientCursors(rec.ClientID); err != nil {
		return nil, err
	}
	sess.own.kept = map[string]bool{}
	for sh := range r.cursors {
		sess.own.kept[sh] = true
	}
	// Done markers below the cursors are spent (those of shared
	// subscriptions are judged by the group's cursors, in restore).
	var spent []Position
	for p, group := range done {
		switch {
		case group != "":
			r.groupSkip = append(r.groupSkip, groupPos{key: group, pos: p, done: true})
		case r.cursors[p.Shard] > p.Offset:
			spent = append(spent, p)
		default:
			r.skip[p] = true
		}
	}
	if len(spent) > 0 {
		if err := st.DeleteDone(rec.ClientID, spent); err != nil {
			return nil, err
		}
	}
	sess.own.dirty.Store(true)
	s.mu.Lock()
	s.sessions[rec.ClientID] = sess
	s.mu.Unlock()
	return r, nil
}

// restoreSubs subscribes sess to the subscriptions of rec.
func (s *Server) restoreSubs(sess *session, rec *store.Session) error {
	for _, sub := range rec.Subs {
		group, filter, ok := pubsub.ParseShared(sub.Filter)
		if !ok {
			return fmt.Errorf("%w: bad filter %q", store.ErrCorrupt, sub.Filter)
		}
		ps := pubsub.Subscription{Client: rec.ClientID, Filter: filter, Group: group, QoS: sub.QoS, NoLocal: sub.NoLocal,
			RetainAsPublished: sub.RetainAsPublished, RetainHandling: sub.RetainHandling, ID: sub.ID, Owner: sess}
		s.tree.Subscribe(ps)
		sess.subs[sub.Filter] = ps
	}
	return nil
}

// persistOutbound stores the packet-id state of the QoS 2 deliveries of
// batch that have a position, before they are sent.
func (c *conn) persistOutbound(batch []*delivery) error {
	if !c.s.persistent() || !c.sess.stored.Load() {
		return nil
	}
	var os map[uint16]*store.Outbound
	copies := false
	for _, d := range batch {
		copies = copies || d.qos == 2 && d.pos.Shard == ""
		if d.qos == 2 && d.pos.Shard != "" {
			if os == nil {
				os = map[uint16]*store.Outbound{}
			}
			os[d.id] = &store.Outbound{Pos: d.pos, Released: d.released, Seq: d.seq, QoS: d.qos, Retain: d.retain, SubIDs: d.subIDs,
				Group: d.groupKey()}
		}
	}
	if copies {
		// A QoS 2 copy's packet identifier (or released state) is in the
		// session record.
		if err := c.s.saveSession(c.sess, false, true); err != nil {
			return fmt.Errorf("mqtt: storing QoS 2 state: %w", err)
		}
	}
	if os == nil {
		return nil
	}
	if err := c.s.opts.Store.PutOutbound(c.clientID, os); err != nil {
		c.s.m.storageErrors.Inc()
		return fmt.Errorf("mqtt: storing QoS 2 state: %w", err)
	}
	return nil
}

// completed forgets the stored packet-id state of a QoS 2 delivery that
// left the inflight window (nil: nothing left it).
func (c *conn) completed(d *delivery) {
	if d == nil || d.qos != 2 || d.pos.Shard == "" || !c.s.persistent() || !c.sess.stored.Load() {
		return
	}
	if err := c.s.opts.Store.CompleteOutbound(c.clientID, d.id, d.pos, d.groupKey()); err != nil {
		c.s.m.storageErrors.Inc()
		c.s.log.Warn("mqtt QoS 2 completion not stored", "client_id", c.clientID, "err", err)
	}
}

// recordInbound records the packet identifier of an inbound QoS 2 PUBLISH
// of a stored session durably before the message is stored, with the
// position the message will be at or after, and stamps the message with
// it: whether a crash came before or after the append is then decided at
// restart by looking for the message (restoreSession), so that the
// client's resend is stored exactly once either way. Delayed publishes
// ($delayed/…) are not in a shard yet: their id is recorded with them
// (store.PutDelayed, delayer.add).
func (c *conn) recordInbound(p *packet.Publish, m *pubsub.Message) (bool, error) {
	if p.QoS != packet.QoS2 || !c.s.persistent() || !c.sess.stored.Load() || strings.HasPrefix(m.Topic, DelayedPrefix) {
		return false, nil
	}
	pos, err := c.s.rs.Next(c.s.ctx, m.Topic)
	if err == nil {
		err = c.s.opts.Store.PutInbound(c.clientID, p.PacketID, pos)
	}
	if err != nil {
		c.s.m.storageErrors.Inc()
		return false, &closeError{code: packet.UnspecifiedError, msg: "storing QoS 2 state: " + err.Error()}
	}
	m.PacketID = p.PacketID
	return true, nil
}

// forgetInbound removes a recorded inbound packet identifier whose
// PUBLISH was not stored, so that the client's resend is.
func (c *conn) forgetInbound(pid uint16) {
	if err := c.s.opts.Store.DeleteInbound(c.clientID, pid); err != nil {
		c.s.m.storageErrors.Inc()
		c.s.log.Warn("mqtt QoS 2 state not removed", "client_id", c.clientID, "err", err)
	}
}

// storedInbound reports whether the QoS 2 PUBLISH of client with pid,
// recorded before it was stored at or after from, is in its shard.
func (s *Server) storedInbound(ctx context.Context, client string, pid uint16, from Position) (bool, error) {
	if from.Shard == "" {
		return true, nil // recorded with (delayed publish) or after it was stored
	}
	found, err := s.findStored(ctx, from, func(m Stored) bool { return m.Msg.Publisher == client && m.Msg.PacketID == pid })
	return found != nil, err
}

// findStored returns the first message of from's shard at or above its
// offset that satisfies is, nil if none does.
func (s *Server) findStored(ctx context.Context, from Position, is func(Stored) bool) (*Stored, error) {
	_, high, ok := s.rs.Watermarks(from.Shard)
	if !ok {
		return nil, nil
	}
	for off := from.Offset; off < high; {
		batch, err := s.rs.Read(ctx, from.Shard, off, 512)
		if err != nil || len(batch) == 0 {
			return nil, err
		}
		for i := range batch {
			if is(batch[i]) {
				return &batch[i], nil
			}
			off = batch[i].Pos.Offset + 1
		}
	}
	return nil, nil
}
