package meta

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	metav1 "github.com/quiremq/quire/internal/proto/meta/v1"
)

// blockingClientStream is a client Raft stream whose Send blocks until its
// context ends; it records a CloseSend made while a Send runs, which
// grpc.ClientStream forbids.
type blockingClientStream struct {
	grpc.ClientStream
	ctx     context.Context
	sending atomic.Int32
	closed  atomic.Bool
	overlap atomic.Bool
}

func (s *blockingClientStream) Send(*metav1.RaftFrame) error {
	s.sending.Add(1)
	defer s.sending.Add(-1)
	<-s.ctx.Done()
	return s.ctx.Err()
}

func (s *blockingClientStream) Recv() (*metav1.RaftFrame, error) {
	<-s.ctx.Done()
	return nil, s.ctx.Err()
}

func (s *blockingClientStream) CloseSend() error {
	if s.sending.Load() > 0 {
		s.overlap.Store(true)
	}
	s.closed.Store(true)
	return nil
}

// Closing a connection while a Write is sending (raft closes a pipeline's
// connection from its response decoder while the replicator writes) cuts
// the Write without a concurrent CloseSend; an idle connection is
// half-closed.
func TestStreamConnCloseDuringWrite(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	st := &blockingClientStream{ctx: ctx}
	c := newStreamConn(st, cancel, "a", "b")
	done := make(chan error, 1)
	go func() {
		_, err := c.Write([]byte("entries"))
		done <- err
	}()
	for st.sending.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	c.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Write succeeded on a closed connection")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not cut the Write")
	}
	if st.overlap.Load() {
		t.Fatal("CloseSend ran while a Send was in progress")
	}

	ctx2, cancel2 := context.WithCancel(context.Background())
	idle := &blockingClientStream{ctx: ctx2}
	newStreamConn(idle, cancel2, "a", "b").Close()
	if !idle.closed.Load() {
		t.Fatal("an idle connection was not half-closed")
	}
}
