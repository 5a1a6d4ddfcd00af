// Package s3test starts real S3 servers for tests: MinIO and versitygw,
// built by tools/install-s3-servers.sh into <repo>/.cache/bin (the test
// tools are not dependencies of Quire's module). Each server listens on
// 127.0.0.1 on a free port with a temporary directory and is stopped by the
// test's cleanup.
//
//	srv := s3test.StartMinIO(t)
//	st, err := s3store.Open(ctx, srv.Options("bucket-name"))
//
// A test needing a server is skipped when the binary is missing, except
// with CI set: then the missing binary fails the test (make test runs the
// install script first). QUIRE_MINIO_BIN and QUIRE_VERSITYGW_BIN name other
// binaries; QUIRE_S3_BIN another directory holding both.
package s3test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quiremq/quire/engines/objstore/s3store"
)

// Server is a running S3 server.
type Server struct {
	// Kind is "minio" or "versitygw".
	Kind      string
	Endpoint  string // host:port, plain HTTP
	AccessKey string
	SecretKey string
	Region    string
}

// Options returns s3store options for a bucket on the server.
func (s *Server) Options(bucket string) s3store.Options {
	return s3store.Options{
		Endpoint: s.Endpoint, Bucket: bucket, Region: s.Region,
		AccessKey: s.AccessKey, SecretKey: s.SecretKey, PathStyle: true,
	}
}

const (
	accessKey = "quiretest"
	secretKey = "quiretest-secret-key"
	region    = "us-east-1"
)

// repoRoot finds the directory holding go.mod above the working directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Binary returns the path of the named server binary, or "" when absent.
func Binary(name, envVar string) string {
	if p := os.Getenv(envVar); p != "" {
		return p
	}
	dir := os.Getenv("QUIRE_S3_BIN")
	if dir == "" {
		if root, err := repoRoot(); err == nil {
			dir = filepath.Join(root, ".cache", "bin")
		}
	}
	if dir != "" {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return ""
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// need returns the binary or skips (fails in CI) the test.
func need(t testing.TB, name, envVar string) string {
	t.Helper()
	p := Binary(name, envVar)
	if p != "" {
		return p
	}
	msg := fmt.Sprintf("%s not found (in $%s, <repo>/.cache/bin or PATH): run tools/install-s3-servers.sh", name, envVar)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// StartMinIO starts a MinIO server (single drive) for the test.
func StartMinIO(t testing.TB) *Server {
	t.Helper()
	bin := need(t, "minio", "QUIRE_MINIO_BIN")
	return start(t, "minio", func(addr, dir string) *exec.Cmd {
		console := freePort(t)
		cmd := exec.Command(bin, "server", "--quiet", "--address", addr, "--console-address", console, dir)
		cmd.Env = append(os.Environ(),
			"MINIO_ROOT_USER="+accessKey, "MINIO_ROOT_PASSWORD="+secretKey,
			"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CALLHOME_ENABLE=off",
			"MINIO_REGION="+region)
		return cmd
	}, "/minio/health/ready")
}

// StartVersityGW starts a versitygw gateway on its posix backend.
func StartVersityGW(t testing.TB) *Server {
	t.Helper()
	bin := need(t, "versitygw", "QUIRE_VERSITYGW_BIN")
	return start(t, "versitygw", func(addr, dir string) *exec.Cmd {
		cmd := exec.Command(bin, "--access", accessKey, "--secret", secretKey, "--region", region,
			"--port", addr, "posix", dir)
		cmd.Env = os.Environ()
		return cmd
	}, "/")
}

// freePort returns a loopback address whose port was free a moment ago.
func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// syncBuffer collects a server's output for the failure message.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len() < 1<<20 {
		s.b.Write(p)
	}
	return len(p), nil
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs the server, retrying on another port when the chosen one was
// taken in between, and waits until path answers over HTTP.
func start(t testing.TB, kind string, command func(addr, dir string) *exec.Cmd, path string) *Server {
	t.Helper()
	var lastErr error
	for range 3 {
		addr := freePort(t)
		dir := t.TempDir()
		cmd := command(addr, dir)
		out := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", kind, err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		if err := waitReady(addr, path, exited); err != nil {
			cmd.Process.Kill()
			lastErr = fmt.Errorf("%s on %s did not become ready: %v\n%s", kind, addr, err, out.String())
			continue
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
		})
		return &Server{Kind: kind, Endpoint: addr, AccessKey: accessKey, SecretKey: secretKey, Region: region}
	}
	t.Fatal(lastErr)
	return nil
}

// waitReady polls http://addr/path until it answers (any HTTP status for
// "/", 200 otherwise), the process exits, or 60 s pass.
func waitReady(addr, path string, exited <-chan error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if path == "/" || resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-exited:
			return fmt.Errorf("exited: %v", err)
		case <-ctx.Done():
			return fmt.Errorf("timed out: last error %v", err)
		case <-tick.C:
		}
	}
}
