package client_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/quiremq/quire/benchmarks/mqtt/client"
	"github.com/quiremq/quire/benchmarks/mqtt/inproc"
	"github.com/quiremq/quire/frontends/mqtt/packet"
)

// TestRoundTrip: a subscriber gets QoS 0 and QoS 1 messages in order, a
// QoS 1 publisher gets its PUBACKs, and Close ends both cleanly; for 3.1.1
// and 5.0.
func TestRoundTrip(t *testing.T) {
	addr := inproc.Start(t, "memory")
	for _, v := range []packet.Version{packet.V311, packet.V5} {
		t.Run(v.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			got := make(chan []byte, 100)
			sub, err := client.Dial(ctx, client.Options{Addr: addr, ClientID: "sub-" + v.String(), Version: v,
				OnPublish: func(p *packet.Publish) { got <- bytes.Clone(p.Payload) }})
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			topic := "rt/" + v.String()
			if err := sub.Subscribe(ctx, topic, 1); err != nil {
				t.Fatal(err)
			}
			acks := make(chan uint16, 100)
			pub, err := client.Dial(ctx, client.Options{Addr: addr, ClientID: "pub-" + v.String(), Version: v, MaxInflight: 2,
				OnPuback: func(id uint16, _ packet.ReasonCode) { acks <- id }})
			if err != nil {
				t.Fatal(err)
			}
			const n = 20
			for i := range n {
				if err := pub.Publish(ctx, topic, packet.QoS(i%2), []byte{byte(i)}); err != nil {
					t.Fatal(err)
				}
			}
			if err := pub.Flush(); err != nil {
				t.Fatal(err)
			}
			for i := range n {
				select {
				case b := <-got:
					if len(b) != 1 || b[0] != byte(i) {
						t.Fatalf("message %d: got %v", i, b)
					}
				case <-ctx.Done():
					t.Fatalf("message %d never came", i)
				}
			}
			for i := range n / 2 {
				select {
				case <-acks:
				case <-ctx.Done():
					t.Fatalf("PUBACK %d never came", i)
				}
			}
			if pub.Inflight() != 0 {
				t.Errorf("inflight %d after every PUBACK", pub.Inflight())
			}
			pub.Close()
			if err := pub.Err(); !errors.Is(err, client.ErrClosed) {
				t.Errorf("Err after Close = %v, want ErrClosed", err)
			}
			if err := pub.Publish(ctx, topic, 0, []byte("late")); err == nil {
				if err = pub.Flush(); err == nil {
					t.Error("publish after Close: no error")
				}
			}
		})
	}
}

// TestDialErrors: missing options, a bad version and a refused connection.
func TestDialErrors(t *testing.T) {
	ctx := context.Background()
	for _, o := range []client.Options{
		{ClientID: "x"},
		{Addr: "127.0.0.1:1"},
		{Addr: "127.0.0.1:1", ClientID: "x", Version: 9},
		{Addr: "127.0.0.1:1", ClientID: "x"},
	} {
		if c, err := client.Dial(ctx, o); err == nil {
			c.Close()
			t.Errorf("%+v: no error", o)
		}
	}
}

// TestInvalidSubscription: a filter the broker refuses is an error.
func TestInvalidSubscription(t *testing.T) {
	addr := inproc.Start(t, "memory")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Options{Addr: addr, ClientID: "bad-sub"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Subscribe(ctx, "a/#/b", 1); err == nil {
		t.Error("subscribe to a/#/b: no error")
	}
}
