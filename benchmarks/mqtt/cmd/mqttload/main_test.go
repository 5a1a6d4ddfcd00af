package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quiremq/quire/benchmarks/mqtt/inproc"
	"github.com/quiremq/quire/benchmarks/mqtt/load"
)

// TestJSONAndTable runs mqttload twice with -json against Quire in
// process, then tabulates the two lines.
func TestJSONAndTable(t *testing.T) {
	addr := inproc.Start(t, "memory")
	dir := t.TempDir()
	results := filepath.Join(dir, "results.jsonl")
	ready := filepath.Join(dir, "ready")
	var all bytes.Buffer
	for _, qos := range []string{"0", "1"} {
		var out, errs bytes.Buffer
		code := run([]string{"-addr", addr, "-qos", qos, "-clients", "2", "-warmup", "50ms", "-duration", "300ms",
			"-json", "-broker", "quire", "-setup", "memory", "-ready-file", ready}, &out, &errs)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errs.String())
		}
		var r load.Result
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatalf("%v: %q", err, out.String())
		}
		if !r.OK || r.Broker != "quire" || r.Setup != "memory" || r.Received != r.Expected || r.Sent == 0 {
			t.Errorf("result %+v", r)
		}
		all.Write(out.Bytes())
	}
	if _, err := os.Stat(ready); err != nil {
		t.Errorf("ready file: %v", err)
	}
	if err := os.WriteFile(results, all.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errs bytes.Buffer
	if code := run([]string{"table", results}, &out, &errs); code != 0 {
		t.Fatalf("table: exit %d: %s", code, errs.String())
	}
	if n := strings.Count(out.String(), "| memory | p2p |"); n != 2 {
		t.Errorf("table has %d p2p rows, want 2:\n%s", n, out.String())
	}
}

// TestBadUsage: bad flags exit 2 with a message, an unreachable broker 1.
func TestBadUsage(t *testing.T) {
	for _, args := range [][]string{
		{"-qos", "2"}, {"-scenario", "zigzag"}, {"-size", "4"}, {"-nope"}, {"extra"}, {"table"},
	} {
		var out, errs bytes.Buffer
		if code := run(args, &out, &errs); code != 2 || errs.Len() == 0 {
			t.Errorf("%q: exit %d, stderr %q", args, code, errs.String())
		}
	}
	var out, errs bytes.Buffer
	if code := run([]string{"-addr", "127.0.0.1:1", "-duration", "1s"}, &out, &errs); code != 1 || !strings.Contains(errs.String(), "127.0.0.1:1") {
		t.Errorf("unreachable: exit %d, stderr %q", code, errs.String())
	}
	if code := run([]string{"table", "/nonexistent"}, &out, &errs); code != 1 {
		t.Errorf("table of a missing file: exit %d", code)
	}
}
