package ledger

import (
	"flag"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/quiremq/quire/internal/scripttest"
)

var rewrite = flag.Bool("rewrite", false, "rewrite testdata/*.txt with the actual output")

// TestScripts runs the scenario scripts in testdata/*.txt (in the manner of
// etcd-io/raft's interaction tests). Each block is a command, a "----" line
// and the expected output up to a blank line; lines starting with # are
// comments. `go test ./journal/ledger -run TestScripts -rewrite` regenerates
// the expected output. Commands:
//
//	new E= Qw= Qa= bookies=b1,b2,...  create an OPEN ledger on the first E bookies; a writer
//	add [e=N] data=x                  Writer.Add
//	ack|fenced|timeout B e=N          Writer.AddResult with ok / fenced / unknown
//	fail B                            Writer.BookieFailed
//	available bookies=...             Writer.SetAvailable
//	tick | close | stop               Writer.Tick / Close / Stop
//	cas                               complete the CAS in flight against the stored metadata
//	cas-ok                            the CAS in flight succeeds
//	cas-fail [state=S] [last=N]       someone else changed the metadata (state S) first
//	set-state state=S [last=N]        change the stored metadata behind everyone's back
//	recover [readahead=N] [available=b4,...]   NewRecovery from the stored metadata
//	lac-resp B (lac=N|timeout)        Recovery.LACResult
//	read-resp B e=N (data=x|no-such-entry|timeout)   Recovery.ReadResult
//	wb-resp B e=N [ok|timeout]        Recovery.AddResult (write-back)
//	state                             print the machines' state and the stored metadata
func TestScripts(t *testing.T) {
	for _, f := range scripttest.Files(t, "testdata/*.txt") {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			env := &scriptEnv{cas: map[string]CASMetadata{}}
			scripttest.Run(t, f, *rewrite, env.run)
		})
	}
}

type scriptEnv struct {
	stored Metadata // what meta holds
	w      *Writer
	rec    *Recovery
	cas    map[string]CASMetadata // in flight, by owner ("writer", "recovery")
}

func parseArgs(fields []string) (pos []string, kv map[string]string) {
	kv = map[string]string{}
	for _, f := range fields {
		if k, v, ok := strings.Cut(f, "="); ok {
			kv[k] = v
		} else {
			pos = append(pos, f)
		}
	}
	return pos, kv
}

func num(kv map[string]string, k string) int64 {
	n, err := strconv.ParseInt(kv[k], 10, 64)
	if err != nil {
		panic(fmt.Sprintf("bad %s=%q", k, kv[k]))
	}
	return n
}

func (env *scriptEnv) run(cmd string) (lines []string) {
	defer func() {
		if r := recover(); r != nil {
			lines = []string{fmt.Sprintf("error: %v", r)}
		}
	}()
	fields := strings.Fields(cmd)
	pos, kv := parseArgs(fields[1:])
	arg := func(i int) string {
		if i >= len(pos) {
			panic("missing argument")
		}
		return pos[i]
	}
	var effs []Effect
	var pre []string
	src := "writer" // the machine whose effects these are
	switch fields[0] {
	case "new":
		bookies := strings.Split(kv["bookies"], ",")
		e := int(num(kv, "E"))
		md := Metadata{ID: 1, Ensemble: e, WriteQuorum: int(num(kv, "Qw")), AckQuorum: int(num(kv, "Qa")),
			State: StateOpen, LastEntry: -1, Version: 1,
			Fragments: []Fragment{{FirstEntry: 0, Bookies: append([]BookieID(nil), bookies[:e]...)}}}
		w, err := NewWriter(md, bookies)
		if err != nil {
			panic(err)
		}
		env.stored, env.w, env.rec = md, w, nil
		clear(env.cas)
		return []string{"md " + md.String()}
	case "add":
		e, ef, err := env.w.Add([]byte(kv["data"]))
		if err != nil {
			return []string{"error: " + err.Error()}
		}
		if s, ok := kv["e"]; ok && s != strconv.FormatInt(e, 10) {
			panic(fmt.Sprintf("entry is %d, not %s", e, s))
		}
		pre, effs = []string{fmt.Sprintf("entry %d", e)}, ef
	case "ack":
		effs = env.w.AddResult(arg(0), num(kv, "e"), StatusOK)
	case "fenced":
		effs = env.w.AddResult(arg(0), num(kv, "e"), StatusFenced)
	case "timeout":
		effs = env.w.AddResult(arg(0), num(kv, "e"), StatusUnknown)
	case "fail":
		effs = env.w.BookieFailed(arg(0))
	case "available":
		effs = env.w.SetAvailable(strings.Split(kv["bookies"], ","))
	case "tick":
		effs = env.w.Tick()
	case "close":
		ef, err := env.w.Close()
		if err != nil {
			return []string{"error: " + err.Error()}
		}
		effs = ef
	case "stop":
		effs = env.w.Stop(nil)
	case "cas", "cas-ok", "cas-fail":
		owner := kv["who"]
		if owner == "" {
			if len(env.cas) != 1 {
				panic(fmt.Sprintf("%d CASes in flight; say who=", len(env.cas)))
			}
			for o := range env.cas {
				owner = o
			}
		}
		c, ok := env.cas[owner]
		if !ok {
			panic("no CAS in flight for " + owner)
		}
		delete(env.cas, owner)
		var res CASResult
		switch {
		case fields[0] == "cas-fail":
			env.setState(kv)
			res = CASResult{Current: env.stored.Clone()}
		case c.Expected != env.stored.Version:
			if fields[0] == "cas-ok" {
				panic(fmt.Sprintf("cas-ok: expected version %d, stored %d", c.Expected, env.stored.Version))
			}
			res = CASResult{Current: env.stored.Clone()}
		default:
			env.stored = c.New.Clone()
			env.stored.Version = c.Expected + 1
			res = CASResult{OK: true, Version: env.stored.Version}
		}
		if res.OK {
			pre = []string{"md " + env.stored.String()}
		} else {
			pre = []string{"cas failed; md " + env.stored.String()}
		}
		src = owner
		if owner == "writer" {
			effs = env.w.CASDone(res)
		} else {
			effs = env.rec.CASDone(res)
		}
	case "set-state":
		env.setState(kv)
		return []string{"md " + env.stored.String()}
	case "recover":
		opts := RecoveryOptions{}
		if _, ok := kv["readahead"]; ok {
			opts.ReadAhead = int(num(kv, "readahead"))
		}
		if a, ok := kv["available"]; ok {
			opts.Available = strings.Split(a, ",")
		}
		rec, ef, err := NewRecovery(env.stored, opts)
		if err != nil {
			panic(err)
		}
		env.rec, effs, src = rec, ef, "recovery"
	case "lac-resp":
		src = "recovery"
		if _, ok := kv["lac"]; ok {
			effs = env.rec.LACResult(arg(0), StatusOK, num(kv, "lac"))
		} else {
			effs = env.rec.LACResult(arg(0), statusArg(pos[1:]), -1)
		}
	case "read-resp":
		src = "recovery"
		if d, ok := kv["data"]; ok {
			effs = env.rec.ReadResult(arg(0), num(kv, "e"), StatusOK, []byte(d))
		} else {
			effs = env.rec.ReadResult(arg(0), num(kv, "e"), statusArg(pos[1:]), nil)
		}
	case "wb-resp":
		src = "recovery"
		effs = env.rec.AddResult(arg(0), num(kv, "e"), statusArg(pos[1:]))
	case "state":
		var s []string
		if env.w != nil {
			s = append(s, "writer: "+env.w.String())
		}
		if env.rec != nil {
			s = append(s, "recovery: "+env.rec.String())
		}
		return append(s, "stored: "+env.stored.String())
	default:
		panic("unknown command " + fields[0])
	}
	for _, e := range effs {
		if c, ok := e.(CASMetadata); ok {
			env.cas[src] = c
		}
	}
	lines = pre
	for _, e := range effs {
		lines = append(lines, e.String())
	}
	if len(lines) == 0 {
		lines = []string{"(none)"}
	}
	return lines
}

func statusArg(pos []string) Status {
	if len(pos) == 0 {
		return StatusOK
	}
	switch pos[0] {
	case "ok":
		return StatusOK
	case "no-such-entry", "no-such-ledger":
		return StatusNoSuchEntry
	case "fenced":
		return StatusFenced
	case "timeout", "error", "unknown":
		return StatusUnknown
	}
	panic("unknown status " + pos[0])
}

func (env *scriptEnv) setState(kv map[string]string) {
	if s, ok := kv["state"]; ok {
		env.stored.State = State(s)
	}
	if _, ok := kv["last"]; ok {
		env.stored.LastEntry = num(kv, "last")
	}
	env.stored.Version++
}
