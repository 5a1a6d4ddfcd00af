package node

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

// memory_limit resolves to a size, a share of the available memory, or
// nothing; GOMEMLIMIT wins.
func TestResolveMemoryLimit(t *testing.T) {
	avail := func(b int64, err error) func() (int64, string, error) {
		return func() (int64, string, error) { return b, "test", err }
	}
	for _, c := range []struct {
		name, spec, env string
		avail           func() (int64, string, error)
		want            int64
		from, err       string
	}{
		{"a size", "1500MiB", "", nil, 1500 << 20, `memory_limit = "1500MiB"`, ""},
		{"a share", "50%", "", avail(4<<30, nil), 2 << 30, `memory_limit = "50%" of 4GiB (test)`, ""},
		{"a tiny share is the smallest limit", "1%", "", avail(1<<30, nil), 64 << 20, `of 1GiB`, ""},
		{"a share of unknown memory", "80%", "", avail(0, errors.New("no /proc")), 0, "none", "cannot tell the memory available: no /proc"},
		{"none", "0", "", nil, 0, "none", ""},
		{"GOMEMLIMIT wins", "2GiB", "3GiB", nil, 0, "GOMEMLIMIT environment variable (3GiB)", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.avail == nil {
				c.avail = func() (int64, string, error) { t.Fatal("available memory asked for"); return 0, "", nil }
			}
			ml, err := resolveMemoryLimit(c.spec, c.env, c.avail)
			if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
				t.Fatalf("err = %v, want %q", err, c.err)
			}
			if ml.bytes != c.want || !strings.Contains(ml.from, c.from) {
				t.Errorf("= %d from %q, want %d from %q", ml.bytes, ml.from, c.want, c.from)
			}
		})
	}
}

// The available memory is the smallest of the machine's and every cgroup
// limit over the process (v2: its cgroup and the ancestors; v1: the
// memory controller's).
func TestAvailableMemory(t *testing.T) {
	const meminfo = "MemTotal:       16777216 kB\nMemFree:         1000 kB\n"
	for _, c := range []struct {
		name  string
		files map[string]string
		want  int64
		src   string
	}{
		{"no cgroup", map[string]string{"proc/meminfo": meminfo}, 16 << 30, "/proc/meminfo MemTotal"},
		{"v2, limit on an ancestor", map[string]string{"proc/meminfo": meminfo, "proc/self/cgroup": "0::/a/b\n",
			"sys/fs/cgroup/a/b/memory.max": "max", "sys/fs/cgroup/a/memory.max": "2147483648", "sys/fs/cgroup/memory.max": "4294967296"},
			2 << 30, "/sys/fs/cgroup/a/memory.max"},
		{"v2 in a container (cgroup namespace)", map[string]string{"proc/meminfo": meminfo, "proc/self/cgroup": "0::/\n",
			"sys/fs/cgroup/memory.max": "1073741824\n"}, 1 << 30, "/sys/fs/cgroup/memory.max"},
		{"v2 limit above the machine's memory", map[string]string{"proc/meminfo": meminfo, "proc/self/cgroup": "0::/a\n",
			"sys/fs/cgroup/a/memory.max": "68719476736"}, 16 << 30, "/proc/meminfo MemTotal"},
		{"v1", map[string]string{"proc/meminfo": meminfo, "proc/self/cgroup": "5:cpu,cpuacct:/x\n4:memory:/docker/abc\n",
			"sys/fs/cgroup/memory/memory.limit_in_bytes": "536870912"}, 512 << 20, "/sys/fs/cgroup/memory/memory.limit_in_bytes"},
		{"v1 without a limit", map[string]string{"proc/meminfo": meminfo, "proc/self/cgroup": "4:memory:/\n",
			"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712"}, 16 << 30, "/proc/meminfo MemTotal"},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			for p, s := range c.files {
				p = filepath.Join(root, p)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, src, err := availableMemory(root)
			if err != nil || got != c.want || src != c.src {
				t.Errorf("= %d (%s), %v; want %d (%s)", got, src, err, c.want, c.src)
			}
		})
	}
	if _, _, err := availableMemory(t.TempDir()); err == nil {
		t.Error("no error without /proc/meminfo")
	}
}

// Start hands memory_limit to the runtime (read back with
// debug.SetMemoryLimit(-1)), exports and logs it, warns when the memory
// engine may hold half of it; Stop puts the previous limit back. With
// GOMEMLIMIT set, the node leaves the runtime's limit alone.
func TestNodeMemoryLimit(t *testing.T) {
	orig := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(orig) })
	const before = 5 << 30
	for _, c := range []struct {
		name, spec, env string
		want            int64 // in effect while the node runs
		log             string
		warn            bool
	}{
		{"a size", "1234MiB", "", 1234 << 20, `limit=1.2GiB bytes=1293942784 from="memory_limit = \"1234MiB\""`, true},
		{"a size the memory engine fits in", "8GiB", "", 8 << 30, "limit=8GiB", false},
		{"a share", "50%", "", -1, `from="memory_limit = \"50%\" of `, false},
		{"GOMEMLIMIT wins", "1GiB", "5GiB", before, "GOMEMLIMIT environment variable (5GiB)", false},
		{"none", "0", "", before, "limit=5GiB", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			debug.SetMemoryLimit(before)
			t.Setenv("GOMEMLIMIT", c.env)
			cfg := testConfig(t.TempDir()) // routes sensors/# to the memory engine
			cfg.MemoryLimit = c.spec
			logs := &syncBuffer{}
			n := startNode(t, cfg, logs)
			got := debug.SetMemoryLimit(-1)
			want := c.want
			if want == -1 { // a share: half of what the process may use
				total, _, err := availableMemory("/")
				if err != nil {
					t.Skipf("no /proc/meminfo: %v", err)
				}
				want = total / 2
			}
			if got != want {
				t.Errorf("runtime memory limit = %d, want %d", got, want)
			}
			if m := gaugeValue(t, n, "quire_node_memory_limit_bytes"); m != float64(want) {
				t.Errorf("quire_node_memory_limit_bytes = %v, want %d", m, want)
			}
			if !strings.Contains(logs.String(), c.log) {
				t.Errorf("start logs lack %q:\n%s", c.log, logs)
			}
			if w := strings.Contains(logs.String(), "memory engine's MQTT shards alone may hold half"); w != c.warn {
				t.Errorf("memory engine warning logged: %v, want %v", w, c.warn)
			}
			if err := n.Stop(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got := debug.SetMemoryLimit(-1); got != before {
				t.Errorf("after Stop the runtime memory limit = %d, want the one before Start, %d", got, before)
			}
		})
	}

	// No limit at all: the gauge says 0.
	debug.SetMemoryLimit(math.MaxInt64)
	cfg := testConfig(t.TempDir())
	cfg.MemoryLimit = "0"
	if m := gaugeValue(t, startNode(t, cfg, nil), "quire_node_memory_limit_bytes"); m != 0 {
		t.Errorf("quire_node_memory_limit_bytes without a limit = %v, want 0", m)
	}
}
