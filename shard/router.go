package shard

import (
	"fmt"
	"sort"
	"strings"
)

// Rule assigns the topics matching Match to an engine. Match is an MQTT topic
// filter: levels are separated by '/', '+' matches exactly one level and '#'
// (last level only) matches any number of levels, including none. A filter
// without wildcards matches exactly that topic.
type Rule struct {
	Match  string
	Engine string
}

// Router picks the engine of a topic: the first rule whose filter matches,
// else the default engine. A Router is immutable and safe for concurrent use.
type Router struct {
	rules   []Rule
	def     string
	engines map[string]Engine
}

// NewRouter checks that every rule's filter is well formed and that the
// default and every rule's engine are among engines.
func NewRouter(defaultEngine string, rules []Rule, engines map[string]Engine) (*Router, error) {
	if _, ok := engines[defaultEngine]; !ok {
		return nil, fmt.Errorf("shard: default engine %q is not available (have %s)", defaultEngine, engineNames(engines))
	}
	for i, r := range rules {
		if err := ValidateFilter(r.Match); err != nil {
			return nil, fmt.Errorf("shard: rule %d: %w", i, err)
		}
		if _, ok := engines[r.Engine]; !ok {
			return nil, fmt.Errorf("shard: rule %d (%q): engine %q is not available (have %s)", i, r.Match, r.Engine, engineNames(engines))
		}
	}
	return &Router{rules: append([]Rule(nil), rules...), def: defaultEngine, engines: engines}, nil
}

func engineNames(engines map[string]Engine) string {
	names := make([]string, 0, len(engines))
	for n := range engines {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// EngineName returns the name of the engine for topic.
func (r *Router) EngineName(topic string) string {
	for _, rule := range r.rules {
		if MatchFilter(rule.Match, topic) {
			return rule.Engine
		}
	}
	return r.def
}

// Engine returns the engine for topic.
func (r *Router) Engine(topic string) Engine { return r.engines[r.EngineName(topic)] }

// Lookup returns the engine called name.
func (r *Router) Lookup(name string) (Engine, bool) {
	e, ok := r.engines[name]
	return e, ok
}

// Engines returns every engine by name.
func (r *Router) Engines() map[string]Engine { return r.engines }

// Default returns the name of the default engine.
func (r *Router) Default() string { return r.def }

// ValidateFilter checks an MQTT topic filter: non-empty, '#' only as the whole
// last level, '+' only as a whole level.
func ValidateFilter(filter string) error {
	if filter == "" {
		return fmt.Errorf("empty topic filter")
	}
	levels := strings.Split(filter, "/")
	for i, l := range levels {
		switch {
		case l == "#" && i != len(levels)-1:
			return fmt.Errorf("topic filter %q: '#' must be the last level", filter)
		case l != "#" && strings.Contains(l, "#"):
			return fmt.Errorf("topic filter %q: '#' must occupy a whole level", filter)
		case l != "+" && strings.Contains(l, "+"):
			return fmt.Errorf("topic filter %q: '+' must occupy a whole level", filter)
		}
	}
	return nil
}

// MatchFilter reports whether topic matches the MQTT topic filter. Topics
// starting with '$' are not matched by a filter starting with a wildcard
// (MQTT 3.1.1 §4.7.2).
func MatchFilter(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		var f, t string
		fi := strings.IndexByte(filter, '/')
		if fi < 0 {
			f = filter
		} else {
			f = filter[:fi]
		}
		if f == "#" {
			return true
		}
		ti := strings.IndexByte(topic, '/')
		if ti < 0 {
			t = topic
		} else {
			t = topic[:ti]
		}
		if f != "+" && f != t {
			return false
		}
		switch {
		case fi < 0 && ti < 0:
			return true
		case fi < 0:
			return false
		case ti < 0:
			// Topic has no more levels: only a trailing "/#" still matches
			// ("a/#" matches "a").
			return filter[fi+1:] == "#"
		}
		filter, topic = filter[fi+1:], topic[ti+1:]
	}
}
