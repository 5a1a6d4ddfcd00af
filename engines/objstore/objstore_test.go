package objstore_test

import (
	"bytes"
	"context"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/engines/objstore/objstoretest"
	"github.com/quiremq/quire/internal/vfs"
)

func TestMemConformance(t *testing.T) {
	objstoretest.Run(t, objstoretest.Config{New: func(*testing.T) objstore.Store { return objstore.NewMem() }, ChecksumConfirmed: true})
}

// plainStore hides the ChecksumPutter of the store it wraps.
type plainStore struct{ objstore.Store }

// TestPutVerifiedReadsBack checks the path for stores that cannot check a
// checksum themselves: PutVerified reads the object back, and a CRC that
// does not match the bytes fails with ErrChecksum.
func TestPutVerifiedReadsBack(t *testing.T) {
	objstoretest.Run(t, objstoretest.Config{New: func(*testing.T) objstore.Store { return plainStore{objstore.NewMem()} }})
	ctx := context.Background()
	st := plainStore{objstore.NewMem()}
	v := []byte("twenty bytes of data")
	readBack, err := objstore.PutVerified(ctx, st, "k", bytes.NewReader(v), int64(len(v)), crc32.Checksum(v, objstore.Castagnoli))
	if err != nil || !readBack {
		t.Fatalf("PutVerified on a store without checksums = read back %v, %v; want a read-back and no error", readBack, err)
	}
	readBack, err = objstore.PutVerified(ctx, objstore.NewMem(), "k", bytes.NewReader(v), int64(len(v)), crc32.Checksum(v, objstore.Castagnoli))
	if err != nil || readBack {
		t.Fatalf("PutVerified on a store with checksums = read back %v, %v; want no read-back and no error", readBack, err)
	}
}

func TestDirConformance(t *testing.T) {
	objstoretest.Run(t, objstoretest.Config{New: func(t *testing.T) objstore.Store {
		d, err := objstore.OpenDir(objstore.DirOptions{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}, ChecksumConfirmed: true})
}

func TestDirOnMemFS(t *testing.T) {
	objstoretest.Run(t, objstoretest.Config{New: func(t *testing.T) objstore.Store {
		d, err := objstore.OpenDir(objstore.DirOptions{FS: vfs.NewMem(), Dir: "/objects"})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}, LargeSize: 1 << 20, ChecksumConfirmed: true})
}

// TestDirCrash checks that a put acknowledged before a crash survives it and
// that an interrupted put leaves nothing behind: the crash drops every
// unsynced write of the in-memory file system.
func TestDirCrash(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewCrashableMem()
	d, err := objstore.OpenDir(objstore.DirOptions{FS: fs, Dir: "/objects"})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"s/a/1", "s/a/2", "s/b/1", "top"} {
		if err := objstoretest.Put(ctx, d, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	// An interrupted put: a temporary file that was never renamed.
	f, err := fs.Create("/objects/.tmp/999", vfs.CategoryShard)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("partial"))
	f.Close()
	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0, RNG: rand.New(rand.NewPCG(1, 1))}) // drop every unsynced write
	d2, err := objstore.OpenDir(objstore.DirOptions{FS: crashed, Dir: "/objects"})
	if err != nil {
		t.Fatal(err)
	}
	infos, err := d2.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range infos {
		got = append(got, o.Key)
		b, err := d2.Get(ctx, o.Key, 0, -1)
		if err != nil || string(b) != o.Key {
			t.Fatalf("after crash Get(%q) = %q, %v", o.Key, b, err)
		}
	}
	if want := []string{"s/a/1", "s/a/2", "s/b/1", "top"}; !slices.Equal(got, want) {
		t.Fatalf("after crash List = %q, want %q", got, want)
	}
	if names, _ := crashed.List("/objects/.tmp"); len(names) != 0 {
		t.Fatalf("temporary files left after reopen: %q", names)
	}
}

// TestDirFailedSync checks that a failed fsync fails the put and leaves no
// object.
func TestDirFailedSync(t *testing.T) {
	ctx := context.Background()
	var fail atomic.Bool
	fs := vfs.InjectFS(vfs.NewMem(), vfs.InjectorFunc(func(op vfs.Op) error {
		if fail.Load() && (op.Kind == vfs.OpFileSync || op.Kind == vfs.OpFileSyncData) {
			return vfs.ErrInjected
		}
		return nil
	}))
	d, err := objstore.OpenDir(objstore.DirOptions{FS: fs, Dir: "/o"})
	if err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	if err := objstoretest.Put(ctx, d, "k", []byte("v")); err == nil {
		t.Fatal("Put succeeded although fsync failed")
	}
	fail.Store(false)
	if _, err := d.Stat(ctx, "k"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("Stat after failed put = %v, want ErrNotFound", err)
	}
}
