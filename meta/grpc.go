package meta

import (
	"context"
	"errors"
	"io"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	metav1 "github.com/quiremq/quire/internal/proto/meta/v1"
)

// grpcService serves meta.v1.Meta from a Server. A request carrying the
// metadata key quire-meta-no-forward (a forwarded request, or one from
// Client) is never forwarded: a node that is not the leader answers
// NOT_LEADER with the leader's address and the caller retries there.
type grpcService struct {
	metav1.UnimplementedMetaServer
	s *Server
}

var _ metav1.MetaServer = (*grpcService)(nil)

func mayForward(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	return len(md.Get(noForwardKey)) == 0
}

func (g *grpcService) Get(ctx context.Context, req *metav1.GetRequest) (*metav1.GetResponse, error) {
	resp, err := g.s.doGet(ctx, req, mayForward(ctx))
	return resp, toStatus(err)
}

func (g *grpcService) List(ctx context.Context, req *metav1.ListRequest) (*metav1.ListResponse, error) {
	resp, err := g.s.doList(ctx, req, mayForward(ctx))
	return resp, toStatus(err)
}

func (g *grpcService) Put(ctx context.Context, req *metav1.PutRequest) (*metav1.PutResponse, error) {
	resp, err := g.s.doPut(ctx, req, mayForward(ctx))
	return resp, toStatus(err)
}

func (g *grpcService) Delete(ctx context.Context, req *metav1.DeleteRequest) (*metav1.DeleteResponse, error) {
	resp, err := g.s.doDelete(ctx, req, mayForward(ctx))
	return resp, toStatus(err)
}

func (g *grpcService) LeaseGrant(ctx context.Context, req *metav1.LeaseGrantRequest) (*metav1.LeaseGrantResponse, error) {
	resp, err := g.s.doLeaseGrant(ctx, req, mayForward(ctx))
	return resp, toStatus(err)
}

func (g *grpcService) LeaseKeepAlive(ctx context.Context, req *metav1.LeaseKeepAliveRequest) (*metav1.LeaseKeepAliveResponse, error) {
	resp, err := g.s.doLeaseKeepAlive(ctx, req, mayForward(ctx))
	return resp, toStatus(err)
}

func (g *grpcService) LeaseRevoke(ctx context.Context, req *metav1.LeaseRevokeRequest) (*metav1.LeaseRevokeResponse, error) {
	resp, err := g.s.doLeaseRevoke(ctx, req, mayForward(ctx))
	return resp, toStatus(err)
}

func (g *grpcService) Status(context.Context, *metav1.StatusRequest) (*metav1.StatusResponse, error) {
	return g.s.Status(), nil
}

func (g *grpcService) Watch(req *metav1.WatchRequest, st grpc.ServerStreamingServer[metav1.WatchResponse]) error {
	s := g.s
	if !s.started.Load() || s.stopped.Load() {
		return toStatus(ErrStopped)
	}
	ctx, cancel := context.WithCancel(st.Context())
	defer cancel()
	go func() {
		select {
		case <-s.stopCh:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := watchLoop(ctx, s.fsm.hist, req.Prefix, req.StartRevision, func(evs []*metav1.Event, upto uint64) error {
		return st.Send(&metav1.WatchResponse{Events: evs, Revision: upto})
	})
	if s.stopped.Load() {
		err = ErrStopped
	}
	return toStatus(err)
}

// maxResponseBytes bounds the results in one BatchResponse (about; a
// larger result goes alone); the rest follow in more responses.
const maxResponseBytes = 1 << 20

// Batch serves a Batch stream. A request of stale reads only is answered
// inline; any other request is served in a goroutine of its own, so that
// requests on one stream proceed together (their writes meet in the
// leader's next Raft entry).
func (g *grpcService) Batch(st grpc.BidiStreamingServer[metav1.BatchRequest, metav1.BatchResponse]) error {
	ctx := st.Context()
	forward := mayForward(ctx)
	var sendMu sync.Mutex
	var wg sync.WaitGroup
	defer wg.Wait()
	serve := func(req *metav1.BatchRequest) {
		res, errs := g.s.serveOps(ctx, req.Ops, forward)
		sendMu.Lock()
		defer sendMu.Unlock()
		sendResults(st, req.Id, res, errs)
	}
	for {
		req, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if staleOnly(req.Ops) {
			serve(req)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			serve(req)
		}()
	}
}

func staleOnly(ops []*metav1.BatchOp) bool {
	for _, op := range ops {
		if g := op.GetGet(); g == nil || !g.Stale {
			return false
		}
	}
	return true
}

// sendResults sends the results of request id in responses of about
// maxResponseBytes. A failed send is not reported: the stream is broken and
// its Recv fails too.
func sendResults(st grpc.BidiStreamingServer[metav1.BatchRequest, metav1.BatchResponse], id uint64, res []*metav1.BatchResult, errs []error) {
	for i, err := range errs {
		if err != nil {
			res[i] = &metav1.BatchResult{Result: &metav1.BatchResult_Error{Error: opError(err)}}
		}
	}
	for off := 0; off < len(res); {
		n, size := 0, 0
		for off+n < len(res) && (n == 0 || size+resultSize(res[off+n]) <= maxResponseBytes) {
			size += resultSize(res[off+n])
			n++
		}
		if st.Send(&metav1.BatchResponse{Id: id, Offset: uint32(off), Results: res[off : off+n]}) != nil {
			return
		}
		off += n
	}
}

func resultSize(r *metav1.BatchResult) int {
	kv := r.GetGet().GetKv()
	if kv == nil {
		kv = r.GetPut().GetKv()
	}
	return len(kv.GetKey()) + len(kv.GetValue()) + len(r.GetError().GetMessage()) + 32
}
