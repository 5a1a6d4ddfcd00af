package ledger

import (
	"fmt"
	"testing"
)

// CanReplace says whether one more failed bookie of the ensemble could be
// replaced: it needs an available bookie outside the ensemble, never
// failed, beyond those the failed ones already need.
func TestCanReplace(t *testing.T) {
	md := Metadata{ID: 1, Ensemble: 3, WriteQuorum: 2, AckQuorum: 2, State: StateOpen, LastEntry: -1, Version: 1,
		Fragments: []Fragment{{0, []BookieID{"b1", "b2", "b3"}}}}
	w, err := NewWriter(md, nil)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		do   func()
		want bool
		what string
	}{
		{func() {}, false, "no bookie available"},
		{func() { w.SetAvailable([]BookieID{"b2", "b3"}) }, false, "only ensemble members available"},
		{func() { w.SetAvailable([]BookieID{"b4"}) }, true, "b4 outside the ensemble"},
		{func() {
			if len(w.BookieFailed("b1")) != 1 { // b4 replaces b1: CAS in flight
				t.Fatal("no ensemble change")
			}
			w.CASDone(CASResult{OK: true, Version: 2})
		}, false, "b4 took b1's place, b1 failed"},
		{func() { w.SetAvailable([]BookieID{"b1", "b5"}) }, true, "b5 new (b1 failed before)"},
	}
	for _, s := range steps {
		s.do()
		if got := w.CanReplace(); got != s.want {
			t.Fatalf("%s: CanReplace %v, want %v (%s)", s.what, got, s.want, w)
		}
	}
}

// pickReplacement takes the first available bookie outside the ensemble
// that never failed (skipping skip of them), and setLastFragment rewrites
// a last fragment that holds no entry yet instead of appending one.
func TestPickReplacementAndSetLastFragment(t *testing.T) {
	ens := []BookieID{"b1", "b2", "b3"}
	failed := map[BookieID]bool{"b4": true}
	avail := []BookieID{"b2", "b4", "b5", "b1", "b6"}
	for skip, want := range []BookieID{"b5", "b6", ""} {
		if got := pickReplacement(avail, ens, failed, skip); got != want {
			t.Errorf("skip %d: %q, want %q", skip, got, want)
		}
	}
	md := Metadata{Fragments: []Fragment{{0, ens}}}
	md.setLastFragment(5, []BookieID{"b1", "b5", "b3"})
	md.setLastFragment(5, []BookieID{"b6", "b5", "b3"})
	md.setLastFragment(9, []BookieID{"b6", "b5", "b7"})
	want := "[{0 [b1 b2 b3]} {5 [b6 b5 b3]} {9 [b6 b5 b7]}]"
	if got := fmt.Sprint(md.Fragments); got != want {
		t.Errorf("fragments %s, want %s", got, want)
	}
}
