package client

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Every acknowledged append's trace has all its stages, in order, adding
// up to its latency (Appended to Acked); the sampled stage histograms
// count one append in stageSample, per stage.
func TestAddTrace(t *testing.T) {
	c := newCluster(t, 3, "")
	reg := prometheus.NewRegistry()
	cl := c.client(Options{Registerer: reg})
	ctx := testCtx(t)
	w, err := cl.CreateLedger(ctx, 3, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	const n = 400
	futs := make([]*Future, n)
	before := time.Now()
	for i := range futs {
		if futs[i], err = w.AppendAsync(ctx, payload(i, 100)); err != nil {
			t.Fatal(err)
		}
	}
	for i, f := range futs {
		if _, err := f.Result(); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		tr := f.Trace()
		ts := []time.Time{before, tr.Appended, tr.Taken, tr.Sent, tr.Answered, tr.Quorum, tr.Acked, time.Now()}
		for j := 1; j < len(ts); j++ {
			if ts[j].Before(ts[j-1]) || ts[j].IsZero() {
				t.Fatalf("append %d: stage %d at %v, before stage %d at %v (trace %+v)", i, j, ts[j], j-1, ts[j-1], tr)
			}
		}
		d, ok := tr.Stages()
		if !ok {
			t.Fatalf("append %d: stages not all observed: %+v", i, tr)
		}
		var sum time.Duration
		for _, x := range d {
			sum += x
		}
		if want := tr.Acked.Sub(tr.Appended); sum != want {
			t.Fatalf("append %d: stages %v add up to %v, want %v", i, d, sum, want)
		}
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != "quire_journal_client_add_stage_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			counts[label(m, "stage")] = m.GetHistogram().GetSampleCount()
		}
	}
	for _, s := range StageNames {
		if counts[s] != n/stageSample {
			t.Errorf("stage %s: %d observations, want %d (one in %d of %d appends); all: %v", s, counts[s], n/stageSample, stageSample, n, counts)
		}
	}
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// A trace with a stage not observed reports it.
func TestAddTraceStagesMissing(t *testing.T) {
	now := time.Now()
	tr := AddTrace{Appended: now, Taken: now, Acked: now.Add(time.Millisecond)}
	if _, ok := tr.Stages(); ok {
		t.Fatalf("Stages of %+v: ok, want a stage missing", tr)
	}
	var f trace
	f.appended, f.taken = 5, 7
	if got := f.export(); got.Appended.IsZero() || !got.Sent.IsZero() || got.Taken.Sub(got.Appended) != 2 {
		t.Fatalf("export of %+v: %+v", f, got)
	}
}
