package node

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"path"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/quiremq/quire/frontends/mqtt"
	"github.com/quiremq/quire/internal/config"
)

// The node's memory limit: memory_limit, resolved against the memory the
// process may use, is handed to runtime/debug.SetMemoryLimit by Start and
// the limit it replaced is put back by Stop. The limit is the process's:
// several nodes in one process (tests) share it, the last one started
// setting it.

// memoryLimit is what Start does about the runtime's memory limit.
type memoryLimit struct {
	bytes int64  // the limit to set; 0 leaves the runtime's alone
	from  string // where it comes from, for the log
}

// resolveMemoryLimit resolves memory_limit spec (valid: config.Validate
// checked it). env is $GOMEMLIMIT, which wins when set (the runtime read
// it at start). avail reports the memory available to the process and
// where that figure comes from; it is asked only for a percentage. The
// error says why a percentage could not be resolved (the limit is then
// left alone).
func resolveMemoryLimit(spec, env string, avail func() (int64, string, error)) (memoryLimit, error) {
	if env != "" {
		return memoryLimit{from: "the GOMEMLIMIT environment variable (" + env + "), which wins over memory_limit"}, nil
	}
	size, pct, err := config.ParseMemoryLimit(spec)
	switch {
	case err != nil:
		return memoryLimit{from: "none"}, err
	case size > 0:
		return memoryLimit{bytes: size, from: fmt.Sprintf("memory_limit = %q", spec)}, nil
	case pct == 0:
		return memoryLimit{from: "none (memory_limit = \"0\")"}, nil
	}
	total, src, err := avail()
	if err != nil {
		return memoryLimit{from: "none"}, fmt.Errorf("memory_limit = %q: cannot tell the memory available: %w", spec, err)
	}
	b := int64(float64(total) * pct / 100)
	if b < config.MinMemoryLimit {
		b = config.MinMemoryLimit
	}
	return memoryLimit{bytes: b, from: fmt.Sprintf("memory_limit = %q of %s (%s)", spec, formatBytes(total), src)}, nil
}

// availableMemory returns the memory the process may use: the smallest of
// its cgroup's memory limits (v2 memory.max of its cgroup and the
// ancestors, or v1 memory.limit_in_bytes) and the machine's memory
// (/proc/meminfo MemTotal), with which one it is. root is "/" but in
// tests.
func availableMemory(root string) (int64, string, error) {
	read := func(p string) (string, error) {
		b, err := os.ReadFile(filepath.Join(root, p))
		return strings.TrimSpace(string(b)), err
	}
	total, err := memTotal(read)
	if err != nil {
		return 0, "", err
	}
	if cg, src := cgroupLimit(read); cg > 0 && cg < total {
		return cg, src, nil
	}
	return total, "/proc/meminfo MemTotal", nil
}

func memTotal(read func(string) (string, error)) (int64, error) {
	s, err := read("proc/meminfo")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "MemTotal:" && f[2] == "kB" {
			if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil && kb > 0 {
				return kb << 10, nil
			}
		}
	}
	return 0, errors.New("/proc/meminfo has no MemTotal")
}

// cgroupLimit returns the process's cgroup memory limit and the file it
// comes from, 0 when there is none.
func cgroupLimit(read func(string) (string, error)) (int64, string) {
	cgs, _ := read("proc/self/cgroup")
	var best int64
	var src string
	consider := func(p string) {
		s, err := read(p)
		if err != nil || s == "max" {
			return
		}
		// cgroup v1 says "no limit" with a huge number (a page-rounded
		// MaxInt64).
		if v, err := strconv.ParseInt(s, 10, 64); err == nil && v > 0 && v < 1<<60 && (best == 0 || v < best) {
			best, src = v, "/"+p
		}
	}
	for l := range strings.Lines(cgs) {
		// "hierarchy-ID:controller-list:cgroup-path"
		f := strings.SplitN(strings.TrimSpace(l), ":", 3)
		if len(f) != 3 {
			continue
		}
		switch {
		case f[0] == "0" && f[1] == "": // v2: the cgroup and its ancestors
			for dir := path.Clean("/" + f[2]); ; dir = path.Dir(dir) {
				consider(path.Join("sys/fs/cgroup", dir, "memory.max"))
				if dir == "/" {
					break
				}
			}
		case strings.Contains(","+f[1]+",", ",memory,"): // v1
			consider(path.Join("sys/fs/cgroup/memory", f[2], "memory.limit_in_bytes"))
			consider("sys/fs/cgroup/memory/memory.limit_in_bytes") // a container sees its own at the root
		}
	}
	return best, src
}

// formatBytes writes b in the largest binary unit that keeps one decimal
// meaningful: "1.5GiB", "800MiB".
func formatBytes(b int64) string {
	const units = "KMGTPE"
	if b < 1<<10 {
		return strconv.FormatInt(b, 10) + "B"
	}
	v, i := float64(b)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	s := strconv.FormatFloat(v, 'f', 1, 64)
	return strings.TrimSuffix(s, ".0") + string(units[i]) + "iB"
}

// memLimitState is what Start changed, for Stop to undo.
type memLimitState struct {
	set, prev int64 // the limit Start set (0: none) and the one it replaced
}

// applyMemoryLimit sets the runtime's memory limit from memory_limit,
// exports and logs the limit in effect, and warns when the memory engine
// alone may hold half of it.
func (n *Node) applyMemoryLimit() {
	ml, err := resolveMemoryLimit(n.cfg.MemoryLimit, os.Getenv("GOMEMLIMIT"), func() (int64, string, error) { return availableMemory("/") })
	if err != nil {
		n.log.Warn("memory limit not set", "err", err)
	}
	if ml.bytes > 0 {
		n.memLimit = memLimitState{set: ml.bytes, prev: debug.SetMemoryLimit(ml.bytes)}
	}
	limit := debug.SetMemoryLimit(-1)
	if limit == math.MaxInt64 {
		n.m.memLimit.Set(0)
		n.log.Info("no memory limit: the heap may grow to twice what is live", "from", ml.from)
		return
	}
	n.m.memLimit.Set(float64(limit))
	n.log.Info("memory limit", "limit", formatBytes(limit), "bytes", limit, "from", ml.from)
	if n.cfg.UsesEngine("memory") {
		if held := int64(mqtt.DefaultShardsPerEngine) * n.cfg.Storage.Memory.ShardBudgetBytes; held >= limit/2 {
			n.log.Warn("the memory engine's MQTT shards alone may hold half the memory limit or more: near the limit the garbage collector runs back to back (up to half the CPU) and cannot free what they hold; lower storage.memory.shard_budget_bytes or raise memory_limit",
				"memory_engine_max", formatBytes(held), "shards", mqtt.DefaultShardsPerEngine,
				"shard_budget_bytes", n.cfg.Storage.Memory.ShardBudgetBytes, "limit", formatBytes(limit))
		}
	}
}

// restoreMemoryLimit puts back the limit applyMemoryLimit replaced, unless
// someone changed it since.
func (n *Node) restoreMemoryLimit() {
	s := n.memLimit
	n.memLimit = memLimitState{}
	if s.set != 0 && debug.SetMemoryLimit(-1) == s.set {
		debug.SetMemoryLimit(s.prev)
	}
}
