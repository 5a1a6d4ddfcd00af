package s3store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/engines/objstore/objstoretest"
	"github.com/quiremq/quire/engines/objstore/s3store"
	"github.com/quiremq/quire/engines/objstore/s3test"
)

var buckets atomic.Int64

// conformance runs the objstore suite with a new bucket per test, created by
// Open, and 5 MiB parts so that the large-object test uploads in parts.
func conformance(t *testing.T, srv *s3test.Server, checksums bool) {
	objstoretest.Run(t, objstoretest.Config{ChecksumConfirmed: checksums, New: func(t *testing.T) objstore.Store {
		opts := srv.Options(fmt.Sprintf("conf-%d", buckets.Add(1)))
		opts.PartSize = 5 << 20
		st, err := s3store.Open(context.Background(), opts)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}})
}

func TestMinIO(t *testing.T) {
	srv := s3test.StartMinIO(t)
	t.Run("Conformance", func(t *testing.T) { conformance(t, srv, true) })
	t.Run("Bucket", func(t *testing.T) { testBucket(t, srv) })
}

func TestVersityGW(t *testing.T) {
	srv := s3test.StartVersityGW(t)
	t.Run("Conformance", func(t *testing.T) { conformance(t, srv, true) })
	t.Run("Bucket", func(t *testing.T) { testBucket(t, srv) })
}

// testBucket checks bucket creation at Open, reopening an existing bucket,
// DontCreateBucket, and that wrong credentials give an error that says so.
func testBucket(t *testing.T, srv *s3test.Server) {
	ctx := context.Background()
	name := fmt.Sprintf("bucket-%d", buckets.Add(1))
	opts := srv.Options(name)
	opts.DontCreateBucket = true
	if _, err := s3store.Open(ctx, opts); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("Open of a missing bucket with DontCreateBucket = %v, want a does-not-exist error", err)
	}
	st, err := s3store.Open(ctx, srv.Options(name))
	if err != nil {
		t.Fatalf("Open creating the bucket: %v", err)
	}
	if err := objstoretest.Put(ctx, st, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	st2, err := s3store.Open(ctx, opts) // exists now
	if err != nil {
		t.Fatalf("reopen of an existing bucket: %v", err)
	}
	if b, err := st2.Get(ctx, "k", 0, -1); err != nil || string(b) != "v" {
		t.Fatalf("Get through the second store = %q, %v", b, err)
	}
	bad := srv.Options(name)
	bad.SecretKey = "wrong-secret-key"
	if _, err := s3store.Open(ctx, bad); err == nil || !strings.Contains(err.Error(), "credentials") {
		t.Fatalf("Open with a wrong secret key = %v, want an error naming the credentials", err)
	}
	bad = srv.Options(fmt.Sprintf("bucket-%d", buckets.Add(1)))
	bad.SecretKey = "wrong-secret-key"
	if _, err := s3store.Open(ctx, bad); err == nil || !strings.Contains(err.Error(), "credentials") {
		t.Fatalf("Open of a new bucket with a wrong secret key = %v, want an error naming the credentials", err)
	}
}

func TestOptions(t *testing.T) {
	for _, c := range []struct {
		opts s3store.Options
		want string
	}{
		{s3store.Options{Bucket: "b"}, "Endpoint is required"},
		{s3store.Options{Endpoint: "h:1"}, "Bucket is required"},
		{s3store.Options{Endpoint: "h:1", Bucket: "b", AccessKey: "a"}, "together"},
		{s3store.Options{Endpoint: "ftp://h:1", Bucket: "b"}, "must be host:port"},
		{s3store.Options{Endpoint: "http://h:1/path", Bucket: "b"}, "must be host:port"},
		{s3store.Options{Endpoint: "h:1/path", Bucket: "b"}, "without a path"},
		{s3store.Options{Endpoint: "h:1", Bucket: "b", PartSize: 1 << 20}, "PartSize"},
	} {
		c.opts.EnsureDefaults()
		if err := c.opts.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate(%+v) = %v, want %q", c.opts, err, c.want)
		}
	}
	ok := s3store.Options{Endpoint: "https://s3.example.com:443", Bucket: "b"}
	ok.EnsureDefaults()
	if err := ok.Validate(); err != nil {
		t.Errorf("Validate(https URL) = %v", err)
	}
}

func TestNoCredentials(t *testing.T) {
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY",
		"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"} {
		t.Setenv(v, "")
	}
	t.Setenv("HOME", t.TempDir()) // no shared credentials files
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "")
	_, err := s3store.Open(context.Background(), s3store.Options{Endpoint: "127.0.0.1:1", Bucket: "b"})
	if err == nil || !strings.Contains(err.Error(), "no credentials") {
		t.Fatalf("Open without credentials = %v, want a no-credentials error", err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "from-env")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
	_, err = s3store.Open(context.Background(), s3store.Options{Endpoint: "127.0.0.1:1", Bucket: "b"})
	if err == nil || errors.Is(err, objstore.ErrNotFound) || strings.Contains(err.Error(), "no credentials") {
		t.Fatalf("Open with env credentials against a closed port = %v, want a connection error", err)
	}
}

// TestChecksumRefused puts through a proxy that answers NotImplemented to
// every request carrying a checksum (as an S3 server without checksum
// support would): PutVerified still stores the objects, now verified by a
// read-back, and still catches a CRC that does not match.
func TestChecksumRefused(t *testing.T) {
	srv := s3test.StartMinIO(t)
	target, _ := url.Parse("http://" + srv.Endpoint)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var refused atomic.Int64
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		checksum := strings.Contains(r.Header.Get("X-Amz-Content-Sha256"), "TRAILER")
		for k := range r.Header {
			checksum = checksum || strings.HasPrefix(strings.ToLower(k), "x-amz-checksum")
		}
		if checksum {
			refused.Add(1)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusNotImplemented)
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code><Message>checksums are not supported</Message></Error>`)
			return
		}
		proxy.ServeHTTP(w, r)
	})}
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	opts := srv.Options("refused")
	opts.Endpoint = l.Addr().String()
	opts.PartSize = 5 << 20
	st, err := s3store.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, size := range []int{1000, 12 << 20} {
		v := bytes.Repeat([]byte{byte(size)}, size)
		key := fmt.Sprintf("obj-%d", size)
		readBack, err := objstore.PutVerified(ctx, st, key, bytes.NewReader(v), int64(size), crc32.Checksum(v, objstore.Castagnoli))
		if err != nil || !readBack {
			t.Fatalf("PutVerified(%d bytes) through a server refusing checksums = read back %v, %v; want a read-back", size, readBack, err)
		}
		if got, err := st.Get(ctx, key, 0, -1); err != nil || !bytes.Equal(got, v) {
			t.Fatalf("Get(%d bytes) = %d bytes, %v", size, len(got), err)
		}
		_, err = objstore.PutVerified(ctx, st, key+"-bad", bytes.NewReader(v), int64(size), crc32.Checksum(v, objstore.Castagnoli)^1)
		if !errors.Is(err, objstore.ErrChecksum) {
			t.Fatalf("PutVerified(%d bytes) with a wrong CRC = %v, want ErrChecksum", size, err)
		}
	}
	if refused.Load() != 1 {
		t.Fatalf("the server refused %d checksummed requests; want 1 (the store stops sending them)", refused.Load())
	}
}
