package faulttest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/quiremq/quire/internal/testaddr"
	"github.com/quiremq/quire/journal/bookie/bookierpc"
)

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// quireBinary builds cmd/quire once per test run into a temp dir (with
// -race when the test runs under it, reusing the test's compiled
// packages).
func quireBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "quire-faulttest-bin-")
		if binErr != nil {
			return
		}
		args := []string{"build", "-o", binDir + string(os.PathSeparator)}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "./cmd/quire")
		cmd := exec.Command("go", args...)
		cmd.Dir = "../.."
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, "quire")
}

// syncBuffer collects a process's output, keeping the last 1 MiB.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len() > 1<<20 {
		s.b.Next(s.b.Len() - 512<<10)
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// childEnv is the environment of the child processes: without the race
// detector's default 1 s sleep at exit, halting on the first race.
func childEnv(extra ...string) []string {
	var e []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GORACE=") && !strings.HasPrefix(kv, writerEnv+"=") {
			e = append(e, kv)
		}
	}
	return append(append(e, "GORACE=atexit_sleep_ms=0 halt_on_error=1"), extra...)
}

// proc is a running child process.
type proc struct {
	cmd    *exec.Cmd
	output *syncBuffer
	done   chan struct{}
	err    error
}

// startProc starts cmd and kills it when the test ends.
func startProc(t testing.TB, cmd *exec.Cmd) (*proc, error) {
	p := &proc{cmd: cmd, output: &syncBuffer{}, done: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = p.output
	}
	cmd.Stderr = p.output
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.kill() })
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL (and SIGCONT, in case it was stopped) and waits for
// the exit.
func (p *proc) kill() {
	if !p.exited() {
		p.cmd.Process.Signal(syscall.SIGKILL)
		p.cmd.Process.Signal(syscall.SIGCONT)
	}
	<-p.done
}

func (p *proc) signal(s syscall.Signal) error { return p.cmd.Process.Signal(s) }

// bookieProc is one `quire bookie` process and the proxy the writer
// reaches it through. Its id (in ledger metadata) is its real address;
// the writer's directory maps that id to the proxy's address, and the
// checker reads from the real one.
type bookieProc struct {
	t       testing.TB
	name    string
	dataDir string
	addr    string
	proxy   *proxy

	mu      sync.Mutex
	p       *proc
	stopped bool // SIGSTOPped
	killed  bool // by kill9, not restarted since
}

func startBookies(t testing.TB, n int) []*bookieProc {
	t.Helper()
	bin := quireBinary(t)
	dir := t.TempDir()
	bs := make([]*bookieProc, n)
	for i := range n {
		b := &bookieProc{t: t, name: fmt.Sprintf("b%d", i), dataDir: filepath.Join(dir, fmt.Sprintf("b%d", i))}
		// A free port can be taken by another process between freeAddr
		// closing it and the bookie binding it: then try another.
		for attempt := 0; ; attempt++ {
			b.addr = freeAddr(t)
			err := b.start(bin)
			if err == nil {
				err = b.waitServing()
			}
			if err == nil {
				break
			}
			if attempt == 4 || !strings.Contains(err.Error(), "address already in use") {
				t.Fatal(err)
			}
		}
		b.proxy = startProxy(t, b.addr)
		bs[i] = b
	}
	return bs
}

// freeAddr returns a loopback address for a bookie: a bookie restarts on
// its own address (the address is its id in ledger metadata), so its port
// is one outgoing connections cannot take while it is down
// (testaddr.Loopback).
func freeAddr(t testing.TB) string { return testaddr.Loopback(t, 1)[0] }

func (b *bookieProc) start(bin string) error {
	cmd := exec.Command(bin, "bookie", "--data-dir", b.dataDir, "--addr", b.addr,
		"--cookie-store", b.dataDir+".cookies.json", "--max-group-wait", "1ms", "--log-level", "warn")
	cmd.Env = childEnv()
	p, err := startProc(b.t, cmd)
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.p, b.stopped, b.killed = p, false, false
	b.mu.Unlock()
	return nil
}

// waitServing waits until the bookie answers a request.
func (b *bookieProc) waitServing() error {
	c, err := bookierpc.Dial(b.addr, grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.5, MaxDelay: 200 * time.Millisecond}}))
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		b.mu.Lock()
		p := b.p
		b.mu.Unlock()
		if p.exited() {
			return fmt.Errorf("bookie %s exited (%v):\n%s", b.name, p.err, p.output)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.ReadLAC(ctx, 1<<60, false)
		cancel()
		if err == nil || bookierpc.StatusOf(err) != 0 {
			return nil // an answer (NO_SUCH_LEDGER): serving
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bookie %s not serving after 60s:\n%s", b.name, p.output)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill9 kills the process; restart starts it again on the same data
// directory and address.
func (b *bookieProc) kill9() {
	b.mu.Lock()
	p := b.p
	b.killed = true
	b.mu.Unlock()
	p.kill()
}

// restart starts the bookie again on its address; if something else holds
// the address for a moment ("address already in use"), it tries again for
// up to two seconds.
func (b *bookieProc) restart() error {
	for attempt := 0; ; attempt++ {
		err := b.start(quireBinary(b.t))
		if err == nil {
			err = b.waitServing()
		}
		if err == nil || attempt == 9 || !strings.Contains(err.Error(), "address already in use") {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stop and cont send SIGSTOP and SIGCONT: a hung bookie, whose
// connections stay open and silent.
func (b *bookieProc) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.p.signal(syscall.SIGSTOP); err != nil {
		b.t.Errorf("SIGSTOP %s: %v", b.name, err)
	}
	b.stopped = true
}

func (b *bookieProc) cont() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.p.signal(syscall.SIGCONT); err != nil {
		b.t.Errorf("SIGCONT %s: %v", b.name, err)
	}
	b.stopped = false
}

// checkAlive fails the test if the process died without being killed.
func (b *bookieProc) checkAlive() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.p.exited() && !b.killed {
		b.t.Errorf("bookie %s exited by itself (%v):\n%s", b.name, b.p.err, b.p.output)
	}
}
