package faulttest

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/quiremq/quire/journal/bookie/bookierpc"
)

// recordingTB is a testing.TB that records failures instead of failing:
// the checker's own tests run it against histories known to be wrong.
type recordingTB struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (r *recordingTB) Helper() {}

func (r *recordingTB) Logf(string, ...any) {}

func (r *recordingTB) Errorf(format string, a ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, a...))
}

func (r *recordingTB) Error(a ...any) { r.Errorf("%s", fmt.Sprint(a...)) }

func (r *recordingTB) Fatalf(format string, a ...any) {
	r.Errorf(format, a...)
	runtime.Goexit()
}

func (r *recordingTB) Fatal(a ...any) {
	r.Error(a...)
	runtime.Goexit()
}

func (r *recordingTB) FailNow() { runtime.Goexit() }

func (r *recordingTB) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.errors) > 0
}

// checkWith runs the checker on h with a recordingTB and returns what it
// reported.
func (r *rig) checkWith(h *history) string {
	rt := &recordingTB{TB: r.t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := &checker{t: rt, cl: r.cl, kv: r.kv, shard: r.cfg.Shard, bookies: r.direct, skipCopies: true}
		c.check(h)
	}()
	<-done
	return strings.Join(rt.errors, "\n")
}

// mutants checks that the checker catches each kind of violation: it
// runs on copies of r's (correct, already checked) history, each changed
// so that the log no longer matches it, and on a log with an orphaned
// non-empty ledger. Each must be reported with the expected words.
func (r *rig) mutants(t *testing.T) {
	t.Helper()
	base := r.h.clone()
	if msg := r.checkWith(base.clone()); msg != "" {
		t.Fatalf("checker on the unchanged history: %s", msg)
	}
	var acked []key
	for k := range base.acked {
		acked = append(acked, k)
	}
	if len(acked) < 2 {
		t.Fatal("too few acknowledgements to mutate")
	}
	k0, k1 := acked[0], acked[1]
	cases := []struct {
		name, want string
		mutate     func(h *history)
	}{
		{"changed", "which holds", func(h *history) {
			a0, a1 := h.acked[k0], h.acked[k1]
			a0.offset, a1.offset = a1.offset, a0.offset
			a0.entry, a1.entry = a1.entry, a0.entry
			a0.ledger, a1.ledger = a1.ledger, a0.ledger
			h.acked[k0], h.acked[k1] = a0, a1
		}},
		{"lost (beyond the closed last entry)", "closed last entry", func(h *history) {
			a := h.acked[k0]
			a.entry += 1 << 30
			h.acked[k0] = a
		}},
		{"not invoked", "never invoked", func(h *history) { delete(h.invoked, k0) }},
		{"not in log", "not in the log", func(h *history) {
			a := h.acked[k0]
			a.ledger = 1 << 50
			h.acked[k0] = a
		}},
	}
	for _, c := range cases {
		h := base.clone()
		c.mutate(h)
		if msg := r.checkWith(h); !strings.Contains(msg, c.want) {
			t.Errorf("mutant %q: checker reported %q, want %q", c.name, msg, c.want)
		}
	}
	// A non-empty ledger outside the log.
	ctx := context.Background()
	w, err := r.cl.CreateLedger(ctx, 3, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Append(ctx, payload(1, 1)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if msg := r.checkWith(base.clone()); !strings.Contains(msg, "is not in the log but holds") {
		t.Errorf("orphaned non-empty ledger: checker reported %q", msg)
	}

	// A second value at one offset: another record written (as a recovery
	// would write back) over one copy of an acknowledged entry.
	a := base.acked[k0]
	md, err := r.cl.Metadata(ctx, a.ledger)
	if err != nil {
		t.Fatal(err)
	}
	victim := string(md.WriteSetOf(a.entry)[0])
	res := make(chan error, 1)
	s, err := r.direct[victim].AddStream(ctx, func(ar bookierpc.AddResult) { res <- ar.Err })
	if err != nil {
		t.Fatal(err)
	}
	other := key{k0.gen, k0.seq + 1<<40}
	if err := s.Add(bookierpc.Add{Ledger: a.ledger, Entry: uint64(a.entry), LAC: -1, Payload: payload(other.gen, other.seq), Recovery: true}); err != nil {
		t.Fatal(err)
	}
	if err := <-res; err != nil {
		t.Fatalf("overwriting a copy of ledger %d entry %d on %s: %v", a.ledger, a.entry, victim, err)
	}
	s.Close()
	rt := &recordingTB{TB: t}
	c := &checker{t: rt, cl: r.cl, kv: r.kv, shard: r.cfg.Shard, bookies: r.direct}
	c.checkCopies(ctx, md, map[int64]key{a.entry: k0})
	if msg := strings.Join(rt.errors, "\n"); !strings.Contains(msg, "holds") {
		t.Errorf("two values at one offset: checker reported %q", msg)
	}
}
