package auth

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/quiremq/quire/shard"
)

func TestACL(t *testing.T) {
	acl, err := NewACL([]Rule{
		{Allow: false, Actions: Publish | Subscribe, Topics: []string{"secret/#"}},
		{Allow: true, Actions: Publish | Subscribe, Username: "admin", Topics: []string{"#", "$SYS/#"}},
		{Allow: true, Actions: Publish, Topics: []string{"devices/%c/up", "users/%u/#"}},
		{Allow: true, Actions: Subscribe, Topics: []string{"devices/%c/down", "users/%u/#", "public/+/news"}},
		{Allow: false, Actions: Subscribe, ClientID: "kid", Topics: []string{"public/adult/+"}},
		{Allow: true, Actions: Subscribe, ClientID: "kid", Topics: []string{"public/#"}},
	}, false)
	if err != nil {
		t.Fatal(err)
	}
	admin := &Client{ID: "ops", Username: "admin"}
	dev := &Client{ID: "d17", Username: "ann"}
	evil := &Client{ID: "x/#", Username: "a+"}
	kid := &Client{ID: "kid"}
	for _, tc := range []struct {
		c     *Client
		act   Action
		topic string
		want  bool
	}{
		{admin, Publish, "anything/at/all", true},
		{admin, Subscribe, "#", false}, // intersects the deny rule secret/#
		{admin, Subscribe, "news/#", true},
		{admin, Subscribe, "$SYS/broker/uptime", true},
		{admin, Publish, "secret/plans", false}, // the deny rule comes first
		{admin, Subscribe, "+/plans", false},    // intersects secret/#
		{dev, Publish, "devices/d17/up", true},
		{dev, Publish, "devices/d18/up", false},
		{dev, Subscribe, "devices/d17/up", false}, // publish-only rule
		{dev, Subscribe, "devices/d17/down", true},
		{dev, Subscribe, "users/ann/#", true},
		{dev, Subscribe, "users/ann/+/x", true},
		{dev, Subscribe, "users/+/inbox", false}, // not covered: other users
		{dev, Subscribe, "public/+/news", true},
		{dev, Subscribe, "public/#", false},
		{dev, Publish, "users/ann", true}, // users/ann/# matches the parent level
		{evil, Publish, "devices/x/#/up", false},
		{evil, Subscribe, "users/a+/#", false},
		{kid, Subscribe, "public/sports/+", true},
		{kid, Subscribe, "public/#", false}, // intersects the deny rule
		{kid, Subscribe, "public/adult/film", false},
		{&Client{ID: "nobody"}, Publish, "x", false}, // default deny
	} {
		if got := acl.Check(tc.act, tc.c, tc.topic); got != tc.want {
			t.Errorf("%s %s %q by %+v: %v, want %v", tc.act, tc.topic, tc.topic, *tc.c, got, tc.want)
		}
	}
	// A user name with a wildcard fails a deny rule closed.
	deny, _ := NewACL([]Rule{{Allow: false, Actions: Publish, Topics: []string{"users/%u/private"}}}, true)
	if deny.Check(Publish, &Client{Username: "#"}, "anything") {
		t.Error("unsafe substitution in a deny rule did not deny")
	}
	if !deny.Check(Publish, &Client{Username: "bob"}, "users/ann/private") {
		t.Error("deny rule for another user applied")
	}
	var denied []Action
	deny.Observe = func(a Action) { denied = append(denied, a) }
	deny.Check(Publish, &Client{Username: "bob"}, "users/bob/private")
	if len(denied) != 1 || denied[0] != Publish {
		t.Errorf("Observe saw %v", denied)
	}
	if _, err := NewACL([]Rule{{Allow: true, Actions: Publish, Topics: []string{"a/#/b"}}}, true); err == nil {
		t.Error("an invalid filter was accepted")
	}
	if _, err := NewACL([]Rule{{Allow: true, Topics: []string{"a"}}}, true); err == nil {
		t.Error("a rule without actions was accepted")
	}
}

// covers and intersect agree with matching topics by brute force over a
// small alphabet.
func TestFilterRelations(t *testing.T) {
	levels := []string{"a", "b", "$s"}
	var topics []string
	var gen func(prefix []string, depth int)
	gen = func(prefix []string, depth int) {
		if len(prefix) > 0 {
			topics = append(topics, strings.Join(prefix, "/"))
		}
		if depth == 0 {
			return
		}
		for _, l := range levels {
			if l == "$s" && len(prefix) > 0 {
				continue
			}
			gen(append(prefix, l), depth-1)
		}
	}
	gen(nil, 4)
	r := rand.New(rand.NewPCG(1, 2))
	filter := func() string {
		n := 1 + r.IntN(4)
		var ls []string
		for i := range n {
			switch x := r.IntN(6); {
			case x == 0 && i == n-1:
				ls = append(ls, "#")
			case x <= 1:
				ls = append(ls, "+")
			case x == 2 && i == 0:
				ls = append(ls, "$s")
			default:
				ls = append(ls, levels[r.IntN(2)])
			}
		}
		return strings.Join(ls, "/")
	}
	for range 20000 {
		a, b := filter(), filter()
		cov, both := true, false
		for _, tp := range topics {
			ma, mb := shard.MatchFilter(a, tp), shard.MatchFilter(b, tp)
			if mb && !ma {
				cov = false
			}
			if ma && mb {
				both = true
			}
		}
		// Topics are at most 4 levels deep; filters too, so the brute
		// force is exact except that "x/#" also covers deeper topics —
		// which the other filter, at most 4 levels, cannot require.
		if got := covers(a, b); got != cov {
			t.Fatalf("covers(%q, %q) = %v, brute force %v", a, b, got, cov)
		}
		if got := intersect(a, b); got != both {
			t.Fatalf("intersect(%q, %q) = %v, brute force %v", a, b, got, both)
		}
	}
}
