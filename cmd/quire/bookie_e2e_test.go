package main

// End-to-end tests of `quire bookie`: kill -9 under load, and a wiped data
// directory.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/quiremq/quire/journal/bookie"
	"github.com/quiremq/quire/journal/bookie/bookierpc"
)

// killPayload is the deterministic payload of (ledger, entry), so that a
// read-back can be checked byte for byte without keeping what was sent.
func killPayload(ledger, entry uint64) []byte {
	n := int((ledger*7919+entry*104729)%2048) + 1
	p := make([]byte, n)
	x := ledger*0x9E3779B97F4A7C15 ^ entry*0xBF58476D1CE4E5B9 | 1
	for i := range p {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		p[i] = byte(x)
	}
	copy(p, fmt.Sprintf("%d/%d:", ledger, entry))
	return p
}

// waitBookie waits until the bookie at addr answers.
func waitBookie(t *testing.T, p *proc, c *bookierpc.Client) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if p.exited() {
			t.Fatalf("quire bookie exited (%v):\n%s", p.err, p.stderr)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.ReadLAC(ctx, 1<<60, false)
		cancel()
		if err == nil || bookierpc.StatusOf(err) != 0 {
			return // an answer (NO_SUCH_LEDGER): serving
		}
		if time.Now().After(deadline) {
			t.Fatalf("bookie not serving after 30s:\n%s", p.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill -9 a real bookie process under load from several streaming writers
// and a fencer, at a random moment, restart it on the same directories,
// and check (DESIGN.md, "Journal": no acknowledged entry is lost or
// changed): every acknowledged add is there with its bytes, every
// acknowledged fence holds, and an entry that was sent but not
// acknowledged is either absent or intact. Repeated, with the writes of
// every earlier round checked again.
func TestBookieKill9(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "bookie1")
	addr := freeAddrs(t, 1)[0]
	args := []string{"bookie", "--data-dir", dataDir, "--addr", addr, "--max-group-wait", "1ms"}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))

	type key struct{ ledger, entry uint64 }
	var mu sync.Mutex
	acked := map[key]bool{}     // acknowledged adds, every round
	sent := map[key]bool{}      // adds sent, every round
	fenced := map[uint64]bool{} // acknowledged fences
	// Writers stop at perWriter entries so that the check after each
	// restart, which reads every entry ever sent, stays fast; the fencer
	// writes and fences until the kill.
	const rounds, writers, perWriter = 4, 6, 3000
	for round := range rounds {
		p := startQuire(t, dir, args...)
		// A new connection per process (a kept one would wait out gRPC's
		// reconnect backoff).
		c, err := bookierpc.Dial(addr, grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.5, MaxDelay: 200 * time.Millisecond}}))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		waitBookie(t, p, c)

		// Everything acknowledged so far is there, byte for byte; every
		// fence holds; nothing sent is corrupted.
		ctx := context.Background()
		mu.Lock()
		keys := make(chan key, len(sent))
		for k := range sent {
			keys <- k
		}
		close(keys)
		var rg sync.WaitGroup
		for range 16 {
			rg.Add(1)
			go func() {
				defer rg.Done()
				for k := range keys {
					got, err := c.ReadEntry(ctx, k.ledger, k.entry, false)
					switch {
					case err == nil:
						if !bytes.Equal(got, killPayload(k.ledger, k.entry)) {
							t.Errorf("round %d: ledger %d entry %d read back %d different bytes", round, k.ledger, k.entry, len(got))
						}
					case errors.Is(err, bookie.ErrNoSuchEntry):
						if acked[k] {
							t.Errorf("round %d: acknowledged ledger %d entry %d lost: %v", round, k.ledger, k.entry, err)
						}
					default:
						t.Errorf("round %d: read ledger %d entry %d: %v", round, k.ledger, k.entry, err)
					}
				}
			}()
		}
		rg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		nAcked, nFenced := len(acked), len(fenced)
		mu.Unlock()
		for l := range fenced {
			s, err := c.AddStream(ctx, func(r bookierpc.AddResult) {
				if !errors.Is(r.Err, bookie.ErrLedgerFenced) {
					t.Errorf("round %d: add to fenced ledger %d: %v, want FENCED", round, l, r.Err)
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			s.Add(bookierpc.Add{Ledger: l, Entry: 1 << 40, LAC: -1, Payload: []byte("x")})
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("round %d: %d acknowledged adds and %d fences verified", round, nAcked, nFenced)
		if round == rounds-1 {
			if code := p.terminate(t); code != 0 {
				t.Fatalf("exit status after SIGTERM = %d\n%s", code, p.stderr)
			}
			break
		}

		// Load: writers stream adds to their own ledgers; a fencer fences
		// ledgers it wrote a few entries to.
		loadCtx, stopLoad := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ledger := uint64(round*100 + w + 1)
				s, err := c.AddStream(loadCtx, func(r bookierpc.AddResult) {
					if r.Err == nil {
						mu.Lock()
						acked[key{r.Ledger, r.Entry}] = true
						mu.Unlock()
					}
				})
				if err != nil {
					return
				}
				for e := uint64(0); e < perWriter && loadCtx.Err() == nil; e++ {
					mu.Lock()
					sent[key{ledger, e}] = true
					mu.Unlock()
					if s.Add(bookierpc.Add{Ledger: ledger, Entry: e, LAC: int64(e) - 1, Payload: killPayload(ledger, e)}) != nil {
						return
					}
				}
				s.Abort()
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := uint64(0); loadCtx.Err() == nil; i++ {
				ledger := uint64(10000 + round*1000 + int(i))
				s, err := c.AddStream(loadCtx, func(r bookierpc.AddResult) {
					if r.Err == nil {
						mu.Lock()
						acked[key{r.Ledger, r.Entry}] = true
						mu.Unlock()
					}
				})
				if err != nil {
					return
				}
				for e := range uint64(3) {
					mu.Lock()
					sent[key{ledger, e}] = true
					mu.Unlock()
					s.Add(bookierpc.Add{Ledger: ledger, Entry: e, LAC: -1, Payload: killPayload(ledger, e)})
				}
				s.Close()
				fctx, cancel := context.WithTimeout(loadCtx, 5*time.Second)
				_, err = c.Fence(fctx, ledger)
				cancel()
				if err != nil {
					return
				}
				mu.Lock()
				fenced[ledger] = true
				mu.Unlock()
			}
		}()

		time.Sleep(time.Duration(150+rng.IntN(500)) * time.Millisecond)
		if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-p.done
		stopLoad()
		wg.Wait()
		mu.Lock()
		if len(acked) == nAcked {
			t.Errorf("round %d: no add was acknowledged before the kill", round)
		}
		mu.Unlock()
	}
}

// A wiped data directory, with the cookie store (beside it) intact,
// refuses to start: exit 1, naming the mismatch.
func TestBookieWipedDataDir(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "b")
	addrs := freeAddrs(t, 2)
	args := []string{"bookie", "--data-dir", dataDir, "--addr", addrs[0], "--metrics-addr", addrs[1]}
	p := startQuire(t, dir, args...)
	c, err := bookierpc.Dial(addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitBookie(t, p, c)
	if _, err := c.Fence(context.Background(), 7); err != nil {
		t.Fatal(err)
	}
	if code, body := httpGet(t, "http://"+addrs[1]+"/metrics"); code != 200 || !strings.Contains(body, "quire_bookie_fences_total 1") {
		t.Errorf("/metrics = %d:\n%s", code, body)
	}
	if code := p.terminate(t); code != 0 {
		t.Fatalf("exit status after SIGTERM = %d\n%s", code, p.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, ".quire-cookies.json")); err != nil {
		t.Fatalf("default cookie store: %v", err)
	}

	if err := os.RemoveAll(dataDir); err != nil {
		t.Fatal(err)
	}
	p = startQuire(t, dir, args...)
	if code := p.exitCode(t, 20*time.Second); code != 1 {
		t.Errorf("exit status on a wiped data dir = %d, want 1\n%s", code, p.stderr)
	}
	for _, want := range []string{"cookie mismatch", "has no cookie", dataDir, "must not rejoin"} {
		if !strings.Contains(p.stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, p.stderr)
		}
	}
	// Usage errors exit 2.
	p = startQuire(t, dir, "bookie", "--addr", addrs[0])
	if code := p.exitCode(t, 20*time.Second); code != 2 || !strings.Contains(p.stderr.String(), "--data-dir is required") {
		t.Errorf("without --data-dir: exit %d\n%s", code, p.stderr)
	}
}
