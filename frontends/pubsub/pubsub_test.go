package pubsub

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quiremq/quire/shard"
)

var levels = []string{"a", "b", "c", "$SYS", ""}

func randTopic(r *rand.Rand) string {
	n := 1 + r.IntN(4)
	parts := make([]string, n)
	for i := range parts {
		parts[i] = levels[r.IntN(len(levels))]
		if parts[i] == "$SYS" && i > 0 {
			parts[i] = "x"
		}
	}
	return strings.Join(parts, "/")
}

func randFilter(r *rand.Rand) string {
	n := 1 + r.IntN(4)
	parts := make([]string, n)
	for i := range parts {
		switch r.IntN(4) {
		case 0:
			parts[i] = "+"
		default:
			parts[i] = levels[r.IntN(len(levels))]
			if parts[i] == "$SYS" && i > 0 {
				parts[i] = "x"
			}
		}
	}
	if r.IntN(3) == 0 {
		parts[n-1] = "#"
	}
	return strings.Join(parts, "/")
}

// TestTreeAgainstModel checks Match against shard.MatchFilter (a naive
// filter-by-filter check) on random filters and topics, with unsubscribes.
func TestTreeAgainstModel(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		tr := NewTree()
		model := map[string]string{} // client -> filter (one filter per client)
		for i := range 40 {
			c := fmt.Sprintf("c%d", i)
			f := randFilter(r)
			tr.Subscribe(Subscription{Client: c, Filter: f})
			model[c] = f
		}
		for i := range 10 {
			c := fmt.Sprintf("c%d", r.IntN(40))
			if f, ok := model[c]; ok {
				if !tr.Unsubscribe(c, f) {
					t.Fatalf("round %d: unsubscribe %s %s = false", round, c, f)
				}
				delete(model, c)
			}
			_ = i
		}
		if tr.Len() != len(model) {
			t.Fatalf("Len %d, model %d", tr.Len(), len(model))
		}
		for range 100 {
			topic := randTopic(r)
			var got, want []string
			for _, s := range tr.Match(topic, nil, nil) {
				got = append(got, s.Client)
			}
			for c, f := range model {
				if shard.MatchFilter(f, topic) {
					want = append(want, c)
				}
			}
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("topic %q: got %v, want %v (filters %v)", topic, got, want, model)
			}
		}
	}
}

func TestTreeDollarAndParent(t *testing.T) {
	tr := NewTree()
	tr.Subscribe(Subscription{Client: "hash", Filter: "#"})
	tr.Subscribe(Subscription{Client: "plus", Filter: "+/info"})
	tr.Subscribe(Subscription{Client: "sys", Filter: "$SYS/#"})
	tr.Subscribe(Subscription{Client: "parent", Filter: "sport/#"})
	got := func(topic string) []string {
		var cs []string
		for _, s := range tr.Match(topic, nil, nil) {
			cs = append(cs, s.Client)
		}
		slices.Sort(cs)
		return cs
	}
	if g := got("$SYS/info"); !slices.Equal(g, []string{"sys"}) {
		t.Fatalf("$SYS/info matched %v; '#' and '+' must not match $ topics [MQTT-4.7.2-1]", g)
	}
	if g := got("sport"); !slices.Equal(g, []string{"hash", "parent"}) {
		t.Fatalf("sport matched %v; sport/# matches its parent", g)
	}
	// Replacing a subscription keeps one entry.
	if !tr.Subscribe(Subscription{Client: "hash", Filter: "#", QoS: 2}) {
		t.Fatal("resubscribe did not report existed")
	}
	if tr.Len() != 4 {
		t.Fatalf("Len %d", tr.Len())
	}
	for _, c := range []string{"hash", "plus", "sys", "parent"} {
		f := map[string]string{"hash": "#", "plus": "+/info", "sys": "$SYS/#", "parent": "sport/#"}[c]
		if !tr.Unsubscribe(c, f) {
			t.Fatalf("unsubscribe %s", c)
		}
	}
	if len(tr.plain.children) != 0 {
		t.Fatalf("empty tree kept %d nodes", len(tr.plain.children))
	}
	if tr.Unsubscribe("hash", "#") {
		t.Fatal("second unsubscribe reported a subscription")
	}
}

func TestShared(t *testing.T) {
	tr := NewTree()
	for _, c := range []string{"m1", "m2", "m3"} {
		tr.Subscribe(Subscription{Client: c, Group: "g", Filter: "jobs/+"})
	}
	tr.Subscribe(Subscription{Client: "other", Group: "h", Filter: "jobs/#"})
	tr.Subscribe(Subscription{Client: "plain", Filter: "jobs/1"})
	count := map[string]int{}
	for range 30 {
		for _, s := range tr.Match("jobs/1", nil, nil) {
			count[s.Client]++
		}
	}
	want := map[string]int{"m1": 10, "m2": 10, "m3": 10, "other": 30, "plain": 30}
	if fmt.Sprint(count) != fmt.Sprint(want) {
		t.Fatalf("dispatch %v, want %v (round robin, one per group)", count, want)
	}
	// A refused (offline) member is skipped.
	offline := func(s Subscription) bool { return s.Client != "m2" }
	clear(count)
	for range 30 {
		for _, s := range tr.Match("jobs/1", nil, offline) {
			count[s.Client]++
		}
	}
	if count["m2"] != 0 || count["m1"]+count["m3"] != 30 {
		t.Fatalf("dispatch with m2 offline: %v", count)
	}
	// All refused: still one per group.
	none := func(Subscription) bool { return false }
	if n := len(tr.Match("jobs/1", nil, none)); n != 3 {
		t.Fatalf("all offline: %d deliveries, want 3 (g, h, plain)", n)
	}
	if !tr.Unsubscribe("m1", "$share/g/jobs/+") || tr.Unsubscribe("m1", "jobs/+") {
		t.Fatal("shared unsubscribe by its $share filter only")
	}
	for _, tc := range []struct {
		in, group, filter string
		ok                bool
	}{
		{"$share/g/a/b", "g", "a/b", true},
		{"a/b", "", "a/b", true},
		{"$share/g", "", "", false},
		{"$share//a", "", "", false},
		{"$share/g+/a", "", "", false},
	} {
		g, f, ok := ParseShared(tc.in)
		if g != tc.group || f != tc.filter || ok != tc.ok {
			t.Errorf("ParseShared(%q) = %q %q %v", tc.in, g, f, ok)
		}
	}
}

func TestRetainedAgainstModel(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	ctx := context.Background()
	st := NewMemoryRetained(nil)
	model := map[string]string{}
	for i := range 300 {
		topic := randTopic(r)
		payload := fmt.Sprint(i)
		if r.IntN(4) == 0 {
			payload = ""
		}
		st.Set(ctx, &Message{Topic: topic, Payload: []byte(payload)})
		if payload == "" {
			delete(model, topic)
		} else {
			model[topic] = payload
		}
	}
	if st.Len() != len(model) {
		t.Fatalf("Len %d, model %d", st.Len(), len(model))
	}
	for range 300 {
		f := randFilter(r)
		var got, want []string
		st.Match(ctx, f, func(m *Message) bool { got = append(got, m.Topic+"="+string(m.Payload)); return true })
		for topic, p := range model {
			if shard.MatchFilter(f, topic) {
				want = append(want, topic+"="+p)
			}
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("filter %q: got %v, want %v", f, got, want)
		}
	}
}

func TestRetainedExpiry(t *testing.T) {
	now := time.Unix(1000, 0)
	st := NewMemoryRetained(func() time.Time { return now })
	ctx := context.Background()
	st.Set(ctx, &Message{Topic: "a", Payload: []byte("x"), Expiry: now.Add(time.Second)})
	st.Set(ctx, &Message{Topic: "b", Payload: []byte("y")})
	now = now.Add(2 * time.Second)
	var got []string
	st.Match(ctx, "#", func(m *Message) bool { got = append(got, m.Topic); return true })
	if !slices.Equal(got, []string{"b"}) || st.Len() != 1 {
		t.Fatalf("after expiry got %v, Len %d", got, st.Len())
	}
}

// TestTreeFiltersAndChanges checks Filters, Version and Changed against a
// model on random subscribes and unsubscribes, shared ones included: the
// filter set is the distinct filters ("$share/{group}/" removed), and the
// version moves, and Changed's channel closes, exactly when a filter (of
// the plain or the shared index) gains its first subscription or loses
// its last.
func TestTreeFiltersAndChanges(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	tr := NewTree()
	type sub struct{ client, filter string } // filter as subscribed
	var subs []sub
	holders := map[string]int{} // "p:"+filter or "s:"+group+"|"+filter → subscriptions
	index := func(f string) string {
		if group, inner, _ := ParseShared(f); inner != f {
			return "s:" + group + "|" + inner
		}
		return "p:" + f
	}
	for step := range 2000 {
		v0 := tr.Version()
		changed := tr.Changed()
		var occupancy bool // a holder count went 0↔1
		if len(subs) > 0 && r.IntN(3) == 0 {
			i := r.IntN(len(subs))
			s := subs[i]
			subs = slices.Delete(subs, i, i+1)
			if !tr.Unsubscribe(s.client, s.filter) {
				t.Fatalf("step %d: unsubscribe %v = false", step, s)
			}
			k := index(s.filter)
			holders[k]--
			occupancy = holders[k] == 0
		} else {
			s := sub{client: fmt.Sprintf("c%d", r.IntN(30)), filter: randFilter(r)}
			if r.IntN(3) == 0 && s.filter != "" {
				s.filter = "$share/g" + strconv.Itoa(r.IntN(2)) + "/" + s.filter
			}
			if s.filter == "" || slices.Contains(subs, s) {
				continue // an empty filter is invalid
			}
			group, inner, _ := ParseShared(s.filter)
			tr.Subscribe(Subscription{Client: s.client, Filter: inner, Group: group})
			subs = append(subs, s)
			k := index(s.filter)
			holders[k]++
			occupancy = holders[k] == 1
		}
		var want, wantPlain []string
		var wantGroups []SharedKey
		for k, n := range holders {
			if n == 0 {
				continue
			}
			if group, inner, ok := strings.Cut(k[2:], "|"); ok {
				want = append(want, inner)
				wantGroups = append(wantGroups, SharedKey{Group: group, Filter: inner})
			} else {
				want, wantPlain = append(want, k[2:]), append(wantPlain, k[2:])
			}
		}
		slices.Sort(want)
		want = slices.Compact(want)
		slices.Sort(wantPlain)
		slices.SortFunc(wantGroups, func(a, b SharedKey) int { return strings.Compare(a.Group+"|"+a.Filter, b.Group+"|"+b.Filter) })
		got, v := tr.Filters()
		if !slices.Equal(got, want) {
			t.Fatalf("step %d: Filters = %q, want %q", step, got, want)
		}
		plain, groups, rv := tr.Routes()
		if !slices.Equal(plain, wantPlain) || !slices.Equal(groups, wantGroups) || rv != v {
			t.Fatalf("step %d: Routes = %q %q (version %d), want %q %q (version %d)", step, plain, groups, rv, wantPlain, wantGroups, v)
		}
		closed := false
		select {
		case <-changed:
			closed = true
		default:
		}
		if occupancy != (v != v0) || occupancy != closed {
			t.Fatalf("step %d: a filter (or a shared group's filter) gained its first or lost its last subscription: %v; version %d → %d; Changed closed: %v",
				step, occupancy, v0, v, closed)
		}
	}
}
