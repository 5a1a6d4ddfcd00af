package packet

import "strings"

// ValidTopicName reports whether s may be the topic name of a PUBLISH or a
// will: at least one character [MQTT-4.7.3-1], no wildcard '+' or '#'
// [MQTT-4.7.0-1, MQTT-3.3.2-2], at most 65,535 bytes, well-formed UTF-8
// without U+0000 [MQTT-4.7.3-2] (MQTT 5.0 §4.7, MQTT 3.1.1 §4.7).
func ValidTopicName(s string) bool {
	if len(s) == 0 || len(s) > maxString || strings.ContainsAny(s, "+#") {
		return false
	}
	return validUTF8String(s)
}

// ValidTopicFilter reports whether s may be a SUBSCRIBE or UNSUBSCRIBE topic
// filter (MQTT 5.0 §4.7.1): at least one character; '#' only as the last
// character and alone in its level [MQTT-4.7.1-1]; '+' alone in its level
// [MQTT-4.7.1-2]; well-formed UTF-8 without U+0000. A shared subscription
// "$share/{ShareName}/{filter}" (MQTT 5.0 §4.8.2) must have a non-empty
// share name without '/', '+' or '#' and a valid filter after it.
func ValidTopicFilter(s string) bool {
	if len(s) == 0 || len(s) > maxString || !validUTF8String(s) {
		return false
	}
	if strings.HasPrefix(s, sharePrefix) {
		_, f, ok := SharedSubscription(s)
		if !ok {
			return false
		}
		s = f
	}
	return validFilter(s)
}

func validFilter(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '#':
			if i != len(s)-1 || (i > 0 && s[i-1] != '/') {
				return false
			}
		case '+':
			if (i > 0 && s[i-1] != '/') || (i < len(s)-1 && s[i+1] != '/') {
				return false
			}
		}
	}
	return true
}

const sharePrefix = "$share/"

// SharedSubscription splits a shared subscription filter
// "$share/{ShareName}/{filter}" (MQTT 5.0 §4.8.2). ok is false when s is not
// of that form or the share name is empty or holds '/', '+' or '#'
// [MQTT-4.8.2-1, MQTT-4.8.2-2]; the filter itself is not checked.
func SharedSubscription(s string) (shareName, filter string, ok bool) {
	rest, found := strings.CutPrefix(s, sharePrefix)
	if !found {
		return "", "", false
	}
	name, f, found := strings.Cut(rest, "/")
	if !found || name == "" || f == "" || strings.ContainsAny(name, "+#") {
		return "", "", false
	}
	return name, f, true
}

func validUTF8String(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 || s[i] >= 0x80 {
			return validUTF8([]byte(s[i:]))
		}
	}
	return true
}
