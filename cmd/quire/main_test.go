package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runQuire(args ...string) (string, string, int) {
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return out.String(), errOut.String(), code
}

func TestUsage(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("[admin]\naddr = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"--help"}, 0, "Usage:\n  quire start", ""},
		{[]string{"help", "start"}, 0, "Usage: quire start", ""},
		{[]string{"start", "-h"}, 0, "What the node runs", ""},
		{[]string{"version"}, 0, "quire ", ""},
		{nil, 2, "", "Usage:"},
		{[]string{"stop"}, 2, "", `unknown command "stop"`},
		{[]string{"start", "--port", "1"}, 2, "", "flag provided but not defined: -port"},
		{[]string{"start", "extra"}, 2, "", `unexpected argument "extra"`},
		{[]string{"start", "--node-id", "0"}, 2, "", "--node-id must be >= 1"},
		{[]string{"start", "--node-id", "-1"}, 2, "", "invalid value"},
		{[]string{"start", "--data-dir", ""}, 2, "", "--data-dir must not be empty"},
		{[]string{"start", "--config", bad}, 2, "", bad + ":2:8: admin.addr: cannot decode TOML integer"},
		{[]string{"start", "--node-id", "2"}, 2, "", "invalid configuration in the default configuration"},
	} {
		out, errOut, code := runQuire(c.args...)
		if code != c.code || !strings.Contains(out, c.stdout) || !strings.Contains(errOut, c.stderr) {
			t.Errorf("quire %v = %d\nstdout %q\nstderr %q\nwant %d, %q, %q", c.args, code, out, errOut, c.code, c.stdout, c.stderr)
		}
	}
}
