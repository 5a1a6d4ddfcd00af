package hdfs_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/quiremq/quire/engines/hdfs"
	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/engines/objstore/objstoretest"
	"github.com/quiremq/quire/engines/s3"
	"github.com/quiremq/quire/engines/s3/enginetest"
	"github.com/quiremq/quire/shard"
	"github.com/quiremq/quire/shard/shardtest"
)

// namenode returns QUIRE_HDFS_NAMENODE or skips: no HDFS cluster can run on
// Quire's build machines (see the package doc), in CI either.
func namenode(t *testing.T) string {
	nn := os.Getenv("QUIRE_HDFS_NAMENODE")
	if nn == "" {
		t.Skip("no HDFS cluster: set QUIRE_HDFS_NAMENODE=host:port to run this test against one")
	}
	return nn
}

func testDir() string {
	var b [6]byte
	rand.Read(b[:])
	return "/quire-test/" + hex.EncodeToString(b[:])
}

func openStore(t *testing.T, nn, dir string) *hdfs.Store {
	t.Helper()
	st, err := hdfs.OpenStore(hdfs.StoreOptions{Namenode: nn, Path: dir, User: os.Getenv("QUIRE_HDFS_USER")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestStoreConformance(t *testing.T) {
	nn := namenode(t)
	objstoretest.Run(t, objstoretest.Config{New: func(t *testing.T) objstore.Store { return openStore(t, nn, testDir()) }})
}

func TestEngineConformance(t *testing.T) {
	nn := namenode(t)
	shardtest.Run(t, shardtest.Config{
		New: func(t *testing.T) shardtest.Opener {
			dir, kv := testDir(), enginetest.NewMeta(t)
			return func() (shard.Engine, error) {
				return hdfs.Open(context.Background(), hdfs.Options{
					Namenode: nn, Path: dir, User: os.Getenv("QUIRE_HDFS_USER"),
					Engine: s3.Options{Meta: kv, FlushInterval: -1, Logger: enginetest.Quiet},
				})
			}
		},
		Durable: true,
	})
}

func TestOptions(t *testing.T) {
	for _, c := range []struct {
		opts hdfs.StoreOptions
		want string
	}{
		{hdfs.StoreOptions{Path: "/q"}, "Namenode is required"},
		{hdfs.StoreOptions{Namenode: "nn:8020", Path: "relative"}, "absolute"},
		{hdfs.StoreOptions{Namenode: "nn:8020", Path: "/a/../b"}, "clean"},
	} {
		if err := c.opts.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate(%+v) = %v, want %q", c.opts, err, c.want)
		}
	}
}

// TestUnreachableNamenode: a namenode that does not answer is an error that
// names it, from the store and from the engine.
func TestUnreachableNamenode(t *testing.T) {
	l, err := newClosedPort()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hdfs.OpenStore(hdfs.StoreOptions{Namenode: l, Path: "/q"}); err == nil || !strings.Contains(err.Error(), l) {
		t.Fatalf("OpenStore(unreachable) = %v, want an error naming %s", err, l)
	}
	_, err = hdfs.Open(context.Background(), hdfs.Options{Namenode: l, Path: "/q", Engine: s3.Options{Meta: enginetest.NewMeta(t)}})
	if err == nil || !strings.Contains(err.Error(), l) {
		t.Fatalf("Open(unreachable) = %v, want an error naming %s", err, l)
	}
}

// newClosedPort returns a loopback address nothing listens on.
func newClosedPort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	l.Close()
	return addr, nil
}
