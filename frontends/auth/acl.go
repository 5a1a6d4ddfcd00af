package auth

import (
	"fmt"
	"strings"

	"github.com/quiremq/quire/shard"
)

// Action is what an ACL rule governs.
type Action uint8

// Actions; a rule may name both.
const (
	Publish Action = 1 << iota
	Subscribe
)

func (a Action) String() string {
	switch a {
	case Publish:
		return "publish"
	case Subscribe:
		return "subscribe"
	case Publish | Subscribe:
		return "all"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// ParseAction parses "publish", "subscribe" or "all".
func ParseAction(s string) (Action, error) {
	switch s {
	case "publish":
		return Publish, nil
	case "subscribe":
		return Subscribe, nil
	case "all", "":
		return Publish | Subscribe, nil
	}
	return 0, fmt.Errorf("unknown ACL action %q (want publish, subscribe or all)", s)
}

// Rule is one ACL rule. Empty Username or ClientID match any client.
type Rule struct {
	Allow    bool
	Actions  Action
	Username string
	ClientID string
	Topics   []string // filters; %u and %c are substituted
}

// ACL is an ordered rule list (see the package doc).
type ACL struct {
	rules []Rule
	def   bool
	// Observe, if set, is told every denial, for metrics.
	Observe func(a Action)
}

// NewACL validates rules and returns the ACL; defaultAllow decides when no
// rule matches.
func NewACL(rules []Rule, defaultAllow bool) (*ACL, error) {
	for i, r := range rules {
		if r.Actions == 0 || r.Actions&^(Publish|Subscribe) != 0 {
			return nil, fmt.Errorf("acl rule %d: no valid action", i+1)
		}
		if len(r.Topics) == 0 {
			return nil, fmt.Errorf("acl rule %d: no topics", i+1)
		}
		for _, f := range r.Topics {
			probe := strings.NewReplacer("%u", "u", "%c", "c").Replace(f)
			if err := shard.ValidateFilter(probe); err != nil {
				return nil, fmt.Errorf("acl rule %d: topic %q: %w", i+1, f, err)
			}
		}
	}
	return &ACL{rules: rules, def: defaultAllow}, nil
}

// Check reports whether c may perform a on topic: a topic name for
// Publish, a topic filter (the inner filter of a shared subscription) for
// Subscribe.
func (a *ACL) Check(act Action, c *Client, topic string) bool {
	ok := a.check(act, c, topic)
	if !ok && a.Observe != nil {
		a.Observe(act)
	}
	return ok
}

func (a *ACL) check(act Action, c *Client, topic string) bool {
	if a == nil {
		return true
	}
	for _, r := range a.rules {
		if r.Actions&act == 0 ||
			(r.Username != "" && r.Username != c.Username) ||
			(r.ClientID != "" && r.ClientID != c.ID) {
			continue
		}
		for _, f := range r.Topics {
			f, safe := substitute(f, c)
			if !safe {
				if !r.Allow {
					return false // fail closed
				}
				continue
			}
			if applies(act, r.Allow, f, topic) {
				return r.Allow
			}
		}
	}
	return a.def
}

func applies(act Action, allow bool, rule, topic string) bool {
	if act == Publish {
		return shard.MatchFilter(rule, topic)
	}
	if allow {
		return covers(rule, topic)
	}
	return intersect(rule, topic)
}

// substitute replaces %u and %c; safe is false when a value would add a
// level separator or a wildcard (or is empty) to the filter.
func substitute(f string, c *Client) (string, bool) {
	if !strings.Contains(f, "%") {
		return f, true
	}
	safe := true
	check := func(v string) string {
		if v == "" || strings.ContainsAny(v, "/+#") {
			safe = false
		}
		return v
	}
	var b strings.Builder
	for i := 0; i < len(f); i++ {
		if f[i] == '%' && i+1 < len(f) {
			switch f[i+1] {
			case 'u':
				b.WriteString(check(c.Username))
				i++
				continue
			case 'c':
				b.WriteString(check(c.ID))
				i++
				continue
			}
		}
		b.WriteByte(f[i])
	}
	return b.String(), safe
}

// covers reports whether every topic matched by filter sub is matched by
// filter rule.
func covers(rule, sub string) bool {
	r, s := strings.Split(rule, "/"), strings.Split(sub, "/")
	if strings.HasPrefix(sub, "$") != strings.HasPrefix(rule, "$") && (r[0] == "+" || r[0] == "#") {
		return false // wildcards at the first level do not match $ topics
	}
	for i, rl := range r {
		if rl == "#" {
			return true
		}
		if i >= len(s) {
			return false
		}
		switch {
		case s[i] == "#":
			// sub matches any depth from here — at level 0 one or more
			// levels, which "+/#" matches too; deeper also none, which
			// only "#" matches.
			return i == 0 && rl == "+" && len(r) == 2 && r[1] == "#"
		case rl == "+":
			// matches any single level, including a + in sub
		case s[i] == "+" || s[i] != rl:
			return false
		}
	}
	return len(s) == len(r)
}

// intersect reports whether some topic is matched by both filters.
func intersect(a, b string) bool {
	x, y := strings.Split(a, "/"), strings.Split(b, "/")
	wild := func(l string) bool { return l == "+" || l == "#" }
	// Leading wildcards never match topics starting with '$'.
	if (wild(x[0]) && strings.HasPrefix(b, "$")) || (wild(y[0]) && strings.HasPrefix(a, "$")) {
		return false
	}
	for i := 0; ; i++ {
		switch {
		case i < len(x) && x[i] == "#", i < len(y) && y[i] == "#":
			return true
		case i == len(x) || i == len(y):
			return len(x) == len(y)
		case x[i] == "+" || y[i] == "+" || x[i] == y[i]:
			continue
		default:
			return false
		}
	}
}
