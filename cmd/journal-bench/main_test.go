package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runJSON runs journal-bench with args plus --json and returns the parsed
// last line and the whole output.
func runJSON(t *testing.T, args ...string) (map[string]any, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	args = append(args, "--json", "--data-dir", t.TempDir())
	if code := run(context.Background(), args, &out, &errOut); code != exitOK {
		t.Fatalf("journal-bench %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out.String(), errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var res map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		t.Fatalf("last line is not JSON: %v\n%s", err, out.String())
	}
	return res, out.String()
}

func num(t *testing.T, res map[string]any, k string) float64 {
	t.Helper()
	v, ok := res[k].(float64)
	if !ok {
		t.Fatalf("%s = %v (%T), want a number", k, res[k], res[k])
	}
	return v
}

// checkWrite checks the fields every mode reports against each other and
// against the flags.
func checkWrite(t *testing.T, res map[string]any, e, qw, qa, size float64) {
	t.Helper()
	for k, want := range map[string]float64{"ensemble": e, "write_quorum": qw, "ack_quorum": qa, "entry_size": size} {
		if got := num(t, res, k); got != want {
			t.Errorf("%s = %v, want %v", k, got, want)
		}
	}
	n, d := num(t, res, "entries"), num(t, res, "duration_s")
	if n <= 0 || d < 0.9 || d > 30 {
		t.Fatalf("entries %v in %v s", n, d)
	}
	if eps := num(t, res, "entries_per_sec"); eps < 0.99*n/d || eps > 1.01*n/d {
		t.Errorf("entries_per_sec %v, but %v entries in %v s", eps, n, d)
	}
	if mb := num(t, res, "mb_per_sec"); mb < 0.99*n*size/d/1e6 || mb > 1.01*n*size/d/1e6 {
		t.Errorf("mb_per_sec %v, but %v entries of %v bytes in %v s", mb, n, size, d)
	}
	p50, p99, p999, mx := num(t, res, "p50_ms"), num(t, res, "p99_ms"), num(t, res, "p999_ms"), num(t, res, "max_ms")
	if !(0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= mx && mx < 60000) {
		t.Errorf("latencies p50 %v p99 %v p999 %v max %v", p50, p99, p999, mx)
	}
	if cpu := num(t, res, "cpu_us_per_entry"); cpu <= 0 {
		t.Errorf("cpu_us_per_entry %v", cpu)
	}
	if bps := num(t, res, "bytes_per_sync"); bps < size {
		t.Errorf("bytes_per_sync %v: less than one entry", bps)
	}
}

// A short write run with --raw-disk: every field of the JSON line is there
// and consistent, the disk ceiling was measured and the efficiency is
// acked bytes/s x Qw over it.
func TestWriteRawDisk(t *testing.T) {
	res, out := runJSON(t, "--duration", "1s", "--bookies", "3", "--ensemble", "3", "--write-quorum", "2", "--ack-quorum", "1",
		"--entry-size", "512", "--writers", "2", "--ledgers", "2", "--inflight", "64", "--raw-disk")
	checkWrite(t, res, 3, 2, 1, 512)
	ceil, eff := num(t, res, "disk_ceiling_mb_per_sec"), num(t, res, "disk_efficiency")
	if ceil <= 0 {
		t.Fatalf("disk ceiling %v", ceil)
	}
	if want := num(t, res, "mb_per_sec") * 2 / ceil; eff < 0.999*want || eff > 1.001*want {
		t.Errorf("disk_efficiency %v, want mb_per_sec x 2 / ceiling = %v", eff, want)
	}
	if !strings.Contains(out, "entries/s") || !strings.Contains(out, "summary:") {
		t.Errorf("no progress or summary lines:\n%s", out)
	}
}

// Catch-up mode reads back exactly what was acknowledged: every entry, in
// order, each byte as written (the reader checks each entry's header and
// filler and each writer's sequence).
func TestCatchUp(t *testing.T) {
	res, _ := runJSON(t, "--mode", "catchup", "--duration", "1s", "--writers", "3", "--ledgers", "2", "--inflight", "32", "--entry-size", "100")
	checkWrite(t, res, 3, 2, 2, 100)
	if res["disk_ceiling_mb_per_sec"] != nil || res["disk_efficiency"] != nil {
		t.Errorf("disk fields without --raw-disk: %v, %v", res["disk_ceiling_mb_per_sec"], res["disk_efficiency"])
	}
	if num(t, res, "read_entries") != num(t, res, "entries")+num(t, res, "warmup_entries") || res["read_matches_writes"] != true {
		t.Errorf("read %v entries (matches: %v), %v + %v (warm-up) acknowledged", res["read_entries"], res["read_matches_writes"], res["entries"], res["warmup_entries"])
	}
	if num(t, res, "read_mb_per_sec") <= 0 {
		t.Errorf("read_mb_per_sec %v", res["read_mb_per_sec"])
	}
}

// --rate paces the writers: about rate x duration appends, no more, and
// reports the pacer's lag and the bookies' sync and group latencies.
// --cpuprofile and --memprofile write (gzipped) pprof profiles of the run,
// --trace an execution trace.
func TestRate(t *testing.T) {
	dir := t.TempDir()
	prof, mem, tr := filepath.Join(dir, "cpu.prof"), filepath.Join(dir, "mem.prof"), filepath.Join(dir, "run.trace")
	res, _ := runJSON(t, "--cpuprofile", prof, "--memprofile", mem, "--trace", tr, "--duration", "1s", "--rate", "400", "--writers", "2", "--ledgers", "1", "--ensemble", "1", "--write-quorum", "1", "--ack-quorum", "1", "--bookies", "1")
	for _, k := range []string{"pacer_lag_p99_ms", "bookie_sync_p99_ms", "bookie_group_p99_ms", "bookie_add_p99_ms"} {
		if v, ok := res[k].(float64); !ok || v < 0 {
			t.Errorf("%s = %v, want a latency in ms", k, res[k])
		}
	}
	if g, s := num(t, res, "bookie_group_p99_ms"), num(t, res, "bookie_sync_p99_ms"); g < s/2 {
		t.Errorf("bookie group p99 %v ms, sync p99 %v ms: a group's latency includes its sync", g, s)
	}
	if a, p := num(t, res, "bookie_add_p99_ms"), num(t, res, "p99_ms"); a > 2*p+1 {
		t.Errorf("bookie add p99 %v ms above the client's add p99 %v ms: the client's latency includes the bookie's", a, p)
	}
	if b, err := os.ReadFile(mem); err != nil || len(b) < 100 || b[0] != 0x1f || b[1] != 0x8b {
		t.Errorf("--memprofile: %d bytes, err %v: want a gzipped pprof profile", len(b), err)
	}
	if b, err := os.ReadFile(tr); err != nil || len(b) < 1000 || !strings.HasPrefix(string(b), "go 1.") {
		t.Errorf("--trace: %d bytes, err %v: want a Go execution trace", len(b), err)
	}
	checkWrite(t, res, 1, 1, 1, 1024)
	if n := num(t, res, "entries"); n < 300 || n > 400 {
		t.Errorf("%v appends at --rate 400 for 1s, want about 400 and never more", n)
	}
	checkStages(t, res)
	if b, err := os.ReadFile(prof); err != nil || len(b) < 100 || b[0] != 0x1f || b[1] != 0x8b {
		t.Errorf("--cpuprofile: %d bytes, err %v: want a gzipped pprof profile", len(b), err)
	}
}

// --warmup: the appends issued before it are acknowledged and read back
// (catchup mode), but left out of the figures: at --rate 400, a 1s warm-up
// and 1s measured, about 400 appends counted and about 800 read.
func TestWarmup(t *testing.T) {
	res, _ := runJSON(t, "--mode", "catchup", "--warmup", "1s", "--duration", "1s", "--rate", "400", "--writers", "2", "--ledgers", "1",
		"--ensemble", "1", "--write-quorum", "1", "--ack-quorum", "1", "--bookies", "1")
	if w := num(t, res, "warmup_s"); w != 1 {
		t.Errorf("warmup_s %v, want 1", w)
	}
	n, read := num(t, res, "entries"), num(t, res, "read_entries")
	if n < 300 || n > 400 {
		t.Errorf("%v appends counted at --rate 400 for 1s after the warm-up, want about 400 and never more", n)
	}
	if w := num(t, res, "warmup_entries"); w < 300 || w > 400 || read != n+w {
		t.Errorf("%v entries read back, %v counted, %v in the warm-up: want the warm-up's ~400 on top", read, n, w)
	}
	if d := num(t, res, "duration_s"); d < 0.9 || d > 1.9 {
		t.Errorf("duration_s %v: want the measured second, not the warm-up", d)
	}
}

// Tail mode reads while writing and ends with every acknowledged entry read.
func TestTail(t *testing.T) {
	res, _ := runJSON(t, "--mode", "tail", "--duration", "1s", "--writers", "2", "--ledgers", "1", "--inflight", "16", "--ensemble", "2", "--write-quorum", "2", "--bookies", "2")
	checkWrite(t, res, 2, 2, 2, 1024)
	if num(t, res, "read_entries") != num(t, res, "entries")+num(t, res, "warmup_entries") || res["read_matches_writes"] != true {
		t.Errorf("read %v entries, %v + %v (warm-up) acknowledged", res["read_entries"], res["entries"], res["warmup_entries"])
	}
	if p50, p99 := num(t, res, "tail_p50_ms"), num(t, res, "tail_p99_ms"); !(0 < p50 && p50 <= p99) {
		t.Errorf("tail latency p50 %v p99 %v", p50, p99)
	}
}

func TestUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, &out, &errOut); code != exitOK {
		t.Fatalf("--help: exit %d", code)
	}
	for _, f := range []string{"--bookies", "--bookie-addrs", "--bookie-metrics", "--ensemble", "--write-quorum", "--ack-quorum",
		"--entry-size", "--writers", "--inflight", "--ledgers", "--duration", "--warmup", "--data-dir", "--json", "--raw-disk", "--mode",
		"catchup", "tail", "disk_efficiency", "Examples:"} {
		if !strings.Contains(out.String(), strings.TrimPrefix(f, "-")) {
			t.Errorf("--help does not mention %s", f)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--ensemble", "2", "--write-quorum", "3"}, "--ensemble >= --write-quorum"},
		{[]string{"--ensemble", "4"}, "more than the 3 bookies"},
		{[]string{"--entry-size", "8"}, "at least 24"},
		{[]string{"--mode", "scan"}, `--mode "scan"`},
		{[]string{"--ledgers", "5", "--writers", "4"}, "a ledger without a writer"},
		{[]string{"--bookie-addrs", "a:1,b:2,c:3", "--raw-disk"}, "needs --bookie-metrics"},
		{[]string{"--duration", "0s"}, "must be positive"},
		{[]string{"--rate", "-1"}, "must not be negative"},
		{[]string{"--warmup", "-1s"}, "--warmup -1s: must not be negative"},
		{[]string{"extra"}, "unexpected argument"},
		{[]string{"--nope"}, "flag provided but not defined"},
	} {
		out.Reset()
		errOut.Reset()
		if code := run(context.Background(), c.args, &out, &errOut); code != exitUsage || !strings.Contains(errOut.String(), c.want) {
			t.Errorf("%v: exit %d, %q; want exit %d and %q", c.args, code, errOut.String(), exitUsage, c.want)
		}
	}
}

func TestPayloadCheck(t *testing.T) {
	fill := filler(64)
	p := makePayload(header{writer: 3, ledger: 1, seq: 42, at: 7}, 64, fill)
	h, err := parsePayload(p, 64, fill)
	if err != nil || h != (header{writer: 3, ledger: 1, seq: 42, at: 7}) {
		t.Fatalf("round trip: %+v, %v", h, err)
	}
	p[40] ^= 1
	if _, err := parsePayload(p, 64, fill); err == nil {
		t.Error("a changed byte went unnoticed")
	}
	if _, err := parsePayload(p[:63], 64, fill); err == nil {
		t.Error("a short payload went unnoticed")
	}
	// A writer whose acknowledged appends were not all read back fails.
	readers := []*ledgerCheck{{id: 1, next: map[uint32]uint64{0: 5, 1: 4}}}
	if err := checkReads(readers, []uint64{5, 4}, 1); err != nil {
		t.Errorf("complete reads: %v", err)
	}
	if err := checkReads(readers, []uint64{5, 5}, 1); err == nil {
		t.Error("a missing entry went unnoticed")
	}
}

func TestParseSyncStats(t *testing.T) {
	text := `# HELP quire_bookie_journal_sync_bytes Bytes written per journal fdatasync.
# TYPE quire_bookie_journal_sync_bytes histogram
quire_bookie_journal_sync_bytes_bucket{le="256"} 0
quire_bookie_journal_sync_bytes_sum 1.5e+06
quire_bookie_journal_sync_bytes_count 10
quire_bookie_adds_total 7
quire_bookie_rpc_add_requests_total 4
quire_bookie_rpc_adds_total 100
`
	s, err := parseSyncStats(strings.NewReader(text), "test")
	if err != nil || s.bytesPerSync() != 150000 {
		t.Fatalf("%+v, %v", s, err)
	}
	if apr := s.addsPerRequest(); apr == nil || *apr != 25 {
		t.Errorf("adds per request %v, want 25", apr)
	}
	if (syncStats{}).addsPerRequest() != nil {
		t.Error("adds per request without requests")
	}
	if _, err := parseSyncStats(strings.NewReader("quire_bookie_adds_total 7\n"), "test"); err == nil {
		t.Error("metrics without the histogram accepted")
	}
}
