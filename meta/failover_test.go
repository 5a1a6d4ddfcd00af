package meta

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// appendItem appends item to the comma-separated list at key with a CAS
// loop. It returns the version that holds the item (acknowledged), or an
// error: ErrAmbiguous when the item may or may not have been appended.
func appendItem(ctx context.Context, kv KV, key, item string) (uint64, string, error) {
	for {
		cur, err := kv.Get(ctx, key)
		var expect uint64
		var list string
		switch {
		case err == nil:
			expect, list = cur.Version, string(cur.Value)
		case errors.Is(err, ErrNotFound):
		default:
			return 0, "", err
		}
		next := item
		if list != "" {
			next = list + "," + item
		}
		put, err := kv.Put(ctx, key, []byte(next), IfVersion(expect))
		if errors.Is(err, ErrVersionMismatch) {
			continue
		}
		if err != nil {
			return 0, "", err
		}
		return put.Version, next, nil
	}
}

type ackLog struct {
	mu        sync.Mutex
	acked     map[string]bool   // items acknowledged
	maybe     map[string]bool   // items with an unknown outcome
	byVersion map[uint64]string // acknowledged version -> value
	errs      []error
	failures  map[string]int // errors by class
	otherErrs []string
}

func newAckLog() *ackLog {
	return &ackLog{acked: map[string]bool{}, maybe: map[string]bool{}, byVersion: map[uint64]string{}, failures: map[string]int{}}
}

// run appends items from clients until stop is closed.
func (a *ackLog) run(ctx context.Context, kv KV, key, client string, stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		item := fmt.Sprintf("%s.%d", client, i)
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		v, val, err := appendItem(cctx, kv, key, item)
		cancel()
		a.mu.Lock()
		switch {
		case err == nil:
			a.acked[item] = true
			if prev, ok := a.byVersion[v]; ok && prev != val {
				a.errs = append(a.errs, fmt.Errorf("version %d acknowledged with two values", v))
			}
			a.byVersion[v] = val
		default:
			a.maybe[item] = true
			class := "other"
			switch {
			case errors.Is(err, ErrAmbiguous):
				class = "ambiguous"
			case errors.Is(err, ErrNotLeader):
				class = "not-leader"
			case errors.Is(err, context.DeadlineExceeded):
				class = "timeout"
			}
			a.failures[class]++
			if class == "other" && a.failures[class] < 3 {
				a.otherErrs = append(a.otherErrs, err.Error())
			}
		}
		a.mu.Unlock()
		if err != nil {
			time.Sleep(5 * time.Millisecond) // an election is on: do not spin
		}
	}
}

// check verifies the final list against the acknowledgements: every
// acknowledged item exactly once, nothing that was never attempted, no
// item twice.
func (a *ackLog) check(t *testing.T, final string) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, err := range a.errs {
		t.Error(err)
	}
	seen := map[string]int{}
	for _, it := range strings.Split(final, ",") {
		if it != "" {
			seen[it]++
		}
	}
	for it, n := range seen {
		if n > 1 {
			t.Errorf("item %s present %d times", it, n)
		}
		if !a.acked[it] && !a.maybe[it] {
			t.Errorf("item %s present but never attempted", it)
		}
	}
	for it := range a.acked {
		if seen[it] != 1 {
			t.Errorf("acknowledged item %s present %d times", it, seen[it])
		}
	}
	if len(a.acked) == 0 {
		t.Error("nothing was acknowledged")
	}
}

// checkLists checks list0, list1, ... on every running node against logs:
// the survivors agree, and each list holds its acknowledged items.
func checkLists(ctx context.Context, t *testing.T, c *testCluster, logs []*ackLog) {
	t.Helper()
	for li, l := range logs {
		key := fmt.Sprintf("list%d", li)
		var final []byte
		for i, nd := range c.nodes {
			if nd.srv == nil {
				continue
			}
			e, err := nd.srv.Get(ctx, key, Stale())
			if err != nil {
				t.Fatal(err)
			}
			if final != nil && string(final) != string(e.Value) {
				t.Fatalf("survivors disagree on %s (node %d)", key, i+1)
			}
			final = e.Value
		}
		l.check(t, string(final))
		t.Logf("%s: %d acknowledged, %d unknown %v %q", key, len(l.acked), len(l.maybe), l.failures, l.otherErrs)
	}
}

// TestFailover stops the leader of a three-node cluster (production gRPC
// transport on loopback) while several clients CAS-append to shared lists.
// Every acknowledged append is present exactly once on the survivors, no
// version was acknowledged with two values, and a new leader serves within
// a few election timeouts.
func TestFailover(t *testing.T) {
	c := newTestCluster(t, 3, grpcTransport, false, nil)
	c.leader()
	ctx := ctxT(t)
	logs := []*ackLog{newAckLog(), newAckLog()}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go logs[i%2].run(ctx, c.client(), fmt.Sprintf("list%d", i%2), fmt.Sprintf("c%d", i), stop, &wg)
	}
	time.Sleep(400 * time.Millisecond)
	old := c.leader()
	c.stop(old)
	stoppedAt := time.Now()
	newLeader := c.leader()
	if el := time.Since(stoppedAt); el > 10*testOptions().ElectionTimeout {
		t.Errorf("new leader after %v", el)
	}
	// Writes are acknowledged again soon after.
	probe := c.client()
	for {
		if _, err := probe.Put(ctx, "probe", nil); err == nil {
			break
		}
		if time.Since(stoppedAt) > 10*testOptions().ElectionTimeout {
			t.Fatalf("no write acknowledged %v after the leader stopped", time.Since(stoppedAt))
		}
	}
	t.Logf("leader %d stopped; node %d leads; writes acknowledged again after %v", c.nodes[old].id, c.nodes[newLeader].id, time.Since(stoppedAt))
	time.Sleep(400 * time.Millisecond)
	close(stop)
	wg.Wait()
	c.converge()
	checkLists(ctx, t, c, logs)
	// The old leader rejoins with its data and catches up.
	c.start(old, nil)
	c.converge()
}

// TestPartition cuts the leader off from the other two nodes (Raft traffic
// and forwarded requests). The minority side acknowledges nothing; the
// majority elects a leader and goes on; after healing all nodes agree.
func TestPartition(t *testing.T) {
	c := newTestCluster(t, 3, inmemTransport, false, nil)
	ctx := ctxT(t)
	old := c.leader()
	var majority []int
	var majAddrs []string
	for i := range c.nodes {
		if i != old {
			majority = append(majority, i)
			majAddrs = append(majAddrs, c.nodes[i].addr)
		}
	}
	if _, err := c.client().Put(ctx, "k", []byte("before")); err != nil {
		t.Fatal(err)
	}
	c.converge()
	c.net.Partition([]string{c.nodes[old].addr}, majAddrs)

	// The minority: the old leader through a client that can reach only
	// it, and the old leader's in-process API.
	minClient := c.client(old)
	var minAcks []string
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 5 {
				val := fmt.Sprintf("minority-%d-%d", i, j)
				cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
				var err error
				if i == 0 {
					_, err = c.nodes[old].srv.Put(cctx, "k", []byte(val))
				} else {
					_, err = minClient.Put(cctx, "k", []byte(val))
				}
				cancel()
				if err == nil {
					mu.Lock()
					minAcks = append(minAcks, val)
					mu.Unlock()
				}
			}
		}()
	}
	// The majority: a new leader, and writes acknowledged.
	maj := c.client(majority...)
	deadline := time.Now().Add(10 * time.Second)
	var majPut KeyValue
	for {
		var err error
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		majPut, err = maj.Put(cctx, "k", []byte("majority"))
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("majority side acknowledged nothing: %v", err)
		}
	}
	if got, err := maj.Get(ctx, "k"); err != nil || string(got.Value) != "majority" {
		t.Fatalf("majority read: %+v, %v", got, err)
	}
	// A linearizable read on the minority fails; a stale one is served.
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if _, err := minClient.Get(cctx, "k"); err == nil {
		t.Error("linearizable read acknowledged by the minority")
	}
	cancel()
	if got, err := c.nodes[old].srv.Get(ctx, "k", Stale()); err != nil || string(got.Value) != "before" {
		t.Errorf("stale read on the minority: %+v, %v", got, err)
	}
	wg.Wait()
	if len(minAcks) > 0 {
		t.Fatalf("minority acknowledged %v", minAcks)
	}
	c.net.Heal()
	c.leader()
	c.converge()
	for _, nd := range c.nodes {
		got, err := nd.srv.Get(ctx, "k", Stale())
		if err != nil || string(got.Value) != "majority" || got.Version != majPut.Version {
			t.Fatalf("node %d after healing: %+v, %v; want %q at %d", nd.id, got, err, "majority", majPut.Version)
		}
	}
}
