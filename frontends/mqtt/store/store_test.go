package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quiremq/quire/frontends/pubsub"
	"github.com/quiremq/quire/internal/vfs"
)

func open(t *testing.T, fs vfs.FS) *Store {
	t.Helper()
	s, err := Open(Options{FS: fs, Dir: "mqtt", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func sessionIDs(t *testing.T, s *Store) []string {
	t.Helper()
	var ids []string
	if err := s.Sessions(func(r *Session) error { ids = append(ids, r.ClientID); return nil }); err != nil {
		t.Fatal(err)
	}
	return ids
}

// Everything the broker writes with sync (sessions, QoS 2 packet-id
// state) is there after a crash that drops every unsynced write; cursors
// and retained messages, written without sync, may be gone.
func TestSyncedStateSurvivesCrash(t *testing.T) {
	fs := vfs.NewCrashableMem()
	s := open(t, fs)
	will := &pubsub.Message{Topic: "status/a", Payload: []byte("gone"), QoS: 1, Retain: true}
	sess := &Session{ClientID: "a", Version: 5, ExpirySeconds: 60, DisconnectedAt: 1234,
		Subs: []Sub{{Filter: "x/#", QoS: 1, ID: 7}, {Filter: "$share/g/y", QoS: 2, NoLocal: false, RetainHandling: 2}},
		Will: will, WillDue: 5678}
	if err := s.PutSession(sess, map[string]uint64{"mqtt/file/0": 42}, nil, true); err != nil {
		t.Fatal(err)
	}
	if err := s.PutInbound("a", 9, Position{Shard: "mqtt/file/2", Offset: 17}); err != nil {
		t.Fatal(err)
	}
	out := &Outbound{Pos: Position{Shard: "mqtt/file/1", Offset: 3}, Released: true, Seq: 4, QoS: 2, SubIDs: []uint32{7}}
	if err := s.PutOutbound("a", map[uint16]*Outbound{11: out}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutCursors(&Cursors{Global: map[string]uint64{"mqtt/file/0": 99}}); err != nil {
		t.Fatal(err)
	}
	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	s.Close()

	s = open(t, crashed)
	defer s.Close()
	var got []*Session
	if err := s.Sessions(func(r *Session) error { got = append(got, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || fmt.Sprint(got[0].Subs) != fmt.Sprint(sess.Subs) || got[0].ExpirySeconds != 60 ||
		got[0].DisconnectedAt != 1234 || got[0].WillDue != 5678 || got[0].Will == nil || string(got[0].Will.Payload) != "gone" {
		t.Fatalf("session after crash: %+v", got)
	}
	if c, err := s.ClientCursors("a"); err != nil || c["mqtt/file/0"] != 42 {
		t.Fatalf("cursors written with the synced session: %v %v", c, err)
	}
	if ids, err := s.Inbounds("a"); err != nil || len(ids) != 1 || ids[9] != (Position{Shard: "mqtt/file/2", Offset: 17}) {
		t.Fatalf("inbound ids after crash: %v %v", ids, err)
	}
	outs, err := s.Outbounds("a")
	if err != nil || len(outs) != 1 || fmt.Sprint(*outs[11]) != fmt.Sprint(*out) {
		t.Fatalf("outbound after crash: %v %v", outs, err)
	}
}

// DeleteSession removes one client's records and nothing of a client
// whose identifier it prefixes.
func TestDeleteSessionIsExact(t *testing.T) {
	s := open(t, vfs.NewMem())
	defer s.Close()
	for _, id := range []string{"a", "ab"} {
		if err := s.PutSession(&Session{ClientID: id, ExpirySeconds: 1}, map[string]uint64{"sh": 1}, nil, false); err != nil {
			t.Fatal(err)
		}
		if err := s.PutInbound(id, 1, Position{}); err != nil {
			t.Fatal(err)
		}
		if err := s.PutOutbound(id, map[uint16]*Outbound{2: {Pos: Position{Shard: "sh", Offset: 5}, QoS: 2}}); err != nil {
			t.Fatal(err)
		}
		if err := s.CompleteOutbound(id, 3, Position{Shard: "sh", Offset: 6}, ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteSession("a"); err != nil {
		t.Fatal(err)
	}
	if ids := sessionIDs(t, s); !slices.Equal(ids, []string{"ab"}) {
		t.Fatalf("sessions after deleting a: %q", ids)
	}
	for _, id := range []string{"a", "ab"} {
		c, _ := s.ClientCursors(id)
		in, _ := s.Inbounds(id)
		out, _ := s.Outbounds(id)
		done, _ := s.Done(id)
		n := len(c) + len(in) + len(out) + len(done)
		if want := map[string]int{"a": 0, "ab": 4}[id]; n != want {
			t.Errorf("client %s: %d records left (cursors %v inbound %v outbound %v done %v), want %d", id, n, c, in, out, done, want)
		}
	}
}

// PutCursors sets and clears clients' cursors (a cleared one falls back
// to the global cursor) and sets the global ones.
func TestCursors(t *testing.T) {
	s := open(t, vfs.NewMem())
	defer s.Close()
	err := s.PutCursors(&Cursors{Clients: map[string]map[string]uint64{"a": {"s1": 5, "s2": 7}},
		Global: map[string]uint64{"s1": 10, "s2": 10}})
	if err != nil {
		t.Fatal(err)
	}
	err = s.PutCursors(&Cursors{Clients: map[string]map[string]uint64{"a": {"s2": 8}}, Clear: map[string][]string{"a": {"s1"}},
		Global: map[string]uint64{"s1": 12, "s2": 12, "s3": 1}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.ClientCursors("a")
	if err != nil || len(c) != 1 || c["s2"] != 8 {
		t.Fatalf("client cursors %v %v, want s2=8 only", c, err)
	}
	g, err := s.GlobalCursors()
	if err != nil || g["s1"] != 12 || g["s2"] != 12 || g["s3"] != 1 {
		t.Fatalf("global cursors %v %v", g, err)
	}
}

// Shared subscriptions' cursors are set with a session and by PutCursors,
// cleared by PutCursors and deleted with DeleteGroup, each group apart.
func TestGroupCursors(t *testing.T) {
	s := open(t, vfs.NewMem())
	defer s.Close()
	g1, g2 := GroupKey("g", "jobs/#"), GroupKey("g", "jobs")
	if err := s.PutSession(&Session{ClientID: "a", ExpirySeconds: 1}, nil,
		map[string]map[string]uint64{g1: {"s1": 3, "s2": 4}}, true); err != nil {
		t.Fatal(err)
	}
	err := s.PutCursors(&Cursors{Groups: map[string]map[string]uint64{g1: {"s1": 6}, g2: {"s1": 1}},
		ClearGroups: map[string][]string{g1: {"s2"}}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.GroupCursors()
	if err != nil || len(got) != 2 || len(got[g1]) != 1 || got[g1]["s1"] != 6 || got[g2]["s1"] != 1 {
		t.Fatalf("group cursors %v %v", got, err)
	}
	if err := s.DeleteGroup(g1); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GroupCursors(); err != nil || len(got) != 1 || got[g2]["s1"] != 1 {
		t.Fatalf("group cursors after DeleteGroup(%q): %v %v", g1, got, err)
	}
}

// CompleteOutbound turns the packet-id state into a done marker; offsets
// with zero bytes in them read back (the marker key ends in the offset).
func TestCompleteOutbound(t *testing.T) {
	s := open(t, vfs.NewMem())
	defer s.Close()
	pos := []Position{{Shard: "mqtt/file/0", Offset: 0}, {Shard: "mqtt/file/0", Offset: 1 << 40}, {Shard: "a\x00b", Offset: 256}}
	groups := []string{"", GroupKey("g", "jobs/#"), ""}
	for i, p := range pos {
		if err := s.PutOutbound("c", map[uint16]*Outbound{uint16(i + 1): {Pos: p, QoS: 2}}); err != nil {
			t.Fatal(err)
		}
		if err := s.CompleteOutbound("c", uint16(i+1), p, groups[i]); err != nil {
			t.Fatal(err)
		}
	}
	if outs, err := s.Outbounds("c"); err != nil || len(outs) != 0 {
		t.Fatalf("outbound after completion: %v %v", outs, err)
	}
	done, err := s.Done("c")
	if err != nil || len(done) != len(pos) {
		t.Fatalf("done markers %v %v", done, err)
	}
	for i, p := range pos {
		if g, ok := done[p]; !ok || g != groups[i] {
			t.Errorf("done marker for %+v: %q %v in %v, want group %q", p, g, ok, done, groups[i])
		}
	}
	if err := s.DeleteDone("c", pos[:2]); err != nil {
		t.Fatal(err)
	}
	if done, _ := s.Done("c"); len(done) != 1 || done[pos[2]] != "" {
		t.Fatalf("done markers after DeleteDone: %v", done)
	}
}

// Retained keeps retained messages across a reopen: set, replace, delete
// by an empty payload, and expired ones dropped at load.
func TestRetainedReopen(t *testing.T) {
	fs := vfs.NewMem()
	s := open(t, fs)
	r, err := NewRetained(s)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	set := func(topic, payload string, expiry time.Time) {
		t.Helper()
		if err := r.Set(ctx, &pubsub.Message{Topic: topic, Payload: []byte(payload), QoS: 1, Retain: true, Expiry: expiry,
			ContentType: "text/plain", Headers: []pubsub.Header{{Key: "k", Value: "v"}}}); err != nil {
			t.Fatal(err)
		}
	}
	set("a/1", "one", time.Time{})
	set("a/1", "uno", time.Time{})
	set("a/2", "two", time.Time{})
	set("a/2", "", time.Time{})
	set("a/3", "expired", time.Now().Add(-time.Second))
	set("b", "bee", time.Now().Add(time.Hour))
	if r.Len() != 3 {
		t.Fatalf("Len %d, want 3", r.Len())
	}
	s.Close()

	s = open(t, fs)
	defer s.Close()
	if r, err = NewRetained(s); err != nil {
		t.Fatal(err)
	}
	got := map[string]*pubsub.Message{}
	r.Match(ctx, "#", func(m *pubsub.Message) bool { got[m.Topic] = m; return true })
	if len(got) != 2 || string(got["a/1"].Payload) != "uno" || string(got["b"].Payload) != "bee" ||
		got["a/1"].ContentType != "text/plain" || fmt.Sprint(got["a/1"].Headers) != "[{k v}]" {
		t.Fatalf("retained after reopen: %v", got)
	}
	n := 0
	s.Retained(func(*pubsub.Message) error { n++; return nil })
	if n != 2 {
		t.Fatalf("%d retained records in the store, want 2 (the expired one deleted at load)", n)
	}
}

// A value that does not decode is reported as corrupt, not skipped.
func TestCorruptSession(t *testing.T) {
	s := open(t, vfs.NewMem())
	defer s.Close()
	if err := s.db.Set(key(prefixSession, "x"), []byte("{not json"), nil); err != nil {
		t.Fatal(err)
	}
	err := s.Sessions(func(*Session) error { return nil })
	if err == nil || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Sessions over a corrupt record: %v, want ErrCorrupt", err)
	}
}

// A delayed publish of a QoS 2 PUBLISH is stored with its inbound packet
// identifier in one batch; its release mark comes back with it until
// DeleteDelayed removes both.
func TestDelayedRelease(t *testing.T) {
	s := open(t, vfs.NewMem())
	defer s.Close()
	a, b := DelayedID{At: 100, Seq: 1}, DelayedID{At: 50, Seq: 2}
	if err := s.PutDelayed(a, &pubsub.Message{Topic: "t/a", QoS: 2}, "pub", 7); err != nil {
		t.Fatal(err)
	}
	if err := s.PutDelayed(b, &pubsub.Message{Topic: "t/b", QoS: 1}, "pub", 0); err != nil {
		t.Fatal(err)
	}
	if in, err := s.Inbounds("pub"); err != nil || len(in) != 1 || in[7] != (Position{}) {
		t.Fatalf("inbound ids %v %v, want 7 with no position", in, err)
	}
	if err := s.MarkReleasing(map[DelayedID]Position{a: {Shard: "mqtt/file/1", Offset: 9}}); err != nil {
		t.Fatal(err)
	}
	type entry struct {
		id    DelayedID
		topic string
		rel   *Position
	}
	list := func() []entry {
		var out []entry
		if err := s.Delayed(func(id DelayedID, m *pubsub.Message, rel *Position) error {
			out = append(out, entry{id, m.Topic, rel})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	got := list()
	if len(got) != 2 || got[0].id != b || got[0].rel != nil || got[1].id != a || got[1].topic != "t/a" ||
		got[1].rel == nil || *got[1].rel != (Position{Shard: "mqtt/file/1", Offset: 9}) {
		t.Fatalf("delayed %+v, want t/b unmarked, then t/a marked at mqtt/file/1:9", got)
	}
	if err := s.DeleteDelayed(a); err != nil {
		t.Fatal(err)
	}
	if got := list(); len(got) != 1 || got[0].id != b {
		t.Fatalf("delayed after DeleteDelayed %+v", got)
	}
	if err := s.MarkReleasing(map[DelayedID]Position{b: {Shard: "s", Offset: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDelayed(b); err != nil {
		t.Fatal(err)
	}
	if got := list(); len(got) != 0 {
		t.Fatalf("delayed after deleting both %+v", got)
	}
}

// retainedState is r's entries as "topic=payload@millis/origin", sorted.
func retainedState(r *Retained) []string {
	var out []string
	for _, e := range r.Entries() {
		out = append(out, fmt.Sprintf("%s=%s@%d/%d", e.Msg.Topic, e.Msg.Payload, e.Msg.Time.UnixMilli(), e.Origin))
	}
	slices.Sort(out)
	return out
}

// The sets of a topic from several nodes end with the same entry whatever
// order they arrive in: the newest (timestamp, origin), a clear included
// (its tombstone keeps an older set out). Each origin's own sets arrive in
// its order, and the same set may arrive twice (a snapshot, a stream).
func TestRetainedLastWriterWins(t *testing.T) {
	ctx := context.Background()
	base := time.UnixMilli(1_700_000_000_000)
	type set struct {
		m      *pubsub.Message
		origin uint64
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		var sets []set
		for range 12 {
			p := fmt.Sprint(rng.IntN(3)) // "0": a clear
			if p == "0" {
				p = ""
			}
			sets = append(sets, set{m: &pubsub.Message{Topic: fmt.Sprintf("t/%d", rng.IntN(3)), Payload: []byte(p), Retain: true,
				Time: base.Add(time.Duration(rng.IntN(5)) * time.Millisecond)}, origin: uint64(1 + rng.IntN(3))})
		}
		var states [][]string
		for range 4 {
			// Any interleaving of the origins' sequences, each set maybe
			// twice, the second time as from a snapshot (not ordered).
			r, err := NewClusterRetained(open(t, vfs.NewMem()), 9)
			if err != nil {
				t.Fatal(err)
			}
			perm := rng.Perm(len(sets))
			byOrigin := map[uint64][]int{}
			for _, i := range perm {
				byOrigin[sets[i].origin] = append(byOrigin[sets[i].origin], i)
			}
			for o := range byOrigin {
				slices.Sort(byOrigin[o]) // an origin's sets in its order
			}
			for len(byOrigin) > 0 {
				o := uint64(1 + rng.IntN(3))
				q := byOrigin[o]
				if len(q) == 0 {
					delete(byOrigin, o)
					continue
				}
				s := sets[q[0]]
				byOrigin[o] = q[1:]
				if _, err := r.SetFrom(ctx, s.m, s.origin, true); err != nil {
					t.Fatal(err)
				}
				if rng.IntN(3) == 0 {
					again := sets[rng.IntN(len(sets))]
					if _, err := r.SetFrom(ctx, again.m, again.origin, false); err != nil {
						t.Fatal(err)
					}
				}
			}
			states = append(states, retainedState(r))
		}
		// The model: per topic the set with the greatest (millis, origin),
		// the last of its origin's sequence among equals.
		want := map[string]set{}
		for _, s := range sets {
			w, ok := want[s.m.Topic]
			if !ok || VersionOf(s.m, s.origin).Compare(VersionOf(w.m, w.origin)) >= 0 {
				want[s.m.Topic] = s
			}
		}
		var model []string
		for topic, s := range want {
			model = append(model, fmt.Sprintf("%s=%s@%d/%d", topic, s.m.Payload, s.m.Time.UnixMilli(), s.origin))
		}
		slices.Sort(model)
		for i, st := range states {
			if !slices.Equal(st, model) {
				t.Fatalf("round %d, order %d: %v, want %v (sets %v)", round, i, st, model, sets)
			}
		}
	}
}

// A tombstone and the origins survive a reopen, and keep an older set
// out; Set is this node's origin; a tombstone recorded more than
// TombstoneTTL ago is dropped at load; Sync makes the unsynced sets
// durable.
func TestRetainedVersionsReopen(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewCrashableMem()
	s := open(t, fs)
	r, err := NewClusterRetained(s, 7)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	msg := func(topic, payload string, at time.Time) *pubsub.Message {
		return &pubsub.Message{Topic: topic, Payload: []byte(payload), Retain: true, Time: at}
	}
	if err := r.Set(ctx, msg("a", "local", now)); err != nil {
		t.Fatal(err)
	}
	if took, err := r.SetFrom(ctx, msg("b", "peer", now), 3, false); err != nil || !took {
		t.Fatal(took, err)
	}
	if took, _ := r.SetFrom(ctx, msg("b", "", now.Add(time.Millisecond)), 2, false); !took {
		t.Fatal("a newer clear was not taken")
	}
	if err := s.PutRetained(RetainedEntry{Msg: msg("old", "", now.Add(-time.Hour)), Origin: 2, At: now.Add(-TombstoneTTL - time.Minute).UnixMilli()}); err != nil {
		t.Fatal(err)
	}
	if err := r.Sync(); err != nil {
		t.Fatal(err)
	}
	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	s.Close()

	s = open(t, crashed)
	defer s.Close()
	if r, err = NewClusterRetained(s, 7); err != nil {
		t.Fatal(err)
	}
	ms := now.UnixMilli()
	want := []string{fmt.Sprintf("a=local@%d/7", ms), fmt.Sprintf("b=@%d/2", ms+1)}
	if got := retainedState(r); !slices.Equal(got, want) {
		t.Fatalf("after a crash past Sync: %v, want %v (the old tombstone dropped)", got, want)
	}
	if took, _ := r.SetFrom(ctx, msg("b", "late", now), 3, true); took {
		t.Error("a set older than the tombstone was taken")
	}
	if r.Len() != 1 {
		t.Errorf("Len %d, want 1", r.Len())
	}
	n := 0
	s.RetainedEntries(func(RetainedEntry) error { n++; return nil })
	if n != 2 {
		t.Errorf("%d retained entries stored, want 2 (the old tombstone deleted)", n)
	}
}

// A running store drops the tombstones older than TombstoneTTL once their
// number doubled since the last purge (at least minPurge), not only at
// load; younger ones stay.
func TestRetainedTombstonesPurged(t *testing.T) {
	ctx := context.Background()
	s := open(t, vfs.NewMem())
	defer s.Close()
	r, err := NewClusterRetained(s, 1)
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	r.now = func() time.Time { return clock }
	clear := func(topic string) {
		t.Helper()
		if took, err := r.SetFrom(ctx, &pubsub.Message{Topic: topic, Retain: true, Time: clock}, 2, false); err != nil || !took {
			t.Fatal(took, err)
		}
	}
	for i := range minPurge - 1 {
		clear(fmt.Sprintf("old/%d", i))
	}
	if n := len(r.Entries()); n != minPurge-1 {
		t.Fatalf("%d entries before the purge, want %d", n, minPurge-1)
	}
	clock = clock.Add(TombstoneTTL + time.Minute)
	clear("new")
	if got := retainedState(r); len(got) != 1 || !strings.HasPrefix(got[0], "new=@") {
		t.Fatalf("after the purge: %v, want the young tombstone only", got)
	}
	n := 0
	s.RetainedEntries(func(RetainedEntry) error { n++; return nil })
	if n != 1 {
		t.Errorf("%d entries stored after the purge, want 1", n)
	}
	if r.tombstones != 1 || r.purgeAt != minPurge {
		t.Errorf("tombstones %d, next purge at %d; want 1 and %d", r.tombstones, r.purgeAt, minPurge)
	}
}

// A handover is kept apart from the session's records (DeleteSession
// leaves it), survives a reopen, and goes with DeleteHandover.
func TestHandovers(t *testing.T) {
	fs := vfs.NewMem()
	s := open(t, fs)
	if err := s.PutSession(&Session{ClientID: "a"}, nil, nil, true); err != nil {
		t.Fatal(err)
	}
	if err := s.PutHandover("a", &Handover{To: 2, Until: 42, State: []byte{1, 2}}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSession("a"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, fs)
	defer s.Close()
	list := func() map[string]Handover {
		out := map[string]Handover{}
		if err := s.Handovers(func(c string, h *Handover) error { out[c] = *h; return nil }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := list(); len(got) != 1 || got["a"].To != 2 || got["a"].Until != 42 || string(got["a"].State) != "\x01\x02" {
		t.Fatalf("handovers after DeleteSession and a reopen: %+v", got)
	}
	if err := s.DeleteHandover("a"); err != nil {
		t.Fatal(err)
	}
	if got := list(); len(got) != 0 {
		t.Fatalf("handovers after DeleteHandover: %+v", got)
	}
}
