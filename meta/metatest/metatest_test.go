package metatest

import (
	"context"
	"testing"

	"github.com/quiremq/quire/meta"
)

// A value put in process reads back through a client over gRPC.
func TestStartServe(t *testing.T) {
	s := Start(t)
	ctx := context.Background()
	if _, err := s.Put(ctx, "/k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	c, err := meta.NewClient(meta.ClientOptions{Addrs: []string{Serve(t, s)}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	kv, err := c.Get(ctx, "/k")
	if err != nil {
		t.Fatal(err)
	}
	if string(kv.Value) != "v" {
		t.Fatalf("Get over gRPC = %q, want v", kv.Value)
	}
}
