package shard

import "testing"

func TestMatchFilter(t *testing.T) {
	cases := []struct {
		filter, topic string
		want          bool
	}{
		{"sensors/#", "sensors", true},
		{"sensors/#", "sensors/a", true},
		{"sensors/#", "sensors/a/b/c", true},
		{"sensors/#", "sensorsx/a", false},
		{"sensors/+", "sensors/a", true},
		{"sensors/+", "sensors/a/b", false},
		{"sensors/+", "sensors", false},
		{"sensors/+", "sensors/", true},
		{"+/+", "/a", true},
		{"+", "/a", false},
		{"#", "a/b", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"a/b", "a/b", true},
		{"a/b", "a/b/c", false},
		{"a/+/c", "a/b/c", true},
		{"a/+/c", "a/b/d", false},
		{"orders", "orders", true},
		{"orders", "orders2", false},
	}
	for _, c := range cases {
		if got := MatchFilter(c.filter, c.topic); got != c.want {
			t.Errorf("MatchFilter(%q, %q) = %v, want %v", c.filter, c.topic, got, c.want)
		}
	}
}

func TestValidateFilter(t *testing.T) {
	for _, ok := range []string{"a", "a/#", "#", "+", "a/+/b", "+/+/#", "$SYS/#"} {
		if err := ValidateFilter(ok); err != nil {
			t.Errorf("ValidateFilter(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "a/#/b", "a#", "a/b+", "+a", "##"} {
		if err := ValidateFilter(bad); err == nil {
			t.Errorf("ValidateFilter(%q) = nil, want error", bad)
		}
	}
}

type nopEngine struct{ Engine }

func TestRouterFirstMatchWins(t *testing.T) {
	engines := map[string]Engine{"memory": nopEngine{}, "file": nopEngine{}}
	r, err := NewRouter("file", []Rule{
		{Match: "sensors/+/temp", Engine: "memory"},
		{Match: "sensors/#", Engine: "file"},
		{Match: "telemetry/#", Engine: "memory"},
	}, engines)
	if err != nil {
		t.Fatal(err)
	}
	for topic, want := range map[string]string{
		"sensors/1/temp":   "memory",
		"sensors/1/hum":    "file",
		"telemetry":        "memory",
		"telemetry/a/b":    "memory",
		"orders":           "file",
		"$SYS/broker/load": "file",
	} {
		if got := r.EngineName(topic); got != want {
			t.Errorf("EngineName(%q) = %q, want %q", topic, got, want)
		}
	}
	if _, err := NewRouter("s3", nil, engines); err == nil {
		t.Error("unknown default engine accepted")
	}
	if _, err := NewRouter("file", []Rule{{Match: "a/#/b", Engine: "memory"}}, engines); err == nil {
		t.Error("malformed filter accepted")
	}
	if _, err := NewRouter("file", []Rule{{Match: "a/#", Engine: "hdfs"}}, engines); err == nil {
		t.Error("unknown rule engine accepted")
	}
}

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"a", "sensors/+/x", "主题/1", "../x", "a b"} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a\x00b", "\xff"} {
		if err := ValidateName(bad); err == nil {
			t.Errorf("ValidateName(%q) = nil, want error", bad)
		}
	}
}
