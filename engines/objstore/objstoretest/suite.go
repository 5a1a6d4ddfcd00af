// Package objstoretest is the conformance suite every objstore.Store passes.
//
//	func TestConformance(t *testing.T) {
//		objstoretest.Run(t, objstoretest.Config{
//			New: func(t *testing.T) objstore.Store { return objstore.NewMem() },
//		})
//	}
package objstoretest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quiremq/quire/engines/objstore"
)

// Config describes the store under test.
type Config struct {
	// New returns a fresh, empty store.
	New func(t *testing.T) objstore.Store
	// LargeSize is the size of the large-object test (default 12 MiB, more
	// than one part for S3 clients configured with 5 MiB parts).
	LargeSize int
	// ChecksumConfirmed says the store is an objstore.ChecksumPutter that
	// confirms checksums (PutVerified needs no read-back); otherwise the
	// Checksum test only requires that PutVerified checks somehow.
	ChecksumConfirmed bool
}

// Run runs the conformance suite.
func Run(t *testing.T, cfg Config) {
	if cfg.LargeSize == 0 {
		cfg.LargeSize = 12 << 20
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, cfg Config)
	}{
		{"PutGet", testPutGet},
		{"Ranges", testRanges},
		{"NotFound", testNotFound},
		{"List", testList},
		{"Delete", testDelete},
		{"Keys", testKeys},
		{"InvalidKeys", testInvalidKeys},
		{"Large", testLarge},
		{"ShortBody", testShortBody},
		{"Stat", testStat},
		{"Concurrent", testConcurrent},
		{"Canceled", testCanceled},
		{"Checksum", testChecksum},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, cfg) })
	}
}

// Put stores b under key (a convenience for callers holding a byte slice).
func Put(ctx context.Context, s objstore.Store, key string, b []byte) error {
	return s.Put(ctx, key, bytes.NewReader(b), int64(len(b)))
}

func put(t *testing.T, s objstore.Store, key string, b []byte) {
	t.Helper()
	if err := Put(context.Background(), s, key, b); err != nil {
		t.Fatalf("Put(%q, %d bytes): %v", key, len(b), err)
	}
}

func get(t *testing.T, s objstore.Store, key string, off, n int64) []byte {
	t.Helper()
	b, err := s.Get(context.Background(), key, off, n)
	if err != nil {
		t.Fatalf("Get(%q, %d, %d): %v", key, off, n, err)
	}
	return b
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31) ^ seed
	}
	return b
}

func keys(infos []objstore.ObjectInfo) []string {
	out := make([]string, len(infos))
	for i, o := range infos {
		out[i] = o.Key
	}
	return out
}

func list(t *testing.T, s objstore.Store, prefix string) []objstore.ObjectInfo {
	t.Helper()
	infos, err := s.List(context.Background(), prefix)
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return infos
}

func testPutGet(t *testing.T, cfg Config) {
	s := cfg.New(t)
	v1 := pattern(1000, 1)
	put(t, s, "obj/one", v1)
	if got := get(t, s, "obj/one", 0, -1); !bytes.Equal(got, v1) {
		t.Fatalf("Get whole = %d bytes, want the %d put", len(got), len(v1))
	}
	v2 := pattern(77, 2)
	put(t, s, "obj/one", v2)
	if got := get(t, s, "obj/one", 0, -1); !bytes.Equal(got, v2) {
		t.Fatalf("Get after overwrite = %d bytes, want the %d bytes of the second put", len(got), len(v2))
	}
	put(t, s, "empty", nil)
	if got := get(t, s, "empty", 0, -1); len(got) != 0 {
		t.Fatalf("Get(empty object) = %d bytes", len(got))
	}
}

func testRanges(t *testing.T, cfg Config) {
	ctx := context.Background()
	s := cfg.New(t)
	v := pattern(4096, 3)
	put(t, s, "r", v)
	for _, c := range []struct{ off, n int64 }{{0, 1}, {0, 4096}, {1, 10}, {100, -1}, {4095, 1}, {4095, -1}, {4000, 500}, {10, 0}, {0, 0}} {
		want := v[c.off:]
		if c.n >= 0 && c.off+c.n < int64(len(v)) {
			want = v[c.off : c.off+c.n]
		}
		if got := get(t, s, "r", c.off, c.n); !bytes.Equal(got, want) {
			t.Errorf("Get(off=%d, n=%d) = %d bytes, want %d", c.off, c.n, len(got), len(want))
		}
	}
	for _, c := range []struct{ off, n int64 }{{4096, 1}, {4096, -1}, {5000, 10}, {-1, 5}} {
		if _, err := s.Get(ctx, "r", c.off, c.n); !errors.Is(err, objstore.ErrInvalidRange) {
			t.Errorf("Get(off=%d, n=%d) on 4096 bytes = %v, want ErrInvalidRange", c.off, c.n, err)
		}
	}
}

func testNotFound(t *testing.T, cfg Config) {
	ctx := context.Background()
	s := cfg.New(t)
	if _, err := s.Get(ctx, "missing", 0, -1); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("Get(missing) = %v, want ErrNotFound", err)
	}
	if _, err := s.Get(ctx, "missing", 5, 10); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("Get(missing, range) = %v, want ErrNotFound", err)
	}
	if _, err := s.Stat(ctx, "missing/deeper"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("Stat(missing) = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "missing"); err != nil {
		t.Fatalf("Delete(missing) = %v, want nil", err)
	}
	put(t, s, "dir/x", []byte("x"))
	if _, err := s.Get(ctx, "dir", 0, -1); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("Get of a key that is only a prefix = %v, want ErrNotFound", err)
	}
	if got := list(t, s, "nothing/"); len(got) != 0 {
		t.Fatalf("List(nothing/) = %v", keys(got))
	}
}

func testList(t *testing.T, cfg Config) {
	s := cfg.New(t)
	// Sorted; no key is a "/"-prefix of another (see the package contract).
	all := []string{"a/b/c", "a/b/d", "a/bc/d", "a/c", "a1", "ab", "b/1", "b/10", "b/2", "z"}
	for i, k := range all {
		put(t, s, k, pattern(i+1, byte(i)))
	}
	cases := map[string][]string{
		"":      all,
		"a":     {"a/b/c", "a/b/d", "a/bc/d", "a/c", "a1", "ab"},
		"a/":    {"a/b/c", "a/b/d", "a/bc/d", "a/c"},
		"a/b":   {"a/b/c", "a/b/d", "a/bc/d"},
		"a/b/":  {"a/b/c", "a/b/d"},
		"b/1":   {"b/1", "b/10"},
		"c":     nil,
		"a/b/c": {"a/b/c"},
	}
	for prefix, want := range cases {
		got := list(t, s, prefix)
		if !slices.Equal(keys(got), want) {
			t.Errorf("List(%q) = %q, want %q", prefix, keys(got), want)
		}
	}
	for _, o := range list(t, s, "") {
		i := slices.Index(all, o.Key)
		if o.Size != int64(i+1) {
			t.Errorf("List: %q has size %d, want %d", o.Key, o.Size, i+1)
		}
	}
}

func testDelete(t *testing.T, cfg Config) {
	ctx := context.Background()
	s := cfg.New(t)
	put(t, s, "d/1", []byte("1"))
	put(t, s, "d/2", []byte("2"))
	put(t, s, "d/sub/3", []byte("3"))
	if err := s.Delete(ctx, "d/1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "d/sub/3"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "d/1", 0, -1); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("Get after Delete = %v, want ErrNotFound", err)
	}
	if got := keys(list(t, s, "d/")); !slices.Equal(got, []string{"d/2"}) {
		t.Fatalf("List after Delete = %q, want [d/2]", got)
	}
	// A deleted key can be written again, also under a deleted "directory".
	put(t, s, "d/sub/3", []byte("again"))
	if got := get(t, s, "d/sub/3", 0, -1); string(got) != "again" {
		t.Fatalf("Get after re-put = %q", got)
	}
}

func testKeys(t *testing.T, cfg Config) {
	s := cfg.New(t)
	names := []string{"a b", "主题/x", "x%2Fy", "x/y", "..escape", ".dot/x", "UPPER", "upper",
		"$SYS/broker", "sensors/+/temp/#", "q?x=1&y=2", "tab\there", "pct%", "~tilde", "semi;colon", "dot.o", "dot.d", ".tmp",
		strings.Repeat("long-part", 6) + "/" + strings.Repeat("x", 60)}
	for i, k := range names {
		put(t, s, k, []byte(fmt.Sprintf("value-%d", i)))
	}
	got := keys(list(t, s, ""))
	want := slices.Clone(names)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("List() = %q\nwant %q", got, want)
	}
	for i, k := range names {
		if b := get(t, s, k, 0, -1); string(b) != fmt.Sprintf("value-%d", i) {
			t.Errorf("Get(%q) = %q, want value-%d (keys collide?)", k, b, i)
		}
	}
}

func testInvalidKeys(t *testing.T, cfg Config) {
	ctx := context.Background()
	s := cfg.New(t)
	for _, k := range []string{"", "nul\x00byte", "bad\xffutf8", strings.Repeat("k", objstore.MaxKeyLen+1),
		"a//b", "../x", "x/.", "trailing/", "/leading", ".", ".."} {
		if err := Put(ctx, s, k, []byte("x")); !errors.Is(err, objstore.ErrInvalidKey) {
			t.Errorf("Put(%q) = %v, want ErrInvalidKey", k, err)
		}
		if _, err := s.Get(ctx, k, 0, -1); !errors.Is(err, objstore.ErrInvalidKey) {
			t.Errorf("Get(%q) = %v, want ErrInvalidKey", k, err)
		}
	}
}

func testLarge(t *testing.T, cfg Config) {
	s := cfg.New(t)
	v := pattern(cfg.LargeSize, 9)
	put(t, s, "large/object", v)
	if got := get(t, s, "large/object", 0, -1); !bytes.Equal(got, v) {
		t.Fatalf("Get(large) = %d bytes, differs from the %d put", len(got), len(v))
	}
	mid, n := int64(cfg.LargeSize/2), int64(cfg.LargeSize/4)
	if got := get(t, s, "large/object", mid-7, n); !bytes.Equal(got, v[mid-7:mid-7+n]) {
		t.Fatalf("Get(large, %d bytes across the middle) differs", n)
	}
}

// shortReader yields fewer bytes than announced.
type shortReader struct{ left int }

func (r *shortReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	n := min(len(p), r.left)
	for i := range p[:n] {
		p[i] = 'x'
	}
	r.left -= n
	return n, nil
}

func testShortBody(t *testing.T, cfg Config) {
	ctx := context.Background()
	s := cfg.New(t)
	if err := s.Put(ctx, "short", &shortReader{left: 10}, 100); err == nil {
		t.Fatal("Put with a body 90 bytes short succeeded")
	}
	if _, err := s.Stat(ctx, "short"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("Stat after a failed Put = %v, want ErrNotFound (no partial object)", err)
	}
	put(t, s, "kept", []byte("old"))
	if err := s.Put(ctx, "kept", &shortReader{left: 1}, 50); err == nil {
		t.Fatal("overwriting Put with a short body succeeded")
	}
	if got := get(t, s, "kept", 0, -1); string(got) != "old" {
		t.Fatalf("failed overwrite left %q, want the old contents", got)
	}
}

func testStat(t *testing.T, cfg Config) {
	s := cfg.New(t)
	before := time.Now().Add(-time.Minute)
	put(t, s, "st/a", pattern(123, 4))
	info, err := s.Stat(context.Background(), "st/a")
	if err != nil {
		t.Fatal(err)
	}
	if info.Key != "st/a" || info.Size != 123 {
		t.Fatalf("Stat = %+v, want key st/a size 123", info)
	}
	if info.ModTime.Before(before) || info.ModTime.After(time.Now().Add(time.Minute)) {
		t.Fatalf("Stat ModTime = %v, not within a minute of now", info.ModTime)
	}
}

// testConcurrent overwrites keys while others read them: a reader sees one
// whole version, never a mix (run under -race).
func testConcurrent(t *testing.T, cfg Config) {
	ctx := context.Background()
	s := cfg.New(t)
	const writers, rounds, size = 4, 15, 64 << 10
	put(t, s, "shared", bytes.Repeat([]byte{0}, size))
	var wg sync.WaitGroup
	errc := make(chan error, 2*writers)
	for w := range writers {
		wg.Go(func() {
			for r := range rounds {
				v := bytes.Repeat([]byte{byte(1 + w*rounds + r)}, size)
				if err := Put(ctx, s, "shared", v); err != nil {
					errc <- err
					return
				}
				own := fmt.Sprintf("own/%d/%d", w, r)
				if err := Put(ctx, s, own, v); err != nil {
					errc <- err
					return
				}
			}
		})
		wg.Go(func() {
			for range rounds {
				b, err := s.Get(ctx, "shared", 0, -1)
				if err != nil {
					errc <- err
					return
				}
				if len(b) != size || bytes.Count(b, b[:1]) != size {
					errc <- fmt.Errorf("read a torn object: %d bytes, first %d", len(b), b[0])
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if got := len(list(t, s, "own/")); got != writers*rounds {
		t.Fatalf("List(own/) = %d objects, want %d", got, writers*rounds)
	}
}

func testCanceled(t *testing.T, cfg Config) {
	s := cfg.New(t)
	put(t, s, "c", []byte("c"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Put(ctx, s, "c2", []byte("x")); err == nil {
		t.Error("Put with a canceled context succeeded")
	}
	if _, err := s.Get(ctx, "c", 0, -1); err == nil {
		t.Error("Get with a canceled context succeeded")
	}
	if _, err := s.List(ctx, ""); err == nil {
		t.Error("List with a canceled context succeeded")
	}
	if _, err := s.Stat(ctx, "c"); err == nil {
		t.Error("Stat with a canceled context succeeded")
	}
	if err := s.Delete(ctx, "c"); err == nil {
		t.Error("Delete with a canceled context succeeded")
	}
}

// testChecksum puts objects (small, and large enough for a multipart
// upload) with their CRC-32C through PutVerified, and one whose CRC does
// not match its bytes, which must fail with ErrChecksum.
func testChecksum(t *testing.T, cfg Config) {
	ctx := context.Background()
	s := cfg.New(t)
	for _, size := range []int{0, 1000, cfg.LargeSize} {
		v := pattern(size, 11)
		key := fmt.Sprintf("sum/%d", size)
		readBack, err := objstore.PutVerified(ctx, s, key, bytes.NewReader(v), int64(len(v)), crc32.Checksum(v, objstore.Castagnoli))
		if err != nil {
			t.Fatalf("PutVerified(%d bytes): %v", size, err)
		}
		if readBack && cfg.ChecksumConfirmed {
			t.Errorf("PutVerified(%d bytes) read the object back; the store should have confirmed the checksum", size)
		}
		if got := get(t, s, key, 0, -1); !bytes.Equal(got, v) {
			t.Fatalf("Get after PutVerified(%d bytes) = %d bytes, differs", size, len(got))
		}
	}
	for _, size := range []int{1000, cfg.LargeSize} {
		v := pattern(size, 12)
		key := fmt.Sprintf("bad/%d", size)
		wrong := crc32.Checksum(v, objstore.Castagnoli) ^ 1
		_, err := objstore.PutVerified(ctx, s, key, bytes.NewReader(v), int64(len(v)), wrong)
		if !errors.Is(err, objstore.ErrChecksum) {
			t.Fatalf("PutVerified(%d bytes) with a wrong CRC = %v, want ErrChecksum", size, err)
		}
		if cp, ok := s.(objstore.ChecksumPutter); ok && cfg.ChecksumConfirmed {
			_, err := cp.PutCRC32C(ctx, key+"-direct", bytes.NewReader(v), int64(len(v)), wrong)
			if !errors.Is(err, objstore.ErrChecksum) {
				t.Fatalf("PutCRC32C(%d bytes) with a wrong CRC = %v, want ErrChecksum", size, err)
			}
			if _, err := s.Stat(ctx, key+"-direct"); !errors.Is(err, objstore.ErrNotFound) {
				t.Fatalf("Stat after a PutCRC32C with a wrong CRC = %v, want ErrNotFound", err)
			}
		}
	}
}
