package topics

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/quiremq/quire/engines/memory"
	"github.com/quiremq/quire/shard"
)

type fixture struct {
	store  Store
	mem    *memory.Engine
	disk   *memory.Engine // stands in for a durable engine: not ephemeral
	router *shard.Router
	reg    *Registry
}

func newFixture(t *testing.T, store Store) *fixture {
	t.Helper()
	f := &fixture{store: store, mem: memory.New(memory.Options{}), disk: memory.New(memory.Options{})}
	f.router = mustRouter(t, f.mem, f.disk)
	f.reg = f.open(t)
	return f
}

func mustRouter(t *testing.T, mem, disk shard.Engine) *shard.Router {
	t.Helper()
	r, err := shard.NewRouter("disk", []shard.Rule{{Match: "sensors/#", Engine: "memory"}},
		map[string]shard.Engine{"memory": mem, "disk": named{disk, "disk"}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// named renames an engine.
type named struct {
	shard.Engine
	name string
}

func (n named) Name() string { return n.name }

func (f *fixture) open(t *testing.T) *Registry {
	t.Helper()
	reg := NewRegistry(Options{Store: f.store, Router: f.router, Ephemeral: map[string]bool{"memory": true},
		Now: func() time.Time { return time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC) }})
	if err := reg.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	return reg
}

func TestRegistryCreate(t *testing.T) {
	f := newFixture(t, NewMemStore(false))
	ctx := context.Background()

	in, err := f.reg.Create(ctx, "orders", "", 3)
	if err != nil {
		t.Fatal(err)
	}
	if in.Engine != "disk" || in.Partitions != 3 || len(in.Shards) != 3 || in.Shards[2].Shard != "orders/2" || in.Shards[2].Error != "" {
		t.Errorf("Create(orders) = %+v", in)
	}
	// A rule routes sensors/# to memory; partitions 0 means 1.
	in, err = f.reg.Create(ctx, "sensors/temp", "", 0)
	if err != nil || in.Engine != "memory" || in.Partitions != 1 || in.Shards[0].Shard != "sensors/temp/0" {
		t.Errorf("Create(sensors/temp) = %+v, %v", in, err)
	}
	// An explicit engine beats the rules.
	if in, err = f.reg.Create(ctx, "sensors/hum", "disk", 1); err != nil || in.Engine != "disk" {
		t.Errorf("Create(sensors/hum, disk) = %+v, %v", in, err)
	}
	if names, _ := f.disk.List(ctx); strings.Join(names, " ") != "orders/0 orders/1 orders/2 sensors/hum/0" {
		t.Errorf("disk shards = %v", names)
	}
	if names, _ := f.mem.List(ctx); strings.Join(names, " ") != "sensors/temp/0" {
		t.Errorf("memory shards = %v", names)
	}

	// Watermarks show appended records.
	s, err := f.reg.Shard("orders", 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, []shard.Record{{Value: []byte("a")}, {Value: []byte("b")}}); err != nil {
		t.Fatal(err)
	}
	got, err := f.reg.Get(ctx, "orders")
	if err != nil || got.Shards[1].High != 2 || got.Shards[1].Low != 0 || got.Shards[0].High != 0 {
		t.Errorf("Get(orders) = %+v, %v", got, err)
	}
	list, err := f.reg.List(ctx)
	if err != nil || len(list) != 3 || list[0].Name != "orders" || list[1].Name != "sensors/hum" || list[2].Name != "sensors/temp" {
		t.Errorf("List = %+v, %v", list, err)
	}
	if n, p := f.reg.Count(ctx); n != 3 || p != 5 {
		t.Errorf("Count = %d, %d", n, p)
	}
	if !list[0].CreatedAt.Equal(time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)) {
		t.Errorf("CreatedAt = %v", list[0].CreatedAt)
	}
}

func TestRegistryErrors(t *testing.T) {
	f := newFixture(t, NewMemStore(false))
	ctx := context.Background()
	if _, err := f.reg.Create(ctx, "t", "", 1); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, engine string
		partitions   int
		want         error
		msg          string
	}{
		{"t", "", 1, ErrExists, "already exists"},
		{"", "", 1, ErrInvalid, "1 to 249 bytes"},
		{strings.Repeat("x", 250), "", 1, ErrInvalid, "1 to 249 bytes"},
		{"a/+/b", "", 1, ErrInvalid, "wildcard"},
		{"a/#", "", 1, ErrInvalid, "wildcard"},
		{" a", "", 1, ErrInvalid, "white space"},
		{"a\x00b", "", 1, ErrInvalid, "control character"},
		{"\xff", "", 1, ErrInvalid, "UTF-8"},
		{"u", "", -1, ErrInvalid, "partitions must be 1 to 1024"},
		{"u", "", 1025, ErrInvalid, "partitions must be 1 to 1024"},
		{"u", "s3", 1, ErrInvalid, `unknown engine "s3" (this node runs disk, memory)`},
	} {
		_, err := f.reg.Create(ctx, c.name, c.engine, c.partitions)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("Create(%q, %q, %d) = %v, want %v containing %q", c.name, c.engine, c.partitions, err, c.want, c.msg)
		}
	}
	if err := f.reg.Delete(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Delete(nope) = %v", err)
	}
	if _, err := f.reg.Get(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(nope) = %v", err)
	}
	if _, err := f.reg.Shard("t", 5); !errors.Is(err, ErrNotFound) {
		t.Errorf("Shard(t, 5) = %v", err)
	}
}

func TestRegistryDelete(t *testing.T) {
	f := newFixture(t, NewMemStore(false))
	ctx := context.Background()
	if _, err := f.reg.Create(ctx, "orders", "", 2); err != nil {
		t.Fatal(err)
	}
	s, _ := f.reg.Shard("orders", 0)
	if err := f.reg.Delete(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	if names, _ := f.disk.List(ctx); len(names) != 0 {
		t.Errorf("shards left after delete: %v", names)
	}
	if _, err := s.Append(ctx, []shard.Record{{}}); !errors.Is(err, shard.ErrClosed) {
		t.Errorf("append to a deleted topic's shard = %v, want ErrClosed", err)
	}
	// The name can be used again.
	if _, err := f.reg.Create(ctx, "orders", "memory", 1); err != nil {
		t.Errorf("re-create after delete: %v", err)
	}
}

// failingStore fails every Create.
type failingStore struct{ *MemStore }

func (failingStore) Create(context.Context, Topic) error { return errors.New("disk full") }

func TestRegistryCreateRollsBack(t *testing.T) {
	f := newFixture(t, failingStore{NewMemStore(false)})
	ctx := context.Background()
	if _, err := f.reg.Create(ctx, "orders", "", 3); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Create = %v, want the store's error", err)
	}
	if names, _ := f.disk.List(ctx); len(names) != 0 {
		t.Errorf("shards of a failed create remain: %v", names)
	}
}

func TestRegistryReopen(t *testing.T) {
	store := NewMemStore(true)
	f := newFixture(t, store)
	ctx := context.Background()
	for _, c := range []struct {
		name, engine string
	}{{"orders", "disk"}, {"sensors/a", "memory"}, {"lost", "disk"}} {
		if _, err := f.reg.Create(ctx, c.name, c.engine, 1); err != nil {
			t.Fatal(err)
		}
	}
	s, _ := f.reg.Shard("orders", 0)
	if _, err := s.Append(ctx, []shard.Record{{Value: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	if err := f.reg.Close(); err != nil {
		t.Fatal(err)
	}

	// "Restart": the memory engine comes back empty, the "durable" engine
	// keeps orders/0, has lost lost/0, and holds an orphan from a crashed
	// create.
	f.mem = memory.New(memory.Options{})
	f.router = mustRouter(t, f.mem, f.disk)
	if err := f.disk.Delete(ctx, "lost/0"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.disk.Create(ctx, "crashed/0"); err != nil {
		t.Fatal(err)
	}
	reg := f.open(t)
	list, err := reg.List(ctx)
	if err != nil || len(list) != 3 {
		t.Fatalf("List = %+v, %v", list, err)
	}
	byName := map[string]Info{}
	for _, in := range list {
		byName[in.Name] = in
	}
	if p := byName["orders"].Shards[0]; p.High != 1 || p.Error != "" {
		t.Errorf("orders/0 after restart = %+v", p)
	}
	if p := byName["sensors/a"].Shards[0]; p.High != 0 || p.Error != "" {
		t.Errorf("memory topic after restart = %+v, want an empty, open shard", p)
	}
	if p := byName["lost"].Shards[0]; !strings.Contains(p.Error, "missing") {
		t.Errorf("lost/0 = %+v, want an error saying it is missing", p)
	}
	if names, _ := f.disk.List(ctx); strings.Join(names, " ") != "orders/0" {
		t.Errorf("disk shards = %v, want the orphan deleted", names)
	}
	// A topic with a missing shard can still be deleted.
	if err := reg.Delete(ctx, "lost"); err != nil {
		t.Errorf("Delete(lost) = %v", err)
	}
}

func TestRegistryRefusesLostRegistry(t *testing.T) {
	mem, disk := memory.New(memory.Options{}), memory.New(memory.Options{})
	if _, err := disk.Create(context.Background(), "orders/0"); err != nil {
		t.Fatal(err)
	}
	reg := NewRegistry(Options{Store: NewMemStore(false), Router: mustRouter(t, mem, disk)})
	err := reg.Open(context.Background())
	if err == nil || !strings.Contains(err.Error(), "refusing to start") || !strings.Contains(err.Error(), "orders/0") {
		t.Errorf("Open = %v, want a refusal naming the shard", err)
	}
	if names, _ := disk.List(context.Background()); len(names) != 1 {
		t.Errorf("shards were deleted: %v", names)
	}
}

func TestRegistryUnknownEngine(t *testing.T) {
	mem, disk := memory.New(memory.Options{}), memory.New(memory.Options{})
	store := NewMemStore(true, Topic{Name: "x", Engine: "s3", Partitions: 1})
	reg := NewRegistry(Options{Store: store, Router: mustRouter(t, mem, disk)})
	if err := reg.Open(context.Background()); err == nil || !strings.Contains(err.Error(), `engine "s3"`) {
		t.Errorf("Open = %v", err)
	}
}
