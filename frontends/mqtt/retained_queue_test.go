package mqtt

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/quiremq/quire/internal/vfs"
)

// A persistent session that subscribes while retained messages exist gets
// them queued; when it disconnects before receiving them (Receive Maximum
// 1, the first unacknowledged), they are delivered when it resumes —
// without a restart, after a graceful restart, and after a crash (kill -9
// image of a synced store) on the file engine: each once, with RETAIN
// (the first one resent under its packet identifier), at QoS 1 and 2.
func TestRetainedQueuedSurvivesRestart(t *testing.T) {
	for _, tc := range []struct {
		mode string
		qos  byte
	}{{"no-restart", 1}, {"graceful", 1}, {"crash", 1}, {"graceful", 2}, {"crash", 2}} {
		mode, qos := tc.mode, tc.qos
		t.Run(fmt.Sprintf("%s/qos%d", mode, qos), func(t *testing.T) {
			fs := vfs.NewCrashableMem()
			n := fileNode(t, fs)
			b := n.start(t, true, nil)
			pub := connect5(t, b.tcp, &paho.Connect{ClientID: "pub", CleanStart: true})
			want := []string{"A", "B", "C"}
			for _, p := range want {
				publish5(t, pub, "cfg/"+p, qos, true, p)
			}
			held := connectHeld5(t, b.tcp, "sub")
			subscribe5(t, held, "cfg/#", qos)
			first := held.next(t) // not acknowledged: the others stay queued
			if !first.Retain || first.QoS != qos {
				t.Fatalf("first retained message %s without RETAIN", first.Payload)
			}
			held.Disconnect(&paho.Disconnect{})
			waitFor(t, "session offline", func() bool { return b.sessionOwner("sub") == nil })

			switch mode {
			case "graceful":
				b.stop(t)
				b = n.start(t, true, nil)
			case "crash":
				// The offline record is written without fsync; the next
				// cursor batch syncs it. Wait for a synced write of our
				// own (the log is in commit order) after a flush.
				time.Sleep(5 * b.opts.CursorInterval)
				if err := b.st.DeleteInbound("nobody", 0); err != nil {
					t.Fatal(err)
				}
				after := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 100, RNG: rand.New(rand.NewPCG(5, 6))})
				b.stop(t)
				b = fileNode(t, after).start(t, true, nil)
			}
			sub := resumed5(t, b.tcp, "sub")
			var got []string
			for range want {
				m := sub.next(t)
				if !m.Retain {
					t.Fatalf("%s: retained message %s without RETAIN", mode, m.Payload)
				}
				got = append(got, string(m.Payload))
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Fatalf("%s: resumed session got %q, want %q", mode, got, want)
			}
			select {
			case m := <-sub.msgs:
				t.Fatalf("%s: extra message %q", mode, m.Payload)
			case <-time.After(200 * time.Millisecond):
			}
		})
	}
}

// connectHeld5 connects a persistent v5 session with Receive Maximum 1
// that never acknowledges what it receives.
func connectHeld5(t *testing.T, addr, id string) *v5client {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &v5client{msgs: make(chan *paho.Publish, 100), disconnected: make(chan *paho.Disconnect, 1)}
	c.Client = paho.NewClient(paho.ClientConfig{Conn: conn, EnableManualAcknowledgment: true,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			c.msgs <- pr.Packet
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c.ack, err = c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(3600), ReceiveMaximum: paho.Uint16(1)}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return c
}
