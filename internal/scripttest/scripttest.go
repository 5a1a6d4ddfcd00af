// Package scripttest runs data-driven scenario scripts (STYLE.md item 5):
// a file in testdata/ holds cases, each a command line, a "----" line and the
// expected output, ended by a blank line; lines starting with # are comments
// kept with the next case. A test supplies the function that runs one
// command and returns its output lines; Run compares them with the expected
// ones, and with rewrite set replaces the expected output in the file.
//
//	# fence, then a non-recovery add fails
//	fence ledger=1
//	----
//	lac=-1
package scripttest

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Files returns the scripts matching pattern (e.g. "testdata/*.txt"); it
// fails the test when there are none.
func Files(t *testing.T, pattern string) []string {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		t.Fatalf("no scripts match %s: %v", pattern, err)
	}
	return files
}

// Case is one command of a script with its expected output.
type Case struct {
	Comments []string
	Cmd      string
	Want     []string
	Line     int
}

// Parse reads the cases of a script.
func Parse(t *testing.T, file string) []Case {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cases []Case
	var cur Case
	state := 0 // 0: before a command, 1: after it, 2: in its output
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		switch state {
		case 0:
			switch {
			case strings.HasPrefix(line, "#"):
				cur.Comments = append(cur.Comments, line)
			case strings.TrimSpace(line) == "":
				if len(cur.Comments) > 0 {
					cur.Comments = append(cur.Comments, "")
				}
			default:
				cur.Cmd, cur.Line, state = strings.TrimSpace(line), n, 1
			}
		case 1:
			if line != "----" {
				t.Fatalf("%s:%d: want ---- after the command", file, n)
			}
			state = 2
		case 2:
			if strings.TrimSpace(line) == "" {
				cases = append(cases, cur)
				cur, state = Case{}, 0
				continue
			}
			cur.Want = append(cur.Want, line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	switch state {
	case 2:
		cases = append(cases, cur)
	case 1:
		t.Fatalf("%s: unterminated case %q", file, cur.Cmd)
	}
	return cases
}

// Run runs every case of file through run, in order. A case whose output
// differs from the expected one fails the test, naming the file and line.
// With rewrite, the file is rewritten with the actual output instead (only
// when nothing else failed).
func Run(t *testing.T, file string, rewrite bool, run func(cmd string) []string) {
	t.Helper()
	var out strings.Builder
	failed := false
	for _, c := range Parse(t, file) {
		got := run(c.Cmd)
		if !rewrite && strings.Join(got, "\n") != strings.Join(c.Want, "\n") {
			t.Errorf("%s:%d: %s\n got: %s\nwant: %s", file, c.Line, c.Cmd, strings.Join(got, "\n      "), strings.Join(c.Want, "\n      "))
			failed = true
		}
		for _, l := range c.Comments {
			out.WriteString(l + "\n")
		}
		fmt.Fprintf(&out, "%s\n----\n%s\n\n", c.Cmd, strings.Join(got, "\n"))
	}
	if rewrite && !failed && !t.Failed() {
		if err := os.WriteFile(file, []byte(strings.TrimSuffix(out.String(), "\n")), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
