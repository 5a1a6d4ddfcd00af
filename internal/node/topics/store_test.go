package topics

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/quiremq/quire/internal/vfs"
)

// testStore is the conformance suite every Store passes.
func testStore(t *testing.T, s Store) {
	ctx := context.Background()
	if ts, err := s.List(ctx); err != nil || len(ts) != 0 {
		t.Fatalf("new store: List = %v, %v", ts, err)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	b := Topic{Name: "b", Engine: "file", Partitions: 3, CreatedAt: now}
	a := Topic{Name: "a/x", Engine: "memory", Partitions: 1, CreatedAt: now}
	for _, tp := range []Topic{b, a} {
		if err := s.Create(ctx, tp); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Create(ctx, b); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate Create = %v, want ErrExists", err)
	}
	ts, err := s.List(ctx)
	if err != nil || !reflect.DeepEqual(ts, []Topic{a, b}) {
		t.Errorf("List = %v, %v; want sorted [a/x b]", ts, err)
	}
	if got, err := s.Get(ctx, "b"); err != nil || !reflect.DeepEqual(got, b) {
		t.Errorf("Get = %v, %v", got, err)
	}
	if _, err := s.Get(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(nope) = %v, want ErrNotFound", err)
	}
	if got, err := s.Delete(ctx, "b"); err != nil || got.Name != "b" || got.Engine != b.Engine {
		t.Fatalf("Delete = %+v, %v; want topic b as it was", got, err)
	}
	if _, err := s.Delete(ctx, "b"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete = %v, want ErrNotFound", err)
	}
	if ts, _ := s.List(ctx); !reflect.DeepEqual(ts, []Topic{a}) {
		t.Errorf("List after delete = %v", ts)
	}
}

func TestMemStore(t *testing.T) {
	testStore(t, NewMemStore(false))
	var zero MemStore
	testStore(t, &zero)
}

func TestFileStore(t *testing.T) {
	fs := vfs.NewMem()
	s, err := OpenFileStore(fs, "topics.json")
	if err != nil {
		t.Fatal(err)
	}
	if s.Existed() {
		t.Error("a new file store says it existed")
	}
	testStore(t, s)

	// Reopen: the surviving topic is there, and the store existed.
	s2, err := OpenFileStore(fs, "topics.json")
	if err != nil {
		t.Fatal(err)
	}
	if !s2.Existed() {
		t.Error("reopened store says it did not exist")
	}
	ts, _ := s2.List(context.Background())
	if len(ts) != 1 || ts[0].Name != "a/x" || ts[0].Partitions != 1 || ts[0].Engine != "memory" || !ts[0].CreatedAt.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("after reopen: %+v", ts)
	}
}

// A crash at any point of a registry write leaves the old or the new list,
// never a mix, and never loses a synced change.
func TestFileStoreCrash(t *testing.T) {
	fs := vfs.NewCrashableMem()
	s, err := OpenFileStore(fs, "topics.json")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Create(ctx, Topic{Name: "t", Engine: "file", Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	s2, err := OpenFileStore(crashed, "topics.json")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Get(ctx, "t"); err != nil {
		t.Errorf("acknowledged create lost in a crash: %v", err)
	}
}

func TestFileStoreWriteFailure(t *testing.T) {
	var fail bool
	fs := vfs.InjectFS(vfs.NewMem(), vfs.InjectorFunc(func(op vfs.Op) error {
		if fail && op.Kind == vfs.OpFileSync {
			return vfs.ErrInjected
		}
		return nil
	}))
	s, err := OpenFileStore(fs, "topics.json")
	if err != nil {
		t.Fatal(err)
	}
	fail = true
	ctx := context.Background()
	if err := s.Create(ctx, Topic{Name: "t", Engine: "file", Partitions: 1}); !errors.Is(err, vfs.ErrInjected) {
		t.Fatalf("Create with failing fsync = %v", err)
	}
	if _, err := s.Get(ctx, "t"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a topic whose write failed is visible: %v", err)
	}
}

func TestFileStoreCorrupt(t *testing.T) {
	for name, doc := range map[string]string{
		"not json":        "{",
		"unknown version": `{"version": 2, "topics": []}`,
		"unknown field":   `{"version": 1, "topics": [], "x": 1}`,
		"duplicate":       `{"version": 1, "topics": [{"name":"a","engine":"file","partitions":1},{"name":"a","engine":"file","partitions":1}]}`,
		"bad partitions":  `{"version": 1, "topics": [{"name":"a","engine":"file","partitions":0}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			fs := vfs.NewMem()
			if err := vfs.WriteFileAtomic(fs, "topics.json", []byte(doc)); err != nil {
				t.Fatal(err)
			}
			if _, err := OpenFileStore(fs, "topics.json"); !errors.Is(err, ErrCorrupt) {
				t.Errorf("OpenFileStore = %v, want ErrCorrupt", err)
			}
		})
	}
}
