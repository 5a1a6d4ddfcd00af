package s3_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/quiremq/quire/engines/objstore/s3store"
	"github.com/quiremq/quire/shard"

	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/engines/objstore/s3test"
	"github.com/quiremq/quire/engines/s3"
	"github.com/quiremq/quire/shard/shardtest"
)

func TestConformanceMem(t *testing.T) {
	t.Parallel()
	shardtest.Run(t, shardtest.Config{
		New:     func(t *testing.T) shardtest.Opener { return opener(objstore.NewMem(), newMeta(t), nil) },
		Durable: true,
	})
}

// TestConformanceBatched waits for appends to share objects (the default
// policy), with small objects so that reads cross many of them.
func TestConformanceBatched(t *testing.T) {
	t.Parallel()
	shardtest.Run(t, shardtest.Config{
		New: func(t *testing.T) shardtest.Opener {
			return opener(objstore.NewMem(), newMeta(t), func(o *s3.Options) {
				o.FlushInterval, o.FlushBytes = 2*time.Millisecond, 4096
			})
		},
		Durable: true,
	})
}

func TestConformanceDir(t *testing.T) {
	t.Parallel()
	shardtest.Run(t, shardtest.Config{
		New: func(t *testing.T) shardtest.Opener {
			st, err := objstore.OpenDir(objstore.DirOptions{Dir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			return opener(st, newMeta(t), nil)
		},
		Durable: true,
	})
}

func TestMinIO(t *testing.T) {
	t.Parallel()
	srv := s3test.StartMinIO(t)
	t.Run("Conformance", func(t *testing.T) {
		shardtest.Run(t, shardtest.Config{
			New:     func(t *testing.T) shardtest.Opener { return opener(serverStore(t, srv), newMeta(t), nil) },
			Durable: true,
		})
	})
	t.Run("Endpoint", func(t *testing.T) { testEndpoint(t, srv) })
}

// testEndpoint opens the engine the way configuration does, from the
// [storage.s3] fields (no Store): the bucket is created, objects land
// under Prefix, and a second engine on the same bucket and meta reads them.
func testEndpoint(t *testing.T, srv *s3test.Server) {
	ctx := context.Background()
	kv := newMeta(t)
	bucket := fmt.Sprintf("endpoint-%d", buckets.Add(1))
	opts := s3.Options{
		Endpoint: "http://" + srv.Endpoint, Bucket: bucket, Region: srv.Region,
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, Prefix: "cluster-a/",
		Meta: kv, FlushInterval: 5 * time.Millisecond, FlushBytes: 1 << 20, Logger: quiet,
	}
	e, err := s3.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	s, err := e.Create(ctx, "topic/0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, []shard.Record{{Value: []byte("hello")}, {Value: []byte("world")}}); err != nil {
		t.Fatal(err)
	}
	e.Close()
	st, err := s3store.Open(ctx, srv.Options(bucket))
	if err != nil {
		t.Fatal(err)
	}
	infos, err := st.List(ctx, "")
	if err != nil || len(infos) != 1 || !strings.HasPrefix(infos[0].Key, "cluster-a/") {
		t.Fatalf("objects in the bucket = %v, %v; want one under cluster-a/", infos, err)
	}
	e2, err := s3.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	s2, err := e2.Open(ctx, "topic/0")
	if err != nil {
		t.Fatal(err)
	}
	got, err := s2.Read(ctx, 0, shard.Limits{})
	if err != nil || len(got) != 2 || string(got[1].Value) != "world" {
		t.Fatalf("Read after reopen = %v, %v", got, err)
	}
	bad := opts
	bad.SecretKey = "not-the-secret"
	if _, err := s3.Open(ctx, bad); err == nil || !strings.Contains(err.Error(), "credentials") {
		t.Fatalf("Open with a wrong secret = %v, want an error naming the credentials", err)
	}
}

func TestVersityGW(t *testing.T) {
	t.Parallel()
	srv := s3test.StartVersityGW(t)
	t.Run("Conformance", func(t *testing.T) {
		shardtest.Run(t, shardtest.Config{
			New:     func(t *testing.T) shardtest.Opener { return opener(serverStore(t, srv), newMeta(t), nil) },
			Durable: true,
		})
	})
	t.Run("Endpoint", func(t *testing.T) { testEndpoint(t, srv) })
}
