package meta

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The KV conformance suite. Every case runs against a one-node cluster and
// a three-node cluster, through the gRPC Client and through a follower's
// in-process Server (every leader-only request forwarded).

type kvSetup struct {
	name  string
	nodes int
	kind  transportKind
	// kv returns the KV under test; called again after restarts.
	kv func(c *testCluster) KV
}

var kvSetups = []kvSetup{
	{"one-node/client", 1, grpcTransport, func(c *testCluster) KV { return c.client() }},
	{"three-node-grpc/client", 3, grpcTransport, func(c *testCluster) KV { return c.client() }},
	{"three-node-inmem/follower", 3, inmemTransport, func(c *testCluster) KV { return c.nodes[c.follower()].srv }},
}

func TestKV(t *testing.T) {
	cases := []struct {
		name string
		fn   func(t *testing.T, c *testCluster, kv func() KV)
	}{
		{"Basic", testKVBasic},
		{"List", testKVList},
		{"CASRace", testKVCASRace},
		{"Watch", testKVWatch},
		{"WatchCompacted", testKVWatchCompacted},
		{"Lease", testKVLease},
		{"SnapshotRestart", testKVSnapshotRestart},
	}
	for _, s := range kvSetups {
		t.Run(s.name, func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					c := newTestCluster(t, s.nodes, s.kind, false, nil)
					c.leader()
					tc.fn(t, c, func() KV { return s.kv(c) })
				})
			}
		})
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func testKVBasic(t *testing.T, c *testCluster, kvf func() KV) {
	ctx, kv := ctxT(t), kvf()
	if _, err := kv.Get(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of a missing key: %v, want ErrNotFound", err)
	}
	a1, err := kv.Put(ctx, "a", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	if a1.Version == 0 || a1.CreateRevision != a1.Version || string(a1.Value) != "1" {
		t.Fatalf("first put: %+v", a1)
	}
	got, err := kv.Get(ctx, "a")
	if err != nil || got.Version != a1.Version || string(got.Value) != "1" {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	// Create-only on an existing key fails with the current version.
	_, err = kv.Put(ctx, "a", []byte("x"), IfVersion(0))
	var vm *VersionMismatchError
	if !errors.As(err, &vm) || !errors.Is(err, ErrVersionMismatch) || vm.Current != a1.Version || vm.Expected != 0 {
		t.Fatalf("create-only on existing key: %v", err)
	}
	a2, err := kv.Put(ctx, "a", []byte("2"), IfVersion(a1.Version))
	if err != nil || a2.Version <= a1.Version || a2.CreateRevision != a1.CreateRevision {
		t.Fatalf("CAS: %+v, %v", a2, err)
	}
	if _, err := kv.Put(ctx, "a", []byte("3"), IfVersion(a1.Version)); !errors.Is(err, ErrVersionMismatch) {
		t.Fatalf("stale CAS: %v", err)
	}
	// A conditional delete with a stale version fails; with the right one it works.
	if _, err := kv.Delete(ctx, "a", IfVersion(a1.Version)); !errors.Is(err, ErrVersionMismatch) {
		t.Fatalf("stale conditional delete: %v", err)
	}
	rev, err := kv.Delete(ctx, "a", IfVersion(a2.Version))
	if err != nil || rev <= a2.Version {
		t.Fatalf("delete: %d, %v", rev, err)
	}
	if _, err := kv.Delete(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete of a missing key: %v", err)
	}
	// No ABA: a key created again gets a new version, so a CAS against the
	// old incarnation fails.
	a3, err := kv.Put(ctx, "a", []byte("again"), IfVersion(0))
	if err != nil || a3.Version <= rev {
		t.Fatalf("re-create: %+v, %v", a3, err)
	}
	if _, err := kv.Put(ctx, "a", nil, IfVersion(a1.Version)); !errors.Is(err, ErrVersionMismatch) {
		t.Fatalf("CAS against a deleted incarnation: %v", err)
	}
	// Stale reads see the value once it has reached the node.
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, err := kv.Get(ctx, "a", Stale())
		if err == nil && got.Version == a3.Version {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stale read never caught up: %+v, %v", got, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Invalid arguments.
	if _, err := kv.Put(ctx, "", []byte("x")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty key: %v", err)
	}
	if _, err := kv.Put(ctx, "big", make([]byte, 2<<20)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("oversized value: %v", err)
	}
	if _, err := kv.Put(ctx, "b", []byte("x"), WithLease(999999)); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("put with unknown lease: %v", err)
	}
}

func testKVList(t *testing.T, c *testCluster, kvf func() KV) {
	ctx, kv := ctxT(t), kvf()
	var want []string
	for i := range 250 {
		k := fmt.Sprintf("topics/t%03d", i)
		want = append(want, k)
		if _, err := kv.Put(ctx, k, []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"topic", "topics", "topict/x", "a", "z"} {
		if _, err := kv.Put(ctx, k, nil); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	after := ""
	pages := 0
	for {
		res, err := kv.List(ctx, "topics/", ListOptions{StartAfter: after, Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, e := range res.KVs {
			got = append(got, e.Key)
		}
		if !res.More {
			break
		}
		after = res.KVs[len(res.KVs)-1].Key
	}
	if !slices.Equal(got, want) || pages != 3 {
		t.Fatalf("paged list: %d keys in %d pages, want %d in 3", len(got), pages, len(want))
	}
	all, err := kv.List(ctx, "", ListOptions{Stale: true})
	if err != nil || len(all.KVs) > 1000 {
		t.Fatalf("list all: %d, %v", len(all.KVs), err)
	}
	res, err := kv.List(ctx, "topics/t24", ListOptions{})
	if err != nil || len(res.KVs) != 10 || res.More {
		t.Fatalf("list topics/t24: %d keys more=%v, %v", len(res.KVs), res.More, err)
	}
}

// testKVCASRace: many goroutines increment one counter with CAS. Exactly one
// CAS wins per version, no increment is lost, and the versions acknowledged
// form one chain. A CAS whose outcome is unknown (ErrAmbiguous: leadership
// lost while committing, which a loaded machine can cause) is not retried;
// the key's replayed history then shows that every write built on the one
// before it and holds each acknowledged CAS exactly once and each unknown
// one at most once.
func testKVCASRace(t *testing.T, c *testCluster, kvf func() KV) {
	ctx := ctxT(t)
	const workers, incs = 12, 15
	first, err := kvf().Put(ctx, "counter", []byte("0 init"), IfVersion(0))
	if err != nil {
		t.Fatal(err)
	}
	count := func(v []byte) int {
		n, _, _ := strings.Cut(string(v), " ")
		i, err := strconv.Atoi(n)
		if err != nil {
			t.Errorf("counter value %q", v)
		}
		return i
	}
	var mu sync.Mutex
	winners := map[uint64]string{}     // expected version -> winner
	newVersions := map[string]uint64{} // winner -> version its CAS wrote
	unknown := map[string]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		kv := kvf()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < incs; {
				cur, err := kv.Get(ctx, "counter")
				if err != nil {
					errs <- err
					return
				}
				me := fmt.Sprintf("w%d-%d", w, i)
				next, err := kv.Put(ctx, "counter", fmt.Appendf(nil, "%d %s", count(cur.Value)+1, me), IfVersion(cur.Version))
				if errors.Is(err, ErrVersionMismatch) {
					continue
				}
				if errors.Is(err, ErrAmbiguous) {
					mu.Lock()
					unknown[me] = true
					mu.Unlock()
					i++
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if prev, ok := winners[cur.Version]; ok {
					errs <- fmt.Errorf("two CAS winners on version %d: %s and %s", cur.Version, prev, me)
				}
				winners[cur.Version] = me
				newVersions[me] = next.Version
				mu.Unlock()
				i++
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	final, err := kvf().Get(ctx, "counter")
	if err != nil {
		t.Fatal(err)
	}
	// The history: each write counts one more than the one before it (no
	// lost increment), acknowledged CASes once, unknown ones at most once.
	acked := map[string]bool{}
	for _, me := range winners {
		acked[me] = true
	}
	prevVersion := map[string]uint64{} // writer -> version its write replaced
	version := map[string]uint64{}     // writer -> version of its write
	lastVersion := first.Version
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := kvf().Watch(wctx, "counter", first.Version+1)
	seen := map[string]bool{}
	last := 0
	for done := final.Version == first.Version; !done; {
		var r WatchResponse
		select {
		case r = <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("history replay stopped after count %d", last)
		}
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		for _, e := range r.Events {
			if e.KV.Key != "counter" {
				continue
			}
			_, me, _ := strings.Cut(string(e.KV.Value), " ")
			if n := count(e.KV.Value); e.Type != EventPut || n != last+1 || seen[me] || !(acked[me] || unknown[me]) {
				t.Fatalf("history: %v %q after count %d (seen before: %v)", e.Type, e.KV.Value, last, seen[me])
			}
			seen[me], last = true, last+1
			prevVersion[me], version[me], lastVersion = lastVersion, e.KV.Version, e.KV.Version
			done = done || e.KV.Version == final.Version
		}
	}
	// The chain: each acknowledged CAS is the write right after the
	// version it expected, at the version it was acknowledged with.
	for exp, me := range winners {
		if !seen[me] || prevVersion[me] != exp || version[me] != newVersions[me] {
			t.Fatalf("acknowledged CAS %s (on version %d, wrote %d): in the history %v, after version %d at %d",
				me, exp, newVersions[me], seen[me], prevVersion[me], version[me])
		}
	}
	if count(final.Value) != last || len(winners)+len(unknown) != workers*incs {
		t.Fatalf("counter = %s with %d winners and %d unknown, history counts %d, want %d attempts", final.Value, len(winners), len(unknown), last, workers*incs)
	}
	if len(unknown) > 0 {
		t.Logf("%d CASes of unknown outcome (leadership changed)", len(unknown))
	}
}

// testKVWatch: a watcher started at a list's revision sees every later change
// under its prefix exactly once, in revision order; a watcher from the past
// replays the same events; changes outside the prefix are not delivered.
func testKVWatch(t *testing.T, c *testCluster, kvf func() KV) {
	ctx, kv := ctxT(t), kvf()
	if _, err := kv.Put(ctx, "w/seed", []byte("s")); err != nil {
		t.Fatal(err)
	}
	start, err := kv.List(ctx, "w/", ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := kv.Watch(wctx, "w/", start.Revision+1)

	// Writers: puts, CAS updates and deletes under w/, noise elsewhere.
	var mu sync.Mutex
	acked := map[uint64]string{} // revision -> "PUT key" / "DELETE key"
	var wg sync.WaitGroup
	for w := range 4 {
		wkv := kvf()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 30 {
				k := fmt.Sprintf("w/%d/%d", w, i%5)
				kvp, err := wkv.Put(ctx, k, []byte{byte(i)})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				acked[kvp.Version] = "PUT " + k
				mu.Unlock()
				if i%7 == 6 {
					rev, err := wkv.Delete(ctx, k, IfVersion(kvp.Version))
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					acked[rev] = "DELETE " + k
					mu.Unlock()
				}
				if _, err := wkv.Put(ctx, fmt.Sprintf("noise/%d", w), nil); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	var got []Event
	var last uint64
	for len(got) < len(acked) {
		select {
		case r, ok := <-ch:
			if !ok || r.Err != nil {
				t.Fatalf("watch ended after %d of %d events: %v", len(got), len(acked), r.Err)
			}
			got = append(got, r.Events...)
			last = max(last, r.Revision)
		case <-time.After(10 * time.Second):
			t.Fatalf("watch delivered %d of %d events", len(got), len(acked))
		}
	}
	for i, e := range got {
		if i > 0 && e.Revision <= got[i-1].Revision {
			t.Fatalf("events out of order: %d after %d", e.Revision, got[i-1].Revision)
		}
		if want := acked[e.Revision]; want != e.Type.String()+" "+e.KV.Key {
			t.Fatalf("event at revision %d is %s %s, acknowledged %q", e.Revision, e.Type, e.KV.Key, want)
		}
		if e.Type == EventPut && e.KV.Version != e.Revision {
			t.Fatalf("put event %+v: version != revision", e)
		}
	}
	// Replay from the past (on a fresh watch) gives the same sequence.
	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	var replay []Event
	for r := range kvf().Watch(rctx, "w/", start.Revision+1) {
		if r.Err != nil {
			t.Fatalf("replay: %v", r.Err)
		}
		replay = append(replay, r.Events...)
		if len(replay) >= len(got) {
			break
		}
	}
	for i := range got {
		if got[i].Revision != replay[i].Revision || got[i].KV.Key != replay[i].KV.Key {
			t.Fatalf("replay differs at %d: %+v vs %+v", i, replay[i], got[i])
		}
	}
}

// testKVWatchCompacted: a watcher that starts behind the history gets
// ErrCompacted, re-lists, and watches on from the list's revision.
func testKVWatchCompacted(t *testing.T, c *testCluster, kvf func() KV) {
	ctx, kv := ctxT(t), kvf()
	first, err := kv.Put(ctx, "c/first", nil)
	if err != nil {
		t.Fatal(err)
	}
	hist := testOptions().WatchHistory
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wkv := kvf()
			for i := range hist/8 + 16 {
				if _, err := wkv.Put(ctx, fmt.Sprintf("c/%d/%d", w, i%3), nil); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	c.converge()
	r := <-kv.Watch(ctx, "c/", first.Version)
	if !errors.Is(r.Err, ErrCompacted) {
		t.Fatalf("watch from a compacted revision: %+v, want ErrCompacted", r)
	}
	res, err := kv.List(ctx, "c/", ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := kv.Watch(wctx, "c/", res.Revision+1)
	put, err := kv.Put(ctx, "c/after", nil)
	if err != nil {
		t.Fatal(err)
	}
	for r := range ch {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		if len(r.Events) > 0 {
			if r.Events[0].Revision != put.Version {
				t.Fatalf("first event after re-list: %+v, want revision %d", r.Events[0], put.Version)
			}
			break
		}
	}
}

// testKVLease: keys attached to a lease live while it is kept alive and
// vanish (with DELETE events) once it expires; a revoked lease deletes its
// keys at once.
func testKVLease(t *testing.T, c *testCluster, kvf func() KV) {
	ctx, kv := ctxT(t), kvf()
	const ttl = time.Second // keep-alives every 250 ms: room for a loaded -race run
	id, err := kv.Grant(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	start, err := kv.List(ctx, "live/", ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := kv.Watch(wctx, "live/", start.Revision+1)
	for _, k := range []string{"live/a", "live/b"} {
		if _, err := kv.Put(ctx, k, []byte("up"), WithLease(id)); err != nil {
			t.Fatal(err)
		}
	}
	// Kept alive for 2 TTLs (renewed past its first expiry): the keys stay.
	keepCtx, stopKeep := context.WithCancel(ctx)
	keepDone := make(chan error, 1)
	go func() { keepDone <- KeepLeaseAlive(keepCtx, kv, id, ttl, ttl/4) }()
	time.Sleep(2 * ttl)
	if got, err := kv.Get(ctx, "live/a"); err != nil || got.Lease != id {
		t.Fatalf("kept-alive key: %+v, %v", got, err)
	}
	stopKeep()
	if err := <-keepDone; err != nil {
		t.Fatalf("KeepLeaseAlive: %v", err)
	}
	stoppedAt := time.Now()
	// Expired: both keys deleted, watchers told.
	deletes := map[string]bool{}
	for len(deletes) < 2 {
		select {
		case r := <-ch:
			if r.Err != nil {
				t.Fatal(r.Err)
			}
			for _, e := range r.Events {
				if e.Type == EventDelete {
					deletes[e.KV.Key] = true
				}
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("lease did not expire: deletes %v", deletes)
		}
	}
	if el := time.Since(stoppedAt); el < ttl/2 {
		t.Fatalf("lease expired %v after the last keep-alive, TTL %v", el, ttl)
	}
	if _, err := kv.Get(ctx, "live/a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("key of an expired lease: %v", err)
	}
	if _, err := kv.KeepAlive(ctx, id); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("keep-alive of an expired lease: %v", err)
	}
	if _, err := kv.Put(ctx, "live/c", nil, WithLease(id)); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("put with an expired lease: %v", err)
	}
	// Revoke.
	id2, err := kv.Grant(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "live/d", nil, WithLease(id2)); err != nil {
		t.Fatal(err)
	}
	// Re-attaching a key to no lease detaches it.
	if _, err := kv.Put(ctx, "live/e", nil, WithLease(id2)); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "live/e", []byte("mine")); err != nil {
		t.Fatal(err)
	}
	if err := kv.Revoke(ctx, id2); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, "live/d"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("key of a revoked lease: %v", err)
	}
	if _, err := kv.Get(ctx, "live/e"); err != nil {
		t.Fatalf("detached key deleted with the lease: %v", err)
	}
	if err := kv.Revoke(ctx, id2); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("second revoke: %v", err)
	}
	if _, err := kv.Grant(ctx, time.Millisecond); !errors.Is(err, ErrInvalid) {
		t.Fatalf("TTL below the minimum: %v", err)
	}
}

// testKVSnapshotRestart: snapshots truncate the log; a node restarted from
// its snapshot and log, and a node that was down while the others
// snapshotted (it gets InstallSnapshot), hold every key at the same
// version; a watcher from before the snapshot on a restarted node gets
// ErrCompacted; a lease survives the restart of the whole cluster.
func testKVSnapshotRestart(t *testing.T, c *testCluster, kvf func() KV) {
	ctx := ctxT(t)
	kv := kvf()
	want := map[string]uint64{}
	put := func(n int, prefix string) {
		for i := range n {
			k := fmt.Sprintf("%s/%03d", prefix, i)
			e, err := kv.Put(ctx, k, []byte(k))
			if err != nil {
				t.Fatal(err)
			}
			want[k] = e.Version
		}
	}
	lease, err := kv.Grant(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if e, err := kv.Put(ctx, "leased", nil, WithLease(lease)); err != nil {
		t.Fatal(err)
	} else {
		want["leased"] = e.Version
	}
	put(100, "before")
	down := -1
	if len(c.nodes) > 1 {
		down = c.follower()
		c.stop(down)
		kv = kvf()
	}
	put(100, "during")
	for _, nd := range c.nodes {
		if nd.srv == nil {
			continue
		}
		if err := nd.srv.Snapshot(); err != nil {
			t.Fatal(err)
		}
		if first, _ := nd.srv.store.FirstIndex(); first <= 1 {
			t.Fatalf("node %d: log not truncated after a snapshot (first index %d)", nd.id, first)
		}
	}
	put(50, "after")
	if down >= 0 {
		c.start(down, nil)
	}
	c.converge()
	for i := range c.nodes {
		c.stop(i)
	}
	for i := range c.nodes {
		c.start(i, nil)
	}
	c.leader()
	kv = kvf()
	res, err := kv.List(ctx, "", ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, e := range res.KVs {
		got[e.Key] = e.Version
	}
	if len(got) != len(want) {
		t.Fatalf("after restart: %d keys, want %d", len(got), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("after restart: %s at version %d, want %d", k, got[k], v)
		}
	}
	rev := c.converge()
	for _, nd := range c.nodes {
		r := <-nd.srv.Watch(ctx, "", 1)
		if !errors.Is(r.Err, ErrCompacted) && r.Err == nil && r.Revision != 0 {
			// A node that replayed its whole log without a snapshot may
			// still hold revision 1; every node here restored a snapshot.
			t.Fatalf("node %d: watch from revision 1 after restore: %+v", nd.id, r)
		}
		for _, k := range []string{"before/000", "after/049", "leased"} {
			e, err := nd.srv.Get(ctx, k, Stale())
			if err != nil || e.Version != want[k] {
				t.Fatalf("node %d (revision %d): %s = %+v, %v", nd.id, rev, k, e, err)
			}
		}
	}
	if _, err := kv.KeepAlive(ctx, lease); err != nil {
		t.Fatalf("lease after restart: %v", err)
	}
}

// TestKVCASRaceLeaderKilled runs the CAS race while the leader is killed
// (connections cut, writes in flight): CASes whose outcome is unknown must
// still leave a history in which each appears at most once and no
// increment is lost.
func TestKVCASRaceLeaderKilled(t *testing.T) {
	c := newTestCluster(t, 3, grpcTransport, false, nil)
	lead := c.leader()
	done := make(chan struct{})
	t.Cleanup(func() { <-done }) // before the cluster's cleanup stops the nodes
	go func() {
		defer close(done)
		time.Sleep(300 * time.Millisecond) // the race is under way (it takes seconds)
		c.kill(lead)
	}()
	testKVCASRace(t, c, func() KV { return c.client() })
}
