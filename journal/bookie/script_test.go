package bookie

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/quiremq/quire/internal/scripttest"
	"github.com/quiremq/quire/internal/vfs"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of testdata/*.txt scripts")

// TestScripts runs the scenario scripts of testdata/*.txt. Each case is a
// command, a "----" line and its expected output, ended by a blank line;
// lines starting with # are comments. -rewrite replaces the expected
// output with the actual one.
//
// Commands (ledger=L entry=E are numbers; data defaults to "L/E"):
//
//	add ledger= entry= [lac=] [data=] [recovery]   add and wait for the ack
//	read ledger= entry= [fence]                    the payload or an error
//	lac ledger= [fence]                            ReadLAC
//	writelac ledger= lac=                          WriteLAC
//	fence ledger=                                  Fence; prints the LAC
//	delete ledger=                                 DeleteLedger
//	restart                                        Close and Open
//	crash [unsynced=P]                             crash (keep P% of unsynced data), Open
//	checkpoint                                     checkpoint now
//	reclaim                                        delete and compact entry logs now
//	logs                                           number of entry-log files
func TestScripts(t *testing.T) {
	for _, file := range scripttest.Files(t, "testdata/*.txt") {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) { runScript(t, file) })
	}
}

type scriptEnv struct {
	t       *testing.T
	mem     *vfs.MemFS
	cookies CookieStore
	b       *Bookie
	rng     *rand.Rand
}

func (e *scriptEnv) opts() Options {
	o := testOptions(e.mem, e.cookies)
	// Scripts count entry logs around explicit checkpoints and reclaims:
	// without recycling, the journal kicks no background checkpoint that
	// could reclaim a log at a moment the script does not control (as in
	// TestCompaction).
	o.JournalRecycleFiles = -1
	return o
}

func runScript(t *testing.T, file string) {
	env := &scriptEnv{t: t, mem: vfs.NewCrashableMem(), cookies: &MemCookieStore{}, rng: rand.New(rand.NewPCG(1, 2))}
	env.b = mustOpen(t, env.opts())
	defer func() {
		if env.b != nil {
			env.b.Close()
		}
	}()
	scripttest.Run(t, file, *rewrite, env.run)
}

func (e *scriptEnv) run(cmd string) []string {
	t := e.t
	fields := strings.Fields(cmd)
	args := map[string]string{}
	for _, f := range fields[1:] {
		k, v, _ := strings.Cut(f, "=")
		args[k] = v
	}
	num := func(k string) uint64 {
		v, err := strconv.ParseUint(args[k], 10, 64)
		if err != nil {
			t.Fatalf("%s: bad %s=%q", cmd, k, args[k])
		}
		return v
	}
	_, fence := args["fence"]
	switch fields[0] {
	case "add":
		l, en := num("ledger"), num("entry")
		lac := int64(-1)
		if v, ok := args["lac"]; ok {
			lac, _ = strconv.ParseInt(v, 10, 64)
		}
		data, ok := args["data"]
		if !ok {
			data = fmt.Sprintf("%d/%d", l, en)
		}
		_, recovery := args["recovery"]
		return []string{errName(addSync(e.b, l, en, lac, []byte(data), recovery))}
	case "read":
		data, err := e.b.ReadEntry(num("ledger"), num("entry"), fence)
		if err != nil {
			return []string{errName(err)}
		}
		return []string{"data=" + string(data)}
	case "lac":
		lac, err := e.b.ReadLAC(num("ledger"), fence)
		if err != nil {
			return []string{errName(err)}
		}
		return []string{fmt.Sprintf("lac=%d", lac)}
	case "writelac":
		lac, _ := strconv.ParseInt(args["lac"], 10, 64)
		return []string{errName(e.b.WriteLAC(num("ledger"), lac))}
	case "fence":
		lac, err := e.b.Fence(num("ledger"))
		if err != nil {
			return []string{errName(err)}
		}
		return []string{fmt.Sprintf("lac=%d", lac)}
	case "delete":
		return []string{errName(e.b.DeleteLedger(num("ledger")))}
	case "restart":
		if err := e.b.Close(); err != nil {
			return []string{"close: " + errName(err)}
		}
		e.b = nil
		b, err := Open(e.opts())
		if err != nil {
			return []string{"open: " + errName(err)}
		}
		e.b = b
		return []string{"ok"}
	case "crash":
		pct := 0
		if v, ok := args["unsynced"]; ok {
			pct, _ = strconv.Atoi(v)
		}
		clone := e.mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: e.rng})
		e.b.Close()
		e.b = nil
		e.mem = clone
		b, err := Open(e.opts())
		if err != nil {
			return []string{"open: " + errName(err)}
		}
		e.b = b
		return []string{"ok"}
	case "checkpoint":
		return []string{errName(checkpointApplied(e.b))}
	case "reclaim":
		return []string{errName(e.b.reclaim())}
	case "logs":
		ids, err := listNumbered(e.mem, e.b.logDir, entryLogExt)
		if err != nil {
			return []string{errName(err)}
		}
		return []string{fmt.Sprintf("entry logs: %d", len(ids))}
	}
	t.Fatalf("unknown command %q", cmd)
	return nil
}
